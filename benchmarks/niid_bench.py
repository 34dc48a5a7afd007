"""NIID-Bench's CIFAR-10 table at its own protocol (issue 21), as a queue of rows.

Protocol (Li et al., "Federated Learning on Non-IID Data Silos", 2022, and Flower's reproduction): the simple
CNN, 10 clients, all every round, 50 rounds x 10 local epochs, batch 64, SGD lr 0.01, momentum 0.9,
weight decay 1e-5, the whole 50,000-image training split shared out (no server split), crop + flip.

Rows are ``SETTING-METHOD-sSEED``:

- settings: ``iid``; ``dir0.5`` (Dirichlet alpha = 0.5); ``c2`` (#C = 2: each client holds 2 classes, the
  first p mod 10 and the second drawn, as NIID-Bench's ``noniid-#label`` code draws them:
  ``partition.class_assignment=first-deterministic``);
- methods: ``fedavg``, ``fedprox`` (mu = 0.01), ``scaffold``, ``fednova``.

A finished row is skipped, an interrupted one continued exactly (``semanticfl run --resume``); after every
row ``benchmarks/results/niid_bench.json`` is rewritten as {setting: {method: {"acc", "best", "rounds",
"local_epochs", "seconds", "seed"}}}.

    python benchmarks/niid_bench.py                       # the whole table, in the order below
    python benchmarks/niid_bench.py dir0.5-fedavg-s0 ...  # these rows
    python benchmarks/niid_bench.py --table               # the Markdown table beside the published numbers
"""

from __future__ import annotations

import json
from pathlib import Path

import runqueue

OUT = Path("benchmarks/out/niid_bench")
RESULTS = Path("benchmarks/results/niid_bench.json")
PROTOCOL = ["train.rounds=50", "train.local_epochs=10", "train.batch_size=64", "train.lr=0.01",
            "train.momentum=0.9", "train.weight_decay=1e-5", "train.fraction_fit=1.0", "data.server_holdout=0",
            "partition.num_clients=10"]
SETTINGS = {
    "iid": ["partition.scheme=iid"],
    "dir0.5": ["partition.scheme=dirichlet", "partition.alpha=0.5"],
    "c2": ["partition.scheme=pathological", "partition.classes_per_client=2",
           "partition.class_assignment=first-deterministic"],
}
METHODS = {"fedavg": [], "fedprox": ["algorithm.fedprox.mu=0.01"], "scaffold": [], "fednova": []}
DEFAULT_ROWS = ["dir0.5-fedavg-s0", "c2-fedavg-s0", "dir0.5-scaffold-s0", "dir0.5-fedprox-s0", "dir0.5-fednova-s0",
                "c2-fedprox-s0", "c2-scaffold-s0", "c2-fednova-s0", "iid-fedavg-s0"]
# ../shared/METHODS.md: Flower's reproduction and the NIID-Bench paper, final top-1 %.
PUBLISHED = {
    "flower": {"iid": {"fedavg": 71.7, "scaffold": 70.7, "fedprox": 70.6, "fednova": 71.1},
               "dir0.5": {"fedavg": 63.4, "scaffold": 68.0, "fedprox": 65.6, "fednova": 65.0},
               "c2": {"fedavg": 49.9, "scaffold": 48.9, "fedprox": 50.0, "fednova": 46.4}},
    "paper": {"iid": {"fedavg": 70.4, "fedprox": 70.2, "scaffold": 71.5, "fednova": 69.5},
              "dir0.5": {"fedavg": 68.2, "fedprox": 67.9, "scaffold": 69.8, "fednova": 66.8},
              "c2": {"fedavg": 49.8, "fedprox": 50.7, "scaffold": 49.1, "fednova": 46.5}},
}


def parse_row(name: str) -> tuple[str, str, int]:
    return runqueue.parse_row(name, SETTINGS, METHODS)


def overrides(name: str) -> list[str]:
    setting, method, seed = parse_row(name)
    return [*PROTOCOL, *SETTINGS[setting], f"algorithm.name={method}", *METHODS[method], f"experiment.seed={seed}"]


def results() -> dict:
    """The committed table, updated with every finished run under ``OUT``."""
    table: dict = runqueue.read_results(RESULTS, {})
    for _, summary in runqueue.finished_runs(OUT):
        setting, method, seed = parse_row(summary["experiment"])
        table.setdefault(setting, {})[method] = {
            "acc": summary["final_accuracy"], "best": summary["best_accuracy"], "rounds": summary["rounds"],
            "local_epochs": 10, "seconds": round(summary["total_time_s"], 1), "seed": seed,
        }
    return table


def recorded(name: str) -> bool:
    setting, method, seed = parse_row(name)
    row = runqueue.read_results(RESULTS, {}).get(setting, {}).get(method)
    return row is not None and row["seed"] == seed


def markdown(table: dict) -> str:
    lines = ["| setting | method | final top-1 % | best | NIID-Bench paper | Flower's reproduction | wall time (min) |",
             "|---|---|---|---|---|---|---|"]
    for setting in SETTINGS:
        for method, row in table.get(setting, {}).items():
            lines.append(f"| {setting} | {method} | {row['acc']:.2f} | {row['best']:.2f} "
                         f"| {PUBLISHED['paper'][setting][method]} | {PUBLISHED['flower'][setting][method]} "
                         f"| {row['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def main() -> None:
    args = runqueue.queue_arguments(__doc__, "print the Markdown table and stop")
    if args.table:
        print(markdown(results()))
        return
    runqueue.run_queue(args.rows or DEFAULT_ROWS, parse_row,
                       lambda name: runqueue.run_row(OUT, name, "cifar10_cnn", overrides(name)),
                       lambda: RESULTS.write_text(json.dumps(results(), indent=1) + "\n"), recorded)


if __name__ == "__main__":
    main()

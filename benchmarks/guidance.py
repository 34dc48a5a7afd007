"""SemanticFL's guidance-set mode against FedAvg and its controls (issue 15's evidence), as a queue of rows.

Rows are ``DATASET-SETTING-METHOD-sSEED``. ``fmnist`` is the shipped ``quickstart`` config (Fashion-MNIST,
10 clients, Dir(0.1), simple CNN, at 20 rounds (the quickstart now runs 10)); ``cifar10`` is ``cifar10_cnn`` at the CIFAR-10 benchmark
protocol (10 clients, Dir(0.1), simple CNN, 10 rounds). Both withhold a 10,000-image server split that no
client holds, that the offline teacher was trained on and that is the validation split. ``e1`` = 1 local
epoch (the benchmark protocol), ``e5`` = 5 local epochs. Methods:

- ``fedavg``; ``datashare_public`` (FedAvg + 100 real server images per class shared with every client,
  Zhao et al. 2018); ``datashare_generated`` (FedAvg + the 100 generated images per class of the
  guidance set, no teacher features) -- the controls of the guidance rows with the same images;
- ``anchors`` (SemanticFL's prompt-only anchors) and ``local`` (per-sample teacher features, private);
- ``guidance_{public,generated}`` (the guidance set with teacher features), ``..._ce`` with CE on the
  guidance labels (λ = 1).

A finished row is skipped; an interrupted one is continued with ``semanticfl run --resume`` (exact).
After every row the table is written to ``benchmarks/results/guidance.json``.

    python benchmarks/guidance.py fmnist-e1-fedavg-s0 fmnist-e1-guidance_public-s0 ...  # these rows, in order
    python benchmarks/guidance.py --table                                              # the Markdown table

``--teacher DIR`` sets ``teacher.path`` for the rows that use a teacher (default: the shipped Fashion-MNIST
teacher; for CIFAR-10 ``benchmarks/out/teachers/cifar10``, built by ``semanticfl teacher train cifar10_cnn
data.server_holdout=10000 --out benchmarks/out/teachers/cifar10 --steps 5000``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import runqueue

OUT = Path("benchmarks/out/guidance")
RESULTS = Path("benchmarks/results/guidance.json")
DATASETS = {
    "fmnist": ["quickstart", "train.rounds=20"],  # the quickstart's protocol when these rows ran
    "cifar10": ["cifar10_cnn", "data.server_holdout=10000", "partition.alpha=0.1", "train.rounds=10",
                "algorithm.semanticfl.layer_dims=[32,128,128,64]"],  # the offline teacher's channels cap them
}
TEACHERS = {"fmnist": None, "cifar10": "benchmarks/out/teachers/cifar10"}
SETTINGS = {"e1": ["train.local_epochs=1"], "e5": ["train.local_epochs=5"]}
S = "algorithm.semanticfl"
METHODS = {
    "fedavg": ["algorithm.name=fedavg"],
    "datashare_public": ["algorithm.name=datashare", "algorithm.datashare.source=public"],
    "datashare_generated": ["algorithm.name=datashare", "algorithm.datashare.source=generated"],
    "anchors": ["algorithm.name=semanticfl", f"{S}.mode=anchors"],
    "local": ["algorithm.name=semanticfl", f"{S}.mode=local"],
    "guidance_public": ["algorithm.name=semanticfl", f"{S}.mode=guidance", f"{S}.guidance_source=public"],
    "guidance_public_ce": ["algorithm.name=semanticfl", f"{S}.mode=guidance", f"{S}.guidance_source=public",
                           f"{S}.lambda_guidance_ce=1.0"],
    "guidance_generated": ["algorithm.name=semanticfl", f"{S}.mode=guidance", f"{S}.guidance_source=generated"],
    "guidance_generated_ce": ["algorithm.name=semanticfl", f"{S}.mode=guidance", f"{S}.guidance_source=generated",
                              f"{S}.lambda_guidance_ce=1.0"],
}
USES_TEACHER = {m for m in METHODS if m not in ("fedavg", "datashare_public")}


def parse_row(name: str) -> tuple[str, str, str, int]:
    parts = name.split("-")
    if (len(parts) != 4 or parts[0] not in DATASETS or parts[1] not in SETTINGS or parts[2] not in METHODS
            or not parts[3].startswith("s")):
        sys.exit(f"unknown row {name!r}: DATASET-SETTING-METHOD-sSEED with DATASET in {list(DATASETS)}, "
                 f"SETTING in {list(SETTINGS)}, METHOD in {list(METHODS)}")
    return parts[0], parts[1], parts[2], int(parts[3][1:])


def run_guidance_row(name: str, teacher: str | None) -> None:
    dataset, setting, method, seed = parse_row(name)
    config, *overrides = DATASETS[dataset]
    overrides += [*SETTINGS[setting], *METHODS[method], f"experiment.seed={seed}"]
    teacher = teacher or TEACHERS[dataset]
    if teacher and method in USES_TEACHER:
        overrides.append(f"teacher.path={teacher}")
    runqueue.run_row(OUT, name, config, overrides)


def row_name(row: dict) -> str:
    return f"{row['dataset']}-{row['setting']}-{row['method']}-s{row['seed']}"


def table_rows() -> list[dict]:
    """The committed rows, each replaced by its finished run under ``OUT`` if there is one."""
    rows = {row_name(row): row for row in runqueue.read_results(RESULTS, [])}
    for folder, summary in runqueue.finished_runs(OUT):
        dataset, setting, method, seed = parse_row(summary["experiment"])
        teacher = tomllib.loads((folder / "config.toml").read_text()).get("teacher", {}).get("path", "")
        rows[summary["experiment"]] = {
            "dataset": dataset, "setting": setting, "method": method, "seed": seed,
            "teacher": (teacher or "shipped") if method in USES_TEACHER else "",
            "final_test_accuracy": summary["final_accuracy"], "final_val_accuracy": summary["final_val_accuracy"],
            "best_test_accuracy": summary["best_accuracy"], "seconds": summary["total_time_s"],
            "guidance_mb_down_per_client": (summary.get("guidance_bytes_down_per_client") or 0) / 1e6,
        }
    return list(rows.values())


def markdown(rows: list[dict]) -> str:
    lines = ["| dataset | setting | method | seed | teacher | final val | final test | best test | guidance MB down once |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["setting"], list(METHODS).index(r["method"]), r["seed"])):
        lines.append(f"| {r['dataset']} | {r['setting']} | {r['method']} | {r['seed']} | {r['teacher']} | {r['final_val_accuracy']:.2f} "
                     f"| {r['final_test_accuracy']:.2f} | {r['best_test_accuracy']:.2f} "
                     f"| {r['guidance_mb_down_per_client']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="*")
    parser.add_argument("--teacher", help="teacher.path of the rows that use a teacher")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    runqueue.run_queue(args.rows, parse_row, lambda name: run_guidance_row(name, args.teacher),
                       lambda: RESULTS.write_text(json.dumps(table_rows(), indent=1) + "\n"),
                       lambda name: any(row_name(row) == name for row in runqueue.read_results(RESULTS, [])))
    if args.table:
        print(markdown(table_rows()))


if __name__ == "__main__":
    main()

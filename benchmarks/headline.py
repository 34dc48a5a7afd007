"""The headline table (issue 20): CIFAR-10 at the papers' participation, as a queue of rows.

Protocol (``PROTOCOL``): the NIID-Bench simple CNN, 10 clients, **5 of them a round** (``train.fraction_fit =
0.5``), **30 rounds x 5 local epochs**, batch 64, SGD lr 0.01, momentum 0.9, wd 1e-5; a stratified 10,000-image
server split that every row withholds from every client (``data.server_holdout=10000``) -- the offline teacher
is trained on it alone, the ``public`` rows share 100 of its images per class, and it is the validation split
that chooses variants (``val``; never the test set). Central test accuracy every 2 rounds and at the end.

Rows are ``SETTING-METHOD-sSEED``: settings ``dir0.05``, ``dir0.1``, ``dir0.5`` (Dirichlet alpha) and ``c2``
(#C = 2); methods in ``METHODS``. The default queue (``python benchmarks/headline.py``) runs, in order: every
method at dir0.1 seed 0 (FedDifRC's variants there are the validation rows), seeds 1 and 2 of every dir0.1
row, the main rows at the other settings with FedDifRC's val-chosen variant, the ablations' seeds.

A finished row is skipped (also when only the committed results file holds it); an interrupted one continues
exactly (``semanticfl run --resume``). After every row ``benchmarks/results/headline.json`` is rewritten:
{setting: {"protocol": {"rounds", "local_epochs", "clients_per_round"}, method: {"mean", "std", "seeds",
"finals", "val_mean", "rounds", "s_per_round", "mb_per_client_round", "per_seed": {seed: {...,
"curve": [[round, test %], ...]}}}}}.

    python benchmarks/headline.py                          # the whole table (trains the teacher if missing)
    python benchmarks/headline.py dir0.1-fedavg-s0 ...     # these rows
    python benchmarks/headline.py --table                  # Markdown table and the pictures, nothing run
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import runqueue

from semanticfl.engine.outputs import RunDirectory

OUT = Path("benchmarks/out/headline")
RESULTS = Path("benchmarks/results/headline.json")
TEACHER = Path("benchmarks/teachers/cifar10")  # git-ignored: trained by ensure_teacher when missing
TEACHER_STEPS = 5000
PROTOCOL = {"rounds": 30, "local_epochs": 5, "clients_per_round": 5}
NUM_CLIENTS = 10
COMMON = [f"train.rounds={PROTOCOL['rounds']}", f"train.local_epochs={PROTOCOL['local_epochs']}",
          f"partition.num_clients={NUM_CLIENTS}", f"train.fraction_fit={PROTOCOL['clients_per_round'] / NUM_CLIENTS}",
          "data.server_holdout=10000", "eval.every=2",
          # the offline CIFAR-10 teacher's channels (VAE latent, up-blocks) cap the feature dimensions
          "algorithm.feddifrc.layer_dims=[128,128,64]", "algorithm.semanticfl.layer_dims=[32,128,128,64]"]
SETTINGS = {
    "dir0.05": ["partition.scheme=dirichlet", "partition.alpha=0.05"],
    "dir0.1": ["partition.scheme=dirichlet", "partition.alpha=0.1"],
    "dir0.5": ["partition.scheme=dirichlet", "partition.alpha=0.5"],
    "c2": ["partition.scheme=pathological", "partition.classes_per_client=2"],
}
SETTING_TITLES = {"dir0.05": "Dirichlet α = 0.05", "dir0.1": "Dirichlet α = 0.1", "dir0.5": "Dirichlet α = 0.5",
                  "c2": "#C = 2 (two classes a client)"}
S = "algorithm.semanticfl"
GUIDANCE = ["algorithm.name=semanticfl", f"{S}.mode=guidance", f"{S}.lambda_guidance_ce=1.0"]
BASELINES = {name: [f"algorithm.name={name}"] for name in ("fedavg", "fedprox", "scaffold", "moon", "fednh",
                                                          "fedrcl", "feddisco")}
FEDDIFRC = {
    "feddifrc": ["algorithm.name=feddifrc"],  # the paper's defaults
    "feddifrc_ndcr0.1": ["algorithm.name=feddifrc", "algorithm.feddifrc.lambda_ndcr=0.1"],
    "feddifrc_ndcr0.01": ["algorithm.name=feddifrc", "algorithm.feddifrc.lambda_ndcr=0.01"],
    "feddifrc_gap": ["algorithm.name=feddifrc", "algorithm.feddifrc.reduction=gap"],
}
SEMANTICFL = {
    "semanticfl_guidance": [*GUIDANCE, f"{S}.guidance_source=generated"],  # candidate default: class names only
    # the generated set at a tenth of the CE weight: 5 local epochs pass over its 1,000 images ~25 times a round
    "semanticfl_guidance_gce0.1": [*GUIDANCE, f"{S}.guidance_source=generated", f"{S}.lambda_guidance_ce=0.1"],
    "semanticfl_guidance_public": [*GUIDANCE, f"{S}.guidance_source=public"],
    "semanticfl_anchors": ["algorithm.name=semanticfl", f"{S}.mode=anchors"],  # prompt-only anchors
    "semanticfl_local": ["algorithm.name=semanticfl", f"{S}.mode=local"],
    "semanticfl_offload": ["algorithm.name=semanticfl", f"{S}.mode=offload"],
}
# Ablations of the guidance mode, each one part removed.
ABLATIONS = {
    "semanticfl_guidance_no_latent": [*SEMANTICFL["semanticfl_guidance"], f'{S}.layers=["up-3","up-2","up-1"]',
                                      f"{S}.layer_dims=[128,128,64]"],
    "semanticfl_guidance_no_unet": [*SEMANTICFL["semanticfl_guidance"], f'{S}.layers=["latent"]',
                                    f"{S}.layer_dims=[32]"],
    "semanticfl_guidance_no_kd": [*SEMANTICFL["semanticfl_guidance"], f"{S}.lambda_kd=0"],
    "semanticfl_guidance_no_con": [*SEMANTICFL["semanticfl_guidance"], f"{S}.lambda_con=0"],
    # the same two at a tenth of the guidance CE, where the feature terms are what separates the row from its control
    "semanticfl_guidance_gce0.1_no_kd": [*SEMANTICFL["semanticfl_guidance_gce0.1"], f"{S}.lambda_kd=0"],
    "semanticfl_guidance_gce0.1_no_con": [*SEMANTICFL["semanticfl_guidance_gce0.1"], f"{S}.lambda_con=0"],
}
# The controls: the same images without the teacher's features (generated), the server's real split shared.
CONTROLS = {
    "datashare_generated": ["algorithm.name=datashare", "algorithm.datashare.source=generated"],
    "datashare_public": ["algorithm.name=datashare", "algorithm.datashare.source=public"],
    # the val-chosen guidance row's control: its generated images at its CE weight, no teacher features
    # (no consistency with them) and no text contrast -- FedAvg's CE plus 0.1 x CE on the same images
    "generated_ce0.1_control": [*SEMANTICFL["semanticfl_guidance_gce0.1"], f"{S}.lambda_kd=0", f"{S}.lambda_con=0"],
}
METHODS = {**BASELINES, **FEDDIFRC, **SEMANTICFL, **ABLATIONS, **CONTROLS}
USES_TEACHER = {*FEDDIFRC, *SEMANTICFL, *ABLATIONS, "datashare_generated", "generated_ce0.1_control"}
# Variants of which the validation split picks one, drawn as one line: FedDifRC's, and SemanticFL's private
# default candidates (the guidance set generated from the class names alone, at two CE weights).
VAL_CHOICES = {"feddifrc_val": FEDDIFRC,
               "semanticfl_val": {m: SEMANTICFL[m] for m in ("semanticfl_guidance", "semanticfl_guidance_gce0.1")}}
# The pictures' lines (at most eight) and the ablation chart's bars.
MAIN_LINES = ("fedavg", "fedprox", "scaffold", "moon", "feddifrc_val", "semanticfl_guidance", "semanticfl_val",
              "datashare_generated")
ABLATION_BARS = ("semanticfl_guidance", "semanticfl_guidance_no_latent", "semanticfl_guidance_no_unet",
                 "semanticfl_guidance_no_kd", "semanticfl_guidance_no_con", "semanticfl_anchors", "datashare_generated",
                 "semanticfl_guidance_gce0.1", "semanticfl_guidance_gce0.1_no_kd", "semanticfl_guidance_gce0.1_no_con",
                 "generated_ce0.1_control", "fedavg")


def parse_row(name: str) -> tuple[str, str, int]:
    return runqueue.parse_row(name, SETTINGS, METHODS)


def overrides(name: str) -> list[str]:
    setting, method, seed = parse_row(name)
    teacher = [f"teacher.path={TEACHER}"] if method in USES_TEACHER else []
    return [*COMMON, *SETTINGS[setting], *METHODS[method], *teacher, f"experiment.seed={seed}"]


def run_one(name: str) -> None:
    if parse_row(name)[1] in USES_TEACHER:
        ensure_teacher()
    runqueue.run_row(OUT, name, "cifar10_cnn", overrides(name))


def ensure_teacher() -> None:
    """Train the offline CIFAR-10 teacher on the server split if it is not there (resumable, exact)."""
    if (TEACHER / "teacher.json").exists():
        return
    command = ["semanticfl", "teacher", "train", "cifar10_cnn", "data.server_holdout=10000", "--out", str(TEACHER),
               "--steps", str(TEACHER_STEPS)]
    if TEACHER.exists():
        command.append("--resume")
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


# ------------------------------------------------------------------ results


def seed_entry(folder: Path, summary: dict) -> dict:
    rounds = RunDirectory(folder).read_rounds()
    return {
        "final": summary["final_accuracy"], "best": summary["best_accuracy"], "val": summary["final_val_accuracy"],
        "rounds": summary["rounds"], "s_per_round": round(summary["mean_round_time_s"], 2),
        "mb_per_client_round": round((summary["bytes_down_per_client_per_round"]
                                      + summary["bytes_up_per_client_per_round"]) / 1e6, 3),
        "curve": [[r["round"], r["test_accuracy"]] for r in rounds if r.get("test_accuracy") is not None],
    }


def method_row(per_seed: dict[str, dict]) -> dict:
    """The table's fields over a method's seeds (mean and sample std of the final accuracy)."""
    seeds = sorted(per_seed, key=int)
    finals = [per_seed[s]["final"] for s in seeds]
    vals = [per_seed[s]["val"] for s in seeds if per_seed[s]["val"] is not None]
    return {
        "mean": round(statistics.fmean(finals), 2),
        "std": round(statistics.stdev(finals), 2) if len(finals) > 1 else 0.0,
        "seeds": [int(s) for s in seeds], "finals": [round(f, 2) for f in finals],
        "val_mean": round(statistics.fmean(vals), 2) if vals else None,
        "rounds": per_seed[seeds[0]]["rounds"],
        "s_per_round": round(statistics.fmean(per_seed[s]["s_per_round"] for s in seeds), 2),
        "mb_per_client_round": per_seed[seeds[0]]["mb_per_client_round"],
        "per_seed": {s: per_seed[s] for s in seeds},
    }


def results() -> dict:
    """The committed table, updated with every finished run under ``OUT``."""
    table: dict = runqueue.read_results(RESULTS, {})
    for folder, summary in runqueue.finished_runs(OUT):
        setting, method, seed = parse_row(summary["experiment"])
        per_seed = table.setdefault(setting, {"protocol": PROTOCOL}).get(method, {}).get("per_seed", {})
        per_seed[str(seed)] = seed_entry(folder, summary)
        table[setting][method] = method_row(per_seed)
    return {s: table[s] for s in SETTINGS if s in table}


def recorded(name: str) -> bool:
    setting, method, seed = parse_row(name)
    return str(seed) in runqueue.read_results(RESULTS, {}).get(setting, {}).get(method, {}).get("per_seed", {})


def methods_of(setting_table: dict) -> dict[str, dict]:
    return {m: row for m, row in setting_table.items() if m != "protocol"}


def val_choice(table: dict, candidates: dict[str, list[str]]) -> str | None:
    """The candidate with the best dir0.1 seed-0 validation accuracy, once all of them have run."""
    rows = methods_of(table.get("dir0.1", {}))
    vals = {m: rows[m]["per_seed"].get("0", {}).get("val") for m in candidates if m in rows}
    if len(vals) < len(candidates) or None in vals.values():
        return None
    return max(vals, key=vals.get)


# ------------------------------------------------------------------ the queue


def default_rows() -> list[str]:
    """The whole table in priority order; FedDifRC's other settings wait for its validation rows."""
    first = [f"dir0.1-{m}-s0" for m in (*BASELINES, *CONTROLS, *SEMANTICFL, *FEDDIFRC)]
    feddifrc = val_choice(results(), FEDDIFRC)
    main = [*BASELINES, *CONTROLS, *SEMANTICFL] + ([feddifrc] if feddifrc else [])
    seeds = [f"dir0.1-{m}-s{seed}" for seed in (1, 2) for m in main]
    others = [f"{s}-{m}-s0" for s in ("dir0.05", "dir0.5", "c2") for m in main]
    ablations = [f"dir0.1-{m}-s{seed}" for seed in (0, 1, 2) for m in ABLATIONS]
    return first + seeds + others + ablations


# ------------------------------------------------------------------ report


def markdown(table: dict) -> str:
    settings = list(table)
    methods = [m for m in METHODS if any(m in table[s] for s in settings)]
    chosen = val_chosen(table)
    lines = ["| method | " + " | ".join(settings) + f" | val (dir0.1) | dir0.1, last {TAIL} evaluations "
             "| s/round | MB/client/round |", "|---|" + "---|" * (len(settings) + 4)]
    for method in methods:
        rows = [table[s][method] for s in settings if method in table[s]]
        cells = [_cell(table[s].get(method)) for s in settings]
        val = table.get("dir0.1", {}).get(method, {}).get("val_mean")
        tail = tail_mean(table.get("dir0.1", {}).get(method))
        label = labelled(method, chosen)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_number(val)} | {_number(tail)} "
                     f"| {statistics.fmean(r['s_per_round'] for r in rows):.1f} | {rows[0]['mb_per_client_round']:.3f} |")
    return "\n".join(lines)


TAIL = 5
"""Evaluations averaged at the end of a curve: at 5 of 10 clients the last round alone moves by many points."""


def tail_mean(row: dict | None) -> float | None:
    """Mean test accuracy of the last ``TAIL`` evaluated rounds, over the row's seeds."""
    if row is None:
        return None
    return statistics.fmean(y for seed in row["per_seed"].values() for _, y in seed["curve"][-TAIL:])


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _cell(row: dict | None) -> str:
    if row is None:
        return "—"
    return f"{row['mean']:.2f}" + (f" ± {row['std']:.2f} ({len(row['seeds'])})" if len(row["seeds"]) > 1 else "")


def protocol_title() -> str:
    return (f"CIFAR-10, simple CNN, {PROTOCOL['clients_per_round']} of {NUM_CLIENTS} clients a round, "
            f"{PROTOCOL['rounds']} rounds × {PROTOCOL['local_epochs']} local epochs, seed 0")


def val_chosen(table: dict) -> set[str | None]:
    """The methods the validation split has picked (one per ``VAL_CHOICES`` entry, ``None`` if not yet)."""
    return {val_choice(table, candidates) for candidates in VAL_CHOICES.values()}


def labelled(method: str, chosen: set[str | None]) -> str:
    return f"{method} (val-chosen)" if method in chosen else method


def chosen_line(table: dict, line: str) -> str:
    """A main line's method: the val-chosen candidate for a ``*_val`` line (its first until all have run)."""
    if line not in VAL_CHOICES:
        return line
    return val_choice(table, VAL_CHOICES[line]) or next(iter(VAL_CHOICES[line]))


def plot_curves(table: dict, path: Path) -> None:
    """One panel per setting, test accuracy per round of seed 0 for the main rows, the legend outside."""
    from matplotlib.figure import Figure

    lines = list(dict.fromkeys(chosen_line(table, m) for m in MAIN_LINES))  # a line drawn once
    fig = Figure(figsize=(11, 7.5), dpi=110, layout="constrained")
    axes = fig.subplots(2, 2, sharey=True).ravel()
    colours = {m: f"C{i}" for i, m in enumerate(lines)}
    chosen = val_chosen(table)
    for ax, setting in zip(axes, SETTINGS):
        for method in lines:
            curve = table.get(setting, {}).get(method, {}).get("per_seed", {}).get("0", {}).get("curve")
            if curve:
                xs, ys = zip(*curve)
                ax.plot(xs, ys, marker="o", markersize=2.5, color=colours[method],
                        label=labelled(method, chosen))
        if not ax.get_lines():
            ax.text(0.5, 0.5, "not run yet", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xlim(0, PROTOCOL["rounds"] + 1)
        ax.set_title(SETTING_TITLES[setting], fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for ax in axes for h in ax.get_lines()}
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=9)
    fig.suptitle(protocol_title(), fontsize=11)
    fig.savefig(path)


def plot_ablations(table: dict, path: Path) -> None:
    """The guidance mode, each ablation and the controls at dir0.1: mean final accuracy ± std over seeds."""
    from matplotlib.figure import Figure

    rows = methods_of(table.get("dir0.1", {}))
    bars = [m for m in ABLATION_BARS if m in rows]
    if "semanticfl_guidance" not in bars:  # nothing to ablate yet
        return
    fig = Figure(figsize=(11, 5), dpi=110, layout="constrained")
    ax = fig.subplots()
    means = [rows[m]["mean"] for m in bars]
    ax.bar(range(len(bars)), means, yerr=[rows[m]["std"] for m in bars], capsize=4, color="C0")
    for i, m in enumerate(bars):
        ax.annotate(f"{means[i]:.1f} (n={len(rows[m]['seeds'])})", (i, means[i] + rows[m]["std"]), ha="center",
                    va="bottom", xytext=(0, 6), textcoords="offset points", fontsize=8)
    labels = [m.replace("semanticfl_", "").replace("anchors", "prompt-only anchors") for m in bars]
    ax.set_xticks(range(len(bars)), labels, rotation=25, ha="right")
    ax.set_ylim(0, 1.12 * max(mean + rows[m]["std"] for mean, m in zip(means, bars)))  # room for the labels
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(protocol_title().replace(", seed 0", "") + ", Dir(0.1): ablations (mean ± std over seeds)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)


def write_report(table: dict) -> None:
    RESULTS.write_text(json.dumps(table, indent=1) + "\n")
    if table:
        plot_curves(table, RESULTS.parent / "headline_curves.png")
        plot_ablations(table, RESULTS.parent / "headline_ablations.png")


def main() -> None:
    args = runqueue.queue_arguments(__doc__, "write the report from what has run and print it")
    if args.table:
        table = results()
        write_report(table)
        print(markdown(table))
        return
    if args.rows:
        runqueue.run_queue(args.rows, parse_row, run_one, lambda: write_report(results()), recorded)
        return
    rows: list[str] = []
    while rows != default_rows():  # once the validation rows have run, FedDifRC's choice joins the queue
        rows = default_rows()
        runqueue.run_queue(rows, parse_row, run_one, lambda: write_report(results()), recorded)


if __name__ == "__main__":
    main()

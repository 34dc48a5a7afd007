"""Collect the runs of ``benchmarks/headline.sh`` (experiment names ``<setting>-<method>-s<seed>``)
into ``benchmarks/results/headline.json``, a Markdown table and an overlaid accuracy plot:
{setting: {method: {"mean", "std", "seeds", "val_mean", "rounds", "s_per_round", "mb_per_client_round"}}}
with accuracies in % (final round, central test set; ``val_mean`` on the server's validation split).

    python benchmarks/headline_table.py [FOLDER]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from semanticfl.engine.outputs import RunDirectory, plot_accuracy

RESULTS = Path(__file__).parent / "results"
SETTING_ORDER = ("dir0.05", "dir0.1", "dir0.5", "c2")
METHOD_ORDER = ("fedavg", "fedprox", "moon", "scaffold", "fednh", "feddifrc", "tdcl_only", "ndcr_only")


def method_rank(method: str) -> tuple[float, str]:
    """Baselines first, then FedDifRC with its variants right after it, then SemanticFL's rows."""
    if method in METHOD_ORDER:
        return METHOD_ORDER.index(method), method
    if method.startswith("feddifrc"):
        return METHOD_ORDER.index("feddifrc") + 0.5, method
    return len(METHOD_ORDER), method


def complete_runs(folder: Path) -> dict[tuple[str, str], list[dict]]:
    """(setting, method) → the summaries of its finished seeds."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(folder.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        parts = summary["experiment"].rsplit("-", 2)
        if summary.get("complete") and len(parts) == 3:
            setting, method, seed = parts
            summary["seed"] = int(seed.removeprefix("s"))
            runs.setdefault((setting, method), []).append(summary)
    return runs


def row(summaries: list[dict]) -> dict:
    finals = [s["final_accuracy"] for s in summaries]
    vals = [s["final_val_accuracy"] for s in summaries if s.get("final_val_accuracy") is not None]
    return {
        "mean": round(statistics.fmean(finals), 2),
        "std": round(statistics.stdev(finals), 2) if len(finals) > 1 else 0.0,
        "seeds": [s["seed"] for s in summaries],
        "finals": [round(f, 2) for f in finals],
        "val_mean": round(statistics.fmean(vals), 2) if vals else None,
        "rounds": summaries[0]["rounds"],
        "s_per_round": round(statistics.fmean(s["mean_round_time_s"] for s in summaries), 2),
        "mb_per_client_round": round(
            (summaries[0]["bytes_down_per_client_per_round"] + summaries[0]["bytes_up_per_client_per_round"])
            / 1e6,
            3,
        ),
    }


def table(runs: dict[tuple[str, str], list[dict]]) -> dict[str, dict[str, dict]]:
    result: dict[str, dict[str, dict]] = {}
    for (setting, method), summaries in runs.items():
        result.setdefault(setting, {})[method] = row(summaries)
    return {
        s: result[s]
        for s in sorted(result, key=lambda s: SETTING_ORDER.index(s) if s in SETTING_ORDER else 99)
    }


def markdown(result: dict[str, dict[str, dict]]) -> str:
    settings = list(result)
    methods = sorted({m for s in settings for m in result[s]}, key=method_rank)
    lines = [
        "| method | " + " | ".join(settings) + " | val (dir0.1) | s/round | MB/client/round |",
        "|---|" + "---|" * (len(settings) + 3),
    ]
    for method in methods:
        cells = []
        for s in settings:
            r = result[s].get(method)
            cells.append(
                "—"
                if r is None
                else f"{r['mean']:.2f}"
                + (f" ± {r['std']:.2f} ({len(r['seeds'])})" if len(r["seeds"]) > 1 else "")
            )
        rows = [result[s][method] for s in settings if method in result[s]]
        val = result.get("dir0.1", {}).get(method, {}).get("val_mean")
        lines.append(
            f"| {method} | "
            + " | ".join(cells)
            + f" | {'—' if val is None else f'{val:.2f}'} | {statistics.fmean(r['s_per_round'] for r in rows):.1f}"
            + f" | {rows[0]['mb_per_client_round']:.3f} |"
        )
    return "\n".join(lines)


def plot(folder: Path, runs: dict[tuple[str, str], list[dict]], setting: str) -> None:
    """Accuracy per round at ``setting``, seed 0, one line per method."""
    curves = {}
    for (s, method), summaries in runs.items():
        seed0 = [x for x in summaries if x["seed"] == 0]
        if s == setting and seed0:
            curves[method] = RunDirectory(seed0[0]["run_dir"]).read_rounds()
    if curves:
        plot_accuracy(curves, RESULTS / f"headline_{setting}.png", f"CIFAR-10, {setting}, seed 0")


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out/headline")
    runs = complete_runs(folder)
    result = table(runs)
    (RESULTS / "headline.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(folder, runs, "dir0.1")
    print(markdown(result))


if __name__ == "__main__":
    main()

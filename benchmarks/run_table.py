"""Collect the runs of a benchmark folder (experiment names ``<setting>-<method>``) into a Markdown
table and a JSON file: {setting: {method: {final, best, val, mean_round_time_s, run_dir}}}.

    python benchmarks/run_table.py FOLDER OUT_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def collect(folder: Path) -> dict[str, dict[str, dict]]:
    table: dict[str, dict[str, dict]] = {}
    for summary_path in sorted(folder.glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        if not summary.get("complete"):
            continue
        setting, _, method = summary["experiment"].partition("-")
        table.setdefault(setting, {})[method] = {
            "final": summary["final_accuracy"],
            "best": summary["best_accuracy"],
            "val": summary.get("final_val_accuracy"),
            "rounds": summary["rounds"],
            "mean_round_time_s": round(summary["mean_round_time_s"], 2),
            "run_dir": summary["run_dir"],
        }
    return table


def markdown(table: dict[str, dict[str, dict]]) -> str:
    settings = sorted(table)
    methods = list(dict.fromkeys(m for s in settings for m in table[s]))
    lines = [
        "| method | " + " | ".join(f"{s} final / best (val)" for s in settings) + " | s/round |",
        "|---|" + "---|" * (len(settings) + 1),
    ]
    for method in methods:
        cells, times = [], []
        for s in settings:
            row = table[s].get(method)
            cells.append("—" if row is None else f"{row['final']:.2f} / {row['best']:.2f} ({row['val']:.2f})")
            if row is not None:
                times.append(row["mean_round_time_s"])
        mean_time = f"{sum(times) / len(times):.1f}" if times else "—"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean_time} |")
    return "\n".join(lines)


def main() -> None:
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    table = collect(folder)
    out.write_text(json.dumps(table, indent=2) + "\n")
    print(markdown(table))


if __name__ == "__main__":
    main()

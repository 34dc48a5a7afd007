"""``semanticfl compare``: several algorithms on one partition and seed, one table, one plot."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from semanticfl.cli.runs import check_inputs, start_run
from semanticfl.config import load_config
from semanticfl.engine.experiment import Experiment
from semanticfl.engine.outputs import RunDirectory, plot_accuracy
from semanticfl.files import atomic_write_text

COLUMNS = (
    "algorithm",
    "final_accuracy",
    "best_accuracy",
    "rounds_to_target",
    "total_time_s",
    "mean_round_time_s",
    "bytes_per_client_per_round",
    "run_dir",
)


def compare(
    source: str | None, overrides: list[str], algorithms: list[str], connection: dict[str, str | None]
) -> Path:
    """Run each algorithm with the same config (data, partition, seed); write the comparison."""
    base = load_config(source, overrides)
    for name in algorithms:  # bad input stops here, before the comparison folder exists
        check_inputs(Experiment(load_config(source, [*overrides, f"algorithm.name={name}"])))
    folder = RunDirectory.create(base.experiment.output_dir, f"{base.experiment.name}-compare")
    rows, histories = [], {}
    for name in algorithms:
        run_overrides = [
            *overrides,
            f"algorithm.name={name}",
            f"experiment.name={name}",
            f"experiment.output_dir={folder.path}",
        ]
        summary = start_run(source, run_overrides, 0, connection)
        histories[name] = RunDirectory(Path(summary["run_dir"])).read_rounds()
        rows.append(comparison_row(name, summary))
    write_comparison(folder.path, rows, histories, base.experiment.name)
    print_comparison(rows)
    return folder.path


def comparison_row(algorithm: str, summary: dict[str, Any]) -> dict[str, Any]:
    down = summary["bytes_down_per_client_per_round"] or 0.0
    up = summary["bytes_up_per_client_per_round"] or 0.0
    return {
        "algorithm": algorithm,
        "final_accuracy": summary["final_accuracy"],
        "best_accuracy": summary["best_accuracy"],
        "rounds_to_target": summary["rounds_to_target"],
        "total_time_s": summary["total_time_s"],
        "mean_round_time_s": summary["mean_round_time_s"],
        "bytes_per_client_per_round": down + up,
        "run_dir": summary["run_dir"],
    }


def write_comparison(
    folder: Path, rows: list[dict[str, Any]], histories: dict[str, list], title: str
) -> None:
    """comparison.json, comparison.csv and the overlaid accuracy.png."""
    atomic_write_text(folder / "comparison.json", json.dumps(rows, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / "comparison.csv", buffer.getvalue())
    plot_accuracy(histories, folder / "accuracy.png", f"{title}: test accuracy per round")


def print_comparison(rows: list[dict[str, Any]]) -> None:
    table = Table(title="comparison (same partition and seed)")
    for header in (
        "algorithm",
        "final %",
        "best %",
        "rounds to target",
        "time (s)",
        "s/round",
        "MB/client/round",
    ):
        table.add_column(header, justify="left" if header == "algorithm" else "right")
    for row in rows:
        table.add_row(
            row["algorithm"],
            _fmt(row["final_accuracy"]),
            _fmt(row["best_accuracy"]),
            str(row["rounds_to_target"] or "—"),
            _fmt(row["total_time_s"], 1),
            _fmt(row["mean_round_time_s"], 2),
            _fmt(row["bytes_per_client_per_round"] / 1e6, 3),
        )
    Console().print(table)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"

"""``semanticfl compare``: several algorithms on one partition and seed, one table, one plot."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from semanticfl.cli.runs import check_inputs, start_run
from semanticfl.config import Config, load_config
from semanticfl.engine.experiment import Experiment
from semanticfl.engine.outputs import RunDirectory, plot_accuracy, run_setting
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
COMPARISON_CSV = "comparison.csv"
PLOT = "accuracy.png"


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
    write_comparison(folder.path, rows, histories, base)
    Console().print(comparison_table(rows, base.eval.target_accuracy))
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


def write_comparison(folder: Path, rows: list[dict[str, Any]], histories: dict[str, list], config: Config) -> None:
    """comparison.json, comparison.csv and the overlaid accuracy.png."""
    atomic_write_text(folder / "comparison.json", json.dumps(rows, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / COMPARISON_CSV, buffer.getvalue())
    title = f"{config.experiment.name}: test accuracy per round"
    plot_accuracy(histories, folder / PLOT, title, run_setting(config))


def comparison_table(rows: list[dict[str, Any]], target_accuracy: float) -> Table:
    """One row per algorithm; "rounds to N %" only when ``eval.target_accuracy`` sets N ("—": not reached)."""
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("algorithm", lambda r: r["algorithm"]),
        ("final %", lambda r: _fmt(r["final_accuracy"])),
        ("best %", lambda r: _fmt(r["best_accuracy"])),
    ]
    if target_accuracy:
        columns.append((f"rounds to {target_accuracy:g} %", lambda r: str(r["rounds_to_target"] or "—")))
    columns += [
        ("time (s)", lambda r: _fmt(r["total_time_s"], 1)),
        ("s / round", lambda r: _fmt(r["mean_round_time_s"], 2)),
        ("MB / client / round", lambda r: _fmt(r["bytes_per_client_per_round"] / 1e6, 3)),
    ]
    missed = target_accuracy and any(r["rounds_to_target"] is None for r in rows)
    caption = f"—: {target_accuracy:g} % not reached" if missed else None
    table = Table(title="comparison (same partition and seed)", caption=caption)
    names = max((len(r["algorithm"]) for r in rows), default=0)
    table.add_column(columns[0][0], min_width=names, no_wrap=True)  # headers wrap at spaces, names never
    for header, _ in columns[1:]:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*(cell(row) for _, cell in columns))
    return table


def comparison_line(folder: Path) -> str:
    """The last line of a comparison: where its table and side-by-side plot are."""
    return f"comparison: {folder} (table {COMPARISON_CSV}, side-by-side plot {folder / PLOT})"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"

"""Class-count tables of a partition, to inspect it: the table itself, as text, as CSV and as a heatmap."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Heatmaps get per-cell count annotations only up to this many cells, and a tick label
# per client / per class only up to this many rows / columns.
MAX_ANNOTATED_CELLS = 400
MAX_TICK_LABELS = 100


def class_count_table(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Clients x classes int64 table: how many samples of each class each client holds."""
    labels = np.asarray(labels)
    table = np.zeros((len(parts), num_classes), dtype=np.int64)
    for client, part in enumerate(parts):
        table[client] = np.bincount(labels[part], minlength=num_classes)
    return table


def format_count_table(table: np.ndarray, class_names: Sequence[str]) -> str:
    """Render a count table as aligned text with a total column and a total row."""
    _check_table_matches_names(table, class_names)
    header = ["client", *map(str, class_names), "total"]
    rows = [[str(client), *map(str, counts), str(counts.sum())] for client, counts in enumerate(table)]
    rows.append(["total", *map(str, table.sum(axis=0)), str(table.sum())])
    lines = [header, *rows]
    widths = [max(len(line[col]) for line in lines) for col in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in lines
    )


def save_count_table_csv(table: np.ndarray, class_names: Sequence[str], path: str | Path) -> None:
    """Write the count table as CSV: a header ``client,<class names>`` and one row per client."""
    _check_table_matches_names(table, class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["client", *class_names])
        for client, counts in enumerate(table):
            writer.writerow([client, *counts.tolist()])


def save_partition_heatmap(
    table: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = ""
) -> None:
    """Save a PNG heatmap of the count table: clients on y, classes on x.

    Cells are annotated with their counts when the table has at most
    ``MAX_ANNOTATED_CELLS`` cells; larger axes get automatic numeric ticks instead of
    one label per client / class. Uses the Agg canvas directly (no pyplot state).
    """
    # Imported here so that partitioning does not pay for loading matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_table_matches_names(table, class_names)
    num_clients, num_classes = table.shape
    figure = Figure(figsize=(min(2 + 0.6 * num_classes, 30), min(1.5 + 0.4 * num_clients, 30)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(table, aspect="auto", cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=axes, label="samples")
    axes.set_xlabel("class")
    axes.set_ylabel("client")
    if num_classes <= MAX_TICK_LABELS:
        axes.set_xticks(range(num_classes), [str(name) for name in class_names], rotation=90)
    if num_clients <= MAX_TICK_LABELS:
        axes.set_yticks(range(num_clients))
    if title:
        axes.set_title(title)
    if table.size <= MAX_ANNOTATED_CELLS:
        _annotate_cells(axes, table)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)


def _check_table_matches_names(table: np.ndarray, class_names: Sequence[str]) -> None:
    """Raise ValueError unless the table is 2-D with one column per class name."""
    if table.ndim != 2 or table.shape[1] != len(class_names):
        raise ValueError(f"count table of shape {table.shape} does not match {len(class_names)} class names")


def _annotate_cells(axes, table: np.ndarray) -> None:
    """Write each cell's count on the heatmap, light text on dark cells."""
    threshold = table.max() / 2 if table.size else 0
    for (row, col), count in np.ndenumerate(table):
        color = "black" if count > threshold else "white"
        axes.text(col, row, str(count), ha="center", va="center", color=color, fontsize=8)

"""The run directory: resolved config, per-round metrics, summary, plots, checkpoints.

Layout of ``runs/<name>-<timestamp>/``::

    config.toml          the fully resolved config (re-run or resume from it)
    metrics.jsonl        one JSON object per round, with a per-client breakdown
    metrics.csv          the same rounds, flat columns
    summary.json         final/best accuracy, rounds to target, time, bytes
    accuracy.png         test accuracy vs round
    partition.csv/.png   client × class counts and their heatmap
    checkpoints/         round-XXXX.safetensors (the newest few)

A new run never reuses an existing directory; ``--resume`` reopens one and cuts its
metrics back to the checkpoint it continues from.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semanticfl.config import Config, PartitionConfig
from semanticfl.errors import UserError
from semanticfl.files import atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CSV_COLUMNS = (
    "round",
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "val_loss",
    "federated_accuracy",
    "train_loss",
    "train_accuracy",
    "clients",
    "failed_clients",
    "round_time_s",
    "bytes_down_per_client",
    "bytes_up_per_client",
    "elapsed_s",
)


class RunDirectory:
    """Files of one run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(cls, base: str | Path, name: str) -> RunDirectory:
        """A fresh, empty directory ``base/name-YYYYmmdd-HHMMSS`` (suffixed if taken)."""
        base = Path(base)
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create output directory {base}: {exc.strerror}") from None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for attempt in range(1000):
            suffix = f"-{attempt}" if attempt else ""
            path = base / f"{name}-{stamp}{suffix}"
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
            except OSError as exc:
                raise UserError(f"cannot create run directory {path}: {exc.strerror}") from None
        raise UserError(f"could not find a free run directory name under {base}")

    @classmethod
    def open_for_resume(cls, path: str | Path) -> RunDirectory:
        run = cls(Path(path))
        if (run.path / "config.toml").is_file():
            return run
        inner = run.inner_runs()
        if inner:
            listed = ", ".join(f"{r.path} ({'finished' if r.finished() else 'unfinished'})" for r in inner)
            raise UserError(f"--resume {path} is a comparison folder, not a run; its runs: {listed}")
        raise UserError(
            f"--resume {path}: no config.toml there; pass the run directory a previous "
            "'semanticfl run' printed"
        )

    def inner_runs(self) -> list[RunDirectory]:
        """The run directories inside this folder (a comparison's one per algorithm)."""
        if not self.path.is_dir():
            return []
        return [RunDirectory(p) for p in sorted(self.path.iterdir()) if (p / "config.toml").is_file()]

    # ------------------------------------------------------------------ files

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / "metrics.jsonl"

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, toml_text: str) -> None:
        atomic_write_text(self.path / "config.toml", toml_text)

    def read_rounds(self) -> list[dict[str, Any]]:
        """Round records written so far (a torn last line from a crash is dropped)."""
        if not self.metrics_jsonl.is_file():
            return []
        rounds = []
        for line in self.metrics_jsonl.read_text().splitlines():
            try:
                rounds.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return rounds

    def rewrite_rounds(self, rounds: list[dict[str, Any]]) -> None:
        """Replace the metrics files with exactly ``rounds`` (used when resuming)."""
        atomic_write_text(self.metrics_jsonl, "".join(json.dumps(r) + "\n" for r in rounds))
        self._write_csv(rounds)

    def append_round(self, record: dict[str, Any], all_rounds: list[dict[str, Any]]) -> None:
        with open(self.metrics_jsonl, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self._write_csv(all_rounds)

    def _write_csv(self, rounds: list[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for record in rounds:
            writer.writerow({k: _csv_value(record.get(k)) for k in CSV_COLUMNS})
        atomic_write_text(self.path / "metrics.csv", buffer.getvalue())

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        """The summary the run last wrote (None before its first stop, or if unreadable)."""
        try:
            return json.loads((self.path / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def finished(self) -> bool:
        """Whether the run has done all of ``train.rounds`` (not stopped by ``--until-round``)."""
        return bool((self.read_summary() or {}).get("complete"))


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def summarize(rounds: list[dict[str, Any]], target_accuracy: float) -> dict[str, Any]:
    """Final and best accuracy, rounds to the target, wall time and bytes of a run."""
    evaluated = [r for r in rounds if r.get("test_accuracy") is not None]
    best = max(evaluated, key=lambda r: r["test_accuracy"], default=None)
    reached = next(
        (r["round"] for r in evaluated if target_accuracy > 0 and r["test_accuracy"] >= target_accuracy),
        None,
    )
    times = [r["round_time_s"] for r in rounds]
    return {
        "rounds": len(rounds),
        "final_accuracy": evaluated[-1]["test_accuracy"] if evaluated else None,
        "best_accuracy": best["test_accuracy"] if best else None,
        "best_round": best["round"] if best else None,
        "final_val_accuracy": evaluated[-1].get("val_accuracy") if evaluated else None,
        "target_accuracy": target_accuracy or None,
        "rounds_to_target": reached,
        "mean_round_time_s": sum(times) / len(times) if times else None,
        "total_time_s": sum(times),
        "bytes_down_per_client_per_round": _mean(r["bytes_down_per_client"] for r in rounds),
        "bytes_up_per_client_per_round": _mean(r["bytes_up_per_client"] for r in rounds),
        "failed_client_rounds": sum(r.get("failed_clients", 0) for r in rounds),
    }


def _mean(values: Any) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def partition_words(p: PartitionConfig) -> str:
    """The partition in a few words: ``dirichlet α=0.1``, ``pathological #C=2``, ``iid`` ..."""
    details = {
        "dirichlet": f"α={p.alpha:g}",
        "pathological": f"#C={p.classes_per_client}",
        "shards": f"{p.shards_per_client} shards/client",
        "quantity": f"size α={p.quantity_alpha:g}",
    }
    words = f"{p.scheme} {details[p.scheme]}" if p.scheme in details else p.scheme
    return words + (f", long-tail IF={p.imbalance_factor:g}" if p.imbalance_factor > 1 else "")


def run_setting(config: Config) -> str:
    """A run's setting for plot titles: dataset, partition, clients, local epochs."""
    epochs = config.train.local_epochs
    return (
        f"{config.data.dataset}, {partition_words(config.partition)}, {config.partition.num_clients} clients, "
        f"{epochs} local epoch{'s' if epochs != 1 else ''}"
    )


def plot_accuracy(runs: dict[str, list[dict[str, Any]]], path: Path, title: str, setting: str = "") -> None:
    """Test accuracy vs round, one line per named run, written as a PNG (see :func:`accuracy_figure`)."""
    accuracy_figure(runs, title, setting).savefig(path)


def accuracy_figure(runs: dict[str, list[dict[str, Any]]], title: str, setting: str = "") -> Figure:
    """Test accuracy vs (integer) round, one line per named run; ``setting`` (see
    :func:`run_setting`) is the title's second line."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.0), dpi=120, layout="tight")
    ax = fig.subplots()
    for label, rounds in runs.items():
        points = [(r["round"], r["test_accuracy"]) for r in rounds if r.get("test_accuracy") is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}\n{setting}" if setting else title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig

"""Round-by-round progress: a live bar with ETA on a terminal, one line per round always."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def format_round(record: dict[str, Any], total: int) -> str:
    """``round 3/10  acc 54.21%  loss 1.234  train 1.502  4.1s  6 clients``."""
    parts = [f"round {record['round']}/{total}"]
    if record.get("test_accuracy") is not None:
        parts.append(f"acc {record['test_accuracy']:.2f}%  loss {record['test_loss']:.3f}")
    if record.get("val_accuracy") is not None:
        parts.append(f"val {record['val_accuracy']:.2f}%")
    if record.get("server_rsum") is not None:
        parts.append(f"server rsum {record['server_rsum']:.1f}")
    parts.append(f"train {record['train_loss']:.3f}")
    parts.append(f"{record['round_time_s']:.1f}s")
    clients = f"{record['clients']} clients"
    if record.get("failed_clients"):
        clients += f" ({record['failed_clients']} failed)"
    parts.append(clients)
    return "  ".join(parts)


class RoundReporter:
    """Context manager printing each finished round and the ETA of the rest."""

    def __init__(self, total_rounds: int, start_round: int, title: str, console: Console | None = None):
        self.total = total_rounds
        self.start = start_round
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn(f"[bold]{title}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rounds • ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,  # a log gets the round lines, not a bar
        )
        self.task = self.progress.add_task("rounds", total=total_rounds, completed=start_round - 1)
        self.times: list[float] = []

    def __enter__(self) -> RoundReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def round_done(self, record: dict[str, Any]) -> None:
        self.times.append(record["round_time_s"])
        remaining = self.total - record["round"]
        eta = sum(self.times) / len(self.times) * remaining
        line = format_round(record, self.total)
        self.progress.console.print(f"{line}  ETA {_clock(eta)}" if remaining else line, soft_wrap=True)
        self.progress.advance(self.task)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"

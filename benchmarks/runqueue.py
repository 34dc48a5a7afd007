"""A benchmark table as a queue of named rows, each one `semanticfl run` (shared by the table scripts).

A row's run lives in ``OUT/NAME-<timestamp>/``. A finished row (``summary.json`` says ``complete``, or the
committed results file already holds it) is skipped; an interrupted one with a checkpoint is continued with
``semanticfl run --resume`` (exact); any other is started afresh. So a long table can be stopped at any moment
and the same command continues it, also in a fresh clone where ``OUT`` (git-ignored) is empty.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path


def parse_row(name: str, settings: Collection[str], methods: Collection[str]) -> tuple[str, str, int]:
    """``SETTING-METHOD-sSEED`` → (setting, method, seed); an unknown name stops the script in one line."""
    parts = name.split("-")
    if len(parts) != 3 or parts[0] not in settings or parts[1] not in methods or not parts[2][1:].isdigit():
        sys.exit(f"unknown row {name!r}: SETTING-METHOD-sSEED with SETTING in {list(settings)}, "
                 f"METHOD in {list(methods)}")
    return parts[0], parts[1], int(parts[2][1:])


def queue_arguments(doc: str | None, table_help: str) -> argparse.Namespace:
    """A table script's command line: the rows to run (none: its default queue) and ``--table``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="*")
    parser.add_argument("--table", action="store_true", help=table_help)
    return parser.parse_args()


def latest_run_dir(out: Path, name: str) -> Path | None:
    """The newest run folder of row ``name`` under ``out``, if any."""
    found = sorted(out.glob(f"{name}-2*/"))
    return found[-1] if found else None


def read_summary(folder: Path | None) -> dict | None:
    path = folder / "summary.json" if folder else None
    return json.loads(path.read_text()) if path and path.exists() else None


def run_row(out: Path, name: str, config: str, overrides: Sequence[str], prefix: Sequence[str] = ()) -> None:
    """Run row ``name`` (``semanticfl run CONFIG OVERRIDES``) unless finished; continue it if interrupted.

    ``prefix`` goes before the command (e.g. ``["taskset", "-c", "0"]``)."""
    folder = latest_run_dir(out, name)
    summary = read_summary(folder)
    if summary and summary.get("complete"):
        return
    if folder and any((folder / "checkpoints").glob("*")):
        command = ["semanticfl", "run", "--resume", str(folder)]
    else:
        command = ["semanticfl", "run", config, f"experiment.name={name}", f"experiment.output_dir={out}", *overrides]
    print("+", " ".join(command), flush=True)
    subprocess.run([*prefix, *command], check=True)


def run_queue(names: Sequence[str], check: Callable[[str], object], run_one: Callable[[str], None],
              write_results: Callable[[], None], recorded: Callable[[str], bool]) -> None:
    """Check every row name first (a typo stops before anything runs), then run the rows in order and
    rewrite the results file after each one, so a finished row is on disk at once. A row the results file
    already holds (``recorded``) is skipped: the results file is committed, the run folders are not."""
    for name in names:
        check(name)
    for name in names:
        if recorded(name):
            print(f"= {name}: in the results file, skipped", flush=True)
            continue
        run_one(name)
        write_results()


def read_results(path: Path, empty: object) -> object:
    """The committed results file, or ``empty`` if there is none yet."""
    return json.loads(path.read_text()) if path.exists() else empty


def finished_runs(out: Path) -> Iterator[tuple[Path, dict]]:
    """(run folder, summary) of every complete run under ``out``, in folder order."""
    for path in sorted(out.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        if summary.get("complete"):
            yield path.parent, summary

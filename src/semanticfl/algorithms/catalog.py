"""The defaults-and-uploads table of docs/ALGORITHMS.md, rendered from the registry.

Each row is one registered algorithm: its ``name``, every field of its ``Params`` dataclass with its default
(TOML-style, as ``[algorithm.<name>]`` takes it: ``true``, ``"text"``, ``[a, b]``; runs of one repeated item as
``3× item``) and its ``uploads``. Nothing else of an algorithm is read.

    python -m semanticfl.algorithms.catalog                           # print the table
    python -m semanticfl.algorithms.catalog --write docs/ALGORITHMS.md  # replace it between the markers
    python -m semanticfl.algorithms.catalog --check docs/ALGORITHMS.md  # exit 1 when the docs are stale

``--write`` rewrites only the lines between :data:`START` and :data:`END`, atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from semanticfl.algorithms import ALGORITHMS
from semanticfl.algorithms.base import Algorithm
from semanticfl.errors import UserError
from semanticfl.files import atomic_write

START = "<!-- defaults-table:start -->"
END = "<!-- defaults-table:end -->"
REGENERATE = "python -m semanticfl.algorithms.catalog --write docs/ALGORITHMS.md"
HEADER = "| name | hyperparameters (defaults) | what leaves a client each round (`uploads`) |\n|---|---|---|"
NONE = "—"


def _escape(text: str) -> str:
    """Make ``text`` safe inside a Markdown table cell (no HTML tags, no column breaks, one line)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return " ".join(text.splitlines())


def _format_float(value: float) -> str:
    text = repr(value)  # shortest round-trip form: 0.01, 1.0, 1e-05
    mantissa, e, exponent = text.partition("e")
    if e:  # 1e-05 -> 1e-5 (TOML takes both)
        sign = "-" if exponent.startswith("-") else ""
        text = f"{mantissa}e{sign}{int(exponent.lstrip('+-'))}"
    return text


def _runs(items: Sequence[Any]) -> Iterable[tuple[int, Any]]:
    """Consecutive equal items as (count, item)."""
    count = 0
    for index, item in enumerate(items):
        count += 1
        if index + 1 == len(items) or items[index + 1] != item or type(items[index + 1]) is not type(item):
            yield count, item
            count = 0


def format_value(value: Any) -> str:
    """One default as the docs write it (TOML-style; unknown objects by ``str``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _format_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (tuple, list)):
        parts = [
            format_value(item) if count == 1 else f"{count}× {format_value(item)}"
            for count, item in _runs(value)
        ]
        return "[" + ", ".join(parts) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key} = {format_value(item)}" for key, item in value.items()) + "}"
    if value is None:
        return "none"
    return str(value)


def params_defaults(params: type) -> list[str]:
    """``field=default`` for every init field of a ``Params`` dataclass, in field order."""
    if not dataclasses.is_dataclass(params):
        raise TypeError(f"{params!r} is not a dataclass")
    entries = []
    for field in dataclasses.fields(params):
        if not field.init:
            continue
        if field.default is not dataclasses.MISSING:
            entries.append(f"{field.name}={format_value(field.default)}")
        elif field.default_factory is not dataclasses.MISSING:
            entries.append(f"{field.name}={format_value(field.default_factory())}")
        else:
            entries.append(f"{field.name} (required)")
    return entries


def render_row(algorithm: type[Algorithm]) -> str:
    """One table row: ``| `name` | field=default, … | upload, … |``."""
    defaults = params_defaults(algorithm.Params)
    uploads = list(algorithm.uploads)
    return (
        f"| `{algorithm.name}` | {_escape(', '.join(defaults)) if defaults else NONE} | "
        f"{_escape(', '.join(uploads)) if uploads else NONE} |"
    )


def render_table(algorithms: Mapping[str, type[Algorithm]] = ALGORITHMS) -> str:
    """The whole table (header and one row per algorithm, registry order), no trailing newline."""
    return "\n".join([HEADER, *(render_row(cls) for cls in algorithms.values())])


def _marker_lines(lines: list[str], source: str) -> tuple[int, int]:
    starts = [i for i, line in enumerate(lines) if line.strip() == START]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise UserError(
            f"{source}: expected one line {START!r} followed by one line {END!r} around the defaults table "
            f"(found {len(starts)} start and {len(ends)} end markers)"
        )
    return starts[0], ends[0]


def extract_table(text: str, source: str = "the document") -> str:
    """The text between the markers (without them), as :func:`render_table` writes it."""
    lines = text.splitlines()
    start, end = _marker_lines(lines, source)
    return "\n".join(lines[start + 1 : end])


def replace_table(text: str, table: str, source: str = "the document") -> str:
    """``text`` with the lines between the markers replaced by ``table``; everything else kept byte for byte."""
    lines = text.splitlines(keepends=True)
    start, end = _marker_lines([line.rstrip("\r\n") for line in lines], source)
    newline = "\r\n" if lines[start].endswith("\r\n") else "\n"
    body = "".join(line + newline for line in table.splitlines())
    return "".join(lines[: start + 1]) + body + "".join(lines[end:])


def write_docs(path: str | os.PathLike, table: str | None = None) -> bool:
    """Replace the table in ``path`` in place (atomically, keeping the file's mode); True if it changed."""
    path = Path(path)
    old = path.read_text(encoding="utf-8")
    new = replace_table(old, render_table() if table is None else table, str(path))
    if new == old:
        return False
    mode = path.stat().st_mode & 0o7777

    def write(handle) -> None:
        os.fchmod(handle.fileno(), mode)
        handle.write(new.encode("utf-8"))

    atomic_write(path, write)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m semanticfl.algorithms.catalog",
        description="Print docs/ALGORITHMS.md's defaults-and-uploads table, rendered from the algorithm registry.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="FILE", help=f"replace the table between {START} and {END} in FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 if FILE's table differs from the rendered one")
    args = parser.parse_args(argv)
    try:
        if args.write:
            changed = write_docs(args.write)
            print(f"{args.write}: {'table rewritten' if changed else 'table already up to date'}")
        elif args.check:
            current = extract_table(Path(args.check).read_text(encoding="utf-8"), args.check)
            if current != render_table():
                print(f"{args.check}: the defaults table is stale; run: {REGENERATE}", file=sys.stderr)
                return 1
            print(f"{args.check}: the defaults table is up to date")
        else:
            print(render_table())
    except (UserError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""docs/ALGORITHMS.md's defaults-and-uploads table is the one rendered from the registry's ``Params`` and
``uploads`` (semanticfl.algorithms.catalog), and the renderer writes what a known algorithm declares."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import ClassVar

import pytest

from semanticfl.algorithms import ALGORITHMS
from semanticfl.algorithms.base import Algorithm
from semanticfl.algorithms.catalog import (
    END,
    REGENERATE,
    START,
    extract_table,
    format_value,
    main,
    render_row,
    render_table,
    replace_table,
    write_docs,
)
from semanticfl.errors import UserError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "ALGORITHMS.md"


def test_docs_table_is_the_rendered_one():
    documented = extract_table(DOCS.read_text(encoding="utf-8"), str(DOCS))
    rendered = render_table()
    if documented != rendered:
        old, new = set(documented.splitlines()), set(rendered.splitlines())
        stale = "\n".join(f"  docs:     {line}" for line in sorted(old - new))
        fresh = "\n".join(f"  rendered: {line}" for line in sorted(new - old))
        pytest.fail(
            f"docs/ALGORITHMS.md's defaults table differs from the algorithms' Params/uploads; "
            f"regenerate it with:\n    {REGENERATE}\n{stale}\n{fresh}"
        )


def test_every_registered_algorithm_has_a_row_and_a_notes_row():
    text = DOCS.read_text(encoding="utf-8")
    table = extract_table(text)
    outside = text.replace(table, "")
    for name in ALGORITHMS:
        assert table.count(f"| `{name}` |") == 1, name
        assert f"| `{name}` |" in outside, (
            f"{name} has no row in the paper-and-notes table of docs/ALGORITHMS.md"
        )


def test_known_rows():
    assert render_row(ALGORITHMS["fedprox"]) == "| `fedprox` | mu=0.01 | model |"
    assert render_row(ALGORITHMS["fedavg"]) == "| `fedavg` | — | model |"
    assert render_row(ALGORITHMS["scaffold"]) == (
        '| `scaffold` | global_lr=1.0, model_weighting="uniform", momentum_aware=true | model, control-variate delta |'
    )


def test_a_made_up_algorithm_row():
    @dataclasses.dataclass(frozen=True)
    class Params:
        rate: float = 1e-5
        on: bool = False
        names: tuple[str, ...] = ("a", "a", "a", "b")
        pipe: str = "x|<y>"
        table: dict = dataclasses.field(default_factory=lambda: {"k": 2})
        hidden: int = dataclasses.field(default=3, init=False)

    class MadeUp(Algorithm):
        name = "madeup"
        uploads: ClassVar[tuple[str, ...]] = ("model", "a histogram")

    MadeUp.Params = Params
    assert render_row(MadeUp) == (
        '| `madeup` | rate=1e-5, on=false, names=[3× "a", "b"], pipe="x\\|&lt;y&gt;", table={k = 2} '
        "| model, a histogram |"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.01, "0.01"),
        (1.0, "1.0"),
        (1e-05, "1e-5"),
        (2.5e20, "2.5e20"),
        (300, "300"),
        (True, "true"),
        ("auto", '"auto"'),
        ((), "[]"),
        ([1, 1.0, True], "[1, 1.0, true]"),
    ],
)
def test_format_value(value, text):
    assert format_value(value) == text


def test_replace_table_keeps_everything_else(tmp_path):
    text = f"# T\n\nprose\n{START}\nold | table\n{END}\nmore prose\n"
    assert replace_table(text, "| a |\n| b |") == f"# T\n\nprose\n{START}\n| a |\n| b |\n{END}\nmore prose\n"
    path = tmp_path / "doc.md"
    path.write_text(text)
    os.chmod(path, 0o644)
    assert write_docs(path) is True
    assert extract_table(path.read_text()) == render_table()
    assert path.read_text().startswith("# T\n\nprose\n") and path.read_text().endswith(f"{END}\nmore prose\n")
    assert path.stat().st_mode & 0o777 == 0o644
    assert write_docs(path) is False
    assert main(["--check", str(path)]) == 0
    path.write_text(text)
    assert main(["--check", str(path)]) == 1


@pytest.mark.parametrize("text", ["no markers\n", f"{END}\n{START}\n", f"{START}\n{START}\n{END}\n"])
def test_missing_or_broken_markers_are_refused(text):
    with pytest.raises(UserError, match="defaults-table"):
        extract_table(text)
    with pytest.raises(UserError):
        replace_table(text, "| a |")

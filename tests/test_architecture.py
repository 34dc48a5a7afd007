"""The one-way stairs of docs/ARCHITECTURE.md, checked by import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    command = shutil.which("lint-imports")
    assert command, "import-linter is missing: pip install -e '.[test]'"
    return subprocess.run([command, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_every_import_runs_down_the_stairs():
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def test_an_import_up_the_stairs_breaks_the_contract(tmp_path):
    """The contracts can fail: a copy of the package where data/ imports the engine is refused."""
    package = tmp_path / "semanticfl"
    shutil.copytree(ROOT / "src" / "semanticfl", package, ignore=shutil.ignore_patterns("weights", "__pycache__"))
    (package / "data" / "upward.py").write_text("from semanticfl.engine import server  # noqa: F401\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    command = shutil.which("lint-imports")
    result = subprocess.run(
        [command], cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tmp_path)}
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "semanticfl.data.upward -> semanticfl.engine.server" in result.stdout

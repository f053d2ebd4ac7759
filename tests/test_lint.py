"""ruff and mypy over the code, as `make lint` runs them: part of the suite, so a lint or
type error cannot land through CI (a lint error did on 2026-12-07: a long docstring line).
mypy without its cache takes about 9 s here (2026-12-07), so it runs cold, in a cache
directory of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing() -> None:
    # The whole tree, as `make lint`: pyproject.toml's exclusions and .gitignore (the venvs)
    # say what is left out, so a new folder is checked without being listed here.
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert "All checks passed" in done.stdout


def test_mypy_finds_nothing(tmp_path: Path) -> None:
    # The packages `make lint` checks, with the settings in pyproject.toml; a fresh cache so
    # that a stale one cannot hide an error.
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy"), "training",
         "service", "clients/python/aecluster_client"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout

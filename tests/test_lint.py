"""ruff over the code, as `make lint` runs it: part of the suite, so a lint error cannot land
through CI (one did on 2026-12-07: a long docstring line). mypy stays in `make lint` only: a
run without its cache takes minutes of the suite's 15."""

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

"""Fixtures of the integration tests: the real server process."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.server import Server, start_server

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def digits_server(tmp_path: Path, model_repo: Path) -> Iterator[Server]:
    """``python -m service`` with its default settings, serving the digits bundle; stopped
    with SIGTERM after the test."""
    started = start_server(sys.executable, model_repo, tmp_path, REPO_ROOT)
    yield started
    started.proc.terminate()
    started.proc.wait(timeout=60)

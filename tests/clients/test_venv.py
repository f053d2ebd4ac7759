"""The V2 clients' venv (tests/clients/venv.py) fails loudly: a lock that cannot be installed
is a ClientVenvError naming the step and pip's complaint, never a skipped test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients.venv import ClientVenvError, ensure_client_venv


def test_a_lock_that_cannot_be_installed_is_an_error(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.txt"
    lock.write_text("this is not a requirement !!!\n")
    with pytest.raises(ClientVenvError, match=r"could not be built: `.*pip install") as raised:
        ensure_client_venv(venv=tmp_path / "venv", lock=lock)
    assert "this is not a requirement" in str(raised.value)  # pip's own message


def test_a_missing_interpreter_is_an_error(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.txt"
    lock.write_text("")
    with pytest.raises(ClientVenvError, match="could not be built"):
        ensure_client_venv(str(tmp_path / "no-python"), venv=tmp_path / "venv", lock=lock)

"""write_text_atomic: whole files or the old file, never half of one, no temporaries left."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.files import write_text_atomic


def test_writes_then_replaces_without_leaving_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "table.md"
    assert write_text_atomic(target, "first\n") == target
    write_text_atomic(target, "second ✓\n")
    assert target.read_text(encoding="utf-8") == "second ✓\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "table.md"
    write_text_atomic(target, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, "bad \udc80 surrogate")  # not encodable as UTF-8
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]

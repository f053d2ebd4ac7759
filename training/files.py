"""Small file helpers shared by the training tools."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` through a temporary file in the same folder, then rename it into place.

    A reader (or an interrupted run) never sees half a file: the rename is atomic on POSIX.
    The temporary name carries the process id so concurrent writers do not collide.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

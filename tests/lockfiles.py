"""Reading the project's locks, requirements/*.txt as `uv pip compile --generate-hashes`
writes them (scripts/lock.py): shared by the dependency and the Dockerfile tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: frozenset[str]
    via: tuple[str, ...]  # uv's annotation: what requires it ("aecluster (pyproject.toml)", ...)


def read_lock(path: Path) -> dict[str, Pin]:
    """{canonical name: Pin} of a `uv pip compile --generate-hashes` lock file."""
    pins: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    in_via = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)", line):
            current = {"version": match[2], "hashes": set(), "via": []}
            pins[canonicalize_name(match[1])] = current
            in_via = False
            continue
        text = line.strip().rstrip("\\").strip()
        if not line.startswith(" "):  # the header's comments; anything else is not a pin
            assert not text or text.startswith("#"), f"{path.name}: {line!r} is not an exact pin"
            continue
        assert current is not None, f"{path.name}: {line!r} belongs to no pin"
        if text.startswith("--hash="):
            current["hashes"].add(text.removeprefix("--hash="))
        elif text == "# via":
            in_via = True
        elif text.startswith("# via "):
            current["via"].append(text.removeprefix("# via ").strip())
            in_via = False
        elif in_via and text.startswith("#"):
            current["via"].append(text.lstrip("#").strip())
    return {name: Pin(p["version"], frozenset(p["hashes"]), tuple(p["via"]))
            for name, p in pins.items()}

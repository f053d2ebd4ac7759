"""A pytest plugin (``-p tests.service.chunked_everywhere``): every JSON body, however
small, is parsed, converted and freed in pieces of a few bytes (service/chunked.py), so
that the REST suites run through that path and must answer exactly as before. The summary
line says how many bodies were parsed in pieces and how many were left to the whole-body
parser (malformed ones, NaN literals, bodies without an array)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from service import chunked
from service.rest import encoding

SEEN: Counter[str] = Counter()
_loads_in_chunks = chunked.loads_in_chunks


def _counted(body: bytes) -> Any | None:
    parsed = _loads_in_chunks(body)
    SEEN["in pieces" if parsed is not None else "whole"] += 1
    return parsed


@pytest.fixture(autouse=True)
def _every_body_in_pieces(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(encoding, "CHUNKED_PARSE_BYTES", 0)
    monkeypatch.setattr(chunked, "PIECE_BYTES", 32)
    monkeypatch.setattr(chunked, "SLICE_NUMBERS", 3)
    monkeypatch.setattr(chunked, "FREE_NUMBERS", 2)
    monkeypatch.setattr(chunked, "loads_in_chunks", _counted)
    yield


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"chunked bodies: {SEEN['in pieces']} in pieces, "
                                f"{SEEN['whole']} whole")

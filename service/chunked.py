"""Large JSON bodies parsed and converted in pieces, so the event loop keeps running.

The service parses a large body on a worker thread, but orjson and NumPy hold the GIL for
each call: one ``orjson.loads`` of a 30 MB body of nested numbers held it for more than a
second, and ``np.asarray`` of the parsed lists, and freeing them, for a few hundred
milliseconds more. Every other request (health checks included) waited that long. Python
hands the GIL to a waiting thread between bytecodes, so the remedy is many short calls
instead of one long one:

- :func:`loads_in_chunks` finds the body's largest array with a few vectorised passes over
  its bytes, parses its elements in pieces of about :data:`PIECE_BYTES` and the rest of the
  document on its own, and puts the pieces together;
- :func:`asarray_in_slices` converts a long list slice by slice;
- :func:`release` empties long lists slice by slice, so that freeing them is short too;
- :func:`collector_paused` keeps the cyclic garbage collector from running meanwhile.
  Parsing makes millions of lists, and each collection the allocations trigger walks all of
  them in one call: with the collector on, the 30 MB parse took 1,250 ms, 316 ms without.
  Nothing the parse makes is a cycle, and :func:`release` frees it by reference counting.

Each gives exactly what the one-call version gives, or hands the work to it: a body the
pieces cannot be parsed from (malformed JSON, NaN literals, deep nesting) is parsed whole
by the caller, so its error message, which names a line and column of the whole body, is
the same as before. Measured figures: docs/serving.md.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson

# Elements parsed per orjson call: about 10 ms of work on the 2-core machine of the docs.
PIECE_BYTES = 256 * 1024
# Numbers per slice when a list is converted, and when one is freed: a few milliseconds
# each on the 2-core machine of the docs.
SLICE_NUMBERS = 32_768
FREE_NUMBERS = 131_072
# Deeper documents are left to the whole-body parser (orjson and the standard library
# refuse some deep documents that pieces of them would not): image requests nest about 6.
MAX_DEPTH = 64
# The array split is looked for this deep at most (V2's "data" is at 4, TF Serving's and
# the native "instances" at 2): each level is a few passes over the brackets, and a
# hostile body nested 64 deep would otherwise cost 64 rounds of them.
MAX_SPLIT_LEVEL = 8

_QUOTE, _BACKSLASH, _COMMA, _OPEN_ARRAY = ord('"'), ord("\\"), ord(","), ord("[")
# Per byte value: +1 opens, -1 closes a bracket, 0 for a comma; what is not structural is
# left out by _IS_STRUCTURAL (a 256-entry lookup is ~25 times faster than np.isin here).
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_IS_STRUCTURAL = np.zeros(256, dtype=bool)
_IS_STRUCTURAL[[ord("["), ord("{"), ord("]"), ord("}"), _COMMA]] = True


def loads_in_chunks(body: bytes) -> Any | None:
    """``orjson.loads(body)``, parsed in pieces; None when the caller must parse it whole.

    None for a body orjson would refuse, or one whose structure this does not split (no
    array long enough to be worth it, nesting past :data:`MAX_DEPTH`).
    """
    found = _largest_array(body)
    if found is None:
        return None
    start, end, pieces = found
    marker = f"aecluster-split-{secrets.token_hex(16)}"
    try:
        # The document with the array replaced by a marker string, then the array's
        # elements, piece by piece: pieces lie between commas that separate two elements.
        skeleton = orjson.loads(b"".join([body[:start], b'"', marker.encode(), b'"',
                                          body[end + 1:]]))
        elements: list[Any] = []
        for first, last in pieces:
            elements.extend(orjson.loads(b"".join([b"[", body[first:last], b"]"])))
    except orjson.JSONDecodeError:
        return None
    return _replace_marker(skeleton, marker, elements)


def _largest_array(body: bytes) -> tuple[int, int, list[tuple[int, int]]] | None:
    """The largest array's bracket offsets in ``body`` and the (start, stop) offsets of
    pieces of its elements, split at commas between two of them (commas left out)."""
    raw = np.frombuffer(body, dtype=np.uint8)
    if raw.size < 2 * PIECE_BYTES:
        return None
    # Quotes preceded by an odd run of backslashes are escaped; the others open and close
    # strings, and brackets and commas between them are text.
    quotes = np.flatnonzero(raw == _QUOTE)
    backslashes = raw == _BACKSLASH
    if backslashes.any():
        last_plain = np.maximum.accumulate(np.where(backslashes, -1, np.arange(raw.size)))
        before = quotes - 1
        run = np.where(before >= 0, before - last_plain[np.maximum(before, 0)], 0)
        quotes = quotes[run % 2 == 0]
    if quotes.size % 2:
        return None  # an unterminated string: malformed, parsed whole for its message
    structural = np.flatnonzero(_IS_STRUCTURAL[raw])
    structural = structural[np.searchsorted(quotes, structural) % 2 == 0]
    chars = raw[structural]
    step = _STEP[chars]
    depth = np.cumsum(step, dtype=np.int32)  # after each character
    if depth.size == 0 or depth.min() < 0 or depth[-1] != 0 or depth.max() > MAX_DEPTH:
        return None
    opens, closes = np.flatnonzero(step == 1), np.flatnonzero(step == -1)
    open_depth, close_depth = depth[opens], depth[closes] + 1
    commas = np.flatnonzero(step == 0)
    comma_depth = depth[commas]
    best: tuple[int, int, int] | None = None  # (span, open index, close index)
    for level in range(1, min(int(depth.max()), MAX_SPLIT_LEVEL) + 1):
        # At one depth, brackets alternate open, close, open...: in position order the
        # k-th open at this depth is closed by the k-th close back below it.
        level_opens, level_closes = opens[open_depth == level], closes[close_depth == level]
        if level_opens.size != level_closes.size:
            return None
        arrays = chars[level_opens] == _OPEN_ARRAY
        level_opens, level_closes = level_opens[arrays], level_closes[arrays]
        if level_opens.size == 0:
            continue
        # Elements per array: its commas at this depth, plus one.
        level_commas = commas[comma_depth == level]
        elements = 1 + (np.searchsorted(level_commas, level_closes)
                        - np.searchsorted(level_commas, level_opens))
        spans = structural[level_closes] - structural[level_opens]
        # A piece holds at least one element, so only an array of small elements (at most
        # a piece's size, or a 64th of the array, on average) splits into short calls; an
        # array of a few large ones (a V2 "inputs") is looked into instead.
        small = (elements >= 2) & (spans <= elements * np.maximum(PIECE_BYTES, spans // 64))
        if small.any():
            widest = int(np.argmax(np.where(small, spans, -1)))
            if best is None or spans[widest] > best[0]:
                best = (int(spans[widest]), int(level_opens[widest]), int(level_closes[widest]))
        if best is not None and 2 * best[0] > raw.size:
            break  # no deeper array can be larger
    if best is None or best[0] < 2 * PIECE_BYTES:
        return None
    _, first, last = best
    level = depth[first]
    inside = slice(first + 1, last)
    commas = structural[inside][(chars[inside] == _COMMA) & (depth[inside] == level)]
    start, end = int(structural[first]), int(structural[last])
    if commas.size == 0:
        return None
    cut = np.unique(np.searchsorted(commas, np.arange(start + PIECE_BYTES, end, PIECE_BYTES))
                    .clip(0, commas.size - 1))
    bounds = [start, *(int(commas[i]) for i in cut), end]
    return start, end, [(a + 1, b) for a, b in itertools.pairwise(bounds)]


def _replace_marker(value: Any, marker: str, elements: list[Any]) -> Any | None:
    """``value`` with the one occurrence of ``marker`` replaced by ``elements``."""
    found = 0

    def walk(item: Any) -> Any:
        nonlocal found
        if isinstance(item, str) and item == marker:
            found += 1
            return elements
        if isinstance(item, list):
            return [walk(child) for child in item]
        if isinstance(item, dict):
            return {key: walk(child) for key, child in item.items()}
        return item

    replaced = walk(value)
    return replaced if found == 1 else None


def asarray_in_slices(value: Any, dtype: Any = None) -> np.ndarray:
    """``np.asarray(value, dtype)``, converted slice by slice when ``value`` is a long list.

    The slices are joined only when each is an array of int64 or float64 numbers (or of
    ``dtype``) with the same trailing shape, where joining gives what converting the whole
    list gives (ints among floats become floats either way). Anything else (ragged nesting,
    booleans, strings, numbers past int64) is converted whole, so the result and any error
    are exactly the whole conversion's.
    """
    if not isinstance(value, list) or len(value) < 2:
        return np.asarray(value, dtype=dtype)
    # A few list lookups: this runs for every JSON image, so it must cost next to nothing
    # when the list is small.
    step = max(1, SLICE_NUMBERS // _numbers_per_item(value))
    if len(value) <= step:
        return np.asarray(value, dtype=dtype)
    try:
        parts = [np.asarray(value[i:i + step], dtype=dtype) for i in range(0, len(value), step)]
    except (ValueError, TypeError, OverflowError):
        return np.asarray(value, dtype=dtype)
    wanted = {np.dtype(dtype)} if dtype is not None else {np.dtype(np.int64),
                                                          np.dtype(np.float64)}
    if len({part.shape[1:] for part in parts}) != 1 or not {p.dtype for p in parts} <= wanted:
        return np.asarray(value, dtype=dtype)
    return np.concatenate(parts)


def release(value: Any) -> None:
    """Empty the large lists in ``value`` slice by slice, so that freeing them is short.

    Lists of up to :data:`FREE_NUMBERS` numbers are left to be freed at once (about 5 ms);
    walking into them would cost more than it saves.
    """
    if isinstance(value, dict):
        for child in value.values():
            release(child)
        return
    if not isinstance(value, list) or not value:
        return
    if isinstance(value[0], dict):  # V2's inputs: a few objects that hold the data
        for child in value:
            release(child)
        return
    numbers = _numbers_per_item(value)
    if len(value) * numbers <= FREE_NUMBERS:
        return
    if len(value) == 1:
        release(value[0])
        return
    step = max(1, FREE_NUMBERS // numbers)
    while value:  # each slice frees its elements, nested lists included
        del value[-step:]


def _numbers_per_item(value: list[Any]) -> int:
    """Numbers in each element of a nested list, read along the first elements."""
    numbers, first = 1, value[0]
    while isinstance(first, list) and first:
        numbers *= len(first)
        first = first[0]
    return numbers


_paused_lock = threading.Lock()
_paused_count = 0
_paused_enabled = False  # whether the collector was on when the first pause began


@contextlib.contextmanager
def collector_paused(pause: bool = True) -> Iterator[None]:
    """No cyclic garbage collection inside the block (when ``pause``); nested and
    concurrent blocks are counted, and the collector comes back on when the last one ends,
    if it was on before the first began."""
    global _paused_count, _paused_enabled
    if not pause:
        yield
        return
    with _paused_lock:
        if _paused_count == 0:
            _paused_enabled = gc.isenabled()
            gc.disable()
        _paused_count += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused_count -= 1
            if _paused_count == 0 and _paused_enabled:
                gc.enable()

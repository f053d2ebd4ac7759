"""Large JSON bodies in pieces (service/chunked.py): the same documents, arrays and errors as
the one-call versions, and the REST suites unchanged with every body parsed in pieces.

How much the pieces keep the event loop running is measured against a real server in
tests/integration/test_hostile_inputs.py."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.datasets import load_digits

from service import chunked
from service.rest import encoding
from tests.service.stacks import in_process

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)

DOCUMENTS: dict[str, Any] = {
    "row format": {"signature_name": "serving_default",
                   "instances": RNG.random((300, 8, 8, 1)).round(6).tolist()},
    "columnar, named": {"inputs": {"images": RNG.integers(0, 256, (200, 8, 8)).tolist()}},
    "V2, two inputs": {"id": "r-1", "inputs": [
        {"name": "images", "datatype": "FP32", "shape": [100, 64],
         "data": RNG.random(6400).tolist()},
        {"name": "other", "datatype": "INT64", "shape": [3], "data": [1, 2, 3]}],
        "outputs": [{"name": "cluster_id"}]},
    "text with brackets, commas, quotes and backslashes": {
        "note": 'a "quoted" [,] {,} \\ \\" \\\\',
        "instances": [{"b64": "QUJD" * 8, "tag": f'x"],[{i}\\'} for i in range(200)]},
    "unicode": {"names": ["é", "漢字", "\u2028", "😀"] * 100, "n": None},
    "top-level array": [[1.5, -2, True, None, "s"]] * 300,
    "array deep in objects": {"a": {"b": {"c": [{"d": [i, i + 0.5]} for i in range(400)]}},
                              "z": [1, 2]},
    "numbers of every form": {"x": [0, -0, 1e-7, -1.5e300, 12345678901234567, 3.0] * 200},
}


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of 64 bytes, so that test documents of a few kB split into many."""
    monkeypatch.setattr(chunked, "PIECE_BYTES", 64)


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_pieces_give_the_same_document(name: str, small_pieces: None) -> None:
    for body in (json.dumps(DOCUMENTS[name]).encode(),
                 json.dumps(DOCUMENTS[name], indent=2, ensure_ascii=False).encode()):
        parsed = chunked.loads_in_chunks(body)
        assert parsed is not None, name
        assert parsed == orjson.loads(body)
        assert json.dumps(parsed) == json.dumps(orjson.loads(body))  # types too (1 vs 1.0)


def test_a_large_body_splits_at_the_default_piece_size() -> None:
    body = json.dumps({"instances": RNG.random((400, 28, 28, 1)).tolist()}).encode()
    assert len(body) > 4 * chunked.PIECE_BYTES
    assert chunked.loads_in_chunks(body) == orjson.loads(body)


@pytest.mark.parametrize("body", [
    b'{"instances": [' + b"1," * 200 + b"]}",  # a trailing comma
    b'{"instances": [' + b"1,," * 100 + b"2]}",  # an empty element
    b'{"instances": [' + b"1," * 200 + b"2]",  # unbalanced
    b'{"instances": [' + b"1," * 200 + b"2]}}",  # unbalanced the other way
    b'{"instances": [' + b"NaN," * 100 + b"2]}",  # literals orjson refuses
    b'{"instances": [' + b'"\xff",' * 100 + b"2]}",  # not UTF-8
    b'{"a": "' + b"x" * 500 + b', "b": [1, 2]}',  # an unterminated string
    b'{"a": [' + b"1, " * 300 + b"2]} trailing",  # text after the document
    b'{"a": ' + b"[" * 70 + b"1, 2" + b"]" * 70 + b"}",  # past MAX_DEPTH
    b"[" * 9 + b"1, " * 300 + b"2" + b"]" * 9,  # the only long array past MAX_SPLIT_LEVEL
    b'{"a": "' + b"x" * 500 + b'"}',  # no array at all
    b'{"a": [' + b"{" + b'"k": 1, ' * 100 + b'"z": 0}]}',  # an array of one element
    b"  ",
])
def test_what_pieces_cannot_parse_is_left_to_the_whole_body_parser(
        body: bytes, small_pieces: None) -> None:
    assert chunked.loads_in_chunks(body) is None


def test_an_escaped_quote_does_not_end_a_string(small_pieces: None) -> None:
    # The brackets inside the string must not be counted: they would unbalance the array.
    body = json.dumps({"s": 'he said \\"[[[\\"', "a": list(range(300))}).encode()
    assert chunked.loads_in_chunks(body) == orjson.loads(body)


# ---- arrays -----------------------------------------------------------------------------


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "SLICE_NUMBERS", 10)


@pytest.mark.parametrize(("value", "dtype"), [
    (RNG.random((500, 4, 4)).tolist(), None),
    (RNG.integers(-5, 5, (500, 3)).tolist(), None),
    ([[1, 2]] * 200 + [[0.5, 2]] * 200, None),  # ints in some slices, floats in others
    (RNG.random(1000).tolist(), np.float32),
    (RNG.integers(0, 256, 1000).tolist(), np.uint8),
    ([[1, 2]] * 200 + [["3", "4.5"]] * 200, np.float32),  # numeric strings, as numpy reads
])
def test_slices_give_the_whole_conversion(value: list[Any], dtype: Any,
                                          small_slices: None) -> None:
    got, want = chunked.asarray_in_slices(value, dtype), np.asarray(value, dtype=dtype)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)


@pytest.mark.parametrize(("value", "dtype"), [
    ([[1, 2]] * 200 + [[True, False]] * 200, None),  # booleans in one slice only
    ([[1, 2]] * 200 + [["a", "b"]] * 200, None),  # strings
    ([[1, 2]] * 200 + [[2 ** 70, 1]] * 200, None),  # past int64: objects
    ([[1, 2]] * 200 + [[None, 1]] * 200, None),
])
def test_what_slices_would_change_is_converted_whole(value: list[Any], dtype: Any,
                                                     small_slices: None) -> None:
    got, want = chunked.asarray_in_slices(value, dtype), np.asarray(value, dtype=dtype)
    assert got.dtype == want.dtype
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize(("value", "dtype"), [
    ([[1, 2]] * 200 + [[1, 2, 3]] * 200, None),  # ragged across slices
    ([[1, 2]] * 200 + [[1, [2]]] * 200, None),  # ragged inside a slice
    ([1] * 300 + [300] * 300, np.uint8),  # out of range for the dtype
    ([1.0] * 300 + ["x"] * 300, np.float32),
])
def test_errors_are_the_whole_conversions(value: list[Any], dtype: Any,
                                          small_slices: None) -> None:
    with pytest.raises((ValueError, TypeError, OverflowError)) as whole:
        np.asarray(value, dtype=dtype)
    with pytest.raises(type(whole.value)) as sliced:
        chunked.asarray_in_slices(value, dtype)
    assert str(sliced.value) == str(whole.value)


def test_release_empties_large_lists_wherever_they_are(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "FREE_NUMBERS", 40)
    data = list(range(100))
    images = [[[0.5] * 4] * 4] * 10  # 160 numbers
    few = [1, 2, 3]
    document: dict[str, Any] = {"inputs": [{"name": "x", "data": data}], "instances": images,
                                "one": [list(range(50))], "few": few, "c": "x"}
    inner = document["one"][0]
    chunked.release(document)
    assert data == [] and images == [] and inner == []
    assert few == [1, 2, 3] and document["c"] == "x"  # small: freed at once, later


# ---- the collector ----------------------------------------------------------------------


def test_the_collector_is_paused_while_any_block_runs() -> None:
    assert gc.isenabled()
    entered, leave = threading.Event(), threading.Event()

    def other() -> None:
        with chunked.collector_paused():
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    assert entered.wait(10)
    with chunked.collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other block still runs
    leave.set()
    thread.join(10)
    assert gc.isenabled()
    with chunked.collector_paused(False):
        assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with chunked.collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


# ---- the REST routes, every body in pieces ----------------------------------------------

DIGITS = (load_digits().images[:40] / 16.0).round(4)[..., None]  # [40, 8, 8, 1], 12 kB of JSON
ROUTE_BODIES: dict[str, tuple[str, bytes]] = {
    "native, arrays": ("/v1/models/digits:cluster",
                       orjson.dumps({"instances": DIGITS.tolist()})),
    "native, with options": ("/v1/models/digits:cluster?return_embedding=true&top_k=2",
                             orjson.dumps({"instances": DIGITS[:10].tolist()})),
    "native, one image too many": ("/v1/models/digits:cluster",
                                   orjson.dumps({"instances": [DIGITS[0].tolist()] * 65})),
    "native, malformed": ("/v1/models/digits:cluster",
                          orjson.dumps({"instances": DIGITS.tolist()})[:-9]),
    "TF Serving, rows": ("/v1/models/digits:predict", orjson.dumps(
        {"signature_name": "serving_default", "instances": DIGITS.tolist()})),
    "TF Serving, columns": ("/v1/models/digits:predict",
                            orjson.dumps({"inputs": {"images": DIGITS.tolist()}})),
    "TF Serving, NaN": ("/v1/models/digits:predict", orjson.dumps(
        {"instances": DIGITS.tolist()}).replace(b"0.0]", b"NaN]", 1)),
    "TF Serving, ragged": ("/v1/models/digits:predict",
                           orjson.dumps({"instances": [*DIGITS.tolist(), [[0.5]]]})),
    "V2": ("/v2/models/digits/infer", orjson.dumps({"id": "r-1", "inputs": [
        {"name": "images", "datatype": "FP32", "shape": list(DIGITS.shape),
         "data": DIGITS.ravel().tolist()}]})),
    "V2, chosen outputs": ("/v2/models/digits/infer", orjson.dumps({"inputs": [
        {"name": "images", "datatype": "FP64", "shape": [10, 8, 8, 1],
         "data": DIGITS[:10].ravel().tolist()}], "outputs": [{"name": "cluster_id"}]})),
    "V2, short data": ("/v2/models/digits/infer", orjson.dumps({"inputs": [
        {"name": "images", "datatype": "FP32", "shape": list(DIGITS.shape),
         "data": DIGITS[1:].ravel().tolist()}]})),
}
# Parsed whole even when forced into pieces: the pieces cannot parse them, so the one-call
# parser gives its own error message.
PARSED_WHOLE = {"native, malformed", "TF Serving, NaN"}


async def _answers(model_repo: Path) -> dict[str, tuple[int, Any]]:
    answers: dict[str, tuple[int, Any]] = {}
    async with in_process(model_repo, max_batch_size=8, max_batch_delay_ms=2) as served, \
            served.client() as http:
        for name, (path, body) in ROUTE_BODIES.items():
            response = await http.post(path, content=body,
                                       headers={"Content-Type": "application/json"})
            answers[name] = (response.status_code, response.json())
    return answers


@pytest.mark.anyio
async def test_the_rest_routes_answer_alike_with_every_body_in_pieces(
        model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each JSON protocol's answers and error messages, with every body parsed, converted
    and freed in pieces of a few bytes, are the one-call path's (the whole REST suites run
    so in the slow test below)."""
    whole = await _answers(model_repo)
    in_pieces: list[bool] = []
    loads = chunked.loads_in_chunks

    def counted(body: bytes) -> Any | None:
        parsed = loads(body)
        in_pieces.append(parsed is not None)
        return parsed

    monkeypatch.setattr(encoding, "CHUNKED_PARSE_BYTES", 0)
    monkeypatch.setattr(chunked, "PIECE_BYTES", 512)  # 20-odd pieces of an image list
    monkeypatch.setattr(chunked, "SLICE_NUMBERS", 3)
    monkeypatch.setattr(chunked, "FREE_NUMBERS", 2)
    monkeypatch.setattr(chunked, "loads_in_chunks", counted)
    pieces = await _answers(model_repo)

    assert pieces == whole
    statuses = {name: status for name, (status, _) in whole.items()}
    assert sum(status == 200 for status in statuses.values()) == 6, statuses
    # Every well-formed body went through the pieces; malformed and NaN ones were parsed whole.
    assert dict(zip(ROUTE_BODIES, in_pieces, strict=True)) == {
        name: name not in PARSED_WHOLE for name in ROUTE_BODIES}


@pytest.mark.slow
def test_the_rest_suites_answer_alike_with_every_body_in_pieces() -> None:
    """The JSON protocols' test modules, with every body parsed, converted and freed in
    pieces of a few bytes (tests/service/chunked_everywhere.py): all their answers and
    error messages must be what the one-call path gives. Slow (about 60 s: the modules'
    servers and fixtures); the default run holds the routes to it above."""
    modules = ["test_rest.py", "test_rest_direct.py", "test_rest_oip.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.service.chunked_everywhere",
         "-p", "no:cacheprovider", *(f"tests/service/{name}" for name in modules)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = next(line for line in result.stdout.splitlines()
                   if line.startswith("chunked bodies:"))
    in_pieces = int(summary.split(":")[1].split()[0])
    assert in_pieces >= 50, summary

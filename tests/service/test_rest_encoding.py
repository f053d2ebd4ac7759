"""JSON in and out of the REST API: what callers read back, and the errors they get."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from service.errors import InvalidInput
from service.rest.encoding import dumps, parse_json


def test_numpy_values_are_written_as_json_numbers() -> None:
    image = np.random.default_rng(0).random((3, 3, 1), dtype=np.float32)
    document = json.loads(dumps({
        "contiguous": image,
        "strided": image[:, ::2, 0],  # not C-contiguous: goes through tolist
        "scalars": [np.int64(3), np.float32(0.5), np.bool_(True)],
        "ids": np.array([1, 2], np.int64),
    }))
    # float32 values read back as the very same float32 (no float64 noise, no loss).
    np.testing.assert_array_equal(np.asarray(document["contiguous"], np.float32), image)
    np.testing.assert_array_equal(np.asarray(document["strided"], np.float32),
                                  image[:, ::2, 0])
    assert document["scalars"] == [3, 0.5, True]
    assert document["ids"] == [1, 2]


def test_objects_json_cannot_hold_are_refused() -> None:
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        dumps({"x": object()})


def test_bodies_parse_fast_and_nan_literals_still_parse() -> None:
    assert parse_json(b'{"instances": [[0.5, 1]]}') == {"instances": [[0.5, 1]]}
    # TF Serving accepts these literals; orjson does not, the fallback does.
    value = parse_json(b'{"instances": [NaN, Infinity]}')
    assert math.isnan(value["instances"][0]) and value["instances"][1] == math.inf


@pytest.mark.parametrize(("body", "message"), [
    (b"", "the request body is empty"),
    (b"  \n", "the request body is empty"),
    (b'{"instances": [1, 2}', r"malformed JSON: Expecting ',' delimiter at line 1 column 20"),
    (b'{"a": 1}\n{"b": 2}', r"malformed JSON: Extra data at line 2 column 1"),
    (b'{"a": "\xc3\x28"}', "not UTF-8 encoded JSON: invalid continuation byte"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_malformed_bodies_say_what_and_where(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_json(body)

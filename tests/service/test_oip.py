"""The Open Inference Protocol values both transports share: datatypes, shapes, raw bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from service import oip
from service.errors import InvalidInput, PayloadTooLarge


@pytest.mark.parametrize("datatype", [d for d in oip.DATATYPES if d != "BYTES"])
def test_raw_bytes_round_trip_every_fixed_size_datatype(datatype: str) -> None:
    array = (np.arange(12) % 2).astype(oip.DATATYPES[datatype]).reshape(3, 4)
    raw = oip.to_raw(array)
    assert len(raw) == array.size * oip.DATATYPES[datatype].itemsize
    back = oip.from_raw(raw, datatype, (3, 4), "x")
    np.testing.assert_array_equal(back, array)
    assert oip.datatype_of(back) == datatype


def test_raw_layout_is_little_endian() -> None:
    assert oip.to_raw(np.array([1], np.int64)) == b"\x01" + bytes(7)
    assert oip.from_raw(b"\x00\x00\x80\x3f", "FP32", (1,), "x")[0] == 1.0


def test_bytes_elements_are_length_prefixed() -> None:
    items = [b"\x89PNG", b"", b"abc"]
    raw = b"".join(struct.pack("<I", len(i)) + i for i in items)
    assert oip.to_raw(np.array(items, dtype=object)) == raw
    assert oip.from_raw(raw, "BYTES", (3,), "x").tolist() == items
    assert oip.datatype_of(np.array(items, dtype=object)) == "BYTES"


@pytest.mark.parametrize(("raw", "shape", "message"), [
    (struct.pack("<I", 10) + b"abc", (1,), "declares 10 bytes"),
    (struct.pack("<I", 1) + b"a", (2,), "ends before element 1"),
    (struct.pack("<I", 1) + b"ab", (1,), "left after"),
])
def test_bad_raw_bytes_are_refused(raw: bytes, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        oip.from_raw(raw, "BYTES", shape, "x")


def test_raw_data_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(InvalidInput, match="needs 32"):
        oip.from_raw(bytes(31), "FP32", (2, 4), "x")


def test_values_flat_or_nested_fill_their_shape() -> None:
    flat = oip.from_values([1, 2, 3, 4], "INT64", (2, 2), "x")
    nested = oip.from_values([[1, 2], [3, 4]], "INT64", (2, 2), "x")
    np.testing.assert_array_equal(flat, nested)
    assert oip.from_values(["a", "b"], "BYTES", (2,), "x").tolist() == [b"a", b"b"]
    with pytest.raises(InvalidInput, match="3 values, but shape"):
        oip.from_values([1, 2, 3], "FP32", (2, 2), "x")
    with pytest.raises(InvalidInput, match="not an array of UINT8"):
        oip.from_values([300], "UINT8", (1,), "x")
    with pytest.raises(InvalidInput, match="not a string"):
        oip.from_values([1], "BYTES", (1,), "x")


def test_datatypes_and_shapes_are_checked() -> None:
    with pytest.raises(InvalidInput, match="not a V2 datatype"):
        oip.dtype_of("FLOAT", "x")
    with pytest.raises(InvalidInput, match="array of integers"):
        oip.check_shape([1.5], "x", max_images=4)
    with pytest.raises(InvalidInput, match="negative"):
        oip.check_shape([1, -1], "x", max_images=4)
    with pytest.raises(PayloadTooLarge, match="holds 5 images"):
        oip.check_shape([5, 8], "x", max_images=4)
    assert oip.check_shape([4, 8], "x", max_images=4) == (4, 8)


def test_model_versions() -> None:
    assert oip.model_version("") is None and oip.model_version("12") == 12
    for bad in ("0", "-1", "latest", "1.0", "٣"):
        with pytest.raises(InvalidInput):
            oip.model_version(bad)

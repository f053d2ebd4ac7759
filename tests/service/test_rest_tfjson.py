"""TensorFlow Serving's JSON formats on their own: the shapes TF Serving clients rely on."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from service.dataplane import SignatureInfo, TensorInfo
from service.errors import InvalidInput
from service.rest import tfjson
from service.rest.encoding import dumps

IMAGES = SignatureInfo({"images": TensorInfo("float32", (-1, 2, 2, 1))},
                       {"cluster_id": TensorInfo("int64", (-1,))})
BYTES = SignatureInfo({"image_bytes": TensorInfo("string", (-1,))},
                      {"cluster_id": TensorInfo("int64", (-1,))})
TWO_INPUTS = SignatureInfo({"a": TensorInfo("float32", (-1,)), "b": TensorInfo("int64", (-1,))},
                           {})


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def _sent(answer: dict[str, Any]) -> Any:
    """The answer as a caller reads it: encoded as the API sends it, parsed back."""
    return json.loads(dumps(answer))


def test_row_answers_follow_tf_serving() -> None:
    one = {"cluster_id": np.array([3, 1], dtype=np.int64)}
    assert _sent(tfjson.row_answer(one)) == {"predictions": [3, 1]}
    several = {"cluster_id": np.array([3, 1]), "is_outlier": np.array([True, False]),
               "embedding": np.array([[0.5, 1.0], [0.0, 2.0]], dtype=np.float32)}
    assert _sent(tfjson.row_answer(several)) == {"predictions": [
        {"cluster_id": 3, "is_outlier": True, "embedding": [0.5, 1.0]},
        {"cluster_id": 1, "is_outlier": False, "embedding": [0.0, 2.0]},
    ]}


def test_columnar_answers_follow_tf_serving() -> None:
    assert _sent(tfjson.columnar_answer({"distance": np.array([0.5], dtype=np.float32)})) == {
        "outputs": [0.5]}
    assert _sent(tfjson.columnar_answer({"cluster_id": np.array([3]),
                                         "is_outlier": np.array([False])})) == {
        "outputs": {"cluster_id": [3], "is_outlier": [False]}}


def test_rows_are_stacked_along_the_batch_dimension() -> None:
    image = [[[0.0], [0.5]], [[1.0], [0.25]]]
    unnamed = tfjson.row_inputs([image, image], "serving_default", IMAGES)
    named = tfjson.row_inputs([{"images": image}] * 2, "serving_default", IMAGES)
    for tensors in (unnamed, named):
        assert tensors["images"].shape == (2, 2, 2, 1)
        assert tensors["images"].dtype == np.float32
    both = tfjson.row_inputs([{"a": 0.5, "b": 1}, {"a": 1.5, "b": 2}], "s", TWO_INPUTS)
    assert both["a"].tolist() == [0.5, 1.5] and both["b"].dtype == np.int64
    with pytest.raises(InvalidInput, match="name them"):
        tfjson.row_inputs([0.5], "s", TWO_INPUTS)
    with pytest.raises(InvalidInput, match="integers"):
        tfjson.columnar_inputs({"b": [0.5]}, "s", TWO_INPUTS)


def test_bytes_inputs() -> None:
    rows = tfjson.row_inputs([_b64(b"\x89PNG"), _b64(b"\xff\xd8")], "predict_bytes", BYTES)
    assert rows["image_bytes"].dtype == object
    assert rows["image_bytes"].tolist() == [b"\x89PNG", b"\xff\xd8"]
    single = tfjson.columnar_inputs(_b64(b"abc"), "predict_bytes", BYTES)["image_bytes"]
    assert single.shape == () and single[()] == b"abc"
    # A plain string is its UTF-8 bytes, as in TF Serving; URL-safe base64 is accepted.
    text = tfjson.columnar_inputs({"image_bytes": ["hi", {"b64": "-_8="}]}, "predict_bytes",
                                  BYTES)["image_bytes"]
    assert text.tolist() == [b"hi", b"\xfb\xff"]
    with pytest.raises(InvalidInput, match="rectangular"):
        tfjson.columnar_inputs([[_b64(b"a")], [_b64(b"b"), _b64(b"c")]], "predict_bytes", BYTES)
    with pytest.raises(InvalidInput, match=r"inputs\[0\]"):
        tfjson.columnar_inputs([3], "predict_bytes", BYTES)


@pytest.mark.parametrize("depth", [9, 33, 100])
def test_deeply_nested_strings_are_refused_not_a_crash(depth: int) -> None:
    # Issue 39: 33 levels made numpy raise RuntimeError inside the handler (a 500).
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    with pytest.raises(InvalidInput, match="nested more than 8 levels deep"):
        tfjson.to_tensor(value, BYTES.inputs["image_bytes"], where="instances")
    shallow: Any = _b64(b"png")
    for _ in range(tfjson.MAX_STRING_RANK):
        shallow = [shallow]
    assert tfjson.to_tensor(shallow, BYTES.inputs["image_bytes"], where="instances").ndim == 8

"""Protobuf <-> numpy conversions, checked against TensorFlow's make_tensor_proto/make_ndarray."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_pb2

from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service.errors import InvalidInput, NotFound, PayloadTooLarge
from service.grpc import converters
from service.repository import VersionStatus

LIMIT = 1 << 20


def test_declared_images_are_counted_before_anything_is_expanded() -> None:
    # Issue 39: this 56-byte message expanded into 8,000,000 strings on the event loop.
    bomb = _proto(types_pb2.DT_STRING, [8_000_000])
    bomb.string_val.append(b"x")
    assert len(bomb.SerializeToString()) < 64
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge, match="holds 8000000 images; the limit is 64"):
        converters.tensor_proto_to_array(bomb, "image_bytes", max_bytes=1 << 26, max_images=64)
    assert time.perf_counter() - started < 0.05
    images = _proto(types_pb2.DT_FLOAT, [65, 2, 2, 1])
    images.float_val.append(0.5)
    with pytest.raises(PayloadTooLarge, match="holds 65 images"):
        converters.tensor_proto_to_array(images, "images", max_bytes=LIMIT, max_images=64)
    images.tensor_shape.dim[0].size = 64
    assert converters.tensor_proto_to_array(images, "images", max_bytes=LIMIT,
                                            max_images=64).shape == (64, 2, 2, 1)


@pytest.mark.parametrize("array", [
    np.linspace(0, 1, 2 * 8 * 8 * 1, dtype=np.float32).reshape(2, 8, 8, 1),
    np.arange(-5, 7, dtype=np.int64).reshape(3, 4),
    np.arange(0, 250, 10, dtype=np.uint8),
    np.array([[True, False], [False, True]]),
    np.array([0.5, -2.25, 1e-3], dtype=np.float64),
    np.array([1.5, 0.25], dtype=np.float16),
    np.array([b"\x89PNG\r\n", b"", b"\xff\xd8jpeg"], dtype=object),
])
def test_tensor_proto_to_array_reads_what_tensorflow_writes(array: np.ndarray) -> None:
    proto = tf.make_tensor_proto(array)
    result = converters.tensor_proto_to_array(proto, "x", max_bytes=LIMIT)
    assert result.shape == array.shape
    assert result.dtype == array.dtype
    np.testing.assert_array_equal(result, array)


def test_typed_value_fields_and_tensorflows_repeat_last_rule() -> None:
    # A client may fill float_val by hand, and may send fewer values than elements:
    # TensorFlow repeats the last one (tf.make_ndarray does the same).
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in (2, 3):
        proto.tensor_shape.dim.add(size=size)
    proto.float_val.extend([0.25, 0.5])
    result = converters.tensor_proto_to_array(proto, "images", max_bytes=LIMIT)
    np.testing.assert_array_equal(result, tf.make_ndarray(proto))
    np.testing.assert_array_equal(result, [[0.25, 0.5, 0.5], [0.5, 0.5, 0.5]])
    half = _proto(types_pb2.DT_HALF, [2])
    half.half_val.extend(np.array([1.5, 0.25], dtype=np.float16).view(np.uint16).tolist())
    np.testing.assert_array_equal(converters.tensor_proto_to_array(half, "h", max_bytes=LIMIT),
                                  tf.make_ndarray(half))
    strings = tf.make_tensor_proto(b"same", shape=[3])
    assert converters.tensor_proto_to_array(strings, "s", max_bytes=LIMIT).tolist() == [b"same"] * 3


def _proto(dtype: int, shape: list[int]) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def test_malformed_tensor_protos_are_invalid_input_naming_the_input() -> None:
    complex_tensor = tf.make_tensor_proto(np.array([1 + 2j], dtype=np.complex64))
    with pytest.raises(InvalidInput, match=r"'images' has dtype DT_COMPLEX64.*supported: DT_FLOAT"):
        converters.tensor_proto_to_array(complex_tensor, "images", max_bytes=LIMIT)
    with pytest.raises(InvalidInput, match="negative dimension"):
        converters.tensor_proto_to_array(_proto(types_pb2.DT_FLOAT, [-1, 3]), "images",
                                         max_bytes=LIMIT)
    short = _proto(types_pb2.DT_FLOAT, [2, 2])
    short.tensor_content = b"\x00" * 12
    with pytest.raises(InvalidInput, match=r"tensor_content holds 12 bytes.*needs 16"):
        converters.tensor_proto_to_array(short, "images", max_bytes=LIMIT)
    extra = _proto(types_pb2.DT_INT64, [2])
    extra.int64_val.extend([1, 2, 3])
    with pytest.raises(InvalidInput, match="int64_val holds 3 values for shape \\[2\\]"):
        converters.tensor_proto_to_array(extra, "ids", max_bytes=LIMIT)
    unknown = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    unknown.tensor_shape.unknown_rank = True
    with pytest.raises(InvalidInput, match="unknown rank"):
        converters.tensor_proto_to_array(unknown, "images", max_bytes=LIMIT)
    overflow = _proto(types_pb2.DT_UINT8, [1])
    overflow.int_val.append(300)
    with pytest.raises(InvalidInput, match="does not fit uint8"):
        converters.tensor_proto_to_array(overflow, "images", max_bytes=LIMIT)


def test_a_tiny_message_cannot_expand_into_a_huge_tensor() -> None:
    # One float_val plus a big shape would otherwise allocate shape-many floats.
    bomb = _proto(types_pb2.DT_FLOAT, [100_000, 100_000])
    bomb.float_val.append(0.0)
    assert len(bomb.SerializeToString()) < 64
    with pytest.raises(PayloadTooLarge, match="40000000000 bytes, over the 1048576-byte"):
        converters.tensor_proto_to_array(bomb, "images", max_bytes=LIMIT)


@pytest.mark.parametrize("array", [
    np.array([3, 0, 9], dtype=np.int64),
    np.array([0.5, 2.0], dtype=np.float32),
    np.array([True, False]),
    np.linspace(0, 1, 2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3),
    np.array([b"a", b"bc"], dtype=object),
])
def test_array_to_tensor_proto_uses_typed_fields_tensorflow_reads(array: np.ndarray) -> None:
    proto = converters.array_to_tensor_proto(array)
    assert not proto.tensor_content  # TF Serving clients read e.g. outputs[...].float_val
    back = tf.make_ndarray(proto)
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_native_tensor_round_trip_and_errors() -> None:
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    image = converters.image_input(0, pb.Image(tensor=pb.Tensor(
        shape=[4, 4, 3], dtype="uint8", data=pixels.tobytes())))
    assert image.array is not None
    np.testing.assert_array_equal(image.array, pixels)
    floats = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    tensor = converters.array_to_tensor(floats)
    assert (list(tensor.shape), tensor.dtype) == ([4, 4], "float32")
    np.testing.assert_array_equal(converters.tensor_to_array(tensor, "x"), floats)
    encoded = converters.image_input(1, pb.Image(encoded=b"\x89PNG"))
    assert encoded.encoded == b"\x89PNG"

    with pytest.raises(InvalidInput, match="image 3: set either 'encoded'"):
        converters.image_input(3, pb.Image())
    with pytest.raises(InvalidInput, match=r"image 1: tensor dtype 'int16' is not supported"):
        converters.image_input(1, pb.Image(tensor=pb.Tensor(shape=[1], dtype="int16", data=b"ab")))
    with pytest.raises(InvalidInput, match=r"image 0: tensor data holds 3 bytes.*needs 16"):
        converters.image_input(0, pb.Image(tensor=pb.Tensor(
            shape=[2, 2], dtype="float32", data=b"abc")))
    with pytest.raises(InvalidInput, match="negative dimension"):
        converters.image_input(0, pb.Image(tensor=pb.Tensor(shape=[-2, -2], dtype="uint8")))


def test_cluster_args() -> None:
    request = pb.ClusterRequest(model="digits", version=2, images=[pb.Image(encoded=b"x")],
                                return_reconstruction=pb.ClusterRequest.ARRAY,
                                return_embedding=True, top_k=3)
    model, images, options = converters.cluster_args(request)
    assert (model.name, model.version, len(images)) == ("digits", 2, 1)
    assert (options.return_reconstruction, options.return_embedding, options.top_k) == (
        "array", True, 3)
    model, _, options = converters.cluster_args(pb.ClusterRequest(model="digits"))
    assert model.version is None
    assert options.return_reconstruction == "none"
    with pytest.raises(InvalidInput, match="'model' is empty"):
        converters.cluster_args(pb.ClusterRequest())
    # proto3 enums are open: an unknown number parses and must be refused here.
    odd = pb.ClusterRequest.FromString(
        pb.ClusterRequest(model="digits").SerializeToString() + b"\x20\x07")
    with pytest.raises(InvalidInput, match="return_reconstruction 7 is not one of"):
        converters.cluster_args(odd)


def test_model_ref_and_metadata_fields() -> None:
    spec = model_pb2.ModelSpec(name="digits")
    assert converters.model_ref(spec).version is None
    spec.version.value = 4
    assert converters.model_ref(spec).version == 4
    with pytest.raises(InvalidInput, match=r"model_spec\.name is empty"):
        converters.model_ref(model_pb2.ModelSpec())
    with pytest.raises(NotFound, match="no version label 'stable'"):
        converters.model_ref(model_pb2.ModelSpec(name="digits", version_label="stable"))
    converters.check_metadata_fields(["signature_def"])
    with pytest.raises(InvalidInput, match="metadata_field is empty"):
        converters.check_metadata_fields([])
    with pytest.raises(InvalidInput, match=r"\['graph'\] not supported; supported: signature_def"):
        converters.check_metadata_fields(["signature_def", "graph"])


def test_model_status_response() -> None:
    response = converters.model_status_response([
        VersionStatus(2, "AVAILABLE"),
        VersionStatus(1, "END", "UNKNOWN", "checksum mismatch"),
    ])
    states = get_model_status_pb2.ModelVersionStatus.State
    rows = [(s.version, s.state, s.status.error_code, s.status.error_message)
            for s in response.model_version_status]
    assert rows == [(2, states.Value("AVAILABLE"), 0, ""), (1, states.Value("END"), 2,
                                                          "checksum mismatch")]

"""Protobuf <-> data-plane values, for the native API and the TensorFlow Serving API.

Every malformed field becomes :class:`~service.errors.InvalidInput` naming the field, so
the interceptor answers INVALID_ARGUMENT with a message the caller can act on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from service import imagecodec
from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service.dataplane import ModelMetadata, VersionInfo
from service.errors import InvalidInput, NotFound, PayloadTooLarge
from service.repository import VersionStatus
from service.types import (
    ClusterOptions,
    ClusterResult,
    ImageInput,
    ModelRef,
    ReconstructionFormat,
)

# ---- native API ------------------------------------------------------------------------

_RECONSTRUCTION: dict[int, ReconstructionFormat] = {
    pb.ClusterRequest.NONE: "none",
    pb.ClusterRequest.PNG: "png",
    pb.ClusterRequest.ARRAY: "array",
}
# Raw image tensors: the two pixel encodings the API documents, always little-endian.
_IMAGE_DTYPES: dict[str, np.dtype[Any]] = {"uint8": np.dtype("u1"), "float32": np.dtype("<f4")}


def cluster_args(request: pb.ClusterRequest) -> tuple[ModelRef, list[ImageInput], ClusterOptions]:
    """The data-plane arguments of a native ``ClusterRequest``."""
    if not request.model:
        raise InvalidInput("field 'model' is empty: name the model to use")
    version = request.version if request.HasField("version") else None
    fmt = _RECONSTRUCTION.get(request.return_reconstruction)
    if fmt is None:
        raise InvalidInput(
            f"return_reconstruction {request.return_reconstruction} is not one of "
            "NONE (0), PNG (1), ARRAY (2)"
        )
    images = [image_input(i, image) for i, image in enumerate(request.images)]
    options = ClusterOptions(
        return_reconstruction=fmt,
        return_embedding=request.return_embedding,
        top_k=request.top_k,
    )
    return ModelRef(request.model, version), images, options


def image_input(index: int, image: pb.Image) -> ImageInput:
    """One request image: encoded bytes as they are, a raw tensor as a numpy array."""
    kind = image.WhichOneof("kind")
    if kind == "encoded":
        return ImageInput(encoded=image.encoded)
    if kind == "tensor":
        return ImageInput(array=tensor_to_array(image.tensor, f"image {index}"))
    raise InvalidInput(f"image {index}: set either 'encoded' (PNG/JPEG bytes) or 'tensor'")


def tensor_to_array(tensor: pb.Tensor, what: str) -> np.ndarray:
    """A native ``Tensor`` (shape, dtype, little-endian bytes) as a numpy array."""
    dtype = _IMAGE_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidInput(
            f"{what}: tensor dtype {tensor.dtype!r} is not supported; use 'uint8' (0..255) "
            "or 'float32' (0..1)"
        )
    shape = list(tensor.shape)
    if any(size < 0 for size in shape):
        raise InvalidInput(f"{what}: tensor shape {shape} has a negative dimension")
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidInput(
            f"{what}: tensor data holds {len(tensor.data)} bytes, but shape {shape} of "
            f"{tensor.dtype} needs {expected}"
        )
    # A read-only view of the message's bytes; astype copies only on a big-endian host.
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(
        dtype.newbyteorder("="), copy=False)


def array_to_tensor(array: np.ndarray) -> pb.Tensor:
    """A float32 array as a native ``Tensor`` (little-endian bytes)."""
    data = np.ascontiguousarray(array, dtype="<f4")
    return pb.Tensor(shape=list(data.shape), dtype="float32", data=data.tobytes())


def cluster_response(
    info: VersionInfo, results: Sequence[ClusterResult], options: ClusterOptions
) -> pb.ClusterResponse:
    """A native ``ClusterResponse``: one prediction per result, in order."""
    response = pb.ClusterResponse(model=info.name, version=info.version)
    for result in results:
        prediction = response.predictions.add(
            cluster_id=result.cluster_id,
            distance=result.distance,
            is_outlier=result.is_outlier,
        )
        if result.label is not None:
            prediction.label = result.label
        if result.reconstruction is not None:
            if options.return_reconstruction == "png":
                prediction.reconstruction_png = imagecodec.encode_png(result.reconstruction)
            else:
                prediction.reconstruction_array.CopyFrom(array_to_tensor(result.reconstruction))
        if result.reconstruction_error is not None:
            prediction.reconstruction_error = result.reconstruction_error
        if result.psnr is not None:
            prediction.psnr = result.psnr
        if result.embedding is not None:
            prediction.embedding.extend(np.asarray(result.embedding, dtype=np.float32).tolist())
        for cluster, distance in result.top_k:
            prediction.top_k.add(cluster_id=cluster, distance=distance)
    return response


# ---- TensorFlow Serving API --------------------------------------------------------------

# DataType -> (numpy dtype, TensorProto field holding the values when tensor_content is empty)
_TF_DTYPES: dict[int, tuple[np.dtype[Any], str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_HALF: (np.dtype(np.float16), "half_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_UINT16: (np.dtype(np.uint16), "int_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}
_NUMPY_TO_TF: dict[str, int] = {
    "float32": types_pb2.DT_FLOAT,
    "float64": types_pb2.DT_DOUBLE,
    "int32": types_pb2.DT_INT32,
    "int64": types_pb2.DT_INT64,
    "uint8": types_pb2.DT_UINT8,
    "bool": types_pb2.DT_BOOL,
    "string": types_pb2.DT_STRING,
}
SIGNATURE_DEF_FIELD = "signature_def"


def model_ref(spec: model_pb2.ModelSpec) -> ModelRef:
    """The model and version a TF Serving ``ModelSpec`` names."""
    if not spec.name:
        raise InvalidInput("model_spec.name is empty: name the model to use")
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        raise NotFound(
            f"model {spec.name!r} has no version label {spec.version_label!r}: this server "
            "addresses versions by number (model_spec.version)"
        )
    return ModelRef(spec.name, spec.version.value if choice == "version" else None)


def tensor_proto_to_array(proto: tensor_pb2.TensorProto, name: str, *,
                          max_bytes: int, max_images: int | None = None) -> np.ndarray:
    """A ``TensorProto`` as numpy, with TensorFlow's rules (``tf.make_ndarray``).

    Values come from ``tensor_content`` or else from the typed ``*_val`` field, where fewer
    values than elements repeat the last one. Because that lets a tiny message describe a
    huge tensor, the declared shape is checked before anything is expanded: the expanded
    size against ``max_bytes`` (the message size limit) and, when given, the number of
    images against ``max_images`` (the batch dimension; every element of a string tensor
    is one encoded image).
    """
    entry = _TF_DTYPES.get(proto.dtype)
    if entry is None:
        supported = ", ".join(types_pb2.DataType.Name(d) for d in _TF_DTYPES)
        raise InvalidInput(
            f"input {name!r} has dtype {_dtype_name(proto.dtype)}, which is not supported "
            f"(supported: {supported})"
        )
    dtype, field = entry
    if proto.tensor_shape.unknown_rank:
        raise InvalidInput(f"input {name!r} has an unknown rank; send its full shape")
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise InvalidInput(f"input {name!r} has shape {shape} with a negative dimension")
    count = math.prod(shape)
    if max_images is not None:
        images = count if dtype.kind == "O" else (shape[0] if shape else 1)
        if images > max_images:
            # Issue 39: [8,000,000] strings from one string_val, a 56-byte message, took
            # 15-29 s of the event loop to expand before the count was checked.
            raise PayloadTooLarge(
                f"input {name!r} of shape {shape} holds {images} images; the limit is "
                f"{max_images} per request (AEC_MAX_IMAGES_PER_REQUEST)"
            )
    itemsize = 8 if dtype.kind == "O" else dtype.itemsize
    if count * itemsize > max_bytes:
        raise PayloadTooLarge(
            f"input {name!r} of shape {shape} would take {count * itemsize} bytes, "
            f"over the {max_bytes}-byte message limit"
        )
    if proto.tensor_content:
        if dtype.kind == "O":
            raise InvalidInput(f"input {name!r}: string tensors carry their values in string_val")
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {name!r}: tensor_content holds {len(proto.tensor_content)} bytes, "
                f"but shape {shape} of {_dtype_name(proto.dtype)} needs {count * dtype.itemsize}"
            )
        little = dtype.newbyteorder("<")
        return np.frombuffer(proto.tensor_content, dtype=little).astype(dtype).reshape(shape)
    values = list(getattr(proto, field))
    if len(values) > count:
        raise InvalidInput(
            f"input {name!r}: {field} holds {len(values)} values for shape {shape} "
            f"({count} elements)"
        )
    if dtype.kind == "O":
        flat = np.empty(count, dtype=object)
        flat[: len(values)] = values
        flat[len(values):] = values[-1] if values else b""
        return flat.reshape(shape)
    if dtype == np.float16:
        # half_val holds the IEEE half bit patterns, not the values.
        parsed = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        try:
            parsed = np.asarray(values, dtype=dtype)
        except OverflowError as exc:
            raise InvalidInput(f"input {name!r}: a value does not fit {dtype}: {exc}") from exc
    flat = np.zeros(count, dtype=dtype)
    flat[: len(parsed)] = parsed
    if 0 < len(parsed) < count:
        flat[len(parsed):] = parsed[-1]
    return flat.reshape(shape)


def array_to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A numpy output as a ``TensorProto`` in the typed value fields.

    TensorFlow Serving answers in the typed fields (``float_val``...), not ``tensor_content``,
    and many clients read ``outputs[...].float_val`` directly; ``tf.make_ndarray`` reads both.
    """
    proto = tensor_pb2.TensorProto()
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    kind = "string" if array.dtype.kind in "OSU" else array.dtype.name
    dtype = _NUMPY_TO_TF.get(kind)
    if dtype is None:
        raise TypeError(f"no TensorProto mapping for output dtype {array.dtype}")
    proto.dtype = dtype
    flat = array.ravel()
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    else:
        getattr(proto, _TF_DTYPES[dtype][1]).extend(flat.tolist())
    return proto


def _dtype_name(dtype: int) -> str:
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"DataType {dtype}"


def signature_def_map(metadata: ModelMetadata) -> get_model_metadata_pb2.SignatureDefMap:
    """The ``signature_def`` metadata of ``GetModelMetadata``, from the data plane's view."""
    result = get_model_metadata_pb2.SignatureDefMap()
    for sig_name, signature in metadata.signatures.items():
        sig = result.signature_def[sig_name]
        sig.method_name = signature.method_name
        for target, tensors in ((sig.inputs, signature.inputs), (sig.outputs, signature.outputs)):
            for tensor_name, info in tensors.items():
                tensor = target[tensor_name]
                tensor.name = tensor_name
                tensor.dtype = _NUMPY_TO_TF[info.dtype]
                for size in info.shape:
                    tensor.tensor_shape.dim.add(size=size)
    return result


def check_metadata_fields(fields: Sequence[str]) -> None:
    """Only ``signature_def`` is served, as by TensorFlow Serving for SavedModels."""
    if not fields:
        raise InvalidInput(
            f"metadata_field is empty: ask for {SIGNATURE_DEF_FIELD!r}"
        )
    unsupported = sorted(set(fields) - {SIGNATURE_DEF_FIELD})
    if unsupported:
        raise InvalidInput(
            f"metadata_field {unsupported} not supported; supported: {SIGNATURE_DEF_FIELD}"
        )


def model_status_response(
    statuses: Sequence[VersionStatus],
) -> get_model_status_pb2.GetModelStatusResponse:
    """TF Serving's ``GetModelStatusResponse``: one ``ModelVersionStatus`` per version."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        row = response.model_version_status.add(
            version=status.version,
            state=get_model_status_pb2.ModelVersionStatus.State.Value(status.state),
        )
        row.status.error_code = error_codes_pb2.Code.Value(status.error_code)
        row.status.error_message = status.error_message
    return response


def fill_model_spec(spec: model_pb2.ModelSpec, info: VersionInfo | ModelMetadata,
                    signature: str | None = None) -> None:
    """Report which model and version answered, as TensorFlow Serving does."""
    spec.name = info.name
    spec.version.value = info.version
    if signature:
        spec.signature_name = signature

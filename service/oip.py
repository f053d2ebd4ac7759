"""Open Inference Protocol (KServe / Triton "V2") values that both transports share.

The REST and gRPC adapters turn their wire formats into numpy arrays with these functions
and encode the data plane's arrays back with them, so a datatype, a size check or the raw
byte layout is written once. Nothing here knows HTTP or protobuf.
"""

from __future__ import annotations

import importlib.metadata
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import chunked
from service.dataplane import ModelMetadata
from service.errors import InvalidInput, PayloadTooLarge
from service.repository import VersionStatus

SERVER_NAME = "aecluster"
# The binary tensor data extension (REST); gRPC's raw contents are part of the protocol.
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "aecluster_tensorflow"
# V2 datatype -> numpy dtype, little-endian as the raw layout is. BF16 has no numpy dtype
# and no input of these models takes it.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
# Each numeric datatype by its dtype in either byte order: an output's datatype is one
# lookup (issue 38: the loop over DATATYPES took about 5 µs a request).
_DATATYPE_OF_DTYPE: dict[np.dtype[Any], str] = {
    dtype.newbyteorder(order): name for name, dtype in DATATYPES.items() if dtype.kind != "O"
    for order in ("<", ">")
}
# The data plane's TensorInfo dtype names -> V2 datatypes (model metadata).
_METADATA_TYPES = {"float32": "FP32", "int64": "INT64", "bool": "BOOL", "string": "BYTES"}
# A BYTES element's length prefix in the raw layout: 4 bytes, little-endian.
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the model metadata."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """The V2 model metadata: name, ready versions, platform, inputs and outputs."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def server_version() -> str:
    """The installed aecluster's version (what /docs and V2 server metadata report)."""
    try:
        return importlib.metadata.version("aecluster")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def model_info(metadata: ModelMetadata, statuses: Sequence[VersionStatus]) -> ModelInfo:
    """The V2 metadata of a version from the data plane's signatures: the ``images`` and
    ``image_bytes`` inputs (one per request) and the five outputs, with the bundle's shapes."""
    inputs: dict[str, TensorSpec] = {}
    outputs: dict[str, TensorSpec] = {}
    for signature in metadata.signatures.values():
        for name, info in signature.inputs.items():
            inputs[name] = TensorSpec(name, _METADATA_TYPES[info.dtype], info.shape)
        for name, info in signature.outputs.items():
            outputs[name] = TensorSpec(name, _METADATA_TYPES[info.dtype], info.shape)
    versions = sorted(s.version for s in statuses if s.state == "AVAILABLE")
    return ModelInfo(metadata.name, [str(v) for v in versions], PLATFORM,
                     list(inputs.values()), list(outputs.values()))


def model_version(text: str) -> int | None:
    """A V2 version string as a positive integer ("" : the default version)."""
    if text == "":
        return None
    if not text.isascii() or not text.isdigit() or int(text) <= 0 or len(text) > 18:
        raise InvalidInput(f"model version must be a positive integer, got {text!r}")
    return int(text)


def dtype_of(datatype: Any, name: str) -> np.dtype[Any]:
    """The numpy dtype of a V2 datatype name, or InvalidInput naming the known ones."""
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(f"input {name!r}: datatype {datatype!r} is not a V2 datatype "
                           f"({', '.join(DATATYPES)})")
    return dtype


def checked_datatype(datatype: Any, name: str) -> str:
    """``datatype`` if it names a V2 datatype, else InvalidInput."""
    dtype_of(datatype, name)
    return str(datatype)


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of an output array."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    datatype = _DATATYPE_OF_DTYPE.get(array.dtype)
    if datatype is None:
        raise TypeError(f"no V2 datatype for {array.dtype}")
    return datatype


def check_shape(shape: Any, name: str, *, max_images: int) -> tuple[int, ...]:
    """A declared shape as non-negative integers, refused before anything is allocated when
    its first dimension (the images) passes ``max_images``."""
    if not isinstance(shape, list | tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be an array of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
    if shape and shape[0] > max_images:
        raise PayloadTooLarge(f"input {name!r} of shape {list(shape)} holds {shape[0]} images; "
                              f"the limit is {max_images} per request "
                              "(AEC_MAX_IMAGES_PER_REQUEST)")
    return tuple(shape)


def from_raw(raw: bytes, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A tensor from its raw bytes: row-major little-endian elements, or for BYTES each
    element as a 4-byte little-endian length and its bytes."""
    dtype = dtype_of(datatype, name)
    count = math.prod(shape)
    if dtype.kind == "O":
        return _bytes_elements(raw, count, name).reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(f"input {name!r}: {len(raw)} bytes of raw data, but shape "
                           f"{list(shape)} of {datatype} needs {count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="),
                                                                 copy=False)


def _bytes_elements(raw: bytes, count: int, name: str) -> np.ndarray:
    elements = np.empty(count, dtype=object)
    offset = 0
    view = memoryview(raw)
    for i in range(count):
        if offset + _LENGTH.size > len(raw):
            raise InvalidInput(f"input {name!r}: raw BYTES data ends before element {i} of "
                               f"{count}")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            raise InvalidInput(f"input {name!r}: raw BYTES element {i} declares {size} bytes; "
                               f"{len(raw) - offset} are left")
        elements[i] = bytes(view[offset:offset + size])
        offset += size
    if offset != len(raw):
        raise InvalidInput(f"input {name!r}: {len(raw) - offset} bytes of raw data left after "
                           f"the {count} BYTES elements of its shape")
    return elements


def from_values(values: Sequence[Any], datatype: str, shape: tuple[int, ...],
                name: str) -> np.ndarray:
    """A tensor from its values (JSON ``data``, flat or nested, or gRPC ``contents``)."""
    dtype = dtype_of(datatype, name)
    try:
        flat = (np.asarray(values, dtype=object) if dtype.kind == "O"
                else chunked.asarray_in_slices(values, dtype)).ravel()
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input {name!r}: data is not an array of {datatype} values: "
                           f"{exc}") from exc
    if flat.size != math.prod(shape):
        raise InvalidInput(f"input {name!r}: {flat.size} values, but shape {list(shape)} "
                           f"holds {math.prod(shape)}")
    if dtype.kind == "O":
        for i, item in enumerate(flat):
            if isinstance(item, str):
                flat[i] = item.encode("utf-8")
            elif not isinstance(item, bytes):
                raise InvalidInput(f"input {name!r}: BYTES element {i} is not a string")
    return flat.reshape(shape)


def to_raw(array: np.ndarray) -> bytes:
    """An output's raw bytes (the layout of :func:`from_raw`)."""
    if array.dtype.kind in "OSU":
        parts = []
        for item in array.ravel():
            data = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts += [_LENGTH.pack(len(data)), data]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()

from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "tensor")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    tensor: Tensor
    def __init__(self, encoded: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ClusterRequest(_message.Message):
    __slots__ = ("model", "version", "images", "return_reconstruction", "return_embedding", "top_k")
    class Reconstruction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[ClusterRequest.Reconstruction]
        PNG: _ClassVar[ClusterRequest.Reconstruction]
        ARRAY: _ClassVar[ClusterRequest.Reconstruction]
    NONE: ClusterRequest.Reconstruction
    PNG: ClusterRequest.Reconstruction
    ARRAY: ClusterRequest.Reconstruction
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    RETURN_RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    RETURN_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    images: _containers.RepeatedCompositeFieldContainer[Image]
    return_reconstruction: ClusterRequest.Reconstruction
    return_embedding: bool
    top_k: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., return_reconstruction: _Optional[_Union[ClusterRequest.Reconstruction, str]] = ..., return_embedding: _Optional[bool] = ..., top_k: _Optional[int] = ...) -> None: ...

class ClusterDistance(_message.Message):
    __slots__ = ("cluster_id", "distance")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    cluster_id: int
    distance: float
    def __init__(self, cluster_id: _Optional[int] = ..., distance: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("cluster_id", "distance", "is_outlier", "label", "reconstruction_png", "reconstruction_array", "reconstruction_error", "psnr", "embedding", "top_k")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    IS_OUTLIER_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_PNG_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_ARRAY_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_ERROR_FIELD_NUMBER: _ClassVar[int]
    PSNR_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    cluster_id: int
    distance: float
    is_outlier: bool
    label: str
    reconstruction_png: bytes
    reconstruction_array: Tensor
    reconstruction_error: float
    psnr: float
    embedding: _containers.RepeatedScalarFieldContainer[float]
    top_k: _containers.RepeatedCompositeFieldContainer[ClusterDistance]
    def __init__(self, cluster_id: _Optional[int] = ..., distance: _Optional[float] = ..., is_outlier: _Optional[bool] = ..., label: _Optional[str] = ..., reconstruction_png: _Optional[bytes] = ..., reconstruction_array: _Optional[_Union[Tensor, _Mapping]] = ..., reconstruction_error: _Optional[float] = ..., psnr: _Optional[float] = ..., embedding: _Optional[_Iterable[float]] = ..., top_k: _Optional[_Iterable[_Union[ClusterDistance, _Mapping]]] = ...) -> None: ...

class ClusterResponse(_message.Message):
    __slots__ = ("model", "version", "predictions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

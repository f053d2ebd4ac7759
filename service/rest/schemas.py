"""Pydantic models of the REST bodies: they validate options and document ``/docs``.

The native ``:cluster`` handler parses ``instances`` itself (each item becomes an image,
with an error naming its index), so :class:`ClusterParams` validates the options and
:class:`ClusterRequest` adds ``instances`` for the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TINY_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAF0lEQVR42mNkYIEARgUog4"
    "UUBuMDKAMAR1gCmCOa8dUAAAAASUVORK5CYII="
)
"""An 8x8 gray gradient PNG: the example image of the docs."""


class Base64Image(BaseModel):
    """An encoded image (PNG, JPEG, or anything Pillow reads safely)."""

    model_config = ConfigDict(extra="forbid")

    b64: str = Field(description="Standard or URL-safe base64 of the image file's bytes.")


class ClusterParams(BaseModel):
    """What a native ``:cluster`` request asks for besides its images."""

    model_config = ConfigDict(extra="forbid")

    return_reconstruction: Literal["png", "array", "none"] = Field(
        default="none",
        description="png: the autoencoder's reconstruction as {\"b64\": PNG}; array: as a "
        "nested [H][W][C] list of floats in [0, 1]; none: skip the decoder (fastest).",
    )
    return_embedding: bool = Field(default=False, description="Add the latent vector.")
    top_k: int = Field(
        default=0, ge=0,
        description="Add the k nearest clusters with their distances (0: none).",
    )


class ClusterRequest(ClusterParams):
    """JSON body of ``POST /v1/models/{name}[/versions/{v}]:cluster``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"instances": [{"b64": TINY_PNG_B64}], "return_reconstruction": "none",
                 "top_k": 3},
            ]
        },
    )

    instances: list[Base64Image | list[Any]] = Field(
        min_length=1,
        description="Images: {\"b64\": ...} encoded files, or nested arrays [H][W] or "
        "[H][W][C] (C = 1, 3 or 4) of integers 0..255 or floats in [0, 1]. Any size and "
        "colour: images are converted and resized as the model's manifest says.",
    )


class TopKEntry(BaseModel):
    """One of the nearest clusters."""

    cluster_id: int
    distance: float = Field(description="Euclidean distance in embedding space.")


class Prediction(BaseModel):
    """The answer for one image."""

    cluster_id: int = Field(description="The nearest cluster.")
    distance: float = Field(description="Euclidean distance to that cluster's centroid.")
    is_outlier: bool = Field(
        description="True when the distance exceeds the cluster's 99th percentile on the "
        "training set."
    )
    label: str | None = Field(
        description="The label the bundle maps this cluster to (null without a label map)."
    )
    reconstruction: Base64Image | list[Any] | None = Field(
        default=None, description="Present when return_reconstruction is png or array."
    )
    reconstruction_error: float | None = Field(
        default=None, description="Mean squared error of the reconstruction (with it)."
    )
    psnr: float | None = Field(
        default=None, description="Peak signal-to-noise ratio in dB, data range 1 (with it)."
    )
    embedding: list[float] | None = Field(
        default=None, description="The latent vector (with return_embedding)."
    )
    top_k: list[TopKEntry] | None = Field(
        default=None, description="Nearest clusters first (with top_k > 0)."
    )


class ClusterResponse(BaseModel):
    """Answer of ``:cluster``: which model version answered, one prediction per image."""

    model: str
    version: int
    predictions: list[Prediction]


class PredictRequest(BaseModel):
    """JSON body of TensorFlow Serving's ``:predict``: ``instances`` or ``inputs``, not both."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"signature_name": "predict_bytes", "instances": [{"b64": TINY_PNG_B64}]},
                {"inputs": {"images": [[[[0.0]]]]}, "output_filter": ["cluster_id"]},
            ]
        },
    )

    signature_name: str = Field(
        default="serving_default",
        description="serving_default (input images: float32 [N,H,W,C] in [0, 1]) or "
        "predict_bytes (input image_bytes: [{\"b64\": ...}, ...]).",
    )
    instances: list[Any] | None = Field(
        default=None, description="Row format: one value (or {input: value}) per instance.",
    )
    inputs: Any | None = Field(
        default=None, description="Columnar format: a value, or {input name: value}.",
    )
    output_filter: list[str] | None = Field(
        default=None,
        description="Outputs to compute and return (cluster_id, distance, is_outlier, "
        "reconstruction, embedding); default all.",
    )


class ErrorBody(BaseModel):
    """Every error answer: what was wrong, in words a caller can act on."""

    error: str


MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every file part is an image (any field name); options as form fields.",
    "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "return_reconstruction": {"type": "string", "enum": ["png", "array", "none"]},
        "return_embedding": {"type": "boolean"},
        "top_k": {"type": "integer", "minimum": 0},
    },
}
BINARY_SCHEMA: dict[str, Any] = {"type": "string", "format": "binary"}

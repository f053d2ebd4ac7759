"""Protocol-neutral values passed between the transports and the data plane."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

ReconstructionFormat = Literal["png", "array", "none"]


@dataclass(frozen=True)
class ModelRef:
    """A model name and an optional version (None: the default, highest ready version)."""

    name: str
    version: int | None = None


@dataclass(frozen=True)
class ImageInput:
    """One image as the caller sent it: encoded bytes (PNG/JPEG) or an array.

    Arrays are [H, W] or [H, W, C]; integer arrays are 0..255, float arrays in [0, 1].
    """

    encoded: bytes | None = None
    array: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.encoded is None) == (self.array is None):
            raise ValueError("ImageInput needs exactly one of encoded or array")


@dataclass(frozen=True)
class ClusterOptions:
    """What the caller wants back for each image of a native :cluster request."""

    return_reconstruction: ReconstructionFormat = "none"
    return_embedding: bool = False
    top_k: int = 0


@dataclass
class ClusterResult:
    """The answer for one image."""

    cluster_id: int
    distance: float
    is_outlier: bool
    label: str | None = None
    reconstruction: np.ndarray | None = None  # float32 [H, W, C] in [0, 1]
    reconstruction_error: float | None = None  # mean squared error against the input
    psnr: float | None = None  # dB, data range 1
    embedding: np.ndarray | None = None  # float32 [D]
    # (cluster, distance) pairs, nearest first
    top_k: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class BatchOutput:
    """What one model call returns for N images (rows in request order)."""

    cluster_id: np.ndarray  # int64 [N]
    distance: np.ndarray  # float32 [N], Euclidean distance to the assigned centroid
    distances: np.ndarray  # float32 [N, K], Euclidean distance to every centroid
    embedding: np.ndarray  # float32 [N, D]
    reconstruction: np.ndarray | None  # float32 [N, H, W, C], None when not asked for
    # float32 [N], mean squared error of each reconstruction against its input (computed in
    # the model call, once per batch); None exactly when reconstruction is None
    reconstruction_error: np.ndarray | None = None

    def rows(self, start: int, stop: int) -> BatchOutput:
        """The outputs of images ``start:stop``."""
        return BatchOutput(
            cluster_id=self.cluster_id[start:stop],
            distance=self.distance[start:stop],
            distances=self.distances[start:stop],
            embedding=self.embedding[start:stop],
            reconstruction=None if self.reconstruction is None
            else self.reconstruction[start:stop],
            reconstruction_error=None if self.reconstruction_error is None
            else self.reconstruction_error[start:stop],
        )

    def without_reconstruction(self) -> BatchOutput:
        """The same rows without the reconstruction and its error."""
        return BatchOutput(self.cluster_id, self.distance, self.distances, self.embedding, None)

    @staticmethod
    def concat(parts: list[BatchOutput]) -> BatchOutput:
        """Join outputs computed in several batches back into one, in order."""
        recon = [p.reconstruction for p in parts]
        errors = [p.reconstruction_error for p in parts]
        return BatchOutput(
            cluster_id=np.concatenate([p.cluster_id for p in parts]),
            distance=np.concatenate([p.distance for p in parts]),
            distances=np.concatenate([p.distances for p in parts]),
            embedding=np.concatenate([p.embedding for p in parts]),
            reconstruction=None if any(r is None for r in recon)
            else np.concatenate([r for r in recon if r is not None]),
            reconstruction_error=None if any(e is None for e in errors)
            else np.concatenate([e for e in errors if e is not None]),
        )

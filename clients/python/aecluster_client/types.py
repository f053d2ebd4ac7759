"""Typed answers and inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

# An encoded image file (PNG, JPEG, ...; the server decodes and resizes it as the model's
# manifest says) or raw pixels, [H, W] or [H, W, C]: uint8 0..255 or floats in [0, 1].
ImageInput: TypeAlias = bytes | npt.NDArray[np.generic]
Reconstruction = Literal["none", "png", "array"]


@dataclass(frozen=True)
class NearCluster:
    """One of an image's nearest clusters (``top_k``)."""

    cluster_id: int
    distance: float


@dataclass(frozen=True)
class Prediction:
    """The answer for one image, with the model and version that gave it."""

    model: str
    version: int
    cluster_id: int
    distance: float
    is_outlier: bool
    label: str | None = None
    # float32 [H, W, C] in [0, 1], when the call asked for reconstruction="array".
    reconstruction: npt.NDArray[np.float32] | None = field(default=None, compare=False)
    # The PNG file, when the call asked for reconstruction="png".
    reconstruction_png: bytes | None = None
    reconstruction_error: float | None = None
    psnr: float | None = None
    embedding: npt.NDArray[np.float32] | None = field(default=None, compare=False)
    top_k: tuple[NearCluster, ...] = ()

"""The data model of the data package: options in, loaded splits out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import tensorflow as tf

from training.errors import DataError

ColorMode = Literal["gray", "rgb", "red"]
HeldoutKind = Literal["test-split", "val-fraction", "none"]

COLOR_MODES: tuple[ColorMode, ...] = ("gray", "rgb", "red")


@dataclass(frozen=True)
class DataOptions:
    """How to read a dataset; every field has a default that keeps the source as it is.

    ``val_fraction`` only applies to sources without their own test split; sources with one
    (fashion-mnist, train/test IDX pairs, CIFAR-10, TFRecords written with a split) keep it.
    """

    data_dir: Path | None = None
    image_size: tuple[int, int] | None = None
    color: ColorMode | None = None
    labels_file: Path | None = None
    val_fraction: float = 0.1
    seed: int = 0
    strict: bool = False

    def validate(self) -> None:
        """Raise :class:`DataError` naming the first option that cannot work."""
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(
                f"val_fraction must be in [0, 1), got {self.val_fraction}: "
                "use 0 for no held-out split, e.g. 0.1 for 10%"
            )
        if self.image_size is not None:
            size = tuple(self.image_size)
            if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
                raise DataError(
                    "image_size must be two positive integers (height, width), "
                    f"got {self.image_size}"
                )
        if self.color is not None and self.color not in COLOR_MODES:
            raise DataError(f"color must be one of {', '.join(COLOR_MODES)}, got {self.color!r}")
        if self.seed < 0:
            raise DataError(f"seed must be a non-negative integer, got {self.seed}")


class Reader(Protocol):
    """Re-reads a split, shuffling cheap keys (indices, file names) instead of images."""

    def dataset(self, shuffle_seed: int | None) -> tf.data.Dataset:
        """Unbatched (image, label) elements; all of them in a seeded random order if asked."""
        ...


@dataclass
class Split:
    """One split of a dataset.

    ``dataset`` is unbatched and in a fixed order; its elements are
    (image float32 [H, W, C] in [0, 1], label int64 scalar, -1 = unknown).
    ``reader``, when set, lets :func:`training.data.batches` shuffle the whole split
    without holding decoded images in a shuffle buffer.
    """

    size: int
    dataset: tf.data.Dataset
    in_memory: bool
    reader: Reader | None = field(default=None, repr=False)


@dataclass
class LoadedData:
    """A dataset ready for training: its splits and what the model bundle records about it."""

    source: str
    height: int
    width: int
    channels: int
    color_mode: ColorMode
    class_names: list[str] | None
    train: Split
    heldout: Split | None
    heldout_kind: HeldoutKind
    skipped_files: int = 0

    def describe(self) -> str:
        """One line for logs: source, sizes, shape."""
        held = (
            f"{self.heldout.size} held-out ({self.heldout_kind})" if self.heldout else "no held-out"
        )
        classes = f"{len(self.class_names)} classes" if self.class_names else "unlabelled"
        return (
            f"{self.source}: {self.train.size} train, {held}, "
            f"{self.height}x{self.width}x{self.channels} {self.color_mode}, {classes}"
        )

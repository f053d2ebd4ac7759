"""Tests of training.data.base: option validation and the data model."""

from __future__ import annotations

import pytest

from training.data.base import DataOptions
from training.errors import DataError


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_val_fraction_outside_unit_interval_is_rejected(fraction: float) -> None:
    with pytest.raises(DataError, match=r"val_fraction must be in \[0, 1\)"):
        DataOptions(val_fraction=fraction).validate()


@pytest.mark.parametrize("size", [(0, 28), (28,), (28, -1), (2.5, 3)])
def test_bad_image_size_is_rejected(size: tuple[int, int]) -> None:
    with pytest.raises(DataError, match="image_size"):
        DataOptions(image_size=size).validate()


def test_bad_color_and_seed_are_rejected() -> None:
    with pytest.raises(DataError, match="color must be one of gray, rgb, red"):
        DataOptions(color="blue").validate()  # type: ignore[arg-type]
    with pytest.raises(DataError, match="seed"):
        DataOptions(seed=-1).validate()


def test_defaults_are_valid_and_options_are_frozen() -> None:
    options = DataOptions()
    options.validate()
    assert (options.val_fraction, options.seed, options.strict) == (0.1, 0, False)
    with pytest.raises(AttributeError):
        options.seed = 3  # type: ignore[misc]

"""Tests of training.data.splits: seeded held-out masks."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.splits import heldout_mask
from training.errors import DataError


def test_mask_has_the_rounded_share_and_depends_on_the_seed() -> None:
    mask = heldout_mask(1000, 0.1, seed=0, where="x")
    assert mask.dtype == bool and mask.sum() == 100
    assert np.array_equal(mask, heldout_mask(1000, 0.1, seed=0, where="x"))
    assert not np.array_equal(mask, heldout_mask(1000, 0.1, seed=1, where="x"))
    # Not simply the first or last items.
    assert 0 < np.flatnonzero(mask).mean() < 999


def test_zero_fraction_holds_nothing_out() -> None:
    assert not heldout_mask(10, 0.0, seed=0, where="x").any()


def test_tiny_sets_keep_both_sides_non_empty() -> None:
    assert heldout_mask(3, 0.01, seed=0, where="x").sum() == 1
    assert heldout_mask(3, 0.99, seed=0, where="x").sum() == 2
    with pytest.raises(DataError, match="tiny has 1 image"):
        heldout_mask(1, 0.5, seed=0, where="tiny")


def test_fraction_is_checked() -> None:
    with pytest.raises(DataError, match="val_fraction"):
        heldout_mask(10, 1.0, seed=0, where="x")

"""Seeded held-out selection for sources that have no test split of their own."""

from __future__ import annotations

import numpy as np

from training.errors import DataError


def heldout_mask(n: int, fraction: float, seed: int, *, where: str) -> np.ndarray:
    """Bool mask [n]: True marks the held-out items, a seeded random ``fraction`` of them.

    The count is ``round(n * fraction)`` kept within [1, n - 1] when ``fraction > 0``, so
    neither side is ever empty; the same (n, fraction, seed) always gives the same mask.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {fraction}")
    mask = np.zeros(n, dtype=bool)
    if fraction == 0.0:
        return mask
    if n < 2:
        raise DataError(
            f"{where} has {n} image(s): holding out a validation share needs at least 2; "
            "use val_fraction=0 or add images"
        )
    count = min(max(round(n * fraction), 1), n - 1)
    rng = np.random.default_rng(seed)
    mask[rng.permutation(n)[:count]] = True
    return mask

"""What the contrastive recipe decides from the training images: mirrored views, epochs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from training.recipes.choices import (
    DEFAULT_BACKBONE_EPOCHS,
    LIGHT_BORDER_SHARE,
    MIN_BACKBONE_STEPS,
    MIRROR_RATIO_LIMIT,
    backbone_epochs,
    background_check,
    mirror_check,
)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return (load_digits().images / 16.0).astype("float32")[..., None]


def test_digits_are_not_mirrored(digits: np.ndarray) -> None:
    # A mirrored 2, 3 or 7 looks like no digit: mirrors sit far from every training image.
    check = mirror_check(digits, seed=0)
    assert check.ratio > 1.6 and not check.flip
    assert check.sample == 1797
    # Inverted images (white on black) are the same question.
    assert mirror_check(1.0 - digits, seed=0).flip is False


def test_images_whose_mirror_is_their_kind_are_mirrored(digits: np.ndarray) -> None:
    # Left-right symmetric images (as garments nearly are): a mirror is another such image.
    symmetric = (digits + digits[:, :, ::-1, :]) / 2
    check = mirror_check(symmetric, seed=0)
    assert check.ratio <= 1.0 and check.flip
    # Half the set mirrored: every image's mirror has a near twin among the others.
    doubled = np.concatenate([digits, digits[:, :, ::-1, :]])
    assert mirror_check(doubled, seed=0, sample=len(doubled)).ratio < MIRROR_RATIO_LIMIT


def test_the_check_is_seeded_and_samples(digits: np.ndarray) -> None:
    assert mirror_check(digits, seed=3, sample=500) == mirror_check(digits, seed=3, sample=500)
    assert mirror_check(digits, seed=3, sample=500).sample == 500
    # Too few images to tell: keep the mirrored views (the recipe's old default).
    assert mirror_check(digits[:2], seed=0).flip


@pytest.mark.parametrize(("steps", "epochs"), [
    (234, DEFAULT_BACKBONE_EPOCHS),  # Fashion-MNIST: 60,000 images in batches of 256
    (7, 143),  # digits: 1,617 training images
    (1, MIN_BACKBONE_STEPS),
    (0, MIN_BACKBONE_STEPS),
])
def test_backbone_epochs_reach_the_minimum_steps(steps: int, epochs: int) -> None:
    assert backbone_epochs(steps) == epochs


def test_dark_things_on_light_backgrounds_are_inverted(digits: np.ndarray) -> None:
    # White digits on black: their ink reaches the border in places (0.15 of it), no more.
    plain = background_check(digits, seed=0)
    assert plain.light_share == pytest.approx(0.1477, abs=1e-4) and not plain.invert
    assert plain.sample == len(digits)
    inverted = background_check(1.0 - digits, seed=0)
    assert inverted.light_share > LIGHT_BORDER_SHARE and inverted.invert
    # Colour channels are averaged: a light border in RGB is light too.
    assert background_check(np.repeat(1.0 - digits, 3, axis=-1), seed=0).invert


def test_no_one_light_background_is_left_as_it_is() -> None:
    rng = np.random.default_rng(0)
    noise = rng.random((300, 16, 16, 3), dtype=np.float32)  # half the border is light
    check = background_check(noise, seed=0)
    assert 0.45 < check.light_share < 0.55 and not check.invert
    assert not background_check(np.zeros((0, 8, 8, 1), np.float32), seed=0).invert
    # Seeded sample: the same images and seed measure the same.
    sampled = background_check(noise, seed=1, sample=50)
    assert sampled.sample == 50 and sampled == background_check(noise, seed=1, sample=50)

"""OrientationHistograms against hand-computed images and a plain NumPy reference."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.errors import ConfigError
from training.models.gradients import OrientationHistograms


def _reference(images: np.ndarray, cell: int = 4, bins: int = 9) -> np.ndarray:
    """The same histograms written out pixel by pixel (slow, obvious)."""
    grey = images.astype(np.float64).mean(axis=-1)
    n, height, width = grey.shape
    out = np.zeros((n, height // cell, width // cell, bins))
    for b in range(n):
        for i in range(height):
            for j in range(width):
                if i // cell >= height // cell or j // cell >= width // cell:
                    continue
                # Each component is zero where it cannot be centred (first/last column for x).
                gx = grey[b, i, j + 1] - grey[b, i, j - 1] if 0 < j < width - 1 else 0.0
                gy = grey[b, i + 1, j] - grey[b, i - 1, j] if 0 < i < height - 1 else 0.0
                magnitude = math.hypot(gx, gy)
                position = (math.atan2(gy, gx) % math.pi) / math.pi * bins - 0.5
                low = math.floor(position)
                share = position - low
                out[b, i // cell, j // cell, low % bins] += magnitude * (1 - share)
                out[b, i // cell, j // cell, (low + 1) % bins] += magnitude * share
    flat = out.reshape(n, -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norms > 0, norms, 1)


def test_a_vertical_edge_votes_for_zero_degrees_a_horizontal_one_for_ninety() -> None:
    images = np.zeros((2, 12, 12, 1), np.float32)
    images[0, :, 6:] = 1.0  # dark left, bright right: the gradient points along x (0 degrees)
    images[1, 6:, :] = 1.0  # the gradient points along y (90 degrees)
    out = OrientationHistograms()(images).numpy().reshape(2, 3, 3, 9)
    vertical = out[0].sum(axis=(0, 1))
    # 0 degrees sits halfway between the centres of bin 8 (170) and bin 0 (10).
    np.testing.assert_allclose(vertical[0], vertical[8], rtol=1e-6)
    assert vertical[0] > 0 and np.all(vertical[1:8] == 0)
    horizontal = out[1].sum(axis=(0, 1))
    assert horizontal[4] > 0 and np.count_nonzero(horizontal) == 1  # bin 4 is centred on 90
    # The edge lies between columns 5 and 6, both in the middle column of 4x4 cells: only
    # those cells vote, each with 2 x 4 pixels of gradient 1 (before the unit scaling).
    np.testing.assert_array_equal(np.count_nonzero(out[0], axis=-1), [[0, 2, 0]] * 3)
    np.testing.assert_allclose(out[0, :, 1, 0], 1 / math.sqrt(6), rtol=1e-5)


def test_unit_length_and_blank_images_stay_zero() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((4, 12, 12, 1)).astype(np.float32)
    images[2] = 0.3  # no edges anywhere
    out = OrientationHistograms()(images).numpy()
    assert out.shape == (4, 3 * 3 * 9)
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    np.testing.assert_allclose(np.linalg.norm(out[[0, 1, 3]], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out[2], 0.0)


@pytest.mark.parametrize(("shape", "cell", "bins"),
                         [((3, 28, 28, 1), 4, 9), ((2, 10, 9, 3), 4, 6), ((2, 8, 8, 1), 2, 4)])
def test_matches_the_pixel_by_pixel_reference(shape: tuple[int, ...], cell: int,
                                              bins: int) -> None:
    images = np.random.default_rng(1).random(shape).astype(np.float32)
    layer = OrientationHistograms(cell=cell, bins=bins)
    out = layer(images).numpy()
    assert out.shape == (shape[0], (shape[1] // cell) * (shape[2] // cell) * bins)
    assert layer.compute_output_shape(shape) == (shape[0], out.shape[1])
    np.testing.assert_allclose(out, _reference(images, cell, bins), atol=1e-5)


def test_colour_is_averaged_to_grey() -> None:
    grey = np.random.default_rng(2).random((2, 8, 8, 1)).astype(np.float32)
    layer = OrientationHistograms()
    np.testing.assert_allclose(layer(np.repeat(grey, 3, axis=-1)).numpy(), layer(grey).numpy(),
                               atol=1e-6)


def test_round_trips_through_a_saved_model(tmp_path: Path) -> None:
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, OrientationHistograms(name="hog")(inputs))
    images = np.random.default_rng(3).random((5, 8, 8, 1)).astype(np.float32)
    path = str(tmp_path / "hog")
    model.export(path, verbose=False)
    served = tf.saved_model.load(path).serve(tf.constant(images)).numpy()
    np.testing.assert_allclose(served, model.predict(images, verbose=0), atol=1e-6)
    copy = OrientationHistograms.from_config(model.get_layer("hog").get_config())
    assert (copy.cell, copy.bins) == (4, 9)


@pytest.mark.parametrize(("kwargs", "message"),
                         [({"cell": 0}, "cell must be an integer >= 1, got 0"),
                          ({"cell": 2.5}, "cell must be an integer >= 1"),
                          ({"bins": 1}, "bins must be an integer >= 2, got 1"),
                          ({"bins": True}, "bins must be an integer >= 2")])
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        OrientationHistograms(**kwargs)  # type: ignore[arg-type]


def test_images_smaller_than_a_cell_are_refused() -> None:
    with pytest.raises(ConfigError, match="images of 3x8 are smaller than one 4x4 cell"):
        OrientationHistograms()(np.zeros((1, 3, 8, 1), np.float32))
    with pytest.raises(ConfigError, match="fixed size"):
        OrientationHistograms().build((None, None, None, 1))

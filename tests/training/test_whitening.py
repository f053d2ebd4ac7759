"""PartialWhitening against a NumPy reference and hand-made data."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from training.errors import ConfigError
from training.models.whitening import PartialWhitening


def _reference(train: np.ndarray, x: np.ndarray, power: float) -> np.ndarray:
    mean = train.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(train - mean, rowvar=False))
    out = (x - mean) @ vectors * np.maximum(values, values.max() * 1e-6) ** -power
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _stretched(n: int = 500) -> np.ndarray:
    """Points spread 10 times more along one diagonal axis than along the other two."""
    rng = np.random.default_rng(0)
    axes = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    return (rng.normal(size=(n, 3)) * [10.0, 1.0, 1.0]) @ axes.T + [3.0, -1.0, 0.5]


@pytest.mark.parametrize("power", [0.1, 0.25, 0.5])
def test_matches_the_numpy_reference(power: float) -> None:
    train = _stretched()
    layer = PartialWhitening(power).adapt(train)
    new = np.random.default_rng(1).normal(size=(20, 3)) * 4
    np.testing.assert_allclose(layer(new.astype(np.float32)).numpy(),
                               _reference(train, new, power), atol=1e-5)


def test_full_whitening_evens_the_axes_and_partial_damps_them() -> None:
    train = _stretched(4000)
    spreads = {}
    for power in (0.25, 0.5):
        layer = PartialWhitening(power).adapt(train)
        rotated = (train - layer.mean.numpy()) @ layer.projection.numpy()
        spreads[power] = np.sort(rotated.std(axis=0))
    # Eigenvalues about 100, 1, 1: full whitening gives every axis a spread of 1; power 0.25
    # scales standard deviations 10 and 1 by 100 ** -0.25 and 1, so 10 becomes about 3.16.
    np.testing.assert_allclose(spreads[0.5], 1.0, rtol=1e-3)
    np.testing.assert_allclose(spreads[0.25], [1.0, 1.0, np.sqrt(10)], rtol=0.05)


def test_output_is_unit_length_and_constant_directions_stay_finite() -> None:
    train = _stretched()
    train = np.hstack([train, np.zeros((len(train), 1))])  # a direction that never varies
    layer = PartialWhitening(0.5).adapt(train)
    new = train[:5].astype(np.float32)
    new[:, -1] = 1e-3
    out = layer(new).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("power", "message"), [
    (0.0, "power must be a number in (0, 0.5] (0.5 is full whitening), got 0.0"),
    (0.75, "power must be a number in (0, 0.5]"),
    (float("nan"), "power must be a number in (0, 0.5]"),
    (True, "power must be a number in (0, 0.5]"),
    ("0.25", "power must be a number in (0, 0.5]"),
])
def test_bad_power_is_refused(power: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        PartialWhitening(power)  # type: ignore[arg-type]
    assert message in str(info.value)


@pytest.mark.parametrize(("data", "message"), [
    (np.zeros((1, 3)), "fitted on at least 2 vectors [n, dims], got shape (1, 3)"),
    (np.zeros(5), "got shape (5,)"),
    (np.array([[0.0, 1.0], [np.nan, 2.0]]), "the features hold NaN or inf values"),
    (np.ones((4, 3)), "the features do not vary (all rows equal)"),
])
def test_bad_fitting_data_is_refused(data: np.ndarray, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        PartialWhitening(0.25).adapt(data)
    assert message in str(info.value)


def test_dims_must_match_what_the_layer_was_built_for() -> None:
    layer = PartialWhitening(0.25).adapt(_stretched())
    with pytest.raises(ConfigError, match="built for 3 dims, got 4"):
        layer.adapt(np.random.default_rng(0).normal(size=(10, 4)))


def test_saved_and_loaded_with_its_fitted_weights(tmp_path: Path) -> None:
    train = _stretched()
    inputs = keras.Input((3,))
    model = keras.Model(inputs, PartialWhitening(0.25, name="w")(inputs))
    model.get_layer("w").adapt(train)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = train[:7].astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)

"""The parametric neighbourhood head: UMAP's curve, config checks, training on a real graph."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from training.errors import ConfigError
from training.knn_graph import NeighborGraph, fuzzy_graph, nearest_neighbors
from training.models.umap_head import UmapHeadConfig, build_head, fit_head, similarity_curve

# A head small and quick enough for a 2-core CI machine.
SMALL: dict[str, Any] = {"n_neighbors": 8, "hidden": (16,), "batch_size": 256, "min_steps": 1}


@pytest.mark.parametrize(
    ("min_dist", "a", "b"),
    [
        # umap-learn's find_ab_params (spread 1): the values its docs and code comments quote.
        (0.0, 1.929, 0.7915),
        (0.1, 1.577, 0.8951),
    ],
)
def test_similarity_curve_matches_umap(min_dist: float, a: float, b: float) -> None:
    fitted_a, fitted_b = similarity_curve(min_dist)
    assert fitted_a == pytest.approx(a, abs=0.01)
    assert fitted_b == pytest.approx(b, abs=0.01)


def test_similarity_curve_is_a_probability_falling_with_distance() -> None:
    a, b = similarity_curve(0.0)
    d = np.linspace(0.0, 3.0, 31)
    q = 1.0 / (1.0 + a * d ** (2 * b))
    assert q[0] == 1.0
    assert np.all(np.diff(q) < 0) and np.all(q > 0)


# --- UmapHeadConfig -----------------------------------------------------------------------------


def test_default_head_config_is_valid() -> None:
    config = UmapHeadConfig()
    assert config.n_neighbors == 15 and config.min_dist == 0.0 and config.min_steps == 1000


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_neighbors", 0, "head n_neighbors must be a positive integer, got 0"),
        ("negatives", -1, "head negatives"),
        ("epochs", 1.5, "head epochs"),
        ("batch_size", True, "head batch_size"),
        ("max_points", 0, "head max_points"),
        ("min_steps", 0, "head min_steps"),
        ("hidden", (16, 0), "head hidden sizes must be positive integers"),
        ("hidden", (16.0,), "head hidden sizes"),
        ("hidden", (True,), "head hidden sizes"),
        ("min_dist", 1.0, "head min_dist must be in [0, 1), got 1.0"),
        ("min_dist", -0.1, "head min_dist"),
        ("min_dist", float("nan"), "head min_dist"),
        ("learning_rate", 0.0, "head learning_rate must be > 0"),
        ("learning_rate", float("inf"), "head learning_rate"),
        ("learning_rate", float("nan"), "head learning_rate"),
    ],
)
def test_bad_head_config_raises(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        UmapHeadConfig(**{field: value})
    assert message in str(info.value)


def test_build_head_shapes_and_names() -> None:
    head = build_head(12, 3, (16, 8))
    assert head.input_shape == (None, 12) and head.output_shape == (None, 3)
    assert [layer.name for layer in head.layers[1:]] == ["head_dense_0", "head_dense_1",
                                                         "head_embedding"]
    out = head.predict(np.zeros((5, 12), dtype=np.float32), verbose=0)
    assert out.shape == (5, 3)
    assert build_head(12, 2, ()).count_params() == 12 * 2 + 2


# --- fit_head -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray, NeighborGraph]:
    """Two well separated Gaussian blobs in 10-D and their fuzzy 8-NN graph."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    centres = np.zeros((2, 10))
    centres[1, 0] = 6.0
    features = (centres[labels] + rng.normal(size=(200, 10))).astype(np.float32)
    graph = fuzzy_graph(*nearest_neighbors(features, SMALL["n_neighbors"]))
    return features, labels, graph


def _separation(z: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance to the own blob's centre over the distance between the centres."""
    centres = np.stack([z[labels == c].mean(axis=0) for c in (0, 1)])
    spread = np.linalg.norm(z - centres[labels], axis=1).mean()
    return float(spread / np.linalg.norm(centres[0] - centres[1]))


def test_fit_head_separates_two_blobs(
        blobs: tuple[np.ndarray, np.ndarray, NeighborGraph]) -> None:
    features, labels, graph = blobs
    keras.utils.set_random_seed(0)
    head = build_head(10, 2, SMALL["hidden"])
    before = _separation(head.predict(features, verbose=0), labels)
    config = UmapHeadConfig(epochs=30, learning_rate=1e-2, **SMALL)
    losses = fit_head(head, features, graph, config, seed=0)
    assert len(losses) == 30
    assert all(np.isfinite(losses))
    # Same-blob negatives keep the loss well above 0, but it must fall.
    assert np.mean(losses[-3:]) < 0.95 * np.mean(losses[:3])
    z = head.predict(features, verbose=0)
    ids = KMeans(2, n_init=10, random_state=0).fit_predict(z)
    assert adjusted_rand_score(labels, ids) > 0.9
    # Neighbours pulled together, random pairs pushed apart: blobs tighter than before.
    assert _separation(z, labels) < before


def test_min_steps_sets_the_number_of_epochs_on_small_graphs(
        blobs: tuple[np.ndarray, np.ndarray, NeighborGraph]) -> None:
    features, _, graph = blobs
    head = build_head(10, 2, (4,))
    # One batch holds every edge: one step per epoch, so 7 steps need 7 epochs.
    config = UmapHeadConfig(n_neighbors=8, epochs=2, batch_size=graph.n_edges, min_steps=7,
                        hidden=(4,))
    assert len(fit_head(head, features, graph, config)) == 7
    # Two batches per epoch: ceil(7 / 2) = 4 epochs.
    config = UmapHeadConfig(n_neighbors=8, epochs=2, batch_size=graph.n_edges - 1, min_steps=7,
                        hidden=(4,))
    assert len(fit_head(head, features, graph, config)) == 4
    # More epochs than min_steps needs: epochs wins.
    config = UmapHeadConfig(n_neighbors=8, epochs=3, batch_size=graph.n_edges, min_steps=2,
                        hidden=(4,))
    assert len(fit_head(head, features, graph, config)) == 3


def test_fit_head_is_reproducible(blobs: tuple[np.ndarray, np.ndarray, NeighborGraph]) -> None:
    features, _, graph = blobs
    config = UmapHeadConfig(epochs=2, **SMALL)
    outputs = []
    for _ in range(2):
        keras.utils.set_random_seed(1)
        head = build_head(10, 2, SMALL["hidden"])
        fit_head(head, features, graph, config, seed=3)
        outputs.append(head.predict(features[:20], verbose=0))
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-6)


def test_mismatched_features_and_graph_raise(
        blobs: tuple[np.ndarray, np.ndarray, NeighborGraph]) -> None:
    features, _, graph = blobs
    head = build_head(10, 2, (4,))
    config = UmapHeadConfig(epochs=1, **SMALL)
    with pytest.raises(ConfigError, match=r"features \(150, 10\) do not match a graph of 200"):
        fit_head(head, features[:150], graph, config)
    with pytest.raises(ConfigError, match="do not match"):
        fit_head(head, features.ravel(), graph, config)
    empty = NeighborGraph(n=200, heads=np.zeros(0, np.int64), tails=np.zeros(0, np.int64),
                          weights=np.zeros(0))
    with pytest.raises(ConfigError, match="no edges"):
        fit_head(head, features, empty, config)


def test_non_finite_features_raise_instead_of_silently_breaking_the_head(
        blobs: tuple[np.ndarray, np.ndarray, NeighborGraph]) -> None:
    features, _, graph = blobs
    head = build_head(10, 2, (4,))
    poisoned = features.copy()
    poisoned[0, 0] = np.nan
    config = UmapHeadConfig(epochs=2, **SMALL)
    with pytest.raises(ConfigError, match="NaN or infinite"):
        fit_head(head, poisoned, graph, config)

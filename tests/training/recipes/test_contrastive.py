"""The contrastive recipe end to end: config checks, CLI wiring, a real digits bundle served."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from service import bundle
from service.runtime import ModelRuntime
from training.cli import build_parser, main, model_options, preset_options
from training.config import ContrastiveConfig, flags, flat, model_config
from training.data import DataOptions, to_numpy
from training.errors import ConfigError
from training.evaluate import load_bundle
from training.job import TrainJob, TrainResult, run_training
from training.models.gradients import OrientationHistograms
from training.recipes import FittedNetworks

# Small enough for 2 cores: the stages' own minimum step counts set most of the run time.
# Keys are `train`'s option names (training.config.flags()).
SMALL: dict[str, Any] = {
    "latent": 4, "backbone_filters": (8, 16), "feature_dim": 32, "head_hidden": (32,),
    "head_epochs": 1, "decoder_epochs": 1, "neighbors": 5, "decoder_filters": (8, 8),
    "epochs": 2, "batch_size": 128,
}


def _config(**changes: Any) -> ContrastiveConfig:
    config = model_config("contrastive", {**SMALL, **changes})
    assert isinstance(config, ContrastiveConfig)
    return config


# --- config -------------------------------------------------------------------------------------


def test_contrastive_config_defaults_and_parts() -> None:
    config = ContrastiveConfig()
    assert config.head.joint_embedding is True  # the best recipe measured is the default
    assert (config.graph.neighbors, config.head.epochs, config.head.hidden,
            config.head.min_dist) == (15, 5, (256, 256), 0.0)
    # Left to the training images (training.recipes.choices): epochs and mirrored views.
    assert (config.epochs, config.batch_size, config.latent_dim) == (None, 256, 10)
    assert config.backbone.view_flip is None
    assert config.graph.max_points == 70_000 and config.decoder.filters == (32, 32, 32)
    small = _config()
    assert small.graph.neighbors == 5 and small.head.hidden == (32,)
    # Lists and NumPy integers are accepted and normalised.
    loose: dict[str, Any] = {"backbone_filters": [8, np.int64(16)], "head_hidden": [32],
                             "feature_dim": np.int64(32), "temperature": 1}
    listed = model_config("contrastive", loose)
    assert isinstance(listed, ContrastiveConfig)
    assert listed.backbone.filters == (8, 16) and listed.head.hidden == (32,)
    assert type(listed.backbone.feature_dim) is int and type(listed.backbone.temperature) is float


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loss": "perceptual"}, "--loss does not apply to --model contrastive; it is an option "
                                 "of --model dense, conv, vae"),
        ({"kl_weight": 0.5}, "--kl-weight does not apply to --model contrastive"),
        ({"temperature": 0.0}, "--temperature: Input should be greater than 0, got 0.0"),
        ({"temperature": -1.0}, "--temperature"),
        ({"temperature": float("nan")}, "--temperature: Input should be a finite number"),
        ({"temperature": "0.5"}, "--temperature: Input should be a valid number, got '0.5'"),
        ({"min_crop": 0.0}, "--min-crop: Input should be greater than 0, got 0.0"),
        ({"min_crop": 1.01}, "--min-crop: Input should be less than or equal to 1"),
        ({"neighbors": 0}, "--neighbors: Input should be greater than or equal to 1, got 0"),
        ({"neighbors": 2.5}, "--neighbors: Input should be a valid integer"),
        ({"head_epochs": 0}, "--head-epochs"),
        ({"graph_max_points": -1}, "--graph-max-points"),
        ({"decoder_epochs": 0}, "--decoder-epochs"),
        ({"decoder_filters": ()}, "--decoder-filters"),
        ({"feature_dim": 0}, "--feature-dim"),
        ({"head_min_dist": 1.0}, "--head-min-dist: Input should be less than 1, got 1.0"),
        ({"backbone_filters": ()}, "--backbone-filters: Tuple should have at least 1 item"),
        ({"backbone_filters": (8, 0)}, "--backbone-filters"),
        ({"head_hidden": (32, -1)}, "--head-hidden"),
        ({"batch_size": 1}, "--batch-size: Input should be greater than or equal to 2"),
        ({"epochs": -1}, "--epochs"),
        ({"view_flip": "no"}, "--view-flip: Input should be a valid boolean, got 'no'"),
        ({"view_flip": 0}, "--view-flip: Input should be a valid boolean"),
        ({"view_relight": "yes"}, "--view-relight"),
        ({"joint_embedding": 1}, "--joint-embedding"),
        ({"graph_communities": 1}, "--graph-communities: must be 0 (off) or an integer >= 2, "
                                   "got 1"),
        ({"graph_communities": -3}, "--graph-communities"),
        ({"graph_communities": 2.5}, "--graph-communities: Input should be a valid integer"),
        ({"graph_communities": True}, "--graph-communities: Input should be a valid integer"),
        ({"community_searches": 0}, "--community-searches"),
        ({"community_searches": 1.5}, "--community-searches"),
        ({"coarse_communities": 1}, "--coarse-communities: must be 0 (off) or an integer >= 2"),
        ({"coarse_communities": -2}, "--coarse-communities"),
        ({"graph_communities": 10, "coarse_communities": 10},
         "--coarse-communities (10) must be fewer than --graph-communities (10), which they "
         "are split into"),
        ({"coarse_communities": 5}, "--coarse-communities (5) must be fewer than "
                                    "--graph-communities (0)"),
        ({"hog_weight": -0.5}, "--hog-weight: Input should be greater than or equal to 0, "
                               "got -0.5"),
        ({"hog_weight": float("inf")}, "--hog-weight: Input should be a finite number"),
        ({"graph_whitening": 0.6}, "--graph-whitening: Input should be less than or equal to "
                                   "0.5, got 0.6"),
        ({"graph_whitening": "0.25"}, "--graph-whitening"),
        ({"momentum": 0.9}, "unknown option 'momentum'"),
    ],
)
def test_bad_contrastive_config_raises(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(**changes)
    assert message in str(info.value)


def test_one_declaration_gives_the_flag_the_field_and_the_check() -> None:
    # Every flag of a model kind sets exactly one field of its config, and back.
    table = flags()
    for kind in ("conv", "contrastive"):
        paths = [entry.paths[kind] for entry in table.values() if kind in entry.paths]
        assert len(paths) == len(set(paths))
        config = model_config(kind)
        assert set(flat(config)) == {"kind"} | {d for d, e in table.items() if kind in e.paths}
    assert table["min_crop"].paths == {"contrastive": ("backbone", "min_crop")}
    assert table["epochs"].paths["contrastive"] == ("backbone", "epochs")
    assert table["epochs"].paths["conv"] == ("epochs",)


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("repo") / "digits" / "1"
    job = TrainJob(dataset="digits", out=out, data=DataOptions(val_fraction=0.1, seed=0),
                   model=_config(), clusters=10, seed=0)
    return run_training(job)


@pytest.fixture(scope="module")
def inverted(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The small recipe on the digits inverted (1 - x: dark digits on white), seed 0."""
    digits = load_digits()
    archive = tmp_path_factory.mktemp("inverted") / "digits.npz"
    np.savez(archive, x=(1.0 - digits.images / 16.0).astype(np.float32)[..., None],
             y=digits.target)
    out = tmp_path_factory.mktemp("repo") / "inverted" / "1"
    job = TrainJob(dataset=f"npz:{archive}", out=out,
                   data=DataOptions(val_fraction=0.1, seed=0), model=_config(), clusters=10,
                   seed=0)
    return run_training(job)


def test_light_backgrounds_are_inverted_inside_the_bundle(trained: TrainResult,
                                                          inverted: TrainResult) -> None:
    options = bundle.read_manifest(inverted.out).training.hyperparameters
    assert options["invert"] is True and options["light_border_share"] > 2 / 3
    plain = bundle.read_manifest(trained.out).training.hyperparameters
    assert plain["invert"] is False and plain["light_border_share"] < 0.2
    # 1 - k/16 is exact in float32, so fitted on 1 - (1 - x) the recipe saw exactly what it
    # saw on the digits: the same model, which inverts what callers send and what it returns.
    assert trained.data.heldout is not None
    images, _ = to_numpy(trained.data.heldout)
    ours, theirs = load_bundle(inverted.out), load_bundle(trained.out)
    z = np.asarray(theirs.encode(tf.constant(images)))
    z_inverted = np.asarray(ours.encode(tf.constant(1.0 - images)))
    np.testing.assert_allclose(z_inverted, z, atol=1e-5)
    np.testing.assert_array_equal(bundle.assign(z_inverted, ours.centroids)[0],
                                  bundle.assign(z, theirs.centroids)[0])
    reconstruction = np.asarray(ours.decode(tf.constant(z_inverted)))
    np.testing.assert_allclose(reconstruction, 1.0 - np.asarray(theirs.decode(tf.constant(z))),
                               atol=1e-5)
    # The same scores: clusters exactly, reconstruction up to the rounding of 1 - (1 - y).
    ours_scores, theirs_scores = inverted.manifest.evaluation, trained.manifest.evaluation
    assert ours_scores.keys() == theirs_scores.keys()
    for name, value in theirs_scores.items():
        if name.startswith("reconstruction_"):
            assert ours_scores[name] == pytest.approx(value, rel=1e-6), name
        else:
            assert ours_scores[name] == value, name


def test_bundle_records_the_recipe(trained: TrainResult) -> None:
    manifest = bundle.read_manifest(trained.out)
    bundle.verify_checksums(trained.out, manifest)
    info = manifest.training
    assert info.model_kind == "contrastive" and info.loss == "mse"
    assert info.labels_used is False
    # The default joint embedding: latent 4 from the head, 128 from the SimCLR projector.
    assert manifest.latent_dim == 132 and manifest.n_clusters == 10
    assert info.n_train == 1617 and info.n_heldout == 180
    hp = info.hyperparameters
    assert hp["kind"] == "contrastive" and hp["backbone_filters"] == [8, 16]
    assert (hp["feature_dim"], hp["neighbors"], hp["epochs"], hp["batch_size"]) == (
        32, 5, 2, 128)
    assert "loss" not in hp and "kl_weight" not in hp  # only the recipe's own options
    # Left to the data: digits' mirror images are no digits, so the views are not mirrored.
    assert hp["view_flip"] is False and hp["mirror_ratio"] > 1.3
    assert {"loss", "head_loss", "decoder_loss"} <= set(info.final_losses)


def test_history_has_every_stage(trained: TrainResult) -> None:
    history = trained.history
    assert {"loss", "head_loss", "decoder_loss"} <= set(history)
    assert len(history["loss"]) == 2
    # head_epochs and decoder_epochs are 1, but each stage trains a minimum number of steps.
    assert len(history["head_loss"]) > 1
    # The decoder: 1617 images in batches of 256 are 7 steps an epoch; 1000 steps at least.
    assert len(history["decoder_loss"]) == 143
    for name in ("loss", "head_loss", "decoder_loss"):
        assert all(np.isfinite(history[name])), name
    assert history["head_loss"][-1] < history["head_loss"][0]
    assert history["decoder_loss"][-1] < history["decoder_loss"][0]
    saved = json.loads((trained.out / "report" / "history.json").read_text())
    assert saved.keys() == history.keys()
    for name, values in history.items():
        np.testing.assert_allclose(saved[name], values, rtol=1e-12)
    assert isinstance(trained.model, FittedNetworks)
    # Only a graph-communities bundle has a partition to report.
    assert trained.model.communities is None
    assert not (trained.out / "report" / "communities.json").exists()


def test_exported_encoder_matches_the_trained_one(trained: TrainResult) -> None:
    assert trained.data.heldout is not None
    images, _ = to_numpy(trained.data.heldout)
    keras_z = trained.model.encoder.predict(images, verbose=0)
    keras_r = trained.model.decoder.predict(keras_z, verbose=0)
    loaded = load_bundle(trained.out)
    assert loaded.manifest.training.model_kind == "contrastive"
    saved_z = np.asarray(loaded.encode(tf.constant(images)))
    saved_r = np.asarray(loaded.decode(tf.constant(saved_z)))
    assert saved_z.shape == (180, 132) and saved_r.shape == (180, 8, 8, 1)
    np.testing.assert_allclose(saved_z, keras_z, atol=1e-5)
    np.testing.assert_allclose(saved_r, keras_r, atol=1e-5)
    ids, _ = bundle.assign(saved_z, loaded.centroids)
    np.testing.assert_array_equal(ids, trained.kmeans.estimator.predict(keras_z))


def test_the_tfserving_model_carries_the_fitted_layers(trained: TrainResult) -> None:
    # The version root's SavedModel (training/tfserving.py) for the default recipe, whose
    # encoder and decoder hold custom layers (unit norms, the scaled head beside the
    # projector): it answers as the service's runtime. The K = 20 preset's layers (edge
    # histograms, whitening, community head) are checked by the slow graph tests below.
    version = trained.out
    manifest = bundle.read_manifest(version)
    runtime = ModelRuntime(version, manifest, bundle.load_centroids(version, manifest),
                           device="/CPU:0", batch_sizes=(1, 8))
    assert trained.data.heldout is not None
    held, _ = to_numpy(trained.data.heldout)
    served = runtime.run(held[:8], with_reconstruction=True)
    answer = tf.saved_model.load(str(version)).signatures[bundle.SIGNATURE](
        images=tf.constant(held[:8]))
    np.testing.assert_array_equal(answer["cluster_id"].numpy(), served.cluster_id)
    np.testing.assert_allclose(answer["distance"].numpy(), served.distance, rtol=0, atol=1e-5)
    np.testing.assert_allclose(answer["reconstruction"].numpy(), served.reconstruction,
                               rtol=0, atol=1e-5)


def test_service_serves_the_bundle(trained: TrainResult) -> None:
    manifest = bundle.read_manifest(trained.out)
    centroids = bundle.load_centroids(trained.out, manifest)
    runtime = ModelRuntime(trained.out, manifest, centroids, device="/CPU:0", batch_sizes=(1, 8))
    runtime.warmup()
    images, _ = to_numpy(trained.data.train)
    out = runtime.run(images[:8], with_reconstruction=True)
    expected = trained.model.encoder.predict(images[:8], verbose=0)
    np.testing.assert_allclose(out.embedding, expected, atol=1e-5)
    np.testing.assert_array_equal(out.cluster_id, trained.kmeans.estimator.predict(expected))
    assert out.reconstruction is not None and out.reconstruction.shape == (8, 8, 8, 1)


def test_joint_embedding_is_the_scaled_head_beside_the_unit_projector(
        trained: TrainResult) -> None:
    manifest = bundle.read_manifest(trained.out)
    # latent 4 from the head, 128 from the SimCLR projector.
    assert manifest.latent_dim == 132
    assert manifest.training.hyperparameters["joint_embedding"] is True
    images, _ = to_numpy(trained.data.train)
    encoder = trained.model.encoder
    z = encoder.predict(images, verbose=0)
    head_part, projected = z[:, :4], z[:, 4:]
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-5)
    # The head's part is rescaled to a total spread of 1 over the training images.
    assert np.sqrt(np.sum(np.var(head_part, axis=0))) == pytest.approx(1.0, rel=1e-3)
    # It is the head's own output, rescaled: the same directions, one common factor.
    head = encoder.get_layer("neighborhood_head")
    features = encoder.get_layer("features_unit_norm")(encoder.get_layer("backbone")(images))
    raw = head.predict(np.asarray(features), verbose=0)
    factor = raw / head_part
    np.testing.assert_allclose(factor, factor.flat[0], rtol=1e-4)
    # Served exactly as trained: the exported encoder, the decoder on 132 numbers, k-means.
    loaded = load_bundle(trained.out)
    saved_z = np.asarray(loaded.encode(tf.constant(images[:16])))
    np.testing.assert_allclose(saved_z, z[:16], atol=1e-5)
    assert np.asarray(loaded.decode(tf.constant(saved_z))).shape == (16, 8, 8, 1)
    assert loaded.centroids.shape == (10, 132)
    assert trained.manifest.evaluation["hungarian_accuracy"] > 0.3


@pytest.fixture(scope="module")
def head_only(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("repo") / "head_only" / "1"
    job = TrainJob(dataset="digits", out=out, data=DataOptions(val_fraction=0.1, seed=0),
                   model=_config(**{"joint_embedding": False}),
                   clusters=10, seed=0)
    return run_training(job)


# Slow (about 18 s): `--no-joint-embedding`, an option off the default path; `make test-slow`.
@pytest.mark.slow
def test_head_only_embedding_has_no_projector_part(head_only: TrainResult) -> None:
    names = {layer.name for layer in head_only.model.encoder.layers}
    assert "joint_embedding" not in names and "projector" not in names
    assert head_only.model.encoder.output_shape == (None, 4)
    manifest = bundle.read_manifest(head_only.out)
    assert manifest.latent_dim == 4
    assert manifest.training.hyperparameters["joint_embedding"] is False
    loaded = load_bundle(head_only.out)
    assert head_only.data.heldout is not None
    images, _ = to_numpy(head_only.data.heldout)
    saved_z = np.asarray(loaded.encode(tf.constant(images)))
    np.testing.assert_allclose(saved_z, head_only.model.encoder.predict(images, verbose=0),
                               atol=1e-5)
    assert loaded.centroids.shape == (10, 4)
    assert head_only.manifest.evaluation["hungarian_accuracy"] > 0.3


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("repo") / "graph" / "1"
    job = TrainJob(dataset="digits", out=out, data=DataOptions(val_fraction=0.1, seed=0),
                   model=_config(**{"graph_communities": 12}),
                   clusters=10, seed=0)
    return run_training(job)


# Slow (about 15-25 s each): the graph-communities options of the K = 20 preset, not the
# default path; `make test-slow` runs them.
@pytest.mark.slow
def test_graph_communities_embed_as_community_probabilities(graph: TrainResult) -> None:
    encoder = graph.model.encoder
    names = {layer.name for layer in encoder.layers}
    assert "community_head" in names
    assert "neighborhood_head" not in names and "joint_embedding" not in names
    assert encoder.output_shape == (None, 12)
    manifest = bundle.read_manifest(graph.out)
    assert manifest.latent_dim == 12
    assert manifest.training.hyperparameters["graph_communities"] == 12
    assert "community_loss" in graph.history and "head_loss" not in graph.history
    losses = graph.history["community_loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    images, _ = to_numpy(graph.data.train)
    z = encoder.predict(images, verbose=0)
    # Probabilities over the 12 communities, and the head has learnt to commit to one.
    np.testing.assert_allclose(z.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(z >= 0) and np.median(z.max(axis=1)) > 0.5
    assert len(np.unique(z.argmax(axis=1))) >= 10
    # Served exactly as trained: exported encoder, decoder on 12 numbers, 10 centroids.
    loaded = load_bundle(graph.out)
    assert graph.data.heldout is not None
    held, _ = to_numpy(graph.data.heldout)
    saved_z = np.asarray(loaded.encode(tf.constant(held)))
    np.testing.assert_allclose(saved_z, encoder.predict(held, verbose=0), atol=1e-5)
    assert np.asarray(loaded.decode(tf.constant(saved_z))).shape == (180, 8, 8, 1)
    assert loaded.centroids.shape == (10, 12)
    assert graph.manifest.evaluation["hungarian_accuracy"] > 0.3
    # The bundle reports the partition the head learnt: every training image (the graph
    # samples all 1617) in one of 12 communities, and how well the head predicts them.
    report = json.loads((graph.out / "report" / "communities.json").read_text())
    assert report == graph.model.communities
    assert report["count"] == 12 and len(report["sizes"]) == 12
    assert sum(report["sizes"]) == report["graph_points"] == graph.data.train.size
    assert min(report["sizes"]) >= 1
    assert (report["searches"], report["neighbors"]) == (1, SMALL["neighbors"])
    shares = np.array(report["sizes"]) / sum(report["sizes"])
    assert report["effective_count"] == pytest.approx(np.exp(-(shares * np.log(shares)).sum()),
                                                      abs=1e-3)
    assert 0 < report["modularity"] < 1 and report["resolution"] > 0
    assert 0.5 < report["head_agreement"] <= 1


# Slow (about 15-25 s each): the graph-communities options of the K = 20 preset, not the
# default path; `make test-slow` runs them.
@pytest.mark.slow
def test_graph_communities_repeat_from_the_seed(graph: TrainResult, tmp_path: Path) -> None:
    # The communities and the head come from the seed alone: a second run gives the same
    # bundle's embeddings and centroids.
    job = TrainJob(dataset="digits", out=tmp_path / "again" / "1",
                   data=DataOptions(val_fraction=0.1, seed=0),
                   model=_config(**{"graph_communities": 12}),
                   clusters=10, seed=0)
    again = run_training(job)
    np.testing.assert_allclose(load_bundle(again.out).centroids, load_bundle(graph.out).centroids,
                               atol=1e-6)


@pytest.fixture(scope="module")
def graph_hog(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("repo") / "graph-hog" / "1"
    job = TrainJob(dataset="digits", out=out, data=DataOptions(val_fraction=0.1, seed=0),
                   model=_config(**{"graph_communities": 12, "hog_weight": 0.5}),
                   clusters=10, seed=0)
    return run_training(job)


# Slow (about 15-25 s each): the graph-communities options of the K = 20 preset, not the
# default path; `make test-slow` runs them.
@pytest.mark.slow
def test_hog_weight_joins_edge_histograms_inside_the_encoder(graph_hog: TrainResult,
                                                             graph: TrainResult) -> None:
    encoder = graph_hog.model.encoder
    names = {layer.name for layer in encoder.layers}
    assert {"orientation_histograms", "hog_weight", "graph_features", "community_head"} <= names
    # The head sees 32 unit backbone features and 0.5 x 36 histogram numbers (8x8 digits:
    # 2x2 cells of 9 bins).
    head = encoder.get_layer("community_head")
    assert head.layers[0].kernel.shape[0] == 32 + 36
    # The embedding is the head applied to [unit backbone features ; 0.5 x histograms].
    images, _ = to_numpy(graph_hog.data.train)
    images = images[:50]
    backbone = encoder.get_layer("backbone")(images).numpy()
    joined = np.hstack([backbone / np.linalg.norm(backbone, axis=1, keepdims=True),
                        0.5 * OrientationHistograms()(images).numpy()])
    np.testing.assert_allclose(head(joined).numpy(), encoder.predict(images, verbose=0),
                               atol=1e-5)
    manifest = bundle.read_manifest(graph_hog.out)
    assert manifest.training.hyperparameters["hog_weight"] == 0.5
    assert bundle.read_manifest(graph.out).training.hyperparameters["hog_weight"] == 0.0
    # Served exactly as trained: the exported encoder computes the histograms itself.
    loaded = load_bundle(graph_hog.out)
    assert graph_hog.data.heldout is not None
    held, _ = to_numpy(graph_hog.data.heldout)
    np.testing.assert_allclose(np.asarray(loaded.encode(tf.constant(held))),
                               encoder.predict(held, verbose=0), atol=1e-5)
    # And the service's runtime (batched SavedModel calls, nearest centroid) answers the same.
    runtime = ModelRuntime(graph_hog.out, manifest, bundle.load_centroids(graph_hog.out, manifest),
                           device="/CPU:0", batch_sizes=(1, 8))
    runtime.warmup()
    served = runtime.run(held[:8], with_reconstruction=False)
    expected = encoder.predict(held[:8], verbose=0)
    np.testing.assert_allclose(served.embedding, expected, atol=1e-5)
    np.testing.assert_array_equal(served.cluster_id, graph_hog.kmeans.estimator.predict(expected))
    # The histograms change the graph, hence the communities the head learnt.
    assert not np.allclose(load_bundle(graph.out).centroids, loaded.centroids, atol=1e-3)
    assert graph_hog.manifest.evaluation["hungarian_accuracy"] > 0.3


@pytest.fixture(scope="module")
def graph_whitened(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("repo") / "graph-whitened" / "1"
    job = TrainJob(dataset="digits", out=out, data=DataOptions(val_fraction=0.1, seed=0),
                   model=_config(**{"graph_communities": 12, "hog_weight": 0.5,
                                        "graph_whitening": 0.25}),
                   clusters=10, seed=0)
    return run_training(job)


# Slow (about 15-25 s each): the graph-communities options of the K = 20 preset, not the
# default path; `make test-slow` runs them.
@pytest.mark.slow
def test_graph_whitening_is_fitted_on_the_training_images_and_served_as_trained(
        graph_whitened: TrainResult, graph_hog: TrainResult) -> None:
    encoder = graph_whitened.model.encoder
    names = {layer.name for layer in encoder.layers}
    assert {"features_whitening", "hog_whitening", "orientation_histograms",
            "community_head"} <= names
    assert "features_whitening" not in {layer.name for layer in graph_hog.model.encoder.layers}
    # Fitted on the training images: the whitened training features have zero mean before
    # their unit scaling, and the mean the layer keeps is theirs.
    images, _ = to_numpy(graph_whitened.data.train)
    features = encoder.get_layer("backbone").predict(images, verbose=0)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    layer = encoder.get_layer("features_whitening")
    np.testing.assert_allclose(layer.mean.numpy(), unit.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(((unit - layer.mean.numpy()) @ layer.projection.numpy())
                               .mean(axis=0), 0.0, atol=1e-5)
    # The embedding is the head on [whitened unit features ; 0.5 x whitened histograms].
    joined = np.hstack([layer(unit).numpy(), 0.5 * encoder.get_layer("hog_whitening")(
        OrientationHistograms()(images).numpy()).numpy()])
    np.testing.assert_allclose(encoder.get_layer("community_head")(joined[:50]).numpy(),
                               encoder.predict(images[:50], verbose=0), atol=1e-5)
    hp = bundle.read_manifest(graph_whitened.out).training.hyperparameters
    assert hp["graph_whitening"] == 0.25
    assert bundle.read_manifest(graph_hog.out).training.hyperparameters["graph_whitening"] == 0.0
    # The exported encoder and the service's runtime carry the fitted layers.
    assert graph_whitened.data.heldout is not None
    held, _ = to_numpy(graph_whitened.data.heldout)
    expected = encoder.predict(held, verbose=0)
    np.testing.assert_allclose(np.asarray(load_bundle(graph_whitened.out).encode(
        tf.constant(held))), expected, atol=1e-5)
    manifest = bundle.read_manifest(graph_whitened.out)
    runtime = ModelRuntime(graph_whitened.out, manifest,
                           bundle.load_centroids(graph_whitened.out, manifest),
                           device="/CPU:0", batch_sizes=(1, 8))
    runtime.warmup()
    served = runtime.run(held[:8], with_reconstruction=True)
    np.testing.assert_allclose(served.embedding, expected[:8], atol=1e-5)
    # So does the version root's SavedModel (training/tfserving.py), which TF Serving loads.
    answer = tf.saved_model.load(str(graph_whitened.out)).signatures[bundle.SIGNATURE](
        images=tf.constant(held[:8]))
    np.testing.assert_array_equal(answer["cluster_id"].numpy(), served.cluster_id)
    np.testing.assert_allclose(answer["reconstruction"].numpy(), served.reconstruction,
                               rtol=0, atol=1e-5)
    # Whitening changes the graph, hence the communities.
    assert not np.allclose(load_bundle(graph_hog.out).centroids,
                           load_bundle(graph_whitened.out).centroids, atol=1e-3)


# Slow (about 30-40 s): an option of the K = 20 preset, not the default path; `make test-slow`.
@pytest.mark.slow
def test_hog_weight_feeds_the_neighbourhood_head_too(tmp_path: Path) -> None:
    job = TrainJob(dataset="digits", out=tmp_path / "hog" / "1",
                   data=DataOptions(val_fraction=0.1, seed=0),
                   model=_config(**{"hog_weight": 1.0, "epochs": 1}),
                   clusters=10, seed=0)
    result = run_training(job)
    encoder = result.model.encoder
    assert "orientation_histograms" in {layer.name for layer in encoder.layers}
    first = encoder.get_layer("neighborhood_head").get_layer("head_dense_0")
    assert first.kernel.shape[0] == 32 + 36
    assert bundle.read_manifest(result.out).latent_dim == 4 + 128  # joint embedding as before
    held, _ = to_numpy(result.data.heldout)  # type: ignore[arg-type]
    np.testing.assert_allclose(np.asarray(load_bundle(result.out).encode(tf.constant(held))),
                               encoder.predict(held, verbose=0), atol=1e-5)


def test_clusters_beat_chance(trained: TrainResult) -> None:
    # Two backbone epochs and a 32-unit head: far from the recipe's real quality, but the
    # clusters must carry signal (chance is 0.1).
    assert trained.manifest.evaluation["hungarian_accuracy"] > 0.3


# --- CLI ----------------------------------------------------------------------------------------


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "0"], "error: --temperature: Input should be greater than 0, got 0.0"),
        (["--temperature", "x"], "argument --temperature: 'x' is not a number"),
        (["--neighbors", "0"], "--neighbors: Input should be greater than or equal to 1"),
        (["--head-epochs", "0"], "--head-epochs"),
        (["--decoder-epochs", "-2"], "--decoder-epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--min-crop", "0"], "--min-crop: Input should be greater than 0"),
        (["--min-crop", "1.5"], "--min-crop: Input should be less than or equal to 1"),
        (["--graph-communities", "1"], "--graph-communities: must be 0 (off) or an integer >= 2, "
                                       "got 1"),
        (["--graph-communities", "x"], "argument --graph-communities: 'x' is not an integer"),
        (["--hog-weight", "-1"], "--hog-weight: Input should be greater than or equal to 0"),
        (["--hog-weight", "nan"], "--hog-weight: Input should be a finite number"),
        (["--hog-weight", "x"], "--hog-weight"),
        (["--graph-whitening", "0.7"], "--graph-whitening: Input should be less than or equal to "
                                       "0.5, got 0.7"),
        (["--graph-whitening", "-0.1"], "--graph-whitening"),
        (["--graph-whitening", "x"], "--graph-whitening"),
        (["--backbone-filters", "32,0,64"], "--backbone-filters: Input should be greater than or "
                                            "equal to 1, got 0"),
        (["--backbone-filters", "32;64"], "'32;64' is not a comma-separated list of sizes"),
        (["--backbone-filters", ""], "--backbone-filters: Tuple should have at least 1 item"),
        (["--community-searches", "0"], "--community-searches"),
        (["--community-searches", "2.5"], "--community-searches"),
        (["--coarse-communities", "1"], "--coarse-communities: must be 0 (off) or an integer >= 2"),
        (["--coarse-communities", "x"], "--coarse-communities"),
        (["--kl-weight", "0.5"], "error: --kl-weight does not apply to --model contrastive; it "
                                 "is an option of --model dense, conv, vae"),
    ],
)
def test_bad_recipe_options_exit_2(args: list[str], message: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    # A value that does not parse stops argparse; one out of bounds stops the config: both
    # exit 2 with a sentence, before any data is read.
    out = tmp_path / "m" / "1"
    try:
        code = main(["train", "--model", "contrastive", "--out", str(out), *args])
    except SystemExit as info:
        code = int(info.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loss", "perceptual"], "error: --loss does not apply to --model contrastive"),
        (["--loss", "bce"], "error: --loss does not apply to --model contrastive"),
        (["--batch-size", "1"], "--batch-size: Input should be greater than or equal to 2"),
        (["--neighbors", "2000"], "needs more than 2000 training images (--neighbors), got 1617"),
        (["--graph-communities", "1700"],
         "1700 graph communities need at least as many training images; the graph has 1617"),
    ],
)
def test_impossible_combinations_exit_2_without_a_bundle(
        args: list[str], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m" / "1"
    code, _, err = _run(["train", "--dataset", "digits", "--model", "contrastive",
                         "--out", str(out), *args], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_parser_leaves_the_defaults_to_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["train", "--out", "x/m/1"])
    assert args.model == "contrastive"  # the measured best recipe is the default
    # Flags not given are left out: the config's own defaults apply, declared once.
    assert model_options(args) == {}
    assert model_config(args.model, model_options(args)) == ContrastiveConfig()
    given = parser.parse_args(["train", "--hog-weight", "0.5", "--graph-communities", "20",
                               "--no-view-flip", "--min-crop", "0.6", "--view-relight",
                               "--no-joint-embedding", "--backbone-filters", "8,16",
                               "--epochs", "3", "--batch-size", "32", "--out", "x/m/1"])
    config = model_config(given.model, model_options(given))
    assert isinstance(config, ContrastiveConfig)
    assert (config.graph.hog_weight, config.graph.communities) == (0.5, 20)
    assert (config.backbone.min_crop, config.backbone.view_flip,
            config.backbone.view_relight) == (0.6, False, True)
    assert config.head.joint_embedding is False and config.backbone.filters == (8, 16)
    assert (config.epochs, config.batch_size) == (3, 32)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 10 for dense, conv, vae; auto for contrastive)" in text
    assert "(default: 64 for dense, conv, vae; 256 for contrastive)" in text
    for option in ("--temperature", "--min-crop", "--no-view-flip", "--neighbors",
                   "--head-epochs", "--decoder-epochs", "--joint-embedding, --no-joint-embedding",
                   "--hog-weight", "--backbone-filters", "--graph-max-points", "--head-hidden",
                   "--decoder-filters", "--dense-units", "--conv-filters"):
        assert option in text


@pytest.mark.parametrize(("kind", "epochs", "batch_size"),
                         # None: decided from the training images (training.recipes.choices)
                         [("conv", 10, 64), ("dense", 10, 64), ("contrastive", None, 256)])
def test_train_job_records_the_recipe_defaults(kind: str, epochs: int | None, batch_size: int,
                                               tmp_path: Path) -> None:
    # The Python API and the CLI share one place for the defaults: the config classes.
    job = TrainJob(dataset="digits", out=tmp_path, data=DataOptions(), model=model_config(kind))
    assert (job.model.epochs, job.model.batch_size) == (epochs, batch_size)
    assert (job.hyperparameters()["epochs"], job.hyperparameters()["batch_size"]) == (
        epochs, batch_size)
    given = model_config(kind, {"epochs": 0, "batch_size": 8})
    assert (given.epochs, given.batch_size) == (0, 8)


class _InterruptAfterFirstEpoch(logging.Handler):
    """Records the first per-epoch log line of a fit, then stops the run as Ctrl-C would."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.epochs: list[tuple[Any, ...]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("%s epoch %d/%d"):
            assert isinstance(record.args, tuple)
            self.epochs.append(record.args[:3])
            raise KeyboardInterrupt


def test_cli_trains_the_backbone_1000_steps_on_a_small_dataset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    # A full default run takes minutes on 2 cores; the epoch count is in the first epoch's
    # log line, after which the run is interrupted like a user's Ctrl-C. Digits' 1,617
    # training images make 7 batches of 256: 143 epochs reach 1,000 steps (15 would be 105).
    caplog.set_level(logging.INFO, logger="training.loop")
    stopper = _InterruptAfterFirstEpoch()
    fit_logger = logging.getLogger("training.loop")
    fit_logger.addHandler(stopper)
    out = tmp_path / "m" / "1"
    try:
        code, _, err = _run(["train", "--dataset", "digits", "--model", "contrastive",
                             "--out", str(out)], capsys)
    finally:
        fit_logger.removeHandler(stopper)
    assert stopper.epochs == [("contrastive", 1, 143)]
    assert code == 130 and "interrupted: no bundle was written" in err
    assert not out.exists()


# --- presets ------------------------------------------------------------------------------------


def _preset(name: str, *options: str) -> argparse.Namespace:
    """``train --preset name *options`` parsed as main() parses it: the preset's defaults."""
    return build_parser(name).parse_args(["train", "--preset", name, *options, "--out", "x/m/1"])


def test_preset_sets_defaults_and_explicit_options_win(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = _preset("contrastive-graph20-consensus")
    assert (args.model, args.min_crop, args.view_relight) == ("contrastive", 1.0, True)
    assert not hasattr(args, "view_flip")  # not the preset's: the config's default applies
    assert (args.graph_communities, args.coarse_communities, args.hog_weight) == (20, 10, 0.5)
    assert (args.graph_whitening, args.community_searches) == (0.25, 8)
    assert (args.epochs, args.clusters) == (30, 20)
    mine = _preset("contrastive-graph20-consensus", "--epochs", "5", "--clusters", "25",
                   "--coarse-communities", "0", "--community-searches", "1")
    assert (mine.epochs, mine.clusters, mine.graph_communities) == (5, 25, 20)
    assert (mine.coarse_communities, mine.community_searches) == (0, 1)  # 0 turns the split off
    # The help names the options the preset stands for, and each is a real option that
    # parses to the same settings.
    words = preset_options("contrastive-graph20-consensus")
    assert words == ("--model contrastive --min-crop 1.0 --view-relight --graph-communities 20 "
                     "--coarse-communities 10 --hog-weight 0.5 --graph-whitening 0.25 "
                     "--community-searches 8 --epochs 30 --clusters 20")
    spelled = build_parser().parse_args(["train", *words.split(), "--out", "x/m/1"])
    assert all(getattr(spelled, key) == getattr(args, key) for key in vars(args) if key != "preset")
    # Without a preset nothing changes.
    plain = build_parser().parse_args(["train", "--out", "x/m/1"])
    assert (plain.preset, plain.model, plain.clusters) == (None, "contrastive", 10)
    assert model_options(plain) == {}
    with pytest.raises(SystemExit) as info:
        main(["train", "--preset", "best", "--out", "x/m/1"])
    assert info.value.code == 2
    assert "invalid choice: 'best'" in capsys.readouterr().err


# Slow (about 30-40 s): an option of the K = 20 preset, not the default path; `make test-slow`.
@pytest.mark.slow
def test_preset_trains_its_recipe_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    preset = "contrastive-graph20-consensus"
    out = tmp_path / "m" / "1"
    with caplog.at_level(logging.INFO):
        code, _, err = _run(["train", "--dataset", "digits", "--preset", preset,
                             "--epochs", "1", "--head-epochs", "1", "--decoder-epochs", "1",
                             "--out", str(out)], capsys)
    assert code == 0, err
    assert f"preset {preset}: model=contrastive, min_crop=1.0" in caplog.text
    manifest = bundle.read_manifest(out)
    hp = manifest.training.hyperparameters
    assert manifest.training.model_kind == "contrastive" and manifest.n_clusters == 20
    assert (hp["graph_communities"], hp["hog_weight"], hp["min_crop"], hp["view_relight"]) == (
        20, 0.5, 1.0, True)
    assert (hp["coarse_communities"], hp["graph_whitening"], hp["community_searches"]) == (
        10, 0.25, 8)
    assert manifest.latent_dim == 20 and manifest.training.epochs == 1
    report = json.loads((out / "report" / "communities.json").read_text())
    assert (report["coarse_count"], report["count"], report["searches"]) == (10, 20, 8)
    assert report["consensus_agreement"] is not None
    # The whole step runs 8 times, then once more on the consensus: 10 splits each time.
    assert caplog.text.count("communities: split community ") == 10 * 9


def test_coarse_communities_as_many_as_the_graph_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m" / "1"
    code, _, err = _run(["train", "--dataset", "digits", "--model", "contrastive",
                         "--graph-communities", "10", "--coarse-communities", "10",
                         "--out", str(out)], capsys)
    assert code == 2
    assert "error: --coarse-communities (10) must be fewer than --graph-communities (10)" in err
    assert not out.exists()


def _train_digits_logged(options: list[str], out: Path, capsys: pytest.CaptureFixture[str],
                         caplog: pytest.LogCaptureFixture) -> None:
    """One backbone epoch on digits with ``options``, its INFO log captured; must succeed."""
    with caplog.at_level(logging.INFO):
        code, _, err = _run(["train", "--dataset", "digits", "--model", "contrastive",
                             "--epochs", "1", "--head-epochs", "1", "--decoder-epochs", "1",
                             *options, "--out", str(out)], capsys)
    assert code == 0, err


# Slow (about 15-25 s each): the graph-communities options of the K = 20 preset, not the
# default path; `make test-slow` runs them.
@pytest.mark.slow
def test_backbone_and_community_options_reach_the_recipe_and_the_manifest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "m" / "1"
    _train_digits_logged(["--backbone-filters", "8,12,16",
                          # The community head: the cheapest head to train.
                          "--graph-communities", "12", "--coarse-communities", "6"],
                         out, capsys, caplog)
    assert ("built contrastive backbone for 8x8x1 images: conv 8-12-16, 256 features, "
            "nt-xent loss, learning rate 0.001") in caplog.text
    # One search: the coarse partition, then six splits make the twelve.
    assert caplog.text.count("communities: split community ") == 6
    assert "communities: 12 from 6 by splitting the most spread" in caplog.text
    assert "consensus" not in caplog.text
    hp = bundle.read_manifest(out).training.hyperparameters
    assert hp["backbone_filters"] == [8, 12, 16]
    assert (hp["community_searches"], hp["coarse_communities"]) == (1, 6)
    report = json.loads((out / "report" / "communities.json").read_text())
    assert (report["searches"], report["coarse_count"], report["count"]) == (1, 6, 12)
    assert report["consensus_agreement"] is None
    assert "labels" not in report  # no image's community is kept, only the sizes
    assert len(report["sizes"]) == 12 and sum(report["sizes"]) == 1617


# Slow (about 30-40 s): an option of the K = 20 preset, not the default path; `make test-slow`.
@pytest.mark.slow
def test_several_searches_rerun_the_whole_partition_step_on_their_consensus(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "m" / "1"
    _train_digits_logged(["--backbone-filters", "8,16", "--graph-communities", "12",
                          "--coarse-communities", "6", "--community-searches", "3"],
                         out, capsys, caplog)
    # Each search runs the whole step, a coarse partition and its six splits: three times,
    # and once more on the reweighted graph.
    assert caplog.text.count("communities: split community ") == 4 * 6
    assert "rerun on the consensus of 3 searches" in caplog.text
    report = json.loads((out / "report" / "communities.json").read_text())
    assert (report["searches"], report["count"]) == (3, 12)
    assert len(report["sizes"]) == 12 and sum(report["sizes"]) == 1617
    assert 0 < report["consensus_agreement"] <= 1
    assert "choice" not in report and "stabilities" not in report
    hp = bundle.read_manifest(out).training.hyperparameters
    assert hp["community_searches"] == 3 and "community_choice" not in hp


# --- retired options (issue 40) -----------------------------------------------------------------


@pytest.mark.parametrize("args", [
    # NT-Xent alone: VICReg measured ACC 0.629 against 0.740 at K = 10.
    ["--backbone-loss", "vicreg"],
    ["--backbone-loss", "nt-xent"],
    # A constant rate alone: the cosine decay measured -0.015 to -0.018 at K = 20.
    ["--backbone-schedule", "cosine"],
    ["--backbone-schedule", "constant"],
    # No self-labelling: 0.7957 against 0.7955 at K = 20, for 40 % more time.
    ["--self-label-epochs", "5"],
    # One search, or the consensus of several: choosing one search by its evenness or its
    # stability measured no gain (0.7913 against 0.7981 for the stable choice).
    ["--community-choice", "stable"],
    ["--community-choice", "even"],
    ["--community-choice", "consensus"],
])
def test_retired_options_are_refused(args: list[str], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "contrastive", *args, "--out", str(tmp_path / "m" / "1")])
    assert info.value.code == 2
    assert f"unrecognized arguments: {' '.join(args)}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown option"):
        model_config("contrastive", {args[0].removeprefix("--").replace("-", "_"): args[1]})


@pytest.mark.parametrize("preset", ["contrastive-graph20", "contrastive-graph20-split"])
def test_retired_presets_are_refused(preset: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    # Both superseded by contrastive-graph20-consensus, which the error names.
    with pytest.raises(SystemExit) as info:
        main(["train", "--preset", preset, "--out", str(tmp_path / "m" / "1")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: '{preset}'" in err and "contrastive-graph20-consensus" in err

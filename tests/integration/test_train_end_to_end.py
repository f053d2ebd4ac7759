"""Train on real digits for a few epochs, export, reload, and check the serving contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from service import bundle
from training.cli import main
from training.config import AutoencoderConfig
from training.data import DataOptions, to_numpy
from training.job import TrainJob, TrainResult, run_training


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("repo") / "digits" / "1"
    job = TrainJob(
        dataset="digits", out=out, data=DataOptions(val_fraction=0.2, seed=1),
        model=AutoencoderConfig(kind="conv", latent_dim=8, epochs=3, batch_size=64),
        clusters=10, seed=1,
    )
    return run_training(job)


def test_bundle_is_complete_and_verified(trained: TrainResult) -> None:
    manifest = bundle.read_manifest(trained.out)
    bundle.verify_checksums(trained.out, manifest)
    assert manifest.input.height == 8 and manifest.input.channels == 1
    assert manifest.latent_dim == 8 and manifest.n_clusters == 10
    assert manifest.training.n_train + manifest.training.n_heldout == 1797
    assert manifest.training.heldout_kind == "val-fraction"
    assert sum(s.count for s in manifest.cluster_stats) == manifest.training.n_train
    assert all(s.p50 <= s.p95 <= s.p99 for s in manifest.cluster_stats if s.count)
    assert manifest.label_map is not None and set(manifest.label_map.values()) <= set(
        manifest.class_names or [])
    ev = manifest.evaluation
    assert ev["split"] == "val-fraction" and ev["n"] == manifest.training.n_heldout
    # Three epochs on digits cluster far better than chance (0.1) - a real signal, not a value.
    assert ev["hungarian_accuracy"] > 0.3
    assert ev["reconstruction_psnr"] > 10
    assert {"loss", "val_loss", "psnr", "val_psnr"} <= set(manifest.training.final_losses)
    for name in ("history.json", "evaluation.json", "training_curves.png"):
        assert f"report/{name}" in manifest.files


def test_exported_models_reproduce_keras_and_sklearn(trained: TrainResult) -> None:
    assert trained.data.heldout is not None
    x, _ = to_numpy(trained.data.heldout)
    model = trained.model
    keras_z = model.encoder(x, training=False).numpy()
    keras_r = model.decoder(keras_z, training=False).numpy()

    enc = tf.saved_model.load(str(trained.out / "encoder")).signatures["serving_default"]
    dec = tf.saved_model.load(str(trained.out / "decoder")).signatures["serving_default"]
    saved_z = enc(images=tf.constant(x))["embedding"].numpy()
    saved_r = dec(embedding=tf.constant(saved_z))["reconstruction"].numpy()
    np.testing.assert_allclose(saved_z, keras_z, atol=1e-5)
    np.testing.assert_allclose(saved_r, keras_r, atol=1e-5)

    manifest = bundle.read_manifest(trained.out)
    centroids = bundle.load_centroids(trained.out, manifest)
    ids, _ = bundle.assign(saved_z, centroids)
    np.testing.assert_array_equal(ids, trained.kmeans.estimator.predict(keras_z))


def test_evaluate_cli_matches_training_figures(trained: TrainResult, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "eval.json"
    code = main(["evaluate", "--bundle", str(trained.out), "--dataset", "digits",
                 "--json", str(out_json)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out_json.read_text())
    ev = trained.manifest.evaluation
    # Same split, same images, same models (exported vs in memory): same scores.
    assert printed["n"] == ev["n"]
    assert printed["hungarian_accuracy"] == pytest.approx(ev["hungarian_accuracy"], abs=1e-9)
    assert printed["nmi"] == pytest.approx(ev["nmi"], abs=1e-6)
    assert printed["reconstruction_mse"] == pytest.approx(ev["reconstruction_mse"], rel=1e-4)
    assert 0.0 <= printed["outlier_fraction"] <= 1.0

"""Atomic export of bundles: layout, fidelity of the SavedModels, refusal and interruption."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from service import bundle
from training import export
from training.errors import ExportError


def _tiny_models(latent: int = 3) -> tuple[keras.Model, keras.Model]:
    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 1), name="images")
    z = keras.layers.Dense(latent, name="z")(keras.layers.Flatten()(images))
    encoder = keras.Model(images, z, name="encoder")
    code = keras.Input((latent,), name="embedding")
    out = keras.layers.Reshape((8, 8, 1))(keras.layers.Dense(64, activation="sigmoid")(code))
    decoder = keras.Model(code, out, name="decoder")
    return encoder, decoder


def _contents(centroids: np.ndarray, writers: list | None = None) -> export.BundleContents:
    k = centroids.shape[0]
    return export.BundleContents(
        input=bundle.InputSpec(height=8, width=8, channels=1, color_mode="gray"),
        centroids=centroids,
        cluster_stats=[{"cluster": i, "count": 1, "mean": 0.0, "p50": 0.0, "p95": 0.0,
                        "p99": 0.0} for i in range(k)],
        training=bundle.TrainingInfo(
            data_source="digits", model_kind="dense", loss="mse", labels_used=False,
            hyperparameters={}, epochs=0, final_losses={}, n_train=1, n_heldout=0,
            heldout_kind="none", seconds=0.0,
        ),
        class_names=[str(i) for i in range(10)],
        label_map={0: "0", 1: "7"},
        report_writers=writers or [lambda d: (d / "note.txt").write_text("hello")],
    )


@pytest.fixture(scope="module")
def digits_images() -> np.ndarray:
    x = load_digits().images[:64].astype(np.float32) / 16.0
    return x[..., None]


def test_export_writes_a_verified_bundle_equal_to_keras(tmp_path: Path,
                                                        digits_images: np.ndarray) -> None:
    encoder, decoder = _tiny_models()
    centroids = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    out = tmp_path / "repo" / "digits" / "1"
    manifest = export.export_bundle(out, encoder=encoder, decoder=decoder,
                                    contents=_contents(centroids))
    assert manifest.name == "digits" and manifest.version == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["encoder", "decoder", "centroids.joblib", "manifest.json", "report",
         # the TF Serving SavedModel at the root (training/tfserving.py)
         "saved_model.pb", "variables", "assets", "fingerprint.pb"])
    assert (out / "report" / "note.txt").read_text() == "hello"
    assert "report/note.txt" in manifest.files
    # The reader side accepts what the writer wrote.
    read = bundle.read_manifest(out)
    assert read == manifest
    np.testing.assert_array_equal(bundle.load_centroids(out, read), centroids)
    assert read.label_map == {"0": "0", "1": "7"}
    assert set(read.library_versions) >= {"tensorflow", "scikit-learn", "numpy"}

    enc = tf.saved_model.load(str(out / "encoder")).signatures["serving_default"]
    dec = tf.saved_model.load(str(out / "decoder")).signatures["serving_default"]
    z = enc(images=tf.constant(digits_images))["embedding"].numpy()
    np.testing.assert_allclose(z, encoder(digits_images).numpy(), atol=1e-5)
    r = dec(embedding=tf.constant(z))["reconstruction"].numpy()
    np.testing.assert_allclose(r, decoder(z).numpy(), atol=1e-5)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


def test_existing_version_is_refused_without_overwrite(tmp_path: Path) -> None:
    encoder, decoder = _tiny_models()
    out = tmp_path / "m" / "1"
    centroids = np.zeros((2, 3), np.float32)
    export.export_bundle(out, encoder=encoder, decoder=decoder, contents=_contents(centroids))
    before = bundle.read_manifest(out)
    with pytest.raises(ExportError, match=r"already holds a version; pass --overwrite"):
        export.export_bundle(out, encoder=encoder, decoder=decoder, contents=_contents(centroids))
    assert bundle.read_manifest(out) == before

    centroids2 = np.ones((5, 3), np.float32)
    export.export_bundle(out, encoder=encoder, decoder=decoder,
                         contents=_contents(centroids2), overwrite=True)
    assert bundle.read_manifest(out).n_clusters == 5
    assert sorted(p.name for p in out.parent.iterdir()) == ["1"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_interrupted_export_leaves_nothing(tmp_path: Path, error: type[BaseException]) -> None:
    encoder, decoder = _tiny_models()

    def interrupt(_: Path) -> None:
        raise error("stopped during export")

    out = tmp_path / "m" / "2"
    with pytest.raises(error):
        export.export_bundle(out, encoder=encoder, decoder=decoder,
                             contents=_contents(np.zeros((2, 3), np.float32), [interrupt]))
    assert list(out.parent.iterdir()) == []
    assert bundle.list_versions(out.parent) == []


@pytest.mark.parametrize("target", ["m/latest", "m/0", "../1"])
def test_target_must_be_a_version_directory(tmp_path: Path, target: str) -> None:
    with pytest.raises(ExportError):
        export.check_target(tmp_path / "repo" / target, overwrite=False)


def test_target_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "1").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export.check_target(tmp_path / "m" / "1", overwrite=True)

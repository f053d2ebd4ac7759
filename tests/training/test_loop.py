"""The training loop: history, per-epoch logs, TensorBoard, callbacks and input checks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits
from tensorflow.core.util import event_pb2

from training.config import AutoencoderConfig
from training.errors import ConfigError, DataError
from training.loop import check_image_batches, format_metrics
from training.models import Autoencoder, build_autoencoder, fit_autoencoder

SMALL = {"dense_units": (32,), "conv_filters": (8, 8), "latent_dim": 4}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    images = (data.images / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    return images, data.target.astype("int64")


@pytest.fixture(scope="module")
def splits(digits: tuple[np.ndarray, np.ndarray]) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    images, labels = digits
    # Unknown labels (-1) as the data pipeline yields them for unlabelled sources.
    unknown = np.full_like(labels, -1)
    train = tf.data.Dataset.from_tensor_slices((images[:1200], unknown[:1200]))
    heldout = tf.data.Dataset.from_tensor_slices((images[1200:], unknown[1200:]))
    return train.shuffle(1200, seed=0).batch(64).prefetch(2), heldout.batch(128)


def _model(kind: str = "conv", **overrides: Any) -> Autoencoder:
    config = AutoencoderConfig(kind=kind, **{**SMALL, **overrides})
    return build_autoencoder(config, (8, 8, 1))


def test_history_logs_and_improvement(splits: tuple[tf.data.Dataset, tf.data.Dataset],
                                      caplog: pytest.LogCaptureFixture) -> None:
    train, heldout = splits
    with caplog.at_level(logging.INFO, logger="training.loop"):
        history = fit_autoencoder(_model("conv"), train, heldout, epochs=3)
    assert set(history) == {"loss", "psnr", "val_loss", "val_psnr"}
    assert all(len(values) == 3 for values in history.values())
    assert all(isinstance(v, float) for values in history.values() for v in values)
    assert history["val_loss"][-1] < history["val_loss"][0]
    assert history["val_psnr"][-1] > history["val_psnr"][0]
    epoch_lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert len(epoch_lines) == 3
    assert epoch_lines[0].startswith("autoencoder epoch 1/3: loss=")
    for line in epoch_lines:
        assert " psnr=" in line and " val_loss=" in line and " val_psnr=" in line
        assert line.endswith(" s)") and " dB" in line


def test_vae_history_without_heldout(splits: tuple[tf.data.Dataset, tf.data.Dataset]) -> None:
    history = fit_autoencoder(_model("vae"), splits[0], None, epochs=2)
    assert set(history) == {"loss", "psnr", "reconstruction_loss", "kl_loss"}
    np.testing.assert_allclose(
        np.array(history["loss"]),
        np.array(history["reconstruction_loss"]) + np.array(history["kl_loss"]), rtol=1e-4)


def test_tensorboard_and_extra_callbacks(splits: tuple[tf.data.Dataset, tf.data.Dataset],
                                         tmp_path: Path) -> None:
    seen: list[dict[str, float]] = []
    recorder = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(dict(logs or {})))
    history = fit_autoencoder(_model("dense"), splits[0], splits[1], epochs=2,
                              tensorboard_dir=tmp_path / "tb", extra_callbacks=[recorder])
    assert len(seen) == 2 and "val_psnr" in seen[0]
    train = _scalars(tmp_path / "tb" / "train")
    validation = _scalars(tmp_path / "tb" / "validation")
    assert set(train) == {"epoch_loss", "epoch_psnr"} == set(validation)
    np.testing.assert_allclose(train["epoch_loss"], history["loss"], rtol=1e-6)
    np.testing.assert_allclose(validation["epoch_psnr"], history["val_psnr"], rtol=1e-6)


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    """Read back scalar summaries, in step order, as TensorBoard would."""
    values: dict[str, list[tuple[int, float]]] = {}
    for path in run_dir.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                scalar = float(tf.make_ndarray(value.tensor))
                values.setdefault(value.tag, []).append((event.step, scalar))
    return {tag: [v for _, v in sorted(points)] for tag, points in values.items()}


def test_images_only_batches(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images_only = tf.data.Dataset.from_tensor_slices(digits[0][:256]).batch(64)
    history = fit_autoencoder(_model("dense"), images_only, images_only, epochs=1)
    assert np.isfinite(history["val_loss"][0])


def test_divergence_is_reported(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images = digits[0][:128].copy()
    images[5, 2, 2, 0] = np.nan
    data = tf.data.Dataset.from_tensor_slices(images).batch(32)
    with pytest.raises(ConfigError, match="diverged"):
        fit_autoencoder(_model("dense"), data, None, epochs=3)


def test_bad_inputs_are_data_errors(digits: tuple[np.ndarray, np.ndarray]) -> None:
    model = _model("dense")
    images, labels = digits[0][:64], digits[1][:64]
    good = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
    cases = {
        "shape": tf.data.Dataset.from_tensor_slices(np.zeros((8, 10, 10, 1), "float32")).batch(4),
        "batch the": tf.data.Dataset.from_tensor_slices((images, labels)),
        "uint8": tf.data.Dataset.from_tensor_slices((images * 255).astype("uint8")).batch(4),
        "empty": good.take(0),
    }
    for message, dataset in cases.items():
        with pytest.raises(DataError, match=message):
            fit_autoencoder(model, dataset, None, epochs=1)
    with pytest.raises(DataError, match="held-out"):
        fit_autoencoder(model, good, cases["shape"], epochs=1)
    with pytest.raises(DataError, match=r"tf\.data\.Dataset"):
        fit_autoencoder(model, images, None, epochs=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="epochs"):
        fit_autoencoder(model, good, None, epochs=0)


def test_check_accepts_unknown_batch_and_spatial_dims() -> None:
    dynamic = tf.data.Dataset.from_generator(
        lambda: iter([np.zeros((2, 8, 8, 1), "float32")]),
        output_signature=tf.TensorSpec((None, None, None, 1), tf.float32))
    check_image_batches(dynamic, (8, 8, 1), "training")


def test_format_metrics_orders_training_before_validation() -> None:
    logs = {"val_psnr": 12.345, "kl_loss": 0.5, "val_loss": 0.25, "psnr": 20.0, "loss": 0.125}
    assert format_metrics(logs) == (
        "loss=0.125 psnr=20.00 dB kl_loss=0.5 val_loss=0.25 val_psnr=12.35 dB")

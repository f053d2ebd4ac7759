"""Autoencoder models: config checks, architectures, training steps, feature classifier."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from training.config import AutoencoderConfig
from training.errors import ConfigError, DataError
from training.models import (
    Autoencoder,
    build_autoencoder,
    build_classifier,
    conv_levels,
    train_feature_classifier,
)

SMALL = {"dense_units": (32,), "conv_filters": (8, 8, 8), "latent_dim": 4}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    images = (data.images / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    return images, data.target.astype("int64")


def _batches(images: np.ndarray, labels: np.ndarray, batch: int = 128) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kind", "gan", "kind: Input should be 'dense', 'conv' or 'vae'"),
        ("kind", "contrastive", "kind"),
        ("loss", "l1", "--loss"),
        ("latent_dim", 0, "--latent: Input should be greater than or equal to 1, got 0"),
        ("latent_dim", 2.5, "--latent"),
        ("latent_dim", True, "--latent: Input should be a valid integer, got True"),
        ("kl_weight", -1.0, "--kl-weight"),
        ("kl_weight", float("nan"), "--kl-weight: Input should be a finite number"),
        ("denoise_sigma", 1.5, "--denoise"),
        ("learning_rate", 0.0, "--learning-rate"),
        ("epochs", -1, "--epochs"),
        ("seed", 1, "seed: Extra inputs are not permitted"),
        ("dense_units", (64, 0), "--dense-units"),
        ("conv_filters", (), "--conv-filters"),
        ("conv_filters", "32", "--conv-filters"),
    ],
)
def test_config_rejects_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AutoencoderConfig(**{field: value})


def test_config_normalises_sequences_and_numbers() -> None:
    config = AutoencoderConfig(dense_units=[64, 32], conv_filters=[16],  # type: ignore[arg-type]
                               latent_dim=np.int64(3))
    assert config.dense_units == (64, 32) and config.conv_filters == (16,)
    assert type(config.latent_dim) is int
    assert hash(config) == hash(AutoencoderConfig(dense_units=(64, 32), conv_filters=(16,),
                                                  latent_dim=3))


# --- architectures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "cap", "levels"),
    [(8, 8, 3, 2), (28, 28, 3, 3), (28, 28, 2, 2), (30, 20, 3, 3), (32, 32, 5, 4),
     (3, 3, 3, 1), (2, 2, 3, 0), (40, 3, 3, 1)],
)
def test_conv_levels(height: int, width: int, cap: int, levels: int) -> None:
    assert conv_levels(height, width, cap) == levels


@pytest.mark.parametrize("kind", ["dense", "conv", "vae"])
@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (30, 20, 1), (5, 7, 3),
                                   (2, 3, 1)])
def test_shapes_and_contract_names(kind: str, shape: tuple[int, int, int]) -> None:
    model = build_autoencoder(AutoencoderConfig(kind=kind, **SMALL), shape)  # type: ignore[arg-type]
    x = np.random.default_rng(0).uniform(size=(3, *shape)).astype("float32")
    embedding = model.encoder(x)
    reconstruction = model.decoder(embedding).numpy()
    assert embedding.shape == (3, 4)
    assert reconstruction.shape == (3, *shape)
    assert reconstruction.min() >= 0 and reconstruction.max() <= 1
    np.testing.assert_allclose(model(x).numpy(), reconstruction, rtol=1e-6)
    # Names the exporter and the service rely on.
    assert model.encoder.inputs[0].name == "images"
    assert model.encoder.outputs[0] is model.encoder.get_layer("embedding").output
    assert model.decoder.inputs[0].name == "embedding"
    assert model.decoder.outputs[0] is model.decoder.get_layer("reconstruction").output


def test_conv_encoder_uses_capped_stride_two_levels() -> None:
    config = AutoencoderConfig(kind="conv", conv_filters=(4, 6, 8, 10, 12))
    model = build_autoencoder(config, (28, 28, 1))
    convs = [layer for layer in model.encoder.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [4, 6, 8, 10]  # 28 -> 14 -> 7 -> 4 -> 2; a 5th gives 1
    assert all(c.strides == (2, 2) for c in convs)


def test_build_rejects_bad_shapes_and_missing_extractor() -> None:
    with pytest.raises(ConfigError, match="input_shape"):
        build_autoencoder(AutoencoderConfig(), (28, 28))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="input_shape"):
        build_autoencoder(AutoencoderConfig(), (28, 0, 1))
    with pytest.raises(ConfigError, match="feature extractor"):
        build_autoencoder(AutoencoderConfig(loss="perceptual"), (8, 8, 1))


def test_perceptual_extractor_must_match_input_shape() -> None:
    inputs = keras.Input(shape=(10, 10, 1))
    extractor = keras.Model(inputs, keras.layers.Flatten()(inputs))
    with pytest.raises(ConfigError, match="feature extractor takes images"):
        build_autoencoder(AutoencoderConfig(loss="perceptual"), (8, 8, 1),
                          feature_extractor=extractor)


# --- training ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "conv", "vae"])
def test_loss_decreases_on_digits(kind: str, digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits
    model = build_autoencoder(AutoencoderConfig(kind=kind, loss="bce"), (8, 8, 1))  # type: ignore[arg-type]
    history = model.fit(_batches(images, labels, 64), epochs=4, verbose=0, shuffle=False).history
    assert history["loss"][-1] < 0.9 * history["loss"][0]
    assert history["psnr"][-1] > history["psnr"][0]
    if kind == "vae":
        assert {"reconstruction_loss", "kl_loss"} <= set(history)


def test_vae_loss_is_reconstruction_plus_weighted_kl(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits
    model = build_autoencoder(AutoencoderConfig(kind="vae", kl_weight=2.5, **SMALL), (8, 8, 1))
    model.fit(_batches(images[:512], labels[:512]), epochs=1, verbose=0, shuffle=False)
    result = model.evaluate(_batches(images[:256], labels[:256]), verbose=0, return_dict=True)
    assert result["kl_loss"] > 0
    np.testing.assert_allclose(result["loss"],
                               result["reconstruction_loss"] + 2.5 * result["kl_loss"], rtol=1e-4)
    # The reconstruction term is summed per image: 64 pixels of squared error, far above a mean.
    mean_mse = float(np.mean((model.predict(images[:256], verbose=0) - images[:256]) ** 2))
    np.testing.assert_allclose(result["reconstruction_loss"], 64 * mean_mse, rtol=1e-3)


def test_vae_embedding_is_the_posterior_mean(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images = digits[0][:16]
    model = build_autoencoder(AutoencoderConfig(kind="vae", **SMALL), (8, 8, 1))
    assert model.posterior is not None
    z_mean, _ = model.posterior(images)
    np.testing.assert_array_equal(model.encoder(images).numpy(), z_mean.numpy())
    np.testing.assert_array_equal(model.encoder(images).numpy(), model.encoder(images).numpy())
    np.testing.assert_array_equal(model(images).numpy(), model.decoder(z_mean).numpy())
    # Training samples around the mean, so two training passes differ; evaluation does not.
    train_a = model._terms(images, images, training=True)["reconstruction_loss"].numpy()
    train_b = model._terms(images, images, training=True)["reconstruction_loss"].numpy()
    test_a = model._terms(images, images, training=False)["reconstruction_loss"].numpy()
    test_b = model._terms(images, images, training=False)["reconstruction_loss"].numpy()
    assert not np.allclose(train_a, train_b)
    np.testing.assert_array_equal(test_a, test_b)


def test_denoise_pair_has_noisy_inputs_and_clean_targets() -> None:
    images = tf.constant(np.random.default_rng(0).uniform(size=(8, 8, 8, 1)).astype("float32"))
    model = build_autoencoder(AutoencoderConfig(kind="conv", denoise_sigma=0.3, **SMALL), (8, 8, 1))
    inputs, targets = model.training_pair(images)
    again, _ = model.training_pair(images)
    assert targets is images
    assert float(tf.reduce_mean(tf.abs(inputs - images))) > 0.1
    assert float(tf.reduce_min(inputs)) >= 0 and float(tf.reduce_max(inputs)) <= 1
    assert not np.array_equal(inputs.numpy(), again.numpy())  # fresh noise every step
    clean = build_autoencoder(AutoencoderConfig(kind="conv", **SMALL), (8, 8, 1))
    same_inputs, same_targets = clean.training_pair(images)
    assert same_inputs is images and same_targets is images


@pytest.fixture(scope="module")
def trained_dense_weights(digits: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    # An untrained decoder hardly depends on its input, so noise would not show in the loss.
    model = build_autoencoder(AutoencoderConfig(kind="dense"), (8, 8, 1))
    model.fit(_batches(*digits, 64), epochs=4, verbose=0, shuffle=False)
    return model.get_weights()


@pytest.mark.parametrize(("sigma", "noisy"), [(0.5, True), (0.0, False)])
def test_denoise_noise_only_in_training(sigma: float, noisy: bool,
                                        digits: tuple[np.ndarray, np.ndarray],
                                        trained_dense_weights: list[np.ndarray]) -> None:
    data = _batches(digits[0][:512], digits[1][:512])
    # A learning rate this small freezes the weights: both numbers see the same model.
    config = AutoencoderConfig(kind="dense", denoise_sigma=sigma, learning_rate=1e-12)
    model = build_autoencoder(config, (8, 8, 1))
    model.set_weights(trained_dense_weights)
    train_loss = model.fit(data, epochs=1, verbose=0, shuffle=False).history["loss"][0]
    eval_loss = model.evaluate(data, verbose=0, return_dict=True)["loss"]
    if noisy:
        assert train_loss > eval_loss * 1.1
    else:
        np.testing.assert_allclose(train_loss, eval_loss, rtol=1e-5)


def test_inputs_without_labels_train_too(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images = digits[0][:256]
    model = build_autoencoder(AutoencoderConfig(kind="dense", **SMALL), (8, 8, 1))
    history = model.fit(tf.data.Dataset.from_tensor_slices(images).batch(64), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_same_seed_same_model_and_training(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits[0][:384], digits[1][:384]

    def build(seed: int) -> tuple[Autoencoder, list[np.ndarray]]:
        model = build_autoencoder(AutoencoderConfig(kind="vae", denoise_sigma=0.1, **SMALL),
                                  (8, 8, 1), seed=seed)
        return model, [w.copy() for w in model.get_weights()]

    model_a, weights_a = build(0)
    model_b, weights_b = build(0)
    _, weights_c = build(1)
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, c) for a, c in zip(weights_a, weights_c, strict=True))
    # Noise and VAE sampling come from seeded generators: training repeats exactly too.
    loss_a = model_a.fit(_batches(images, labels), epochs=1, verbose=0, shuffle=False)
    loss_b = model_b.fit(_batches(images, labels), epochs=1, verbose=0, shuffle=False)
    assert loss_a.history == loss_b.history


def test_builds_and_trains_inside_a_strategy_scope(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits[0][:256], digits[1][:256]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = build_autoencoder(AutoencoderConfig(kind="vae", denoise_sigma=0.1, **SMALL),
                                  (8, 8, 1))
    history = model.fit(_batches(images, labels), epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
    assert isinstance(model, Autoencoder)


def test_two_replicas_take_the_same_steps_as_one(tmp_path: Path) -> None:
    # Two logical CPUs must be configured before TensorFlow starts: a fresh interpreter.
    script = textwrap.dedent("""
        import numpy as np, keras, tensorflow as tf
        from sklearn.datasets import load_digits
        from training.config import AutoencoderConfig
        from training.models import build_autoencoder
        cpu = tf.config.list_physical_devices("CPU")[0]
        two = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, two)
        x = (load_digits().images[:256] / 16.0).astype("float32").reshape(-1, 8, 8, 1)
        data = tf.data.Dataset.from_tensor_slices((x, np.zeros(256, "int64"))).batch(64)
        config = AutoencoderConfig(kind="conv", dense_units=(16,), conv_filters=(8, 8),
                                   latent_dim=4)
        weights = []
        for devices in (["/cpu:0"], ["/cpu:0", "/cpu:1"]):
            strategy = tf.distribute.MirroredStrategy(devices)
            with strategy.scope():
                model = build_autoencoder(config, (8, 8, 1))
                # Plain SGD: unlike Adam it would show a gradient scaled by the replica count.
                model.compile(optimizer=keras.optimizers.SGD(0.5))
            assert strategy.num_replicas_in_sync == len(devices)
            model.fit(data, epochs=1, verbose=0, shuffle=False)
            weights.append(model.get_weights())
        for a, b in zip(*weights):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
        print("SAME")
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and "SAME" in done.stdout, done.stderr[-3000:]


# --- feature classifier -----------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "flat"), [
    ((28, 28, 1), 7 * 7 * 64),  # two pooled blocks: 28 -> 14 -> 7
    ((8, 8, 1), 2 * 2 * 64),
    ((3, 3, 1), 3 * 3 * 64),  # too small to pool
    ((32, 32, 3), 4 * 4 * 64),  # 8x8 after the blocks, pooled once more
    ((224, 160, 3), 7 * 5 * 64),  # large images are pooled until the map is at most 7 wide
])
def test_classifier_flattens_a_small_map(shape: tuple[int, int, int], flat: int) -> None:
    network = build_classifier(shape, 10)
    assert network.get_layer("cls_flatten").output.shape[-1] == flat
    assert network.get_layer("features").output.shape[-1] == 64
    assert network.output.shape[-1] == 10


def test_feature_classifier_gives_frozen_informative_features(
        digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits
    train, heldout = _batches(images[:1400], labels[:1400], 64), _batches(images[1400:],
                                                                         labels[1400:])
    extractor = train_feature_classifier(train, heldout, (8, 8, 1), 10, epochs=4, seed=0)
    assert extractor.trainable is False and not extractor.trainable_weights
    features = extractor.predict(images, verbose=0)
    assert features.shape == (len(images), 64)
    probe = LogisticRegression(max_iter=2000).fit(features[:1400], labels[:1400])
    assert probe.score(features[1400:], labels[1400:]) > 0.5  # chance is 0.1


def test_perceptual_autoencoder_trains_and_keeps_extractor_frozen(
        digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits
    data = _batches(images[:512], labels[:512], 64)
    extractor = train_feature_classifier(data, None, (8, 8, 1), 10, epochs=1, seed=0)
    before = [w.copy() for w in extractor.get_weights()]
    model = build_autoencoder(AutoencoderConfig(kind="conv", loss="perceptual"), (8, 8, 1),
                              feature_extractor=extractor)
    n_own = sum(len(m.trainable_weights) for m in (model.encoder, model.decoder))
    assert len(model.trainable_weights) == n_own
    history = model.fit(data, epochs=3, verbose=0, shuffle=False).history
    assert history["loss"][-1] < history["loss"][0]
    for a, b in zip(before, extractor.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_feature_classifier_rejects_unknown_labels(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits[0][:256], digits[1][:256].copy()
    labels[100] = -1
    with pytest.raises(DataError, match="label"):
        train_feature_classifier(_batches(images, labels), None, (8, 8, 1), 10, epochs=1, seed=0)
    unlabelled = tf.data.Dataset.from_tensor_slices(images).batch(64)
    with pytest.raises(DataError, match="no labels"):
        train_feature_classifier(unlabelled, None, (8, 8, 1), 10, epochs=1, seed=0)
    with pytest.raises(ConfigError, match="n_classes"):
        train_feature_classifier(_batches(images, labels), None, (8, 8, 1), 1, epochs=1, seed=0)

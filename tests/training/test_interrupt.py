"""Ctrl-C handling: a fit stops at a step boundary; elsewhere the interrupt is immediate."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from training import interrupt
from training.config import AutoencoderConfig, ContrastiveConfig
from training.interrupt import StopOnInterrupt
from training.knn_graph import fuzzy_graph, nearest_neighbors
from training.loop import fit_model
from training.models import build_networks, train_feature_classifier
from training.models.umap_head import UmapHeadConfig, build_head, fit_head
from training.recipes.contrastive import _fit_decoder


@pytest.fixture(autouse=True)
def _restore_sigint() -> Iterator[None]:
    original = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, original)
    interrupt._State.requested = False
    interrupt._State.fits = 0


class _PressCtrlC(keras.callbacks.Callback):
    """Delivers a Ctrl-C (the handler, as the signal would) at the end of batch ``at``."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.batches = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.batches += 1
        if batch == self.at:
            interrupt._handle(signal.SIGINT, None)


def _fit(callbacks: list[keras.callbacks.Callback]) -> None:
    keras.utils.set_random_seed(0)  # the suite runs with deterministic ops, which need one
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((40, 2), np.float32)
    with interrupt.stoppable():  # as every fit of the product runs
        model.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0, callbacks=callbacks)


def test_ctrl_c_outside_a_fit_interrupts_at_once() -> None:
    with pytest.raises(KeyboardInterrupt):
        interrupt._handle(signal.SIGINT, None)


def test_ctrl_c_during_a_fit_stops_after_the_current_step() -> None:
    counter, presser = _PressCtrlC(at=-1), _PressCtrlC(at=1)
    with pytest.raises(KeyboardInterrupt):
        _fit([counter, StopOnInterrupt(), presser])
    # Pressed after StopOnInterrupt looked at batch 1, as if during batch 2: the handler
    # only set the flag, batch 2 ran to its end, and the interrupt came there.
    assert counter.batches == 3
    assert (interrupt._State.requested, interrupt._State.fits) == (False, 0)


def test_a_failed_fit_leaves_ctrl_c_interrupting_at_once() -> None:
    # Keras skips on_train_end when an exception leaves fit; the fit must not stay counted,
    # or the next Ctrl-C outside any fit would only set a flag nobody reads.
    class Fail(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            raise RuntimeError("a failing step")

    data = tf.data.Dataset.from_tensor_slices((np.zeros((8, 8, 8, 1), np.float32),
                                               np.zeros(8, np.int64))).batch(4)
    conv = build_networks(AutoencoderConfig(kind="conv", latent_dim=2, conv_filters=(4,)),
                          (8, 8, 1))
    autoencoder = keras.Model(conv.encoder.input, conv.decoder(conv.encoder.output))
    autoencoder.compile(optimizer="sgd", loss="mse")
    with pytest.raises(RuntimeError, match="a failing step"):
        fit_model(autoencoder, data.map(lambda x, y: (x, x)), None, epochs=1, label="failing",
                  image_shape=(8, 8, 1), learning_rate=0.01, extra_callbacks=[Fail()])
    assert interrupt._State.fits == 0
    with pytest.raises(KeyboardInterrupt):
        interrupt._handle(signal.SIGINT, None)


def test_a_second_ctrl_c_before_the_step_ends_interrupts_at_once() -> None:
    interrupt._State.fits = 1
    interrupt._handle(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        interrupt._handle(signal.SIGINT, None)


def test_install_routes_sigint_but_keeps_an_ignored_one_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupt.install()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupt.install()
    assert signal.getsignal(signal.SIGINT) is interrupt._handle


def test_a_fit_without_ctrl_c_runs_to_the_end() -> None:
    presser = _PressCtrlC(at=-1)
    _fit([StopOnInterrupt(), presser])
    assert presser.batches == 10
    assert interrupt._State.fits == 0


# --- every training stage stops at a step boundary ---------------------------------------------
# Each stage is entered with a Ctrl-C already waiting (as if it arrived during the first step):
# a stage without a stop point would run to its end and return instead of raising.


def test_a_custom_loop_in_stoppable_waits_for_check() -> None:
    with interrupt.stoppable():
        interrupt._handle(signal.SIGINT, None)  # only sets the flag: the step may finish
        assert interrupt._State.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        interrupt.check()  # the flag was consumed
    assert (interrupt._State.requested, interrupt._State.fits) == (False, 0)


def _stops_at_the_first_step(stage: Any) -> None:
    interrupt._State.requested = True
    with pytest.raises(KeyboardInterrupt):
        stage()
    assert (interrupt._State.requested, interrupt._State.fits) == (False, 0)


def test_the_feature_classifier_stops_at_a_step_boundary() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((64, 8, 8, 1), dtype=np.float32)
    labels = rng.integers(0, 3, size=64)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    _stops_at_the_first_step(
        lambda: train_feature_classifier(batches, None, (8, 8, 1), 3, epochs=50, seed=0))


def test_the_neighbourhood_head_stops_at_a_step_boundary() -> None:
    features = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)
    graph = fuzzy_graph(*nearest_neighbors(features, 5))
    head = build_head(6, 2, (8,))
    config = UmapHeadConfig(n_neighbors=5, hidden=(8,), batch_size=32, epochs=50, min_steps=1)
    _stops_at_the_first_step(lambda: fit_head(head, features, graph, config, seed=0))


def test_the_contrastive_decoder_stops_at_a_step_boundary() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(64, 4)).astype(np.float32)
    images = rng.random((64, 8, 8, 1), dtype=np.float32)
    config = AutoencoderConfig(kind="conv", latent_dim=4, conv_filters=(8, 8, 8))
    decoder = build_networks(config, (8, 8, 1)).decoder
    _stops_at_the_first_step(lambda: _fit_decoder(decoder, z, images, ContrastiveConfig(),
                                                  seed=0))

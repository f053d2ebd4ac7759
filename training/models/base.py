"""A Keras model base for hand-written train/test steps that also runs on several workers."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


class StepModel(keras.Model):
    """Shared plumbing for models with their own ``train_step``/``test_step``.

    Subclasses create their variables, compile, then call :meth:`build_optimizer` inside
    the strategy scope, and return :meth:`step_logs` from their steps. Two workarounds for
    Keras 3 under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585) live here.
    """

    def build_optimizer(self) -> None:
        """Create the optimizer's slots now, in the caller's strategy scope."""
        self.optimizer.build(self.trainable_variables)

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        # Keras reduces a first data batch across replicas before building the model, which
        # fails across workers; a model whose layers and optimizer exist needs no build.
        if self.optimizer is not None and self.optimizer.built \
                and all(layer.built for layer in self._flatten_layers()):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @staticmethod
    def scale_for_replicas(loss: tf.Tensor) -> tf.Tensor:
        """Divide by the replica count: replicas sum their gradients into the global mean."""
        return loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)

    @staticmethod
    def step_logs(trackers: list[keras.metrics.Metric]) -> dict[str, tf.Tensor]:
        """The trackers' results as a step's return value."""
        results = {tracker.name: tracker.result() for tracker in trackers}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces step outputs across workers along axis 0, which a scalar lacks.
            # Epoch logs are re-read from the trackers, so only per-batch logs see [1].
            results = {name: tf.reshape(value, (1,)) for name, value in results.items()}
        return results

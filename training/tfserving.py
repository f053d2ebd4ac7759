"""The version's own SavedModel for stock TensorFlow Serving: the whole job in one graph.

The bundle's encoder and decoder SavedModels need aecluster around them: the centroids,
the outlier thresholds and the preprocessing live outside them. This SavedModel, written at
the version's root (``REPO/<name>/<version>/saved_model.pb``, where ``tensorflow/serving``
looks), holds all of it, so ``--model_base_path=REPO/<name>`` serves every version with
the same answers as aecluster's TF Serving API:

* ``serving_default``: ``images`` float32 [N, H, W, C] in [0, 1] -> the outputs;
* ``predict_bytes``: ``image_bytes`` string [N] (PNG, JPEG, GIF, BMP, WebP) -> decoded and
  converted by training's own functions (``training/data/pipeline.py``) -> the outputs.
  Where the service's decoding departs from training's (the luminance of colour images
  rounds one float32 step apart; 8-bit palette BMPs), this graph keeps training's:
  docs/bundle.md gives the measured differences.

Outputs: ``cluster_id`` int64 [N], ``distance`` float32 [N], ``is_outlier`` bool [N],
``embedding`` float32 [N, D], ``reconstruction`` float32 [N, H, W, C]. The centroids and
the per-cluster p99 thresholds are constants of the graph: ``centroids.joblib`` and the
manifest stay the sources the service reads and checks, and this copy is written from the
same arrays in the same export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from service import bundle
from training.data.pipeline import Target, convert, decode
from training.errors import ExportError


def thresholds_of(cluster_stats: list[dict[str, Any]]) -> np.ndarray:
    """Per-cluster outlier thresholds, float32 [K], as the service builds them (p99)."""
    return np.array([s["p99"] for s in cluster_stats], dtype=np.float32)


def _target(spec: bundle.InputSpec) -> Target:
    # Training converts with bilinear resizing to the full size (pipeline.convert); the
    # service follows the manifest's resize options. Training writes only that one choice,
    # so a spec asking for anything else cannot be reproduced by training's functions.
    if spec.resize != "bilinear" or spec.preserve_aspect_ratio:
        raise ExportError(
            f"the TF Serving SavedModel preprocesses as training does (bilinear, stretched); "
            f"the input spec asks for resize={spec.resize!r}, "
            f"preserve_aspect_ratio={spec.preserve_aspect_ratio}"
        )
    return Target(spec.height, spec.width, spec.channels, spec.color_mode)


def write_tfserving_model(
    path: Path,
    *,
    encoder: keras.Model,
    decoder: keras.Model,
    spec: bundle.InputSpec,
    centroids: np.ndarray,
    thresholds: np.ndarray,
) -> None:
    """Write the self-contained SavedModel into ``path`` (the version directory's root)."""
    cen = np.asarray(centroids, dtype=np.float32)
    limits = np.asarray(thresholds, dtype=np.float32)
    if cen.ndim != 2 or limits.shape != (cen.shape[0],):
        raise ExportError(
            f"centroids {cen.shape} and thresholds {limits.shape} do not describe K clusters"
        )
    target = _target(spec)
    image_shape = (spec.height, spec.width, spec.channels)

    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.track(decoder)

    def cluster(images: tf.Tensor) -> dict[str, tf.Tensor]:
        # Graph constants, not variables: nothing in the checkpoint can change them, and
        # they are the arrays centroids.joblib and the manifest were written from.
        centroid = tf.constant(cen)
        threshold = tf.constant(limits)
        embedding = encoder(images, training=False)
        # The service's runtime (service/runtime.py), op for op: squared distances summed
        # over the coordinate differences (not the cancelling matmul expansion, whose
        # rounding changes with the batch size), argmin, square root, the chosen column.
        diff = embedding[:, tf.newaxis, :] - centroid[tf.newaxis, :, :]
        squared = tf.reduce_sum(diff * diff, axis=2)
        cluster_id = tf.argmin(squared, axis=1, output_type=tf.int64)
        distance = tf.gather(tf.sqrt(squared), cluster_id, axis=1, batch_dims=1)
        return {
            "cluster_id": cluster_id,
            "distance": distance,
            # Strictly beyond the cluster's p99, as the data plane flags outliers.
            "is_outlier": distance > tf.gather(threshold, cluster_id),
            "embedding": embedding,
            "reconstruction": decoder(embedding, training=False),
        }

    def at_least_one(batch: tf.Tensor) -> tf.Tensor:
        # An empty batch otherwise fails deep inside the encoder's convolutions with a
        # message about filter depths.
        return tf.debugging.assert_positive(
            tf.shape(batch)[0], message="the batch is empty: send at least one image")

    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        # The service refuses these with INVALID_ARGUMENT; TF Serving reports a failed
        # assertion as the same code, instead of clustering garbage.
        checks = [
            at_least_one(images),
            tf.debugging.assert_all_finite(images, "images contain NaN or infinite values"),
            tf.debugging.assert_greater_equal(
                images, 0.0, message="images must be scaled to [0, 1]: divide 8-bit pixels "
                "by 255"),
            tf.debugging.assert_less_equal(
                images, 1.0, message="images must be scaled to [0, 1]: divide 8-bit pixels "
                "by 255"),
        ]
        with tf.control_dependencies(checks):
            return cluster(tf.identity(images))

    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        # One image at a time (sizes differ), each through training's decode and convert,
        # which bring it to the model's fixed size.
        with tf.control_dependencies([at_least_one(image_bytes)]):
            images = tf.map_fn(
                lambda data: convert(decode(data), target),
                image_bytes,
                fn_output_signature=tf.TensorSpec(image_shape, tf.float32),
            )
        return cluster(images)

    archive.add_endpoint(
        name=bundle.SIGNATURE,
        fn=serve_images,
        input_signature=[
            tf.TensorSpec([None, *image_shape], tf.float32, name=bundle.ENCODER_INPUT)
        ],
    )
    archive.add_endpoint(
        name=bundle.BYTES_SIGNATURE,
        fn=serve_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name=bundle.BYTES_INPUT)],
    )
    archive.write_out(str(path), verbose=False)

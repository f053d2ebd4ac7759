"""MLServer 1.7.1 custom runtime serving one aecluster bundle version.

The same model math as the aecluster service (service/runtime.py), written against the
bundle contract (service/bundle.py) without importing the project: this module runs in
MLServer's own venv, which has tensorflow, joblib and numpy but not aecluster.

Per image: the encoder SavedModel's ``serving_default`` signature maps ``images`` (float32
[N, H, W, C] in [0, 1]) to ``embedding`` [N, D]; squared Euclidean distances to the K
centroids are ||e||^2 - 2 e.c + ||c||^2 clamped at 0; the cluster id is their argmin
(int64), the distance the square root of the smallest; the reconstruction is the decoder
signature's ``reconstruction`` output for ``embedding``. One ``tf.function`` with a free
batch dimension does it all in one call, traced once at load.

Model settings (written by serve.py ``start``)::

    parameters.uri                 the bundle version directory (REPO/NAME/VERSION)
    parameters.extra.reconstruction  true: also return the reconstruction output
    max_batch_size, max_batch_time   MLServer's adaptive batching (merges requests
                                     along the first axis; outputs keep that axis)

Request: one input ``images``, FP32 [N, H, W, C] in [0, 1] (or UINT8 [N, H, W, C], 0..255,
divided by 255). Response: ``cluster_id`` INT64 [N], ``distance`` FP32 [N] and, for the
reconstruction model, ``reconstruction`` FP32 [N, H, W, C].
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import tensorflow as tf
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from mlserver.utils import get_model_uri

logger = logging.getLogger("mlserver.aecluster")

# Bundle contract (service/bundle.py): file, signature and tensor names.
MANIFEST_FILE = "manifest.json"
ENCODER_DIR = "encoder"
DECODER_DIR = "decoder"
CENTROIDS_FILE = "centroids.joblib"
CENTROIDS_FORMAT = 1
SIGNATURE = "serving_default"
ENCODER_INPUT = "images"
ENCODER_OUTPUT = "embedding"
DECODER_INPUT = "embedding"
DECODER_OUTPUT = "reconstruction"

INPUT_NAME = "images"

# One thread runs the model for every model of this process, as the aecluster service runs
# one batcher thread per model version: TensorFlow spreads one call over the cores itself,
# and the event loop keeps parsing requests meanwhile.
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="aecluster")

# AECLUSTER_MLSERVER_LOG_BATCHES=1: log the number of images of every model call, to see
# what the adaptive batcher merged (off for benchmarks: it is a log line per call).
_LOG_BATCHES = os.environ.get("AECLUSTER_MLSERVER_LOG_BATCHES", "") not in ("", "0")


class BundleError(MLServerError):
    """The bundle is missing, malformed or does not match its checksums."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(version_dir: Path) -> dict[str, Any]:
    """The manifest fields this runtime needs, checked as far as it relies on them."""
    path = version_dir / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{version_dir} is not a complete bundle: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        spec = manifest["input"]
        checks = {
            "schema_version": manifest["schema_version"] == 1,
            "distance_metric": manifest.get("distance_metric", "euclidean") == "euclidean",
            "input.value_scale": spec.get("value_scale", "unit") == "unit",
        }
        for key in ("height", "width", "channels"):
            checks[f"input.{key}"] = isinstance(spec[key], int) and spec[key] > 0
        for key in ("latent_dim", "n_clusters"):
            checks[key] = isinstance(manifest[key], int) and manifest[key] > 0
        checks["files"] = isinstance(manifest["files"], dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(f"{path} is not a readable bundle manifest: {exc!r}") from exc
    bad = [key for key, ok in checks.items() if not ok]
    if bad:
        raise BundleError(f"{path} has unsupported or invalid fields: {', '.join(bad)}")
    return manifest


def verify_checksums(version_dir: Path, manifest: dict[str, Any]) -> None:
    """Every file but the manifest is listed with its SHA-256 and none is added.

    Runs before anything is unpickled: joblib files execute code when loaded.
    """
    actual = {
        p.relative_to(version_dir).as_posix(): _sha256(p)
        for p in sorted(version_dir.rglob("*"))
        if p.is_file() and p != version_dir / MANIFEST_FILE
    }
    listed: dict[str, str] = manifest["files"]
    problems = {
        "missing": sorted(set(listed) - set(actual)),
        "unlisted": sorted(set(actual) - set(listed)),
        "changed": sorted(p for p in listed.keys() & actual.keys() if listed[p] != actual[p]),
    }
    found = [f"{what}: {', '.join(paths[:5])}" for what, paths in problems.items() if paths]
    if found:
        raise BundleError(f"{version_dir} does not match its manifest ({'; '.join(found)})")


def load_centroids(version_dir: Path, manifest: dict[str, Any]) -> np.ndarray:
    """float32 [K, D] centroids from ``centroids.joblib`` ({"format": 1, "centroids": ...})."""
    try:
        payload = joblib.load(version_dir / CENTROIDS_FILE)
    except Exception as exc:  # joblib raises many types for a bad pickle
        raise BundleError(f"{version_dir / CENTROIDS_FILE} could not be loaded: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CENTROIDS_FORMAT:
        raise BundleError(f"{CENTROIDS_FILE} is not a format-{CENTROIDS_FORMAT} centroid file")
    centroids = np.asarray(payload.get("centroids"))
    expected = (manifest["n_clusters"], manifest["latent_dim"])
    if centroids.shape != expected or centroids.dtype != np.float32:
        raise BundleError(f"{CENTROIDS_FILE} holds {centroids.dtype} {centroids.shape}, "
                          f"expected float32 {expected}")
    if not np.all(np.isfinite(centroids)):
        raise BundleError(f"{CENTROIDS_FILE} contains NaN or infinite values")
    return centroids


def _signature(loaded: Any, what: str) -> Any:
    signatures = getattr(loaded, "signatures", {})
    if SIGNATURE not in signatures:
        raise BundleError(f"{what} has no {SIGNATURE!r} signature (found {sorted(signatures)})")
    return signatures[SIGNATURE]


class AEClusterRuntime(MLModel):
    """Cluster ids, distances and (optionally) reconstructions of a batch of images."""

    async def load(self) -> bool:
        started = time.perf_counter()
        version_dir = Path(await get_model_uri(self._settings))
        extra = (self._settings.parameters.extra or {}) if self._settings.parameters else {}
        self._reconstruction = bool(extra.get("reconstruction", True))

        manifest = read_manifest(version_dir)
        verify_checksums(version_dir, manifest)
        spec = manifest["input"]
        self._input_shape = (spec["height"], spec["width"], spec["channels"])
        centroids = load_centroids(version_dir, manifest)

        self._encoder_model = tf.saved_model.load(str(version_dir / ENCODER_DIR))
        encoder = _signature(self._encoder_model, version_dir / ENCODER_DIR)
        decoder = None
        if self._reconstruction:
            self._decoder_model = tf.saved_model.load(str(version_dir / DECODER_DIR))
            decoder = _signature(self._decoder_model, version_dir / DECODER_DIR)
        cen = tf.constant(centroids)
        cen_sq = tf.constant(np.sum(centroids * centroids, axis=1))
        with_reconstruction = self._reconstruction

        def compute(images: tf.Tensor) -> dict[str, tf.Tensor]:
            embedding = encoder(**{ENCODER_INPUT: images})[ENCODER_OUTPUT]
            squared = (
                tf.reduce_sum(embedding * embedding, axis=1, keepdims=True)
                - 2.0 * tf.matmul(embedding, cen, transpose_b=True)
                + cen_sq[tf.newaxis, :]
            )
            squared = tf.maximum(squared, 0.0)
            cluster_id = tf.argmin(squared, axis=1, output_type=tf.int64)
            outputs = {
                "cluster_id": cluster_id,
                "distance": tf.gather(tf.sqrt(squared), cluster_id, axis=1, batch_dims=1),
            }
            if with_reconstruction:
                outputs["reconstruction"] = decoder(**{DECODER_INPUT: embedding})[DECODER_OUTPUT]
            return outputs

        self._function = tf.function(
            compute,
            input_signature=[tf.TensorSpec([None, *self._input_shape], tf.float32, name="images")],
        )
        self._function.get_concrete_function()  # a graph that does not build fails the load
        # Warm the shapes a batch of up to 32 images takes, as the service warms its sizes.
        for size in (1, 2, 4, 8, 16, 32):
            self._run(np.full((size, *self._input_shape), 0.5, dtype=np.float32))
        logger.info(
            "aecluster %s: %s version %s from %s (input %s, %d clusters, reconstruction %s) "
            "loaded in %.2fs", self.name, manifest.get("name"), manifest.get("version"),
            version_dir, self._input_shape, manifest["n_clusters"], self._reconstruction,
            time.perf_counter() - started,
        )
        return True

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._function(tf.constant(images))
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def _images(self, payload: InferenceRequest) -> np.ndarray:
        inputs = payload.inputs
        named = [i for i in inputs if i.name == INPUT_NAME]
        if len(named) != 1 and len(inputs) != 1:
            raise InferenceError(f"send one input named {INPUT_NAME!r} "
                                 f"(got {[i.name for i in inputs]})")
        request_input = named[0] if named else inputs[0]
        if request_input.datatype not in ("FP32", "UINT8"):
            raise InferenceError(f"{INPUT_NAME} must be FP32 in [0, 1] or UINT8 in 0..255, "
                                 f"got {request_input.datatype}")
        try:
            array = NumpyCodec.decode_input(request_input)
        except ValueError as exc:  # data and shape disagree
            raise InferenceError(f"{INPUT_NAME} does not match its shape: {exc}") from exc
        if array.ndim != 4 or tuple(array.shape[1:]) != self._input_shape or array.shape[0] < 1:
            raise InferenceError(
                f"{INPUT_NAME} must have shape [N, {', '.join(map(str, self._input_shape))}] "
                f"with N >= 1, got {list(array.shape)}"
            )
        if array.dtype == np.uint8:
            return array.astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray(array, dtype=np.float32)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = self._images(payload)
        if _LOG_BATCHES:
            logger.info("%s: model call with %d image(s)", self.name, images.shape[0])
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(_EXECUTOR, self._run, images)
        outputs = [
            ResponseOutput(name="cluster_id", datatype="INT64", shape=[images.shape[0]],
                           data=result["cluster_id"].tolist()),
            ResponseOutput(name="distance", datatype="FP32", shape=[images.shape[0]],
                           data=result["distance"].tolist()),
        ]
        if self._reconstruction:
            recon = result["reconstruction"]
            outputs.append(ResponseOutput(name="reconstruction", datatype="FP32",
                                          shape=list(recon.shape), data=recon.ravel().tolist()))
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id, outputs=outputs,
        )

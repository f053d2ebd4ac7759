"""The TensorFlow side of serving: one model version as compiled functions on a device.

A :class:`ModelRuntime` loads a bundle's encoder and decoder SavedModels and builds one
``tf.function`` per reconstruction flag that does, in a single call,
encoder -> squared distances to every centroid -> argmin -> (decoder). Both functions have
a fixed ``input_signature`` with a free batch dimension, and every batch is padded to one
of a few allowed sizes, so the graph is traced once and the kernels see a small, warmed-up
set of shapes: no retracing under load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from service import bundle, errors, types

logger = logging.getLogger(__name__)


def _gpu_index(device: str) -> int | None:
    """The N of "gpu" / "gpu:N" (None for other names)."""
    if device == "gpu":
        return 0
    if device.startswith("gpu:") and device[4:].isdigit():
        return int(device[4:])
    return None


def resolve_device(device: str) -> str:
    """Map a device setting (auto, cpu, gpu, gpu:N) to a TensorFlow device name.

    A name that already is a TensorFlow device ("/CPU:0", "/GPU:1") is returned as it is.
    Raises ValueError naming the problem for unknown forms or absent GPUs.
    """
    text = device.strip()
    if text.startswith("/"):
        return text
    text = text.lower()
    gpus = tf.config.list_physical_devices("GPU")
    if text == "auto":
        return "/GPU:0" if gpus else "/CPU:0"
    if text == "cpu":
        return "/CPU:0"
    index = _gpu_index(text)
    if index is None:
        raise ValueError(f"device must be auto, cpu, gpu or gpu:N, got {device!r}")
    if index >= len(gpus):
        seen = f"{len(gpus)} GPU(s)" if gpus else "no GPU"
        raise ValueError(
            f"device {device!r} is unavailable: TensorFlow sees {seen}; "
            "use device 'auto' or 'cpu', or check the CUDA installation"
        )
    return f"/GPU:{index}"


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Size TensorFlow's CPU thread pools (0 leaves TensorFlow's default); call before any op.

    Once TensorFlow has run an op in this process its pools are fixed: then the settings
    are logged as not applied and the server goes on with the pools it has (this happens
    only when a server is embedded in a process that used TensorFlow before).
    """
    for value, setter, name in (
        (intra_op, tf.config.threading.set_intra_op_parallelism_threads, "tf_intra_op_threads"),
        (inter_op, tf.config.threading.set_inter_op_parallelism_threads, "tf_inter_op_threads"),
    ):
        if value <= 0:
            continue
        try:
            setter(value)
        except RuntimeError as exc:
            logger.warning("%s = %d not applied: TensorFlow already started in this process "
                           "(%s)", name, value, exc)


def configure_device(device: str, *, memory_growth: bool) -> str:
    """Pick the device models run on; call once at start-up, before any model loads.

    "auto" chooses "/GPU:0" when TensorFlow sees a GPU, else "/CPU:0"; "gpu" / "gpu:N"
    raise ValueError when that GPU is absent. With ``memory_growth`` every visible GPU
    allocates memory as needed instead of reserving all of it up front, so several model
    versions (and a reload beside a serving one) share a GPU. Returns the device name.
    """
    name = resolve_device(device)
    if memory_growth:
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError as exc:
                # Raised once TensorFlow has initialised the GPU: too late to change, and
                # not worth refusing to serve over.
                logger.warning("memory growth not set on %s: %s", gpu.name, exc)
    logger.info(
        "models run on %s (GPUs visible: %d, memory growth %s)", name,
        len(tf.config.list_physical_devices("GPU")), "on" if memory_growth else "off",
    )
    return name


def _load_saved_model(version_dir: Path, what: str) -> Any:
    """``tf.saved_model.load`` of one of the bundle's SavedModels, failing with a reason.

    TensorFlow reports a truncated or damaged SavedModel in its own terms (a truncated
    variables file was "IndexError: Read less bytes than requested"): say which model
    could not be read and what that usually means.
    """
    try:
        return tf.saved_model.load(str(version_dir / what))
    except Exception as exc:
        raise bundle.BundleError(
            f"the {what} SavedModel could not be loaded; it is damaged, truncated or not a "
            f"SavedModel ({type(exc).__name__}: {str(exc)[:300]})"
        ) from exc


def _signature(loaded: Any, what: str, version_dir: Path) -> Any:
    signatures = getattr(loaded, "signatures", {})
    if bundle.SIGNATURE not in signatures:
        raise bundle.BundleError(
            f"{version_dir / what} has no {bundle.SIGNATURE!r} signature "
            f"(found {sorted(signatures)})"
        )
    return signatures[bundle.SIGNATURE]


class ModelRuntime:
    """One loaded model version: ``run`` maps a batch of images to a :class:`BatchOutput`.

    Thread-safe: ``run`` is called on batcher worker threads (never on the event loop).
    """

    def __init__(
        self,
        version_dir: Path,
        manifest: bundle.Manifest,
        centroids: np.ndarray,
        *,
        device: str,
        batch_sizes: tuple[int, ...],
    ) -> None:
        sizes = tuple(sorted(set(batch_sizes)))
        if not sizes or sizes[0] < 1:
            raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
        spec = manifest.input
        self.input_shape: tuple[int, int, int] = (spec.height, spec.width, spec.channels)
        self.latent_dim: int = manifest.latent_dim
        self.n_clusters: int = manifest.n_clusters
        self.max_batch_size: int = sizes[-1]
        self.batch_sizes: tuple[int, ...] = sizes
        self.device: str = resolve_device(device)
        self.name: str = manifest.name
        self.version: int = manifest.version
        cen = np.asarray(centroids, dtype=np.float32)
        if cen.shape != (self.n_clusters, self.latent_dim):
            raise ValueError(
                f"centroids have shape {cen.shape}, the manifest says "
                f"({self.n_clusters}, {self.latent_dim})"
            )

        started = time.perf_counter()
        with tf.device(self.device):
            # Variables are placed where the SavedModels are loaded.
            self._encoder_model = _load_saved_model(version_dir, bundle.ENCODER_DIR)
            self._decoder_model = _load_saved_model(version_dir, bundle.DECODER_DIR)
            self._centroids = tf.constant(cen)
        self._encoder = _signature(self._encoder_model, bundle.ENCODER_DIR, version_dir)
        self._decoder = _signature(self._decoder_model, bundle.DECODER_DIR, version_dir)

        self._trace_lock = threading.Lock()
        self._traces = 0
        image_spec = tf.TensorSpec([None, *self.input_shape], tf.float32, name="images")
        self._functions = {
            flag: tf.function(self._graph(flag), input_signature=[image_spec])
            for flag in (False, True)
        }
        # Trace both now: a graph that does not build (wrong signature names, shapes that
        # do not chain) fails the load, not the first request. Requests call the concrete
        # functions: with one fixed signature there is nothing for tf.function's dispatch to
        # choose, and skipping it saved 100-150 us of Python (GIL held) per call here.
        self._concrete = {flag: function.get_concrete_function()
                          for flag, function in self._functions.items()}
        logger.info(
            "runtime %s/%d loaded on %s in %.2fs (input %s, latent %d, %d clusters, sizes %s)",
            self.name, self.version, self.device, time.perf_counter() - started,
            self.input_shape, self.latent_dim, self.n_clusters, sizes,
        )

    def _graph(self, with_reconstruction: bool) -> Any:
        def compute(images: tf.Tensor) -> dict[str, tf.Tensor]:
            # Python here runs only while tracing: count traces to prove there is no retrace.
            with self._trace_lock:
                self._traces += 1
            with tf.device(self.device):
                embedding = self._encoder(**{bundle.ENCODER_INPUT: images})[bundle.ENCODER_OUTPUT]
                # Summed over the coordinate differences, as bundle.assign (the reference)
                # does: the matmul expansion ||e||^2 - 2 e.c + ||c||^2 cancels, and its
                # rounding changed with the padded batch size (up to 3e-5 in a distance).
                # The same N*K*D multiply-adds as the matmul, through an [N, K, D] temporary.
                diff = embedding[:, tf.newaxis, :] - self._centroids[tf.newaxis, :, :]
                squared = tf.reduce_sum(diff * diff, axis=2)
                cluster_id = tf.argmin(squared, axis=1, output_type=tf.int64)
                distances = tf.sqrt(squared)
                outputs = {
                    "cluster_id": cluster_id,
                    "distance": tf.gather(distances, cluster_id, axis=1, batch_dims=1),
                    "distances": distances,
                    "embedding": embedding,
                }
                if with_reconstruction:
                    reconstruction = self._decoder(
                        **{bundle.DECODER_INPUT: embedding}
                    )[bundle.DECODER_OUTPUT]
                    outputs["reconstruction"] = reconstruction
                    # Per-image MSE in the graph: one fused op per batch instead of numpy
                    # work per request on the event loop (issue 38's profile: 4 %).
                    outputs["reconstruction_error"] = tf.reduce_mean(
                        tf.math.squared_difference(reconstruction, images), axis=[1, 2, 3])
            return outputs

        compute.__name__ = f"cluster_with_reconstruction_{str(with_reconstruction).lower()}"
        return compute

    def padded_size(self, n: int) -> int:
        """The allowed batch size ``n`` images are padded to."""
        for size in self.batch_sizes:
            if size >= n:
                return size
        raise errors.InvalidInput(
            f"a batch of {n} images is larger than the maximum batch size {self.max_batch_size}"
        )

    def _check(self, images: np.ndarray) -> np.ndarray:
        array = np.asarray(images)
        if array.ndim != 4 or tuple(array.shape[1:]) != self.input_shape:
            raise errors.InvalidInput(
                f"images must have shape [N, {', '.join(map(str, self.input_shape))}] "
                f"for model {self.name} version {self.version}, got {list(array.shape)}"
            )
        if array.shape[0] < 1:
            raise errors.InvalidInput("the batch is empty: send at least one image")
        if not np.issubdtype(array.dtype, np.floating):
            # Integers would pass unscaled (0..255 instead of 0..1): refuse rather than guess.
            raise errors.InvalidInput(f"images must be float32 in [0, 1], got dtype {array.dtype}")
        return np.ascontiguousarray(array, dtype=np.float32)

    def run(self, images: np.ndarray, *, with_reconstruction: bool) -> types.BatchOutput:
        """Cluster ``images`` (float32 [N, H, W, C] in [0, 1], 1 <= N <= max_batch_size).

        The batch is padded to the next allowed size by repeating its last image; the
        outputs are sliced back to N rows.
        """
        batch = self._check(images)
        n = batch.shape[0]
        size = self.padded_size(n)
        if size > n:
            batch = np.concatenate([batch, np.repeat(batch[-1:], size - n, axis=0)])
        outputs = self._concrete[with_reconstruction](tf.constant(batch))
        reconstruction = outputs.get("reconstruction")
        error = outputs.get("reconstruction_error")
        return types.BatchOutput(
            cluster_id=outputs["cluster_id"].numpy()[:n],
            distance=outputs["distance"].numpy()[:n],
            distances=outputs["distances"].numpy()[:n],
            embedding=outputs["embedding"].numpy()[:n],
            reconstruction=None if reconstruction is None else reconstruction.numpy()[:n],
            reconstruction_error=None if error is None else error.numpy()[:n],
        )

    def warmup(self) -> None:
        """Run every allowed batch size with and without reconstruction once.

        The first call of each shape allocates buffers and picks kernels; doing it here
        keeps that cost off the first requests.
        """
        started = time.perf_counter()
        image = np.full((1, *self.input_shape), 0.5, dtype=np.float32)
        for size in self.batch_sizes:
            batch = np.repeat(image, size, axis=0)
            for flag in (False, True):
                self.run(batch, with_reconstruction=flag)
        logger.info("runtime %s/%d warmed up %d sizes in %.2fs", self.name, self.version,
                    len(self.batch_sizes), time.perf_counter() - started)

    def trace_count(self) -> int:
        """How many times the compiled functions traced (2 after loading; stays 2)."""
        with self._trace_lock:
            return self._traces


def runtime_factory(
    device: str, batch_sizes: tuple[int, ...]
) -> Callable[[Path, bundle.Manifest, np.ndarray], ModelRuntime]:
    """What :class:`service.repository.ModelRepository` calls to load a version."""

    def make(path: Path, manifest: bundle.Manifest, centroids: np.ndarray) -> ModelRuntime:
        return ModelRuntime(path, manifest, centroids, device=device, batch_sizes=batch_sizes)

    return make

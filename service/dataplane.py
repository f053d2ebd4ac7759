"""The protocol-neutral core that REST and gRPC both call.

Transports parse, call one method here, and encode; everything else - validation,
preprocessing as the manifest says, batching, outlier flags, metrics of what was
computed - happens once, here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service import bundle, imagecodec, tracing
from service.errors import InvalidInput, NotFound, PayloadTooLarge, Unavailable
from service.metrics import Metrics, resolved
from service.repository import LoadedVersion, ModelRepository, VersionStatus
from service.settings import Settings
from service.types import BatchOutput, ClusterOptions, ClusterResult, ImageInput, ModelRef

logger = logging.getLogger(__name__)

# The names are the bundle's (its TF Serving SavedModel answers to the same ones).
DEFAULT_SIGNATURE = bundle.SIGNATURE
BYTES_SIGNATURE = bundle.BYTES_SIGNATURE
PREDICT_METHOD = "tensorflow/serving/predict"
OUTPUT_NAMES = bundle.OUTPUT_NAMES
# Open Inference Protocol inputs -> the signature that reads them (one input per request).
INFER_INPUTS = {"images": DEFAULT_SIGNATURE, "image_bytes": BYTES_SIGNATURE}
PSNR_CAP_DB = 100.0
# Decoding a few small images inline is cheaper than a thread hop; large payloads are
# decoded on a worker thread so the event loop keeps serving other callers. Both the bytes
# and the pixels the headers declare must be small: a blank 4000x4000 PNG is 14 KB, and
# decoding it inline held the event loop for 580 ms (issue 39's lag test). 256 K pixels
# (512 x 512) decode and resize in a few milliseconds.
INLINE_DECODE_BYTES = 256 * 1024
INLINE_DECODE_PIXELS = 256 * 1024


@dataclass(frozen=True)
class VersionInfo:
    """Which model version answered."""

    name: str
    version: int
    manifest: bundle.Manifest


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # "float32", "int64", "bool", "string"
    shape: tuple[int, ...]  # -1 = any size (the batch dimension)


@dataclass(frozen=True)
class SignatureInfo:
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    method_name: str = PREDICT_METHOD


@dataclass(frozen=True)
class ClusterInfo:
    """One cluster as the bundle describes it (training-set figures, stored exemplars)."""

    cluster_id: int
    size: int  # training images assigned to it
    label: str | None
    distance_p50: float
    distance_p99: float
    exemplars: list[str]  # bundle-relative PNG paths, nearest to the centroid first


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: int
    manifest: bundle.Manifest
    signatures: dict[str, SignatureInfo]


class DataPlane:
    """Answers cluster, predict, status and metadata requests for every transport."""

    def __init__(self, repository: ModelRepository, settings: Settings, metrics: Metrics) -> None:
        self._repo = repository
        self._settings = settings
        self._metrics = metrics
        self._max_pixels = settings.max_image_pixels
        self._max_request_pixels = settings.max_request_pixels
        self._draining = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- health ----------------------------------------------------------------------

    def is_live(self) -> bool:
        return True

    def is_ready(self) -> bool:
        """A model is loaded and warmed up, and the server is not draining."""
        return not self._draining and self._repo.has_ready_model()

    @property
    def draining(self) -> bool:
        return self._draining

    async def drain(self, timeout: float) -> None:
        """Refuse new work at once; let in-flight and queued requests finish within ``timeout``."""
        self._draining = True
        deadline = time.monotonic() + timeout
        logger.info("draining: %d request(s) in flight", self._inflight)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        except TimeoutError:
            logger.warning("drain timeout: %d request(s) still in flight", self._inflight)
        await self._repo.stop(max(0.0, deadline - time.monotonic()))

    def _enter(self) -> None:
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    # ---- native API ------------------------------------------------------------------

    async def cluster(
        self,
        model: ModelRef,
        images: Sequence[ImageInput],
        options: ClusterOptions,
        *,
        deadline: float | None = None,
    ) -> tuple[VersionInfo, list[ClusterResult]]:
        """Cluster id, distance, outlier flag and the asked-for extras for every image."""
        self._check_count(len(images))
        if options.top_k < 0:
            raise InvalidInput(f"top_k must be >= 0, got {options.top_k}")
        self._enter()
        try:
            with self._repo.acquire(model.name, model.version) as lv:
                resolved(lv.labels)
                with tracing.span("preprocess"):
                    batch = await self._prepare(images, lv.manifest.input)
                want_recon = options.return_reconstruction != "none"
                out = await lv.batcher.submit(batch, with_reconstruction=want_recon,
                                              deadline=deadline)
                results = self._results(lv, out, options)
                return _info(lv), results
        finally:
            self._leave()

    def _check_count(self, n: int) -> None:
        if n == 0:
            raise InvalidInput("the request holds no images: send at least one instance")
        if n > self._settings.max_images_per_request:
            raise PayloadTooLarge(
                f"{n} images in one request; the limit is {self._settings.max_images_per_request}"
            )

    async def _prepare(self, images: Sequence[ImageInput], spec: bundle.InputSpec) -> np.ndarray:
        size = sum(len(i.encoded) if i.encoded is not None else 0 for i in images)
        if size <= INLINE_DECODE_BYTES and \
                sum(imagecodec.declared_pixels(i) for i in images) <= INLINE_DECODE_PIXELS:
            return imagecodec.prepare_batch(images, spec, max_pixels=self._max_pixels,
                                            max_request_pixels=self._max_request_pixels)
        return await asyncio.to_thread(imagecodec.prepare_batch, images, spec,
                                       max_pixels=self._max_pixels,
                                       max_request_pixels=self._max_request_pixels)

    def _results(self, lv: LoadedVersion, out: BatchOutput,
                 options: ClusterOptions) -> list[ClusterResult]:
        # The metrics of these rows were recorded with their batch (VersionMetrics).
        outliers = (out.distance > lv.outlier_threshold[out.cluster_id]).tolist()
        ids = out.cluster_id.tolist()
        distances = out.distance.tolist()
        recon = out.reconstruction
        errors = psnrs = None
        if recon is not None and out.reconstruction_error is not None:
            errors = out.reconstruction_error.tolist()
            psnrs = psnr(out.reconstruction_error)
        k = min(options.top_k, lv.manifest.n_clusters)
        order = np.argsort(out.distances, axis=1, kind="stable")[:, :k] if k else None
        results = []
        for i, cluster in enumerate(ids):
            result = ClusterResult(
                cluster_id=cluster,
                distance=distances[i],
                is_outlier=outliers[i],
                label=lv.manifest.cluster_label(cluster),
            )
            if recon is not None and errors is not None and psnrs is not None:
                result.reconstruction = recon[i]
                result.reconstruction_error = errors[i]
                result.psnr = psnrs[i]
            if options.return_embedding:
                result.embedding = out.embedding[i]
            if order is not None:
                result.top_k = [(int(c), float(out.distances[i, c])) for c in order[i]]
            results.append(result)
        return results

    # ---- TensorFlow Serving API --------------------------------------------------------

    async def predict(
        self,
        model: ModelRef,
        signature: str | None,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] | None = None,
        *,
        deadline: float | None = None,
    ) -> tuple[VersionInfo, dict[str, np.ndarray]]:
        """TF Serving's Predict over the two signatures of docs/architecture.md."""
        signature = signature or DEFAULT_SIGNATURE
        if signature not in (DEFAULT_SIGNATURE, BYTES_SIGNATURE):
            raise NotFound(
                f"signature {signature!r} not found; "
                f"signatures: {DEFAULT_SIGNATURE}, {BYTES_SIGNATURE}"
            )
        wanted = list(output_filter) if output_filter else list(OUTPUT_NAMES)
        unknown = [name for name in wanted if name not in OUTPUT_NAMES]
        if unknown:
            raise InvalidInput(
                f"output_filter names unknown outputs {unknown}; outputs: {', '.join(OUTPUT_NAMES)}"
            )
        self._enter()
        try:
            with self._repo.acquire(model.name, model.version) as lv:
                resolved(lv.labels)
                with tracing.span("preprocess"):
                    if signature == DEFAULT_SIGNATURE:
                        batch = _check_float_images(inputs, lv.manifest.input)
                        self._check_count(len(batch))
                    else:
                        images = _bytes_inputs(inputs)
                        self._check_count(len(images))
                        batch = await self._prepare(images, lv.manifest.input)
                want_recon = "reconstruction" in wanted
                out = await lv.batcher.submit(batch, with_reconstruction=want_recon,
                                              deadline=deadline)
                outliers = out.distance > lv.outlier_threshold[out.cluster_id]
                every = {
                    "cluster_id": out.cluster_id.astype(np.int64),
                    "distance": out.distance.astype(np.float32),
                    "is_outlier": outliers,
                    "reconstruction": out.reconstruction,
                    "embedding": out.embedding.astype(np.float32),
                }
                return _info(lv), {name: every[name] for name in wanted
                                   if every[name] is not None}
        finally:
            self._leave()

    async def infer(
        self,
        model: ModelRef,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        *,
        deadline: float | None = None,
    ) -> tuple[VersionInfo, dict[str, np.ndarray]]:
        """Open Inference Protocol inference: one input, ``images`` (float32 in [0, 1] or
        uint8 0..255, [N, H, W, C]) or ``image_bytes`` (encoded images, [N]); the outputs
        asked for (None: all of them), in that order. The same path as :meth:`predict`: the
        decoder runs only when ``reconstruction`` is asked for."""
        if len(inputs) != 1 or not set(inputs) <= set(INFER_INPUTS):
            raise InvalidInput(
                "send one input: 'images' (FP32 in [0, 1] or UINT8, [N, H, W, C]) or "
                f"'image_bytes' (BYTES, PNG/JPEG, [N]); got {sorted(inputs) or 'none'}"
            )
        ((name, array),) = inputs.items()
        if name == "images":
            if array.dtype == np.uint8:
                array = array.astype(np.float32) / np.float32(255.0)
            elif array.dtype != np.float32:
                raise InvalidInput(f"input 'images' must be FP32 (0..1) or UINT8 (0..255), "
                                   f"got {array.dtype}")
        elif array.dtype.kind != "O":
            raise InvalidInput(f"input 'image_bytes' must be BYTES, got {array.dtype}")
        unknown = [output for output in outputs or () if output not in OUTPUT_NAMES]
        if unknown:
            raise InvalidInput(f"unknown outputs requested {unknown}; outputs: "
                               f"{', '.join(OUTPUT_NAMES)}")
        if outputs is not None and len(set(outputs)) != len(outputs):
            raise InvalidInput(f"an output is requested twice: {list(outputs)}")
        return await self.predict(model, INFER_INPUTS[name], {name: array},
                                  list(outputs) if outputs else None, deadline=deadline)

    def model_ready(self, model: ModelRef) -> bool:
        """Whether ``model`` (its default version without one) answers now; NotFound for a
        model or version that is not served here."""
        try:
            resolved(self._repo.get(_checked_name(model.name), model.version).labels)
        except Unavailable:
            return False
        return not self._draining

    def model_status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        bundle_name = _checked_name(name)
        return self._repo.status(bundle_name, version)

    def model_metadata(self, model: ModelRef) -> ModelMetadata:
        lv = self._repo.get(_checked_name(model.name), model.version)
        resolved(lv.labels)
        spec = lv.manifest.input
        image = TensorInfo("float32", (-1, spec.height, spec.width, spec.channels))
        outputs = {
            "cluster_id": TensorInfo("int64", (-1,)),
            "distance": TensorInfo("float32", (-1,)),
            "is_outlier": TensorInfo("bool", (-1,)),
            "reconstruction": image,
            "embedding": TensorInfo("float32", (-1, lv.manifest.latent_dim)),
        }
        return ModelMetadata(
            name=lv.name,
            version=lv.version,
            manifest=lv.manifest,
            signatures={
                DEFAULT_SIGNATURE: SignatureInfo({"images": image}, outputs),
                BYTES_SIGNATURE: SignatureInfo({"image_bytes": TensorInfo("string", (-1,))},
                                               outputs),
            },
        )

    def list_models(self) -> list[VersionInfo]:
        return [_info(lv) for lv in self._repo.loaded_versions()]

    # ---- clusters and their exemplars ---------------------------------------------------

    def clusters(self, model: ModelRef) -> tuple[VersionInfo, list[ClusterInfo]]:
        """Every cluster of a loaded version with its size, label, distances and exemplars."""
        lv = self._repo.get(_checked_name(model.name), model.version)
        resolved(lv.labels)
        manifest = lv.manifest
        return _info(lv), [
            ClusterInfo(
                cluster_id=stats.cluster,
                size=stats.count,
                label=manifest.cluster_label(stats.cluster),
                distance_p50=stats.p50,
                distance_p99=stats.p99,
                exemplars=manifest.exemplar_paths(stats.cluster),
            )
            for stats in manifest.cluster_stats
        ]

    async def exemplar(self, model: ModelRef, cluster: int, index: int) -> bytes:
        """The PNG bytes of exemplar ``index`` of ``cluster``, re-checked against the manifest.

        Only paths the manifest lists can be named (the path is built from two integers
        and must be in the cluster's list), and the bytes are hashed again on every read:
        the version directory may have changed since it was verified at load.
        """
        with self._repo.acquire(_checked_name(model.name), model.version) as lv:
            resolved(lv.labels)
            manifest = lv.manifest
            where = f"model {lv.name!r} version {lv.version}"
            if not 0 <= cluster < manifest.n_clusters:
                raise NotFound(f"cluster {cluster} does not exist in {where} (clusters "
                               f"0..{manifest.n_clusters - 1})")
            if manifest.exemplars is None:
                raise NotFound(f"{where} stores no exemplars (trained before they existed, or "
                               "with --exemplars 0)")
            relative = bundle.exemplar_path(cluster, index)
            listed = manifest.exemplar_paths(cluster)
            if index < 0 or relative not in listed:
                raise NotFound(f"exemplar {index} of cluster {cluster} does not exist in {where} "
                               f"(that cluster has {len(listed)}, numbered from 0)")
            try:
                return await asyncio.to_thread(bundle.read_verified, lv.path, manifest, relative)
            except bundle.BundleError as exc:
                logger.error("refusing exemplar %s of %s: %s", relative, where, exc)
                raise NotFound(
                    f"exemplar {index} of cluster {cluster} of {where} is not served: its file "
                    "on the server no longer matches the bundle's checksum (changed or removed "
                    "after the bundle was loaded)"
                ) from exc


def _info(lv: LoadedVersion) -> VersionInfo:
    return VersionInfo(lv.name, lv.version, lv.manifest)


def _checked_name(name: str) -> str:
    try:
        return bundle.validate_model_name(name)
    except bundle.BundleError as exc:
        raise NotFound(str(exc)) from exc


def psnr(mse: np.ndarray) -> list[float]:
    """PSNR in dB of images in [0, 1] from their mean squared errors (capped like training's).

    Plain Python over the few values of one request: cheaper than numpy's set-up for them.
    """
    return [PSNR_CAP_DB if not value > 0.0 else min(PSNR_CAP_DB, -10.0 * math.log10(value))
            for value in mse.tolist()]


def _check_float_images(inputs: Mapping[str, np.ndarray], spec: bundle.InputSpec) -> np.ndarray:
    if set(inputs) != {"images"}:
        raise InvalidInput(
            f"signature {DEFAULT_SIGNATURE} takes one input 'images', "
            f"got {sorted(inputs) or 'none'}"
        )
    raw = np.asarray(inputs["images"])
    if raw.dtype.kind not in "fiu":
        raise InvalidInput(f"input 'images' must be numeric, got {raw.dtype}")
    expected = (spec.height, spec.width, spec.channels)
    if raw.ndim != 4 or tuple(raw.shape[1:]) != expected:
        raise InvalidInput(
            f"input 'images' must have shape [N, {expected[0]}, {expected[1]}, {expected[2]}], "
            f"got {list(raw.shape)}; send encoded images to signature {BYTES_SIGNATURE} to have "
            "them resized"
        )
    images = raw.astype(np.float32, copy=False)
    if images.size:
        # Two passes, not four: NaN carries into min and max, and NaN or an infinity fails
        # the range test like any value out of [0, 1] (profiled, issue 38: the separate
        # isfinite pass and the copy were 9 % of the V2 JSON request's samples).
        low, high = float(images.min()), float(images.max())
        if not (low >= 0.0 and high <= 1.0):
            if not (math.isfinite(low) and math.isfinite(high)):
                raise InvalidInput("input 'images' contains NaN or infinite values")
            raise InvalidInput(
                f"input 'images' must be scaled to [0, 1], got values in "
                f"[{low:.3g}, {high:.3g}]; divide 8-bit pixels by 255"
            )
    return images


def _bytes_inputs(inputs: Mapping[str, np.ndarray]) -> list[ImageInput]:
    if set(inputs) != {"image_bytes"}:
        raise InvalidInput(
            f"signature {BYTES_SIGNATURE} takes one input 'image_bytes', "
            f"got {sorted(inputs) or 'none'}"
        )
    raw = np.asarray(inputs["image_bytes"], dtype=object)
    if raw.ndim == 0:
        raw = raw.reshape(1)
    if raw.ndim != 1:
        raise InvalidInput(f"input 'image_bytes' must be a vector of encoded images, got shape "
                           f"{list(raw.shape)}")
    images = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = item.encode("latin-1")
        if not isinstance(item, bytes | bytearray | memoryview):
            raise InvalidInput(f"image_bytes[{i}] is not bytes (got {type(item).__name__})")
        images.append(ImageInput(encoded=bytes(item)))
    return images


def deadline_from_timeout(seconds: float | None) -> float | None:
    """An absolute monotonic deadline from a relative timeout (None or inf: no deadline)."""
    if seconds is None or math.isinf(seconds):
        return None
    return time.monotonic() + max(0.0, seconds)

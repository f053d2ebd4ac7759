"""The data plane over a real digits bundle: the answers every transport relays."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_digits

from service import bundle
from service.dataplane import DataPlane
from service.errors import InvalidInput, NotFound, PayloadTooLarge, Unavailable
from service.metrics import Metrics
from service.repository import ModelRepository
from service.runtime import runtime_factory
from service.settings import Settings
from service.types import ClusterOptions, ImageInput, ModelRef

pytestmark = pytest.mark.anyio

DIGITS = ModelRef("digits")


@pytest.fixture
async def plane(model_repo: Path) -> AsyncIterator[DataPlane]:
    settings = Settings(model_repo=model_repo, poll_seconds=0, max_batch_size=8,
                        max_images_per_request=64, drain_seconds=5)
    metrics = Metrics()

    factory = runtime_factory("/CPU:0", settings.batch_sizes())

    repo = ModelRepository(settings, metrics, factory)
    await repo.start()
    dp = DataPlane(repo, settings, metrics)
    yield dp
    await repo.stop(1)


@pytest.fixture(scope="module")
def digit_images() -> np.ndarray:
    return (load_digits().images[:20] / 16.0).astype(np.float32)[..., None]


def _reference(bundle_dir: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, distances and embeddings straight from the exported SavedModel and joblib file."""
    manifest = bundle.read_manifest(bundle_dir)
    centroids = bundle.load_centroids(bundle_dir, manifest)
    enc = tf.saved_model.load(str(bundle_dir / "encoder")).signatures["serving_default"]
    z = enc(images=tf.constant(images))["embedding"].numpy()
    ids, dist = bundle.assign(z, centroids)
    return ids, dist, z


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


async def test_cluster_matches_the_exported_bundle(plane: DataPlane, model_repo: Path,
                                                   digit_images: np.ndarray) -> None:
    info, results = await plane.cluster(
        DIGITS, [ImageInput(array=img) for img in digit_images],
        ClusterOptions(return_reconstruction="array", return_embedding=True, top_k=3))
    assert (info.name, info.version) == ("digits", 1)
    ids, dist, z = _reference(model_repo / "digits" / "1", digit_images)
    assert [r.cluster_id for r in results] == ids.tolist()
    np.testing.assert_allclose([r.distance for r in results], dist, atol=1e-4)
    np.testing.assert_allclose(np.stack([r.embedding for r in results]), z, atol=1e-5)
    p99 = {s.cluster: s.p99 for s in info.manifest.cluster_stats}
    for r in results:
        assert r.is_outlier == (r.distance > p99[r.cluster_id])
        assert r.label == info.manifest.cluster_label(r.cluster_id)
        assert r.reconstruction is not None and r.reconstruction.shape == (8, 8, 1)
        assert r.top_k[0][0] == r.cluster_id and len(r.top_k) == 3
        assert r.top_k[0][1] == pytest.approx(r.distance, abs=1e-4)
        assert [d for _, d in r.top_k] == sorted(d for _, d in r.top_k)
        assert r.reconstruction_error is not None and r.psnr is not None
        assert r.psnr == pytest.approx(10 * np.log10(1 / r.reconstruction_error), abs=1e-3)


async def test_png_bytes_and_other_sizes_are_preprocessed(plane: DataPlane,
                                                          digit_images: np.ndarray) -> None:
    as_png = [ImageInput(encoded=_png(img)) for img in digit_images[:4]]
    _, from_png = await plane.cluster(DIGITS, as_png, ClusterOptions())
    _, from_array = await plane.cluster(
        DIGITS,
        [ImageInput(array=np.round(img * 255).astype(np.uint8)) for img in digit_images[:4]],
        ClusterOptions())
    assert [r.cluster_id for r in from_png] == [r.cluster_id for r in from_array]
    big = np.kron(digit_images[0, ..., 0], np.ones((4, 4), np.float32))  # 32x32, same digit
    rgb = np.repeat(big[..., None], 3, axis=2)
    _, [result] = await plane.cluster(DIGITS, [ImageInput(array=rgb)], ClusterOptions())
    assert 0 <= result.cluster_id < 10 and result.reconstruction is None


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        ([], InvalidInput, "no images"),
        ([ImageInput(encoded=b"not an image")], InvalidInput, "image 0"),
        ([ImageInput(array=np.full((8, 8), np.nan, np.float32))], InvalidInput, "NaN"),
        ([ImageInput(array=np.zeros((2, 8, 8, 1), np.float32))], InvalidInput, "image 0"),
        ([ImageInput(array=np.zeros((8, 8), np.float32))] * 65, PayloadTooLarge, "limit is 64"),
    ],
)
async def test_bad_cluster_requests(plane: DataPlane, images: list[ImageInput],
                                    error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        await plane.cluster(DIGITS, images, ClusterOptions())
    # ... and the next request is served as usual.
    _, ok = await plane.cluster(DIGITS, [ImageInput(array=np.zeros((8, 8), np.float32))],
                                ClusterOptions())
    assert len(ok) == 1


async def test_unknown_model_and_version(plane: DataPlane) -> None:
    one = [ImageInput(array=np.zeros((8, 8), np.float32))]
    with pytest.raises(NotFound, match="'fashion' is not served"):
        await plane.cluster(ModelRef("fashion"), one, ClusterOptions())
    with pytest.raises(NotFound, match="version 5"):
        await plane.cluster(ModelRef("digits", 5), one, ClusterOptions())
    with pytest.raises(NotFound, match="not allowed"):
        plane.model_status("../etc")


async def test_predict_signatures_and_output_filter(plane: DataPlane, model_repo: Path,
                                                    digit_images: np.ndarray) -> None:
    _, out = await plane.predict(DIGITS, None, {"images": digit_images})
    ids, _, _ = _reference(model_repo / "digits" / "1", digit_images)
    assert set(out) == {"cluster_id", "distance", "is_outlier", "reconstruction", "embedding"}
    np.testing.assert_array_equal(out["cluster_id"], ids)
    assert out["cluster_id"].dtype == np.int64 and out["is_outlier"].dtype == np.bool_
    assert out["reconstruction"].shape == digit_images.shape
    _, only = await plane.predict(DIGITS, "serving_default", {"images": digit_images},
                                  ["cluster_id", "distance"])
    assert set(only) == {"cluster_id", "distance"}
    pngs = np.array([_png(img) for img in digit_images[:3]], dtype=object)
    _, from_bytes = await plane.predict(DIGITS, "predict_bytes", {"image_bytes": pngs},
                                        ["cluster_id"])
    assert from_bytes["cluster_id"].shape == (3,)


@pytest.mark.parametrize(
    ("signature", "inputs", "filt", "error", "message"),
    [
        ("classify", {"images": np.zeros((1, 8, 8, 1))}, None, NotFound, "signatures:"),
        (None, {"pixels": np.zeros((1, 8, 8, 1))}, None, InvalidInput, "one input 'images'"),
        (None, {"images": np.zeros((1, 8, 8))}, None, InvalidInput, r"shape \[N, 8, 8, 1\]"),
        (None, {"images": np.zeros((1, 8, 8, 3))}, None, InvalidInput, r"shape \[N, 8, 8, 1\]"),
        (None, {"images": np.full((1, 8, 8, 1), np.inf)}, None, InvalidInput, "infinite"),
        # One NaN among valid pixels: min and max carry it, the range test must not pass it.
        (None, {"images": np.pad(np.full((1, 1, 1, 1), np.nan, np.float32),
                                 ((0, 0), (0, 7), (0, 7), (0, 0)), constant_values=0.5)},
         None, InvalidInput, "NaN"),
        (None, {"images": np.full((1, 8, 8, 1), -0.5, np.float32)}, None, InvalidInput,
         r"\[-0.5, -0.5\]"),
        (None, {"images": np.full((1, 8, 8, 1), 255.0)}, None, InvalidInput, "divide 8-bit"),
        (None, {"images": np.array([["a"]])}, None, InvalidInput, "numeric"),
        (None, {"images": np.zeros((0, 8, 8, 1))}, None, InvalidInput, "no images"),
        (None, {"images": np.zeros((1, 8, 8, 1))}, ["logits"], InvalidInput, "unknown outputs"),
        ("predict_bytes", {"image_bytes": np.array([b"junk"], dtype=object)}, None,
         InvalidInput, "image 0"),
    ],
)
async def test_bad_predict_requests(plane: DataPlane, signature: str | None,
                                    inputs: dict[str, np.ndarray], filt: list[str] | None,
                                    error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        await plane.predict(DIGITS, signature, inputs, filt)


async def test_infer_is_predict_by_input_name(plane: DataPlane,
                                             digit_images: np.ndarray) -> None:
    info, every = await plane.infer(DIGITS, {"images": digit_images})
    _, expected = await plane.predict(DIGITS, None, {"images": digit_images})
    assert info.version == 1 and list(every) == list(expected)
    np.testing.assert_array_equal(every["cluster_id"], expected["cluster_id"])
    uint8 = np.round(digit_images * 255).astype(np.uint8)
    _, from_uint8 = await plane.infer(DIGITS, {"images": uint8}, ["distance", "cluster_id"])
    _, scaled = await plane.predict(DIGITS, None, {"images": uint8.astype(np.float32) / 255})
    assert list(from_uint8) == ["distance", "cluster_id"]
    np.testing.assert_array_equal(from_uint8["distance"], scaled["distance"])
    pngs = np.array([_png(img) for img in digit_images[:3]], dtype=object)
    _, from_bytes = await plane.infer(DIGITS, {"image_bytes": pngs}, ["cluster_id"])
    assert from_bytes["cluster_id"].shape == (3,)


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ({}, None, "send one input"),
        ({"pixels": np.zeros((1, 8, 8, 1), np.float32)}, None, "send one input"),
        ({"images": np.zeros((1, 8, 8, 1), np.float32),
          "image_bytes": np.array([b"x"], dtype=object)}, None, "send one input"),
        ({"images": np.zeros((1, 8, 8, 1), np.float64)}, None, "FP32 .* or UINT8"),
        ({"image_bytes": np.zeros(1, np.float32)}, None, "must be BYTES"),
        ({"images": np.zeros((1, 8, 8, 1), np.float32)}, ["logits"], "unknown outputs"),
        ({"images": np.zeros((1, 8, 8, 1), np.float32)}, ["distance", "distance"], "twice"),
    ],
)
async def test_bad_infer_requests(plane: DataPlane, inputs: dict[str, np.ndarray],
                                  outputs: list[str] | None, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        await plane.infer(DIGITS, inputs, outputs)


async def test_model_ready(plane: DataPlane) -> None:
    assert plane.model_ready(DIGITS) and plane.model_ready(ModelRef("digits", 1))
    with pytest.raises(NotFound):
        plane.model_ready(ModelRef("nope"))
    with pytest.raises(NotFound):
        plane.model_ready(ModelRef("digits", 4))


async def test_metadata_status_and_listing(plane: DataPlane) -> None:
    meta = plane.model_metadata(DIGITS)
    assert set(meta.signatures) == {"serving_default", "predict_bytes"}
    assert meta.signatures["serving_default"].inputs["images"].shape == (-1, 8, 8, 1)
    assert meta.signatures["serving_default"].outputs["embedding"].shape == (-1, 8)
    [status] = plane.model_status("digits")
    assert (status.version, status.state, status.error_code) == (1, "AVAILABLE", "OK")
    assert [(v.name, v.version) for v in plane.list_models()] == [("digits", 1)]
    assert plane.is_ready() and plane.is_live()


async def test_metrics_record_what_was_computed(plane: DataPlane,
                                                digit_images: np.ndarray) -> None:
    await plane.cluster(DIGITS, [ImageInput(array=img) for img in digit_images],
                        ClusterOptions(return_reconstruction="png"))
    registry = plane._metrics.registry
    labels = {"model": "digits", "version": "1"}
    assigned = sum(registry.get_sample_value("aecluster_cluster_assignments_total",
                                             {**labels, "cluster": str(c)}) or 0
                   for c in range(10))
    assert assigned == len(digit_images)
    assert registry.get_sample_value("aecluster_distance_count", labels) == len(digit_images)
    assert registry.get_sample_value("aecluster_reconstruction_error_count", labels) == len(
        digit_images)


async def test_drain_finishes_in_flight_and_refuses_new(plane: DataPlane,
                                                        digit_images: np.ndarray) -> None:
    images = [ImageInput(array=img) for img in digit_images]
    running = [asyncio.create_task(plane.cluster(DIGITS, images, ClusterOptions()))
               for _ in range(5)]
    await asyncio.sleep(0)  # let them enter the data plane
    drain = asyncio.create_task(plane.drain(timeout=10))
    await asyncio.sleep(0)
    assert not plane.is_ready()
    with pytest.raises(Unavailable, match="shutting down"):
        await plane.cluster(DIGITS, images[:1], ClusterOptions())
    finished = await asyncio.gather(*running)
    assert all(len(results) == len(images) for _, results in finished)
    await drain


async def test_a_small_request_of_huge_images_is_refused_before_decoding(
        plane: DataPlane) -> None:
    # Issue 39's reproducer with the default settings: 16 copies of a blank 4000x4000 PNG
    # (each under the per-image limit of 16 M pixels, together 256 M) took 3.9 GB of RSS.
    buffer = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buffer, format="PNG", compress_level=9)
    images = [ImageInput(encoded=buffer.getvalue())] * 16
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge, match="AEC_MAX_REQUEST_PIXELS"):
        await plane.cluster(DIGITS, images, ClusterOptions())
    assert time.perf_counter() - started < 1.0

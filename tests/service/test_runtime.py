"""ModelRuntime on a real digits bundle: equal to the reference assignment and the exported
SavedModels, padded to the allowed sizes without retracing, thread-safe, clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from service import bundle, errors
from service.runtime import ModelRuntime, configure_device, configure_threads, resolve_device

SIZES = (1, 2, 4, 8, 16)


@pytest.fixture(scope="module")
def loaded(digits_bundle: Path) -> tuple[bundle.Manifest, np.ndarray]:
    manifest = bundle.read_manifest(digits_bundle)
    return manifest, bundle.load_centroids(digits_bundle, manifest)


@pytest.fixture(scope="module")
def runtime(digits_bundle: Path, loaded: tuple[bundle.Manifest, np.ndarray]) -> ModelRuntime:
    manifest, centroids = loaded
    return ModelRuntime(digits_bundle, manifest, centroids, device="/CPU:0", batch_sizes=SIZES)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Real digits in [0, 1], shaped as the bundle's input (8x8x1)."""
    digits = load_digits()
    return (digits.images[:80] / 16.0).astype(np.float32)[..., None]


@pytest.fixture(scope="module")
def saved_models(digits_bundle: Path) -> tuple[Any, Any]:
    """The bundle's SavedModels called directly, as a TF Serving client would see them."""
    encoder = tf.saved_model.load(str(digits_bundle / bundle.ENCODER_DIR))
    decoder = tf.saved_model.load(str(digits_bundle / bundle.DECODER_DIR))
    return encoder, decoder


def _encode(saved_models: tuple[Any, Any], batch: np.ndarray) -> np.ndarray:
    encoder, _ = saved_models
    out = encoder.signatures[bundle.SIGNATURE](images=tf.constant(batch))
    return np.asarray(out[bundle.ENCODER_OUTPUT])


def _decode(saved_models: tuple[Any, Any], embedding: np.ndarray) -> np.ndarray:
    _, decoder = saved_models
    out = decoder.signatures[bundle.SIGNATURE](embedding=tf.constant(embedding))
    return np.asarray(out[bundle.DECODER_OUTPUT])


def test_shapes_and_attributes(runtime: ModelRuntime, images: np.ndarray) -> None:
    assert runtime.input_shape == (8, 8, 1)
    assert (runtime.latent_dim, runtime.n_clusters, runtime.max_batch_size) == (8, 10, 16)
    out = runtime.run(images[:3], with_reconstruction=True)
    assert out.cluster_id.shape == (3,) and out.cluster_id.dtype == np.int64
    assert out.distance.shape == (3,) and out.distance.dtype == np.float32
    assert out.distances.shape == (3, 10) and out.distances.dtype == np.float32
    assert out.embedding.shape == (3, 8) and out.embedding.dtype == np.float32
    assert out.reconstruction is not None
    assert out.reconstruction.shape == (3, 8, 8, 1) and out.reconstruction.dtype == np.float32
    assert runtime.run(images[:3], with_reconstruction=False).reconstruction is None


@pytest.mark.parametrize("n", [1, 3, 5, 16])
def test_equals_reference_assignment_and_saved_models(
    runtime: ModelRuntime, loaded: tuple[bundle.Manifest, np.ndarray], images: np.ndarray,
    saved_models: tuple[Any, Any], n: int,
) -> None:
    _, centroids = loaded
    for start in range(0, len(images) - n + 1, n):
        batch = images[start:start + n]
        out = runtime.run(batch, with_reconstruction=True)
        embedding = _encode(saved_models, batch)
        ids, dist = bundle.assign(embedding, centroids)
        np.testing.assert_allclose(out.embedding, embedding, atol=1e-5)
        np.testing.assert_array_equal(out.cluster_id, ids)
        np.testing.assert_allclose(out.distance, dist, atol=1e-4)
        np.testing.assert_allclose(out.distances[np.arange(n), ids], dist, atol=1e-4)
        assert np.all(out.distances.min(axis=1) == out.distance)
        assert out.reconstruction is not None
        np.testing.assert_allclose(out.reconstruction, _decode(saved_models, embedding),
                                   atol=1e-5)
        # Computed in the graph, once per batch: the MSE of each row against its input.
        assert out.reconstruction_error is not None
        np.testing.assert_allclose(
            out.reconstruction_error,
            ((out.reconstruction - batch) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-7)
        assert runtime.run(batch, with_reconstruction=False).reconstruction_error is None


def test_all_distances_match_numpy(runtime: ModelRuntime,
                                   loaded: tuple[bundle.Manifest, np.ndarray],
                                   images: np.ndarray) -> None:
    _, centroids = loaded
    out = runtime.run(images[:16], with_reconstruction=False)
    expected = np.sqrt(((out.embedding[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2))
    np.testing.assert_allclose(out.distances, expected, atol=1e-4)
    # The assignment really varies over real digits (the test would be weak otherwise).
    assert len(set(runtime.run(images[:16], with_reconstruction=False).cluster_id)) > 1


def test_padding_does_not_change_rows(runtime: ModelRuntime, images: np.ndarray) -> None:
    # 5 images are padded to 8 with copies of the last one; each row must equal the row
    # computed alone (batch 1, no padding).
    together = runtime.run(images[:5], with_reconstruction=True)
    for i in range(5):
        alone = runtime.run(images[i:i + 1], with_reconstruction=True)
        assert together.cluster_id[i] == alone.cluster_id[0]
        np.testing.assert_allclose(together.embedding[i], alone.embedding[0], atol=1e-5)
        assert together.reconstruction is not None and alone.reconstruction is not None
        np.testing.assert_allclose(together.reconstruction[i], alone.reconstruction[0],
                                   atol=1e-5)
    assert runtime.padded_size(5) == 8 and runtime.padded_size(16) == 16
    assert runtime.padded_size(1) == 1


def test_no_retrace_after_warmup_and_under_load(runtime: ModelRuntime,
                                                images: np.ndarray) -> None:
    assert runtime.trace_count() == 2  # one per reconstruction flag, at load time
    runtime.warmup()
    for n in range(1, 17):
        for flag in (False, True):
            runtime.run(images[:n], with_reconstruction=flag)
    assert runtime.trace_count() == 2


def test_concurrent_threads_get_their_own_rows(runtime: ModelRuntime,
                                               images: np.ndarray) -> None:
    expected = [runtime.run(images[i:i + 4], with_reconstruction=bool(i % 2)) for i in range(16)]

    def call(i: int) -> Any:
        return runtime.run(images[i:i + 4], with_reconstruction=bool(i % 2))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(call, list(range(16)) * 3))
    for i, got in enumerate(results):
        want = expected[i % 16]
        np.testing.assert_array_equal(got.cluster_id, want.cluster_id)
        np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-6)
        assert (got.reconstruction is None) == (want.reconstruction is None)
    assert runtime.trace_count() == 2


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (np.zeros((2, 8, 8, 3), np.float32), r"shape \[N, 8, 8, 1\].*\[2, 8, 8, 3\]"),
        (np.zeros((8, 8, 1), np.float32), r"shape \[N, 8, 8, 1\]"),
        (np.zeros((0, 8, 8, 1), np.float32), "empty"),
        (np.zeros((17, 8, 8, 1), np.float32), "17 images is larger than the maximum batch size 16"),
        (np.zeros((2, 8, 8, 1), np.uint8), "float32 in \\[0, 1\\], got dtype uint8"),
    ],
)
def test_bad_batches_are_refused(runtime: ModelRuntime, batch: np.ndarray, message: str) -> None:
    with pytest.raises(errors.InvalidInput, match=message):
        runtime.run(batch, with_reconstruction=False)


def test_float64_is_accepted_and_cast(runtime: ModelRuntime, images: np.ndarray) -> None:
    as32 = runtime.run(images[:2], with_reconstruction=False)
    as64 = runtime.run(images[:2].astype(np.float64), with_reconstruction=False)
    np.testing.assert_array_equal(as32.cluster_id, as64.cluster_id)


def test_centroids_must_match_the_manifest(digits_bundle: Path,
                                           loaded: tuple[bundle.Manifest, np.ndarray]) -> None:
    manifest, centroids = loaded
    with pytest.raises(ValueError, match=r"centroids have shape \(10, 7\)"):
        ModelRuntime(digits_bundle, manifest, centroids[:, :7], device="cpu", batch_sizes=(1,))
    with pytest.raises(ValueError, match="batch_sizes must be positive"):
        ModelRuntime(digits_bundle, manifest, centroids, device="cpu", batch_sizes=())


def test_savedmodel_without_serving_signature_is_refused(
    tmp_path: Path, digits_bundle: Path, loaded: tuple[bundle.Manifest, np.ndarray],
) -> None:
    manifest, centroids = loaded
    broken = tmp_path / "digits" / "1"
    shutil.copytree(digits_bundle, broken)
    shutil.rmtree(broken / bundle.DECODER_DIR)

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
        def other(self, x: tf.Tensor) -> tf.Tensor:
            return x

    module = Plain()
    tf.saved_model.save(module, str(broken / bundle.DECODER_DIR),
                        signatures={"other": module.other})
    with pytest.raises(bundle.BundleError, match="no 'serving_default' signature"):
        ModelRuntime(broken, manifest, centroids, device="cpu", batch_sizes=(1,))


def test_resolve_and_configure_device_on_a_cpu_only_box() -> None:
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this test describes a machine without a GPU")
    assert resolve_device("auto") == "/CPU:0"
    assert resolve_device("cpu") == "/CPU:0"
    assert resolve_device("/CPU:0") == "/CPU:0"
    assert configure_device("auto", memory_growth=True) == "/CPU:0"
    assert configure_device("cpu", memory_growth=False) == "/CPU:0"
    for gpu in ("gpu", "gpu:1"):
        message = f"device '{gpu}' is unavailable: TensorFlow sees no GPU"
        with pytest.raises(ValueError, match=message):
            configure_device(gpu, memory_growth=True)
    with pytest.raises(ValueError, match="auto, cpu, gpu or gpu:N, got 'tpu'"):
        resolve_device("tpu")


def test_runtime_on_the_auto_device(digits_bundle: Path,
                                    loaded: tuple[bundle.Manifest, np.ndarray],
                                    images: np.ndarray) -> None:
    manifest, centroids = loaded
    rt = ModelRuntime(digits_bundle, manifest, centroids, device="auto", batch_sizes=(2, 4))
    assert rt.device in {"/CPU:0", "/GPU:0"} and rt.max_batch_size == 4
    out = rt.run(images[:3], with_reconstruction=False)
    assert out.cluster_id.shape == (3,)
    assert (rt.name, rt.version) == (manifest.name, manifest.version)


def test_thread_pools_follow_the_settings_before_tensorflow_starts() -> None:
    """In a fresh process the sizes apply; once TensorFlow has run they are logged, not fatal."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout, level=logging.WARNING)\n"
        "import tensorflow as tf\n"
        "from service.runtime import configure_threads\n"
        "configure_threads(1, 2)\n"
        "print('sizes', tf.config.threading.get_intra_op_parallelism_threads(),\n"
        "      tf.config.threading.get_inter_op_parallelism_threads())\n"
        "tf.constant(1.0) + 1.0\n"
        "configure_threads(3, 0)\n"
        "print('after', tf.config.threading.get_intra_op_parallelism_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert "sizes 1 2" in done.stdout
    assert "after 1" in done.stdout  # unchanged, and the process went on
    assert "tf_intra_op_threads = 3 not applied" in done.stdout
    configure_threads(0, 0)  # 0 leaves TensorFlow's pools alone: a no-op in this process

"""The TF Serving SavedModel at a version's root, loaded as a stranger would load it.

A fresh Python process that never imports aecluster loads the digits bundle's root with
``tf.saved_model.load`` and calls both signatures on real digits; its answers must be the
data plane's (the service's own TF Serving API) on the same images. ``saved_model_cli``
must list both signatures, and the graph must carry the bundle's centroids as constants.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_digits

from service import bundle, imagecodec
from service.dataplane import DataPlane
from service.metrics import Metrics
from service.repository import ModelRepository
from service.runtime import runtime_factory
from service.settings import Settings
from service.types import ImageInput, ModelRef
from training import tfserving
from training.data.pipeline import Target, convert, decode
from training.errors import ExportError

# What a TF Serving user's own script does: TensorFlow and numpy, nothing of aecluster.
# It reports which aecluster modules it ended up with, so the test can prove "none".
STRANGER = '''
import json, sys
from pathlib import Path
import numpy as np
import tensorflow as tf

model_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
loaded = tf.saved_model.load(str(model_dir))
images = np.load(work / "images.npy")
encoded = [p.read_bytes() for p in sorted((work / "encoded").iterdir())]
out = {}
calls = (("images", "serving_default", {"images": tf.constant(images)}),
         ("bytes", "predict_bytes", {"image_bytes": tf.constant(encoded)}))
for prefix, name, kwargs in calls:
    for key, value in loaded.signatures[name](**kwargs).items():
        out[f"{prefix}.{key}"] = value.numpy()
np.savez(work / "out.npz", **out)

refused = {}
bad = {"out_of_range": ("serving_default", {"images": tf.constant(images[:2] * 2.0)}),
       "nan": ("serving_default", {"images": tf.constant(np.full_like(images[:1], np.nan))}),
       "no_images": ("serving_default", {"images": tf.constant(images[:0])}),
       "not_an_image": ("predict_bytes", {"image_bytes": tf.constant([b"not an image"])}),
       "no_bytes": ("predict_bytes", {"image_bytes": tf.constant([], tf.string)})}
for case, (name, kwargs) in bad.items():
    try:
        loaded.signatures[name](**kwargs)
        refused[case] = None
    except tf.errors.InvalidArgumentError as exc:
        refused[case] = exc.message
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("service", "training", "tests"))
(work / "report.json").write_text(json.dumps(
    {"signatures": sorted(loaded.signatures), "refused": refused, "aecluster_modules": ours}))
'''

DIGITS = ModelRef("digits")


def _encode(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def _rgb(gray: np.ndarray) -> np.ndarray:
    # A colour image whose luminance is not the digit itself: the gray conversion matters.
    return np.stack([gray, 255 - gray, gray // 2], axis=-1)


# Each turns one 8-bit digit (8x8) into one encoded file. Other sizes go through the resize;
# JPEG goes through TensorFlow's decoder on both sides. The gray sources' pixels come out of
# the service's preprocessing bit for bit as out of training's; the colour ones (GIF decodes
# to RGB) go through the luminance, where they differ by up to one float32 step (below).
GRAY_ENCODINGS: dict[str, Callable[[np.ndarray], bytes]] = {
    "png": lambda d: _encode(d, "PNG"),
    "png-32x32": lambda d: _encode(np.asarray(Image.fromarray(d).resize((32, 32))), "PNG"),
    "jpeg-32x32": lambda d: _encode(np.asarray(Image.fromarray(d).resize((32, 32))), "JPEG",
                                    quality=90),
}
COLOUR_ENCODINGS: dict[str, Callable[[np.ndarray], bytes]] = {
    "png-rgb-20x24": lambda d: _encode(np.asarray(Image.fromarray(_rgb(d)).resize((24, 20))),
                                       "PNG"),
    "jpeg-rgb-32x32": lambda d: _encode(np.asarray(Image.fromarray(_rgb(d)).resize((32, 32))),
                                        "JPEG", quality=90),
    "gif": lambda d: _encode(d, "GIF"),
}
ENCODINGS = {**GRAY_ENCODINGS, **COLOUR_ENCODINGS}
PER_ENCODING = 8


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Real digits, float32 [N, 8, 8, 1] in [0, 1] (scikit-learn's 0..16 divided by 16)."""
    return (load_digits().images[-48:] / 16.0).astype(np.float32)[..., None]


@pytest.fixture(scope="module")
def encoded(digits: np.ndarray) -> list[bytes]:
    """The first digits in every encoding, PER_ENCODING each, in ENCODINGS order."""
    pixels = np.round(digits[:PER_ENCODING, ..., 0] * 255).astype(np.uint8)
    return [encode(d) for encode in ENCODINGS.values() for d in pixels]


@pytest.fixture(scope="module")
def stranger(digits_bundle: Path, digits: np.ndarray, encoded: list[bytes],
             tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], dict]:
    """The fresh process's answers (outputs by "images.<name>" / "bytes.<name>") and report."""
    work = tmp_path_factory.mktemp("stranger")
    np.save(work / "images.npy", digits)
    (work / "encoded").mkdir()
    for index, data in enumerate(encoded):
        (work / "encoded" / f"{index:03d}").write_bytes(data)
    script = work / "stranger.py"
    script.write_text(STRANGER)
    # -I: no PYTHONPATH, no user site, not even the script's directory on sys.path.
    done = subprocess.run(
        [sys.executable, "-I", str(script), str(digits_bundle), str(work)],
        cwd=work, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(work / "out.npz") as out:
        answers = {key: out[key] for key in out.files}
    return answers, json.loads((work / "report.json").read_text())


@pytest.fixture
async def plane(model_repo: Path) -> AsyncIterator[DataPlane]:
    """The service's data plane over a copy of the same bundle: aecluster's own answers."""
    settings = Settings(model_repo=model_repo, poll_seconds=0, max_batch_size=16,
                        max_images_per_request=64, drain_seconds=5)
    metrics = Metrics()
    repo = ModelRepository(settings, metrics, runtime_factory("/CPU:0", settings.batch_sizes()))
    await repo.start()
    yield DataPlane(repo, settings, metrics)
    await repo.stop(1)


def test_the_stranger_imports_nothing_of_aecluster_and_sees_both_signatures(
        stranger: tuple[dict[str, np.ndarray], dict]) -> None:
    _, report = stranger
    assert report["aecluster_modules"] == []
    assert report["signatures"] == sorted([bundle.SIGNATURE, bundle.BYTES_SIGNATURE])


def test_bad_inputs_are_refused_in_the_graph(stranger: tuple[dict[str, np.ndarray], dict]) -> None:
    # TF Serving turns InvalidArgumentError into INVALID_ARGUMENT / HTTP 400, as the
    # service answers the same inputs.
    _, report = stranger
    expected = {"out_of_range": "images must be scaled to [0, 1]",
                "nan": "images contain NaN or infinite values",
                "no_images": "send at least one image",
                "not_an_image": "Unknown image file format",
                "no_bytes": "send at least one image"}
    assert set(report["refused"]) == set(expected)
    for case, words in expected.items():
        message = report["refused"][case]
        assert message is not None and words in message, (case, message)


def _rows(outputs: dict[str, np.ndarray], prefix: str, rows: slice) -> dict[str, np.ndarray]:
    """The stranger's outputs of one call ("images" or "bytes"), limited to ``rows``."""
    return {key.split(".", 1)[1]: value[rows] for key, value in outputs.items()
            if key.startswith(prefix + ".")}


def _assert_same(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray],
                 thresholds: np.ndarray, *, distance_atol: float = 1e-5) -> None:
    ids = theirs["cluster_id"]
    assert ids.dtype == np.int64 and theirs["distance"].dtype == np.float32
    assert theirs["is_outlier"].dtype == np.bool_
    np.testing.assert_array_equal(ids, ours["cluster_id"])
    np.testing.assert_allclose(theirs["distance"], ours["distance"], rtol=0, atol=distance_atol)
    np.testing.assert_allclose(theirs["embedding"], ours["embedding"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(theirs["reconstruction"], ours["reconstruction"], rtol=0,
                               atol=1e-5)
    # The flag may only differ where the distance sits within the tolerance of its threshold.
    clear = np.abs(ours["distance"] - thresholds[ids]) > distance_atol
    np.testing.assert_array_equal(theirs["is_outlier"][clear], ours["is_outlier"][clear])


@pytest.fixture(scope="module")
def thresholds(digits_bundle: Path) -> np.ndarray:
    manifest = bundle.read_manifest(digits_bundle)
    return tfserving.thresholds_of([s.model_dump() for s in manifest.cluster_stats])


@pytest.mark.anyio
async def test_serving_default_answers_as_the_service_does(
        plane: DataPlane, stranger: tuple[dict[str, np.ndarray], dict], digits: np.ndarray,
        thresholds: np.ndarray) -> None:
    theirs = _rows(stranger[0], "images", slice(None))
    _, ours = await plane.predict(DIGITS, bundle.SIGNATURE, {"images": digits})
    _assert_same(ours, theirs, thresholds)
    # Real answers, not a degenerate model: the digits spread over several clusters.
    assert len(set(theirs["cluster_id"].tolist())) >= 3


@pytest.mark.anyio
async def test_predict_bytes_answers_as_the_service_does(
        plane: DataPlane, stranger: tuple[dict[str, np.ndarray], dict], encoded: list[bytes],
        thresholds: np.ndarray) -> None:
    theirs = _rows(stranger[0], "bytes", slice(None))
    assert len(theirs["cluster_id"]) == len(ENCODINGS) * PER_ENCODING
    _, ours = await plane.predict(DIGITS, bundle.BYTES_SIGNATURE,
                                  {"image_bytes": np.array(encoded, dtype=object)})
    _assert_same(ours, theirs, thresholds)


@pytest.mark.anyio
async def test_predict_bytes_preprocesses_as_training_does(
        plane: DataPlane, stranger: tuple[dict[str, np.ndarray], dict], encoded: list[bytes],
        thresholds: np.ndarray, digits_bundle: Path) -> None:
    # The graph's pixels are training's: its answers are the service's on the images that
    # training's own decode and convert make of the files.
    spec = bundle.read_manifest(digits_bundle).input
    target = Target(spec.height, spec.width, spec.channels, spec.color_mode)
    pixels = np.stack([convert(decode(tf.constant(data)), target).numpy() for data in encoded])
    _, ours = await plane.predict(DIGITS, bundle.SIGNATURE, {"images": pixels})
    _assert_same(ours, _rows(stranger[0], "bytes", slice(None)), thresholds)


def test_the_service_preprocesses_as_training_does_up_to_a_luminance_rounding(
        encoded: list[bytes], digits_bundle: Path) -> None:
    # The one difference between the graph's preprocessing (training's) and the service's
    # (service/imagecodec.py), stated in docs/bundle.md: gray sources give the same pixels
    # bit for bit; colour files sent to a gray model go through a luminance computed by
    # numpy in the service and by tf.image.rgb_to_grayscale in training, which round
    # differently by at most one float32 step (6e-8 measured; 4e-7 in a distance).
    spec = bundle.read_manifest(digits_bundle).input
    target = Target(spec.height, spec.width, spec.channels, spec.color_mode)
    training = np.stack([convert(decode(tf.constant(data)), target).numpy() for data in encoded])
    service = imagecodec.prepare_batch([ImageInput(encoded=data) for data in encoded], spec,
                                       max_pixels=1 << 20)
    gray = len(GRAY_ENCODINGS) * PER_ENCODING  # ENCODINGS lists the gray sources first
    np.testing.assert_array_equal(service[:gray], training[:gray])
    assert np.abs(service[gray:] - training[gray:]).max() <= np.float32(2.0**-23)


def test_saved_model_cli_lists_both_signatures(digits_bundle: Path) -> None:
    cli = Path(sys.executable).with_name("saved_model_cli")
    done = subprocess.run([str(cli), "show", "--all", "--dir", str(digits_bundle)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    manifest = bundle.read_manifest(digits_bundle)
    for name, tensor, dtype, shape in (
            (bundle.SIGNATURE, bundle.ENCODER_INPUT, "DT_FLOAT", "(-1, 8, 8, 1)"),
            (bundle.BYTES_SIGNATURE, bundle.BYTES_INPUT, "DT_STRING", "(-1)")):
        start = text.index(f"signature_def['{name}']:")
        end = text.find("signature_def[", start + 1)
        block = text[start:] if end < 0 else text[start:end]
        assert f"inputs['{tensor}'] tensor_info:" in block
        assert f"dtype: {dtype}" in block and f"shape: {shape}" in block
        for output, out_dtype in (("cluster_id", "DT_INT64"), ("distance", "DT_FLOAT"),
                                  ("is_outlier", "DT_BOOL"), ("embedding", "DT_FLOAT"),
                                  ("reconstruction", "DT_FLOAT")):
            at = block.index(f"outputs['{output}'] tensor_info:")
            assert f"dtype: {out_dtype}" in block[at:at + 120]
        assert f"shape: (-1, {manifest.latent_dim})" in block
        assert "Method name is: tensorflow/serving/predict" in block


def test_centroids_are_graph_constants_equal_to_the_joblib_file(digits_bundle: Path) -> None:
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import tensor_util

    manifest = bundle.read_manifest(digits_bundle)
    centroids = bundle.load_centroids(digits_bundle, manifest)
    model = saved_model_pb2.SavedModel()
    model.ParseFromString((digits_bundle / bundle.TFSERVING_MODEL_FILE).read_bytes())
    graph = model.meta_graphs[0].graph_def
    nodes = [n for f in graph.library.function for n in f.node_def] + list(graph.node)
    constants = [tensor_util.MakeNdarray(n.attr["value"].tensor) for n in nodes if n.op == "Const"]
    shaped = [c for c in constants if c.shape == centroids.shape]
    assert shaped and all(np.array_equal(c, centroids) for c in shaped)
    thresholds = np.array([s.p99 for s in manifest.cluster_stats], dtype=np.float32)
    assert any(c.shape == thresholds.shape and np.array_equal(c, thresholds) for c in constants)


def test_the_manifest_checksums_the_tfserving_model(digits_bundle: Path) -> None:
    files = bundle.read_manifest(digits_bundle).files
    assert bundle.TFSERVING_MODEL_FILE in files
    assert "variables/variables.index" in files
    assert bundle.hash_files(digits_bundle) == files


@pytest.mark.anyio
async def test_a_version_without_it_still_serves(tmp_path: Path, digits_bundle: Path,
                                                 digits: np.ndarray) -> None:
    # Versions exported before it have none: strip it (and its checksums) from a copy.
    repo = tmp_path / "repo"
    version = repo / "digits" / "1"
    shutil.copytree(digits_bundle, version)
    for path in ("saved_model.pb", "fingerprint.pb", "variables", "assets"):
        target = version / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    raw = json.loads((version / bundle.MANIFEST_FILE).read_text())
    raw["files"] = bundle.hash_files(version)
    (version / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
    settings = Settings(model_repo=repo, poll_seconds=0, max_batch_size=8, drain_seconds=5)
    metrics = Metrics()
    repository = ModelRepository(settings, metrics,
                                 runtime_factory("/CPU:0", settings.batch_sizes()))
    await repository.start()
    try:
        _, out = await DataPlane(repository, settings, metrics).predict(
            DIGITS, None, {"images": digits[:4]})
        assert out["cluster_id"].shape == (4,)
    finally:
        await repository.stop(1)


def test_a_spec_training_cannot_reproduce_is_refused(tmp_path: Path) -> None:
    images = keras.Input((8, 8, 1))
    encoder = keras.Model(images, keras.layers.Dense(2)(keras.layers.Flatten()(images)))
    code = keras.Input((2,))
    decoder = keras.Model(code, keras.layers.Reshape((8, 8, 1))(keras.layers.Dense(64)(code)))
    spec = bundle.InputSpec(height=8, width=8, channels=1, color_mode="gray",
                            preserve_aspect_ratio=True)
    with pytest.raises(ExportError, match="preserve_aspect_ratio=True"):
        tfserving.write_tfserving_model(tmp_path, encoder=encoder, decoder=decoder, spec=spec,
                                        centroids=np.zeros((3, 2), np.float32),
                                        thresholds=np.ones(3, np.float32))
    assert list(tmp_path.iterdir()) == []

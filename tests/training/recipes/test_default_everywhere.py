"""The default recipe applies to every kind of source without per-dataset flags (issue 41).

`python -m training train --dataset SPEC --out DIR` and nothing else: digits, a CIFAR-style
RGB source and an image folder here (Fashion-MNIST's decisions are checked on its training
images when the Debian package is installed; a full run takes 13 minutes, docs/quality.md).
The images are the digits drawn into each source's own format, so the clusters must carry
the classes.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from service import bundle
from training.cli import main
from training.data import DataOptions, load_dataset, to_numpy
from training.recipes.choices import backbone_epochs, background_check, mirror_check

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _digits_rgb(size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` digits scaled to size x size, white on black, as RGB uint8."""
    digits = load_digits()
    pixels = (digits.images[:count] * (255 / 16)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR))
                    for p in pixels])
    return np.repeat(big[..., None], 3, axis=-1), digits.target[:count]


def _cifar_style(folder: Path) -> str:
    images, labels = _digits_rgb(32, 600)
    folder.mkdir()
    # CIFAR's layout: rows of 3,072 bytes, the red plane, then green, then blue.
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    for i, part in enumerate(np.array_split(np.arange(500), 5), start=1):
        payload = {b"data": rows[part], b"labels": [int(v) for v in labels[part]]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(payload, protocol=2))
    test = np.arange(500, 600)
    (folder / "test_batch").write_bytes(pickle.dumps(
        {b"data": rows[test], b"labels": [int(v) for v in labels[test]]}, protocol=2))
    return f"cifar10:{folder}"


def _image_folder(folder: Path) -> str:
    images, labels = _digits_rgb(16, 400)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        sub = folder / f"digit{label}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0]).save(sub / f"{i}.png")
    return f"images:{folder}"


SOURCES = {"digits": lambda tmp: "digits", "cifar-style": _cifar_style,
           "image-folder": _image_folder}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_the_rules_decide_for_every_source(source: str, tmp_path: Path) -> None:
    # The decisions themselves, on each source's training images (fast: no training).
    spec = SOURCES[source](tmp_path / "data")
    data = load_dataset(spec, DataOptions(seed=0))
    images, _ = to_numpy(data.train)
    check = mirror_check(images, seed=0)
    assert check.flip is False and check.ratio > 1.3  # digits, in whatever format
    # White on black in every format: kept as they are; black on white would be inverted.
    assert not background_check(images, seed=0).invert
    assert background_check(1.0 - images, seed=0).invert
    assert backbone_epochs(max(1, len(images) // 256)) >= 15


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed "
                    "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_keeps_its_mirrored_views_and_15_epochs() -> None:
    data = load_dataset("fashion-mnist", DataOptions(seed=0))
    images, _ = to_numpy(data.train)
    assert mirror_check(images, seed=0).flip is True
    assert backbone_epochs(235) == 15
    assert not background_check(images, seed=0).invert  # black background: as before


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_the_default_trains_on_every_source_without_flags(
        source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = SOURCES[source](tmp_path / "data")
    out = tmp_path / "repo" / "m" / "1"
    code = main(["train", "--dataset", spec, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    manifest = bundle.read_manifest(out)
    bundle.verify_checksums(out, manifest)
    options = manifest.training.hyperparameters
    assert manifest.training.model_kind == "contrastive"
    assert options["view_flip"] is False and options["mirror_ratio"] > 1.3
    assert options["epochs"] >= 15
    assert options["invert"] is False
    assert json.loads(captured.out)["evaluation"]["hungarian_accuracy"] > 0.5  # chance: 0.1

"""bench/robustness.py: the transformed variants and the raw-pixel score it compares with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.by_path import load_module

ROOT = Path(__file__).resolve().parents[2]
robustness = load_module(ROOT / "bench" / "robustness.py", "bench_robustness")


@pytest.fixture
def images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((40, 8, 8)).astype(np.float32), np.arange(40) % 10


def test_variants_keep_images_and_labels_aligned(images: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = images
    inverted, y_inv = robustness.transform("inverted", x, y, seed=0)
    np.testing.assert_allclose(inverted, 1 - x)
    assert y_inv is y
    rolled, _ = robustness.transform("rolled", x, y, seed=0)
    # Each image is a roll of its own by at most one pixel each way: the same pixel values.
    assert all(np.array_equal(np.sort(a, axis=None), np.sort(b, axis=None))
               for a, b in zip(rolled, x, strict=True))
    assert not np.array_equal(rolled, x)
    shifted, _ = robustness.transform("shifted", x, y, seed=0)
    half, y_half = robustness.transform("subsampled-half", x, y, seed=0)
    assert len(half) == len(y_half) == 20
    rows = [int(np.flatnonzero((x == image).all(axis=(1, 2)))[0]) for image in half]
    assert [int(y[i]) for i in rows] == list(y_half)
    assert np.array_equal(robustness.transform("shifted", x, y, seed=0)[0], shifted)
    with pytest.raises(SystemExit, match="unknown variant 'blurred'"):
        robustness.transform("blurred", x, y, seed=0)


def test_shifted_moves_the_content_and_brings_in_the_background() -> None:
    """Not a roll: what leaves one side is gone, the border's median comes in."""
    dots = np.zeros((40, 8, 8), np.float32)
    dots[:, 0, 3] = 1.0  # on the top edge
    dots[:, 4, 4] = 0.5  # inside
    labels = np.arange(40) % 10
    shifted, same_labels = robustness.transform("shifted", dots, labels, seed=0)
    rolled, _ = robustness.transform("rolled", dots, labels, seed=0)
    assert same_labels is labels and shifted.dtype == dots.dtype
    moves = set()
    for image, roll in zip(shifted, rolled, strict=True):
        # The same draws as the roll: the inner dot lands where the roll put it.
        dy, dx = (int(v[0]) - 4 for v in np.nonzero(roll == 0.5))
        moves.add((dy, dx))
        assert image[4 + dy, 4 + dx] == 0.5
        # The edge dot: moved with the rest, or gone off the top; never wrapped around.
        if dy == -1:
            assert image.max() == 0.5 and roll[7, 3 + dx] == 1.0
        else:
            assert image[dy, 3 + dx] == 1.0
        assert (image == 0).sum() == 64 - 2 + (dy == -1)
    assert {(-1, -1), (0, 0), (1, 1)} <= moves  # every move drawn, over 40 images
    # A light background comes in light: the fill is the border's median, not zero.
    light, _ = robustness.transform("shifted", 1.0 - dots, labels, seed=0)
    assert light.min() == 0.0 and (light == 1.0).sum() > 40 * 60


def test_enlarged_brings_small_images_to_28_pixels(images: tuple[np.ndarray, np.ndarray]
                                                  ) -> None:
    x, y = images
    enlarged, y_big = robustness.transform("enlarged-28", x, y, seed=0)
    assert enlarged.shape == (40, 28, 28) and enlarged.dtype == x.dtype and y_big is y
    assert enlarged.min() >= x.min() and enlarged.max() <= x.max()  # bilinear: no overshoot
    # A lone bright pixel (i, j) lands in the 3.5x3.5 block of the result that covers it.
    dots = np.zeros((3, 8, 8), np.float32)
    for k, (i, j) in enumerate([(0, 0), (3, 5), (7, 2)]):
        dots[k, i, j] = 1.0
    big, _ = robustness.transform("enlarged-28", dots, y[:3], seed=0)
    for k, (i, j) in enumerate([(0, 0), (3, 5), (7, 2)]):
        row, col = np.unravel_index(int(np.argmax(big[k])), (28, 28))
        assert 3.5 * i <= row < 3.5 * (i + 1) and 3.5 * j <= col < 3.5 * (j + 1), (i, j)
        assert big[k].max() == pytest.approx(1.0, abs=0.15)
    with pytest.raises(SystemExit, match="at most 28x28, got 32x32"):
        robustness.transform("enlarged-28", np.zeros((2, 32, 32)), y[:2], seed=0)


def test_hungarian_accuracy_matches_clusters_to_classes() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2])
    assert robustness.hungarian_accuracy(truth, np.array([2, 2, 0, 0, 1, 1])) == 1.0
    mixed = np.array([0, 1, 0, 1, 2, 2])
    assert robustness.hungarian_accuracy(truth, mixed) == pytest.approx(4 / 6)


def test_the_table_has_a_row_per_result() -> None:
    row = {"dataset": "digits", "variant": "inverted", "seed": 0, "acc": 0.97, "nmi": 0.96,
           "raw_kmeans_acc": 0.8, "view_flip": False, "mirror_ratio": 1.86, "epochs": 143,
           "seconds": 90.0}
    text = robustness.markdown([{**row, "invert": True, "light_border_share": 0.8414},
                                {**row, "variant": "plain"}])
    assert text.count("\n") == 4 and "| digits | inverted | 0 | 0.970 |" in text
    assert "| 1.86 | True | 0.8414 | 143 |" in text
    # Rows from before the recipe decided inversion say so with a dash.
    assert "| 1.86 | - | - | 143 |" in text
    # A variant's seeds stand together, in the bench's order of variants, whatever the
    # order the runs finished in.
    runs = [{**row, "dataset": d, "variant": v, "seed": s} for d, v, s in
            [("digits", "rolled", 1), ("digits", "plain", 1), ("digits", "rolled", 0),
             ("fashion-mnist", "plain", 0), ("digits", "plain", 0)]]
    order = [line.split(" | ")[:3] for line in robustness.markdown(runs).splitlines()[2:]]
    assert order == [["| digits", "plain", "0"], ["| digits", "plain", "1"],
                     ["| digits", "rolled", "0"], ["| digits", "rolled", "1"],
                     ["| fashion-mnist", "plain", "0"]]


def test_bundles_go_to_a_temporary_folder_unless_kept(tmp_path: Path) -> None:
    with robustness.workdir(None, "digits", 0) as work:
        (work / "plain.npz").write_bytes(b"x")
        dropped = work
    assert not dropped.exists()
    # Kept runs land under one folder per dataset and seed, named safely even when the
    # dataset is a source spec with slashes, and survive the run.
    with robustness.workdir(tmp_path, "npz:/data/a b.npz", 2) as work:
        (work / "plain.npz").write_bytes(b"x")
    assert work == tmp_path / "npz__data_a_b.npz-seed2"
    assert (work / "plain.npz").read_bytes() == b"x"
    # A second run of the same dataset and seed reuses the folder.
    with robustness.workdir(tmp_path, "npz:/data/a b.npz", 2) as again:
        assert (again / "plain.npz").exists()

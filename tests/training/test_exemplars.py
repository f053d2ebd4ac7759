"""Exemplars: which images are chosen, how they are fetched and written, and export of them."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from service import bundle
from training import exemplars, export
from training.cli import main
from training.data.pipeline import Target, array_split, file_split, to_numpy
from training.errors import ConfigError, ExportError

GRAY8 = Target(8, 8, 1, "gray")


@pytest.fixture(scope="module")
def digits_uint8() -> np.ndarray:
    """The first 40 scikit-learn digits as 8-bit images [40, 8, 8]."""
    return np.round(load_digits().images[:40] * (255.0 / 16.0)).astype(np.uint8)


def test_nearest_orders_by_distance_per_cluster_and_keeps_ties_stable() -> None:
    ids = np.array([0, 1, 0, 0, 2, 0, 1])
    dist = np.array([0.5, 0.1, 0.2, 0.5, 0.3, 0.05, 0.4])
    chosen = exemplars.nearest(ids, dist, n_clusters=4, per_cluster=3)
    assert list(chosen) == [0, 1, 2, 3]
    # cluster 0: 0.05 (index 5), 0.2 (2), then the tie at 0.5 in dataset order: index 0.
    np.testing.assert_array_equal(chosen[0], [5, 2, 0])
    np.testing.assert_array_equal(chosen[1], [1, 6])  # fewer members than asked: all
    np.testing.assert_array_equal(chosen[2], [4])
    assert chosen[3].size == 0  # an empty cluster
    assert all(v.size == 0 for v in exemplars.nearest(ids, dist, 4, 0).values())


def test_nearest_refuses_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=">= 0"):
        exemplars.nearest(np.zeros(3), np.zeros(3), 2, -1)
    with pytest.raises(ConfigError, match="one length"):
        exemplars.nearest(np.zeros(3), np.zeros(4), 2, 1)


def test_fetch_from_memory_returns_exactly_the_asked_images(digits_uint8: np.ndarray) -> None:
    split = array_split(digits_uint8[..., None], np.arange(40), GRAY8)
    x, _ = to_numpy(split)
    got = exemplars.fetch(split, np.array([37, 3, 3, 0]))
    assert sorted(got) == [0, 3, 37]
    for index, image in got.items():
        np.testing.assert_array_equal(image, x[index])
    assert exemplars.fetch(split, np.array([], dtype=np.int64)) == {}
    with pytest.raises(ConfigError, match=r"0\.\.39"):
        exemplars.fetch(split, np.array([40]))


def test_fetch_streams_files_and_stops_after_the_last_wanted(tmp_path: Path,
                                                             digits_uint8: np.ndarray) -> None:
    paths = []
    for i in range(40):
        path = tmp_path / f"{i:02d}.png"
        if i <= 12:  # files past the last wanted index do not exist: reading them would fail
            Image.fromarray(digits_uint8[i]).save(path)
        paths.append(str(path))
    split = file_split(paths, np.full(40, -1), GRAY8)
    assert not split.in_memory
    got = exemplars.fetch(split, np.array([12, 4]))
    assert sorted(got) == [4, 12]
    np.testing.assert_array_equal(exemplars.to_uint8(got[12]), digits_uint8[12])


def test_fetch_reports_a_split_that_ends_early(digits_uint8: np.ndarray) -> None:
    split = array_split(digits_uint8[..., None], np.arange(40), GRAY8)
    split.dataset = split.dataset.take(10)  # as if filtered after its size was counted
    with pytest.raises(ExportError, match="ended after 10 images"):
        exemplars.fetch(split, np.array([2, 20]))


def test_collect_gives_every_cluster_its_nearest_images(digits_uint8: np.ndarray) -> None:
    split = array_split(digits_uint8[..., None], np.arange(40), GRAY8)
    x, _ = to_numpy(split)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3, size=40)
    dist = rng.random(40)
    got = exemplars.collect(split, ids, dist, n_clusters=3, per_cluster=4)
    for cluster in range(3):
        members = np.flatnonzero(ids == cluster)
        expected = members[np.argsort(dist[members])][:4]
        assert len(got[cluster]) == 4
        for image, index in zip(got[cluster], expected, strict=True):
            np.testing.assert_array_equal(image, x[index])
    assert exemplars.collect(split, ids, dist, 3, 0) == {}


def test_png_is_lossless_at_8_bits_and_shrinks_large_images() -> None:
    rng = np.random.default_rng(1)
    gray = rng.random((8, 8, 1)).astype(np.float32)
    decoded = exemplars.decode_png(exemplars.png_bytes(gray))
    assert decoded.shape == (8, 8) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, np.round(gray[..., 0] * 255))
    rgb = rng.random((30, 20, 3)).astype(np.float32)
    np.testing.assert_array_equal(exemplars.decode_png(exemplars.png_bytes(rgb)),
                                  exemplars.to_uint8(rgb))
    big = exemplars.decode_png(exemplars.png_bytes(rng.random((512, 256, 3))))
    assert big.shape == (exemplars.THUMBNAIL_MAX_SIDE, exemplars.THUMBNAIL_MAX_SIDE // 2, 3)
    with pytest.raises(ExportError, match=r"\[H, W, 1\] or \[H, W, 3\]"):
        exemplars.png_bytes(np.zeros((4, 4, 2)))


def test_write_lays_out_files_and_returns_the_manifest_field(tmp_path: Path) -> None:
    images = {0: [np.zeros((8, 8, 1)), np.ones((8, 8, 1))], 1: [], 2: [np.full((8, 8, 1), 0.5)]}
    field = exemplars.write(tmp_path, images)
    assert field == {"0": ["exemplars/0/0.png", "exemplars/0/1.png"], "1": [],
                     "2": ["exemplars/2/0.png"]}
    assert exemplars.decode_png((tmp_path / "exemplars/0/1.png").read_bytes()).min() == 255
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == [
        "exemplars/0/0.png", "exemplars/0/1.png", "exemplars/2/0.png"]


def _tiny_models() -> tuple[keras.Model, keras.Model]:
    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 1), name="images")
    encoder = keras.Model(images, keras.layers.Dense(2)(keras.layers.Flatten()(images)))
    code = keras.Input((2,), name="embedding")
    decoder = keras.Model(code, keras.layers.Reshape((8, 8, 1))(
        keras.layers.Dense(64, activation="sigmoid")(code)))
    return encoder, decoder


def _contents(images: dict[int, list[np.ndarray]] | None) -> export.BundleContents:
    return export.BundleContents(
        input=bundle.InputSpec(height=8, width=8, channels=1, color_mode="gray"),
        centroids=np.array([[0.0, 0.0], [1.0, 1.0]], dtype=np.float32),
        cluster_stats=[{"cluster": i, "count": 1, "mean": 0.0, "p50": 0.0, "p95": 0.0,
                        "p99": 0.0} for i in range(2)],
        training=bundle.TrainingInfo(
            data_source="digits", model_kind="dense", loss="mse", labels_used=False,
            hyperparameters={}, epochs=0, final_losses={}, n_train=2, n_heldout=0,
            heldout_kind="none", seconds=0.0,
        ),
        exemplars=images,
    )


def test_export_checksums_exemplars_and_records_them(tmp_path: Path,
                                                     digits_uint8: np.ndarray) -> None:
    encoder, decoder = _tiny_models()
    images = {0: [digits_uint8[0, ..., None] / 255.0, digits_uint8[1, ..., None] / 255.0],
              1: [digits_uint8[2, ..., None] / 255.0]}
    out = tmp_path / "repo" / "digits" / "1"
    manifest = export.export_bundle(out, encoder=encoder, decoder=decoder,
                                    contents=_contents(images))
    assert manifest.exemplars == {"0": ["exemplars/0/0.png", "exemplars/0/1.png"],
                                  "1": ["exemplars/1/0.png"]}
    on_disk = bundle.read_manifest(out)
    assert on_disk.exemplars == manifest.exemplars
    bundle.verify_checksums(out, on_disk)  # every exemplar is listed with its SHA-256
    assert set(manifest.exemplars["0"]) <= set(manifest.files)
    png = bundle.read_verified(out, on_disk, "exemplars/0/1.png")
    np.testing.assert_array_equal(exemplars.decode_png(png), digits_uint8[1])

    plain = export.export_bundle(tmp_path / "repo" / "digits" / "2", encoder=encoder,
                                 decoder=decoder, contents=_contents(None))
    assert plain.exemplars is None
    assert not (tmp_path / "repo" / "digits" / "2" / "exemplars").exists()


def test_cli_documents_exemplars_and_refuses_negative(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    assert "--exemplars" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["train", "--exemplars", "-1", "--out", str(tmp_path / "m" / "1")])
    assert info.value.code == 2
    assert "expected an integer >= 0" in capsys.readouterr().err

"""The visual report on a real digits bundle: every panel present, figures of the promised
sizes embedded in one self-contained page, label panels left out (with the reason) on data
without labels, and the ``report`` sub-command."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from service import bundle
from tests.service.bundles import clone_version
from training import clustering
from training.charts import figure_size_px
from training.cli import main
from training.data.pipeline import Target, array_split
from training.evaluate import load_bundle
from training.report import REPORT_FILE, ReportOptions, ReportResult, build_report
from training.report.figures import codes_size_px, contingency_size_px, map_size_px
from training.report.gather import gather, sample_split
from training.report.panels import PANEL_IDS, k_selection, manifold_axes
from training.report.tiles import grid_size_px

# digits are 8x8: thumbnails are upscaled 6x to 48 px.
TILE = (48, 48)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, digits_bundle: Path) -> ReportResult:
    out = tmp_path_factory.mktemp("report") / "digits"
    return build_report(digits_bundle, "digits", out, ReportOptions(split="heldout"))


@pytest.fixture(scope="module")
def unlabelled_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 digits as an npz without ``y``: a dataset that has no labels at all."""
    x = np.clip(load_digits().images[:300] * 16, 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("npz") / "digits-x.npz"
    np.savez(path, x=x)
    return path


def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        return image.size


def _html(result: ReportResult) -> str:
    return result.html.read_text(encoding="utf-8")


def test_every_panel_is_in_the_page(labelled: ReportResult) -> None:
    page = _html(labelled)
    assert labelled.html.name == REPORT_FILE
    assert labelled.sections == list(PANEL_IDS)
    for panel in PANEL_IDS:
        assert f'<section id="{panel}">' in page
        assert f'href="#{panel}"' in page  # table of contents
    assert labelled.omitted == []  # labelled data and a bundle with a history: nothing left out
    assert 'class="omitted"' not in page
    # Label mix in the galleries, evaluation figures beside the heat map.
    assert re.search(r"Labels: \d \d+%", page)
    assert "Hungarian accuracy" in page and "majority-label accuracy" in page
    assert "computed here on the 180 sampled" in page  # the bundle was trained with a fixed K
    plt_figs = plt.get_fignums()
    assert plt_figs == []  # pyplot's registry untouched


def test_page_is_self_contained(labelled: ReportResult) -> None:
    page = _html(labelled)
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == len(labelled.figures) == 7 + 10  # 7 panels draw, + 1 per cluster
    for src, figure in zip(srcs, labelled.figures, strict=True):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == figure.read_bytes()
    # Nothing fetched from the network: no scripts, stylesheets or remote URLs.
    assert not re.search(r"<script|<link|https?://|url\(", page)


def test_figures_have_the_expected_sizes(labelled: ReportResult) -> None:
    figures = {path.name: path for path in labelled.figures}
    for path in labelled.figures:
        assert path.parent == labelled.html.parent / "figures"
    assert _png_size(figures["training_curves.png"]) == figure_size_px(2)  # loss, psnr
    assert _png_size(figures["reconstructions.png"]) == grid_size_px(4, 10, TILE)
    assert _png_size(figures["k_selection.png"]) == figure_size_px(2)
    for c in range(10):
        assert _png_size(figures[f"cluster_{c:03d}.png"]) == grid_size_px(1, 8 + 1 + 4, TILE)
    assert _png_size(figures["map_tsne.png"]) == map_size_px(2)  # by cluster and by label
    assert _png_size(figures["contingency.png"]) == contingency_size_px(10, 10)
    assert _png_size(figures["codes.png"]) == codes_size_px(12)
    assert _png_size(figures["manifold.png"]) == grid_size_px(12, 12, TILE)


def test_unlabelled_data_leaves_out_label_panels(
    tmp_path: Path, digits_bundle: Path, unlabelled_npz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    code = main(["report", "--bundle", str(digits_bundle), "--dataset", f"npz:{unlabelled_npz}",
                 "--split", "all", "--max-images", "200", "--map-points", "120", "--out",
                 str(out), "--projector", str(tmp_path / "tb")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 200
    assert sorted(summary["omitted"]) == ["contingency", "label-mix", "map-by-label"]
    page = (out / REPORT_FILE).read_text(encoding="utf-8")
    assert summary["bytes"] == len(page.encode("utf-8"))
    for panel in PANEL_IDS:
        assert f'<section id="{panel}">' in page
    assert page.count("carry no labels") == 3
    assert not (out / "figures" / "contingency.png").exists()
    assert _png_size(out / "figures" / "map_tsne.png") == map_size_px(1)
    assert "Labels:" not in page
    metadata = (tmp_path / "tb" / "metadata.tsv").read_text().splitlines()
    assert len(metadata) == 201 and all(row.split("\t")[1] == "unknown" for row in metadata[1:])


def test_stored_k_selection_is_used(tmp_path: Path, digits_bundle: Path) -> None:
    """A bundle trained with --clusters auto carries its curves: the report shows those."""
    version = clone_version(digits_bundle, tmp_path / "repo", "digits", 1)
    selection = clustering.KSelection(k_values=[2, 3, 4], mean_distance=[3.0, 2.0, 1.5],
                                      inertia=[9.0, 4.0, 2.0], silhouette=[0.2, float("nan"), 0.3],
                                      chosen_k=4, elbow_k=3)
    clustering.save_k_selection(selection, version / "report")
    raw = json.loads((version / bundle.MANIFEST_FILE).read_text())
    raw["files"] = bundle.hash_files(version)
    (version / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
    data = gather(digits_bundle, "digits", ReportOptions(max_images=50))
    data = dataclasses.replace(data, loaded=load_bundle(version))
    section = k_selection(data, tmp_path / "out")
    texts = [getattr(block, "text", "") for block in section.blocks]
    assert any("Stored in the bundle" in text for text in texts)
    assert _png_size(tmp_path / "out" / "figures" / "k_selection.png") == figure_size_px(2)


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "--bundle", str(tmp_path / "nope"), "--dataset", "digits",
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit) as info:
        main(["report", "--bundle", "b", "--dataset", "digits", "--out", "o",
              "--max-images", "0"])
    assert info.value.code == 2
    assert not (tmp_path / "out").exists()


def test_help_documents_every_report_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = capsys.readouterr().out
    for option in ["--bundle", "--dataset", "--out", "--split", "--max-images", "--map-points",
                   "--projector", "--seed", "--batch-size"]:
        assert option in text, option


def test_sample_split_is_seeded_and_in_order() -> None:
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
    split = array_split(images, np.arange(100), Target(1, 1, 1, "gray"))
    x, y = sample_split(split, 30, seed=3)
    assert len(y) == 30 and np.all(np.diff(y) > 0)  # a subset, in split order
    np.testing.assert_allclose(x[:, 0, 0, 0], y / 255.0, atol=1e-6)  # images stay with labels
    assert sample_split(split, 30, seed=3)[1].tolist() == y.tolist()
    assert sample_split(split, 30, seed=4)[1].tolist() != y.tolist()
    assert sample_split(split, 500, seed=3)[1].tolist() == list(range(100))


def test_manifold_axes() -> None:
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(50, 2))
    centre, dirs, what = manifold_axes(plane)
    assert what == "the latent plane itself"
    np.testing.assert_array_equal(centre, [0.0, 0.0])
    np.testing.assert_array_equal(dirs, np.eye(2))
    # Higher dimensions: the two main principal directions, one standard deviation long.
    emb = rng.normal(size=(400, 5)) * [5.0, 2.0, 0.1, 0.1, 0.1] + 3.0
    centre, dirs, what = manifold_axes(emb)
    assert "principal directions" in what and dirs.shape == (2, 5)
    np.testing.assert_allclose(centre, emb.mean(axis=0))
    np.testing.assert_allclose(np.abs(dirs[0] / np.linalg.norm(dirs[0]))[0], 1.0, atol=0.01)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), emb.std(axis=0, ddof=1)[:2],
                               rtol=0.05)
    assert abs(float(dirs[0] @ dirs[1])) < 1e-6

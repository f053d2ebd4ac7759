"""scripts/compare_bundles.py: the same model is SAME everywhere, another is DIFF."""

from __future__ import annotations

import shutil
from pathlib import Path

import joblib
import pytest

from tests.by_path import load_module
from tests.service.bundles import clone_version

ROOT = Path(__file__).resolve().parents[2]
compare_bundles = load_module(ROOT / "scripts" / "compare_bundles.py", "compare_bundles")


def test_a_copy_is_the_same_model(digits_bundle: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    copy = clone_version(digits_bundle, tmp_path / "repo", "digits", 2)
    assert compare_bundles.main([str(digits_bundle), str(copy), "--dataset", "digits"]) == 0
    out = capsys.readouterr().out
    assert out.count("SAME") == 9 and "DIFF" not in out and "the same model" in out


def test_other_centroids_and_weights_differ(digits_bundle: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from service import bundle

    other = clone_version(digits_bundle, tmp_path / "repo", "digits", 2)
    stored = joblib.load(other / "centroids.joblib")
    stored["centroids"] = stored["centroids"] + 1.0
    joblib.dump(stored, other / "centroids.joblib")
    # Keep the copy a valid bundle: its manifest lists the new checksum.
    manifest = bundle.read_manifest(other)
    files = {**manifest.files, "centroids.joblib": bundle.sha256_file(other / "centroids.joblib")}
    (other / "manifest.json").write_text(manifest.model_copy(update={"files": files})
                                         .model_dump_json(indent=2))
    assert compare_bundles.main([str(digits_bundle), str(other)]) == 1
    out = capsys.readouterr().out
    assert "DIFF  centroids" in out and "SAME  encoder variables" in out
    assert "different models" in out


def test_a_path_that_is_not_a_bundle_exits_2(digits_bundle: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "nothing" / "1"
    empty.mkdir(parents=True)
    assert compare_bundles.main([str(digits_bundle), str(empty)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    shutil.rmtree(empty)

"""The bundle contract: manifest schema, checksum verification, centroid loading, assignment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.cluster import KMeans

from service import bundle


def _manifest_dict(files: dict[str, str], *, k: int = 3, d: int = 4) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": "digits",
        "version": 1,
        "created_at": "2026-11-23T00:00:00+00:00",
        "input": {"height": 8, "width": 8, "channels": 1, "color_mode": "gray"},
        "latent_dim": d,
        "n_clusters": k,
        "cluster_stats": [
            {"cluster": i, "count": 5, "mean": 1.0, "p50": 1.0, "p95": 2.0, "p99": 3.0}
            for i in range(k)
        ],
        "class_names": ["a", "b"],
        "label_map": {"0": "a", "2": "b"},
        "training": {
            "data_source": "digits", "model_kind": "conv", "loss": "mse", "labels_used": False,
            "hyperparameters": {"seed": 0}, "epochs": 1, "final_losses": {"loss": 0.1},
            "n_train": 10, "n_heldout": 2, "heldout_kind": "val-fraction", "seconds": 1.0,
        },
        "evaluation": {},
        "library_versions": {"numpy": np.__version__},
        "files": files,
    }


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    """A structurally complete bundle (fake SavedModel bytes: no TensorFlow needed here)."""
    root = tmp_path / "repo" / "digits" / "1"
    for sub in (bundle.ENCODER_DIR, bundle.DECODER_DIR):
        (root / sub / "variables").mkdir(parents=True)
        (root / sub / "saved_model.pb").write_bytes(b"graph " + sub.encode())
        (root / sub / "variables" / "variables.index").write_bytes(b"index")
    centroids = np.arange(12, dtype=np.float32).reshape(3, 4)
    joblib.dump(bundle.centroid_payload(centroids), root / bundle.CENTROIDS_FILE)
    manifest = bundle.Manifest.model_validate(_manifest_dict(bundle.hash_files(root)))
    bundle.write_manifest(root, manifest)
    return root


def test_round_trip_reads_verifies_and_loads(version_dir: Path) -> None:
    manifest = bundle.read_manifest(version_dir)
    assert manifest.name == "digits" and manifest.version == 1
    assert manifest.cluster_label(2) == "b" and manifest.cluster_label(1) is None
    bundle.verify_checksums(version_dir, manifest)
    centroids = bundle.load_centroids(version_dir, manifest)
    assert centroids.dtype == np.float32 and centroids.shape == (3, 4)
    assert bundle.MANIFEST_FILE not in manifest.files


def test_missing_manifest_is_incomplete(tmp_path: Path) -> None:
    with pytest.raises(bundle.BundleError, match=r"manifest\.json is missing"):
        bundle.read_manifest(tmp_path)


def test_malformed_json_names_the_file(version_dir: Path) -> None:
    (version_dir / bundle.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(bundle.BundleError, match="not readable JSON"):
        bundle.read_manifest(version_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(n_clusters=4), "cluster_stats has 3 entries for 4 clusters"),
        (lambda m: m["input"].update(channels=3), "needs 1 channel"),
        (lambda m: m.update(label_map={"7": "a"}), "clusters that do not exist"),
        (lambda m: m.update(name="../etc"), "not a valid name"),
        (lambda m: m.pop("latent_dim"), "latent_dim"),
        (lambda m: m.update(surprise=1), "surprise"),
    ],
)
def test_schema_errors_name_the_field(version_dir: Path, change: Any, message: str) -> None:
    raw = json.loads((version_dir / bundle.MANIFEST_FILE).read_text())
    change(raw)
    (version_dir / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(bundle.BundleError, match=message):
        bundle.read_manifest(version_dir)


def test_tampered_file_fails_before_unpickling(version_dir: Path) -> None:
    manifest = bundle.read_manifest(version_dir)
    # A pickle that would run code if loaded: verification must refuse it first.
    (version_dir / bundle.CENTROIDS_FILE).write_bytes(
        b"cos\nsystem\n(S'touch /tmp/aecluster-pwned'\ntR."
    )
    with pytest.raises(bundle.BundleError, match=r"checksum mismatch \['centroids.joblib'\]"):
        bundle.load_centroids(version_dir, manifest)
    assert not Path("/tmp/aecluster-pwned").exists()


def test_added_and_missing_files_are_reported(version_dir: Path) -> None:
    manifest = bundle.read_manifest(version_dir)
    (version_dir / "encoder" / "variables" / "extra.bin").write_bytes(b"x")
    (version_dir / "decoder" / "variables" / "variables.index").unlink()
    with pytest.raises(bundle.BundleError) as info:
        bundle.verify_checksums(version_dir, manifest)
    text = str(info.value)
    assert "not listed in the manifest ['encoder/variables/extra.bin']" in text
    assert "missing ['decoder/variables/variables.index']" in text


def test_the_signature_file_is_outside_the_checksums_and_only_at_the_top(
        version_dir: Path) -> None:
    # model.sig signs the manifest, so the manifest cannot list it: one at the top of the
    # version is not an unlisted file. Anywhere else it is just another file.
    manifest = bundle.read_manifest(version_dir)
    (version_dir / bundle.SIGNATURE_FILE).write_text("{}")
    assert bundle.SIGNATURE_FILE not in bundle.hash_files(version_dir)
    bundle.verify_checksums(version_dir, manifest)
    (version_dir / "encoder" / bundle.SIGNATURE_FILE).write_text("{}")
    with pytest.raises(bundle.BundleError, match=r"not listed in the manifest \['encoder/model"):
        bundle.verify_checksums(version_dir, manifest)


def test_centroid_shape_must_match_manifest(version_dir: Path) -> None:
    joblib.dump(bundle.centroid_payload(np.zeros((2, 4), np.float32)),
                version_dir / bundle.CENTROIDS_FILE)
    raw = json.loads((version_dir / bundle.MANIFEST_FILE).read_text())
    raw["files"] = bundle.hash_files(version_dir)
    (version_dir / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
    manifest = bundle.read_manifest(version_dir)
    with pytest.raises(bundle.BundleError, match=r"expected float32 \(3, 4\)"):
        bundle.load_centroids(version_dir, manifest)


def test_assign_matches_scikit_learn_predict() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(500, 6)).astype(np.float32)
    km = KMeans(n_clusters=7, n_init=3, random_state=0).fit(emb)
    ids, dist = bundle.assign(emb, km.cluster_centers_)
    np.testing.assert_array_equal(ids, km.predict(emb))
    expected = np.linalg.norm(emb - km.cluster_centers_[ids], axis=1)
    np.testing.assert_allclose(dist, expected, rtol=1e-4, atol=1e-4)
    assert ids.dtype == np.int64 and dist.dtype == np.float32


def test_list_versions_ignores_incomplete_and_temporary(tmp_path: Path) -> None:
    model = tmp_path / "m"
    for name, complete in [("1", True), ("2", False), ("10", True), (".tmp-3-ab", True),
                           ("latest", True), ("0", True)]:
        (model / name).mkdir(parents=True)
        if complete:
            (model / name / bundle.MANIFEST_FILE).write_text("{}")
    assert bundle.list_versions(model) == [1, 10]
    assert bundle.list_versions(tmp_path / "absent") == []


@pytest.mark.parametrize("path", ["repo/m/0", "repo/m/latest", "repo/m/-1"])
def test_version_dir_must_end_in_positive_integer(tmp_path: Path, path: str) -> None:
    with pytest.raises(bundle.BundleError, match="positive integer"):
        bundle.parse_version_dir(tmp_path / path)


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", "-x", "x" * 200, "a b"])
def test_model_names_that_could_escape_are_refused(name: str) -> None:
    with pytest.raises(bundle.BundleError, match="not allowed"):
        bundle.validate_model_name(name)


def test_parse_version_dir_accepts_tf_serving_layout(tmp_path: Path) -> None:
    assert bundle.parse_version_dir(tmp_path / "repo" / "fashion" / "3") == ("fashion", 3)


# ---- exemplars -----------------------------------------------------------------------


def _with_exemplars(version_dir: Path, exemplars: dict[str, list[str]],
                    files: dict[str, bytes]) -> Path:
    """Write ``files`` (relative path -> bytes), re-hash, and set the manifest's exemplars."""
    for relative, data in files.items():
        (version_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (version_dir / relative).write_bytes(data)
    raw = json.loads((version_dir / bundle.MANIFEST_FILE).read_text())
    raw["files"] = bundle.hash_files(version_dir)
    raw["exemplars"] = exemplars
    (version_dir / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
    return version_dir


def test_bundle_without_exemplars_stays_valid(version_dir: Path) -> None:
    raw = json.loads((version_dir / bundle.MANIFEST_FILE).read_text())
    raw.pop("exemplars")  # as written before the field existed
    (version_dir / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
    manifest = bundle.read_manifest(version_dir)
    assert manifest.exemplars is None and manifest.exemplar_paths(0) == []


def test_exemplars_round_trip_and_verified_read(version_dir: Path) -> None:
    _with_exemplars(
        version_dir,
        {"0": ["exemplars/0/0.png", "exemplars/0/1.png"], "1": [], "2": ["exemplars/2/0.png"]},
        {"exemplars/0/0.png": b"zero", "exemplars/0/1.png": b"one", "exemplars/2/0.png": b"two"},
    )
    manifest = bundle.read_manifest(version_dir)
    assert manifest.exemplar_paths(0) == ["exemplars/0/0.png", "exemplars/0/1.png"]
    assert manifest.exemplar_paths(1) == [] and manifest.exemplar_paths(2) == [
        bundle.exemplar_path(2, 0)]
    bundle.verify_checksums(version_dir, manifest)
    assert bundle.read_verified(version_dir, manifest, "exemplars/0/1.png") == b"one"

    (version_dir / "exemplars" / "0" / "1.png").write_bytes(b"changed")
    with pytest.raises(bundle.BundleError, match="no longer matches the SHA-256"):
        bundle.read_verified(version_dir, manifest, "exemplars/0/1.png")
    with pytest.raises(bundle.BundleError, match="checksum mismatch"):
        bundle.verify_checksums(version_dir, manifest)
    (version_dir / "exemplars" / "2" / "0.png").unlink()
    with pytest.raises(bundle.BundleError, match="could not be read"):
        bundle.read_verified(version_dir, manifest, "exemplars/2/0.png")
    with pytest.raises(bundle.BundleError, match="is not a file of digits version 1"):
        bundle.read_verified(version_dir, manifest, "../../etc/passwd")


@pytest.mark.parametrize(
    ("exemplars", "message"),
    [
        ({"3": ["exemplars/3/0.png"]}, "clusters that do not exist"),
        ({"01": ["exemplars/1/0.png"]}, "clusters that do not exist"),
        ({"x": []}, "clusters that do not exist"),
        ({"0": ["exemplars/1/0.png"]}, "must be exemplars/0/<index>.png"),
        ({"0": ["exemplars/0/../../centroids.joblib"]}, "must be exemplars/0/<index>.png"),
        ({"0": ["centroids.joblib"]}, "must be exemplars/0/<index>.png"),
        ({"0": ["exemplars/0/0.png\n"]}, "must be exemplars/0/<index>.png"),
        ({"0": ["/exemplars/0/0.png"]}, "must be exemplars/0/<index>.png"),
        ({"0": ["exemplars/0/5.png"]}, "not listed"),
        ({"0": ["exemplars/0/0.png", "exemplars/0/0.png"]}, "list a path twice"),
    ],
)
def test_bad_exemplars_are_refused(version_dir: Path, exemplars: dict[str, list[str]],
                                   message: str) -> None:
    _with_exemplars(version_dir, exemplars,
                    {"exemplars/0/0.png": b"png", "exemplars/1/0.png": b"p"})
    with pytest.raises(bundle.BundleError, match=message):
        bundle.read_manifest(version_dir)

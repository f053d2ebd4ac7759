"""centroids.joblib is read without running code from it (issue 39, item 1).

Each hostile file would run code under plain ``joblib.load``: it writes a marker file when
its code runs. Here the marker must never appear, and the refusal must name what it saw.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from service import bundle, centroid_file
from service.metrics import Metrics
from service.repository import ModelRepository
from service.runtime import runtime_factory
from service.settings import Settings
from tests.service.bundles import clone_version


class _RunsCode:
    """Unpickling this calls ``builtins.exec``: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"__import__('pathlib').Path({str(self.marker)!r}).write_text('ran')",)


def _payload_with(value: Any) -> dict[str, Any]:
    payload = bundle.centroid_payload(np.zeros((2, 3), np.float32))
    payload["extra"] = value
    return payload


def test_what_training_writes_loads_unchanged(tmp_path: Path) -> None:
    centroids = np.random.default_rng(0).random((10, 8), dtype=np.float32)
    path = tmp_path / "centroids.joblib"
    joblib.dump(bundle.centroid_payload(centroids), path)
    payload = centroid_file.load(path)
    assert payload["format"] == bundle.CENTROIDS_FORMAT and payload["metric"] == "euclidean"
    np.testing.assert_array_equal(payload["centroids"], centroids)
    assert payload["centroids"].dtype == np.float32


def test_a_pickle_that_calls_a_function_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "centroids.joblib"
    joblib.dump(_payload_with(_RunsCode(marker)), path)
    with pytest.raises(centroid_file.RefusedPickle, match=r"builtins\.exec"):
        centroid_file.load(path)
    assert not marker.exists()
    joblib.load(path)  # what the service did before: the code runs
    assert marker.read_text() == "ran"


def test_an_object_array_is_refused_before_its_data_is_read(tmp_path: Path) -> None:
    # joblib stores an object array's items with a second, plain pickle.load.
    marker = tmp_path / "ran"
    path = tmp_path / "centroids.joblib"
    joblib.dump(_payload_with(np.array([_RunsCode(marker)], dtype=object)), path)
    with pytest.raises(centroid_file.RefusedPickle, match="dtype"):
        centroid_file.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("value", [np.array([1.0, 2.0]), np.array(["a"], dtype=object)])
def test_numpys_own_array_pickle_is_held_to_the_same_rules(tmp_path: Path,
                                                           value: np.ndarray) -> None:
    path = tmp_path / "centroids.joblib"
    path.write_bytes(pickle.dumps(_payload_with(value), protocol=4))
    if value.dtype.hasobject:
        with pytest.raises(centroid_file.RefusedPickle, match="dtype"):
            centroid_file.load(path)
    else:
        np.testing.assert_array_equal(centroid_file.load(path)["extra"], value)


@pytest.mark.anyio
async def test_a_version_with_a_hostile_centroid_file_is_refused_and_reported(
        model_repo: Path, digits_bundle: Path, tmp_path: Path) -> None:
    # The attack of issue 39: a new version whose centroid file runs code, its checksum
    # recomputed in the manifest. Version 1 is serving when it arrives.
    settings = Settings(model_repo=model_repo, poll_seconds=0, max_batch_size=4)
    metrics = Metrics()
    repo = ModelRepository(settings, metrics, runtime_factory("/CPU:0", settings.batch_sizes()))
    await repo.start()
    try:
        version = clone_version(digits_bundle, model_repo, "digits", 2)
        marker = tmp_path / "ran"
        joblib.dump(_payload_with(_RunsCode(marker)), version / bundle.CENTROIDS_FILE)
        manifest = json.loads((version / bundle.MANIFEST_FILE).read_text())
        manifest["files"][bundle.CENTROIDS_FILE] = bundle.sha256_file(
            version / bundle.CENTROIDS_FILE)
        (version / bundle.MANIFEST_FILE).write_text(json.dumps(manifest))
        await repo.poll_once()
        assert not marker.exists()
        assert repo.get("digits").version == 1  # the good version keeps serving
        assert metrics.registry.get_sample_value(
            "aecluster_model_load_failures_total", {"model": "digits"}) == 1
        [failed] = [s for s in repo.status("digits") if s.version == 2]
        assert "refused, nothing in it was run" in failed.error_message
        assert "builtins.exec" in failed.error_message
    finally:
        await repo.stop(1)

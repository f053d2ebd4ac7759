"""Bundles trained with options that were retired later still load, serve, evaluate, report.

A manifest records every training option under ``training.hyperparameters``. The service
and ``training evaluate``/``report`` read only what they need from it (the split's seed and
``val_fraction``, ``k_range``), so a bundle recording a value that training no longer
offers (issue 40 retired these) keeps working.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from service import bundle
from service.metrics import Metrics
from service.repository import ModelRepository
from service.runtime import runtime_factory
from service.settings import Settings
from tests.service.bundles import clone_version
from training.cli import main
from training.config import flags

# As the training code before issue 40 wrote them, each at a value it no longer offers.
RETIRED: dict[str, Any] = {"backbone_loss": "vicreg", "backbone_schedule": "cosine",
                           "self_label_epochs": 5, "community_choice": "stable",
                           "community_searches": 8}


@pytest.fixture
def old_bundle(tmp_path: Path, digits_bundle: Path) -> Path:
    """The digits bundle, its manifest recording the retired options."""
    version = clone_version(digits_bundle, tmp_path / "repo", "digits", 1)
    raw = json.loads((version / bundle.MANIFEST_FILE).read_text())
    raw["training"]["hyperparameters"].update(RETIRED)
    (version / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
    return version


def test_the_manifest_reads_with_the_retired_values(old_bundle: Path) -> None:
    hyperparameters = bundle.read_manifest(old_bundle).training.hyperparameters
    assert {key: hyperparameters[key] for key in RETIRED} == RETIRED
    # They are records, not settings: training has no such options any more.
    options = set(flags())
    assert options & set(RETIRED) == {"community_searches"}


@pytest.mark.anyio
async def test_the_service_loads_and_serves_it(old_bundle: Path) -> None:
    settings = Settings(model_repo=old_bundle.parents[1], poll_seconds=0, max_batch_size=4)
    repository = ModelRepository(settings, Metrics(),
                                 runtime_factory("/CPU:0", settings.batch_sizes()))
    await repository.start()
    try:
        loaded = repository.get("digits")
        assert (loaded.version, loaded.state) == (1, "AVAILABLE")
        assert loaded.manifest.training.hyperparameters["backbone_loss"] == "vicreg"
        images = (load_digits().images[:4] / 16.0).astype(np.float32)[..., None]
        out = loaded.runtime.run(images, with_reconstruction=False)
        assert out.cluster_id.shape == (4,)
    finally:
        await repository.stop(1)


def test_evaluate_and_report_read_it(old_bundle: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    scores = tmp_path / "scores.json"
    assert main(["evaluate", "--bundle", str(old_bundle), "--dataset", "digits",
                 "--json", str(scores)]) == 0
    # The split the manifest records (seed, val_fraction) is found again: the same 180 images.
    assert json.loads(scores.read_text())["n"] == 180
    assert main(["report", "--bundle", str(old_bundle), "--dataset", "digits",
                 "--out", str(tmp_path / "report"), "--max-images", "200",
                 "--map-points", "100"]) == 0
    assert (tmp_path / "report" / "report.html").is_file()
    assert "Traceback" not in capsys.readouterr().err

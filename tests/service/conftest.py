"""Real bundles for the service tests: trained briefly on scikit-learn's digits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service import bundle


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine digits bundle (conv, latent 8, K=10, 2 epochs) at REPO/digits/1.

    Read-only for tests: copy it (see :func:`clone_version`) before changing anything.
    """
    from training.data import DataOptions
    from training.models import ModelConfig
    from training.train import TrainJob, run_training

    out = tmp_path_factory.mktemp("pristine") / "digits" / "1"
    run_training(TrainJob(dataset="digits", out=out, data=DataOptions(seed=0),
                          model=ModelConfig(kind="conv", latent_dim=8, seed=0),
                          epochs=2, clusters=10, seed=0))
    return out


def clone_version(source: Path, repo: Path, name: str, version: int) -> Path:
    """Copy a bundle to ``repo/name/version``, rewriting the manifest's name and version.

    The manifest is not among its own checksummed files, so the copy still verifies.
    """
    target = repo / name / str(version)
    tmp = repo / name / f".tmp-clone-{version}"
    shutil.copytree(source, tmp)
    raw = json.loads((tmp / bundle.MANIFEST_FILE).read_text())
    raw["name"], raw["version"] = name, version
    (tmp / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
    tmp.rename(target)
    return target


@pytest.fixture
def model_repo(tmp_path: Path, digits_bundle: Path) -> Path:
    """A fresh repository holding digits version 1 (a copy: tests may change it)."""
    repo = tmp_path / "repo"
    clone_version(digits_bundle, repo, "digits", 1)
    return repo

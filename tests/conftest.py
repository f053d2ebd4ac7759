"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.keys import KeyPair, make_key_pair
from tests.service.bundles import clone_version

# Keep TensorFlow's C++ logging quiet and deterministic before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine digits bundle (conv, latent 8, K=10, 2 epochs) at REPO/digits/1.

    Read-only for tests: copy it (see :func:`clone_version`) before changing anything.
    """
    from training.config import AutoencoderConfig
    from training.data import DataOptions
    from training.job import TrainJob, run_training

    out = tmp_path_factory.mktemp("pristine") / "digits" / "1"
    run_training(TrainJob(dataset="digits", out=out, data=DataOptions(seed=0),
                          model=AutoencoderConfig(kind="conv", latent_dim=8, epochs=2),
                          clusters=10, seed=0))
    return out


@pytest.fixture
def model_repo(tmp_path: Path, digits_bundle: Path) -> Path:
    """A fresh repository holding digits version 1 (a copy: tests may change it)."""
    repo = tmp_path / "repo"
    clone_version(digits_bundle, repo, "digits", 1)
    return repo


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (marked ``anyio``) run on asyncio, the loop the service runs on."""
    return "asyncio"



@pytest.fixture
def make_keys(tmp_path: Path) -> Callable[[str], KeyPair]:
    """Make a new elliptic-curve key pair ``name`` (``.pem`` and ``.pub``) in ``tmp_path/keys``."""
    return lambda name: make_key_pair(tmp_path / "keys", name)

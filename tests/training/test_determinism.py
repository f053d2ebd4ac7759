"""``--deterministic``: deterministic kernels, and two runs giving the same bundle.

The switch is process-wide and cannot be undone, so every check runs in a subprocess:
turning it on inside the test process would change every later test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
# conftest turns determinism on for the whole suite through TF_DETERMINISTIC_OPS; the
# subprocesses drop it so that only the switch under test can turn it on.
ENV = {**{k: v for k, v in os.environ.items() if k != "TF_DETERMINISTIC_OPS"},
       "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=ENV, capture_output=True,
                            text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_configure_determinism_switches_tensorflow_to_deterministic_kernels() -> None:
    script = ("from tensorflow.python.framework import config\n"
              "from training.devices import configure_determinism\n"
              "before = config.is_op_determinism_enabled()\n"
              "configure_determinism(7)\n"
              "import numpy as np\n"
              "print(before, config.is_op_determinism_enabled(), np.random.rand())\n")
    first = _run(["-c", script]).stdout.split()
    second = _run(["-c", script]).stdout.split()
    assert first[:2] == ["False", "True"]
    assert first[2] == second[2]  # NumPy is seeded too


def test_two_deterministic_runs_export_identical_bundles(tmp_path: Path) -> None:
    bundles = []
    for name in ("a", "b"):
        out = tmp_path / name / "1"
        _run(["-m", "training", "train", "--dataset", "digits", "--model", "conv",
              "--epochs", "2", "--clusters", "5", "--exemplars", "0", "--seed", "3",
              "--deterministic", "--out", str(out)])
        bundles.append(out)
    centroids = [np.asarray(joblib.load(b / "centroids.joblib")["centroids"]) for b in bundles]
    np.testing.assert_array_equal(centroids[0], centroids[1])
    manifests = [json.loads((b / "manifest.json").read_text()) for b in bundles]
    assert manifests[0]["training"]["hyperparameters"]["deterministic"] is True
    assert manifests[0]["training"]["final_losses"] == manifests[1]["training"]["final_losses"]


def test_two_runs_in_one_process_train_the_same(tmp_path: Path) -> None:
    # A notebook or the quality bench trains several bundles in one process; the second
    # must not depend on what the first left in TensorFlow's global random state.
    from training.config import AutoencoderConfig
    from training.data import DataOptions
    from training.job import TrainJob, run_training

    results = [run_training(TrainJob(
        dataset="digits", out=tmp_path / name / "1", data=DataOptions(seed=5),
        model=AutoencoderConfig(kind="conv", latent_dim=4, epochs=3), clusters=4,
        exemplars=0, seed=5)) for name in ("a", "b")]
    assert results[0].history["loss"] == results[1].history["loss"]
    np.testing.assert_array_equal(results[0].kmeans.centroids, results[1].kmeans.centroids)

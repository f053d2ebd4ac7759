"""The command line: documented options, clear errors, non-zero exits, no partial bundle."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from training.cli import main, missing_training_packages

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_documents_every_train_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ["--dataset", "--data-dir", "--labels", "--strict", "--image-size", "--color",
                   "--val-fraction", "--model", "--latent", "--loss", "--kl-weight", "--denoise",
                   "--augment-flip", "--epochs", "--batch-size", "--learning-rate", "--seed",
                   "--tensorboard", "--device", "--clusters", "--k-range", "--kmeans-restarts",
                   "--out", "--overwrite", "fashion-mnist", "idx:DIR", "images:DIR", "tfrecord:",
                   "csv:FILE", "cifar10:DIR", "npz:FILE"]:
        assert option in text, option


def test_a_serve_only_install_is_told_to_install_the_train_extra(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Training's own packages are the `train` extra (pyproject.toml): without one of them,
    # a sentence naming it and the extra, exit 2, before any import fails or data is read.
    assert missing_training_packages() == []
    real_version = metadata.version

    def version(name: str) -> str:
        if name == "scikit-network":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(metadata, "version", version)
    assert missing_training_packages() == ["scikit-network"]
    code, out, err = _run(["train", "--dataset", "digits", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and out == ""
    assert "scikit-network" in err and "pip install 'aecluster[train]'" in err
    assert "Traceback" not in err and not (tmp_path / "b").exists()
    assert missing_training_packages("no-such-distribution") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image-size", "big"], "is not a size"),
        (["--clusters", "0"], "at least 1"),
        (["--val-fraction", "1.5"], "must be in [0, 1)"),
        (["--model", "gan"], "invalid choice"),
        (["--kmeans-restarts", "0"], "expected an integer >= 1"),
    ],
)
def test_bad_option_values_exit_2(args: list[str], message: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--out", str(tmp_path / "m" / "1"), *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_more_clusters_than_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m" / "1"
    code, _, err = _run(["train", "--dataset", "digits", "--clusters", "5000", "--epochs", "0",
                         "--out", str(out)], capsys)
    assert code == 2
    assert "--clusters 5000 is not possible with" in err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_existing_version_refused_before_training(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m" / "1"
    out.mkdir(parents=True)
    (out / "manifest.json").write_text("{}")
    started = time.monotonic()
    code, _, err = _run(["train", "--dataset", "digits", "--out", str(out)], capsys)
    assert code == 2 and "already holds a version; pass --overwrite" in err
    assert time.monotonic() - started < 30  # refused up front, not after fitting
    assert (out / "manifest.json").read_text() == "{}"


@pytest.mark.parametrize(
    "dataset",
    ["images:/nonexistent/folder", "npz:/nonexistent.npz", "idx:/nonexistent", "nope:x"],
)
def test_missing_dataset_is_a_clear_error(dataset: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["train", "--dataset", dataset, "--out", str(tmp_path / "m" / "1")],
                        capsys)
    assert code == 2
    assert err.startswith("error: ")
    assert "Traceback" not in err


def test_perceptual_needs_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    npz = tmp_path / "unlabelled.npz"
    np.savez(npz, x=np.random.default_rng(0).integers(0, 255, (40, 8, 8), dtype=np.uint8))
    code, _, err = _run(["train", "--dataset", f"npz:{npz}", "--model", "conv",
                         "--loss", "perceptual",
                         "--epochs", "1", "--clusters", "2", "--out",
                         str(tmp_path / "m" / "1")], capsys)
    assert code == 2 and "no labels" in err


def test_to_tfrecord_then_train_on_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = tmp_path / "digits.tfrecord"
    code, out, _ = _run(["to-tfrecord", "--dataset", "digits", "--out", str(record)], capsys)
    assert code == 0
    assert json.loads(out)["records"] == 1797
    bundle_dir = tmp_path / "repo" / "tfr" / "1"
    code, out, err = _run(["train", "--dataset", f"tfrecord:{record}", "--model", "dense",
                           "--latent", "4", "--epochs", "1", "--clusters", "3",
                           "--out", str(bundle_dir)], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["n_clusters"] == 3 and (bundle_dir / "manifest.json").is_file()


def test_ctrl_c_during_training_leaves_no_bundle(tmp_path: Path) -> None:
    out = tmp_path / "repo" / "digits" / "1"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "training", "train", "--dataset", "digits", "--model", "conv",
         "--epochs", "500", "--out", str(out)],
        cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        # A suite started in the background by a shell inherits an ignored SIGINT, and so
        # would the child: give it the default disposition, as in a terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # wait until fitting has really started
        seen.append(line)
        if "epoch" in line.lower() or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    try:
        _, rest = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted: no bundle was written" in rest
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.mark.parametrize("model", ["dense", "vae"])
def test_every_model_kind_exports_a_servable_bundle(model: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from service import bundle

    out = tmp_path / "repo" / model / "1"
    code, _, err = _run(["train", "--dataset", "digits", "--model", model, "--latent", "6",
                         "--epochs", "1", "--clusters", "4", "--denoise", "0.1",
                         "--augment-flip", "--out", str(out)], capsys)
    assert code == 0, err
    manifest = bundle.read_manifest(out)
    assert manifest.training.model_kind == model and manifest.latent_dim == 6
    assert manifest.training.hyperparameters["denoise"] == 0.1
    bundle.load_centroids(out, manifest)


def test_several_k_from_one_training_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        caplog: pytest.LogCaptureFixture) -> None:
    from service import bundle

    out = tmp_path / "repo" / "digits" / "1"
    caplog.set_level(logging.INFO, logger="training.clustering")
    code, stdout, err = _run(["train", "--dataset", "digits", "--model", "conv", "--epochs", "1",
                              "--clusters", "4,6", "--kmeans-restarts", "3", "--out", str(out)],
                             capsys)
    assert code == 0, err
    summary = json.loads(stdout)["bundles"]
    assert [(s["model"], s["n_clusters"]) for s in summary] == [("digits-k4", 4),
                                                                 ("digits-k6", 6)]
    assert not out.exists()  # the models are named by K, beside --out
    manifests = {}
    for k in (4, 6):
        version = tmp_path / "repo" / f"digits-k{k}" / "1"
        manifest = manifests[k] = bundle.read_manifest(version)
        bundle.verify_checksums(version, manifest)
        assert manifest.n_clusters == k and bundle.load_centroids(version, manifest).shape[0] == k
        assert manifest.training.hyperparameters["clusters"] == [4, 6]
        assert manifest.training.hyperparameters["clusters_chosen"] == k
        assert manifest.training.hyperparameters["kmeans_restarts"] == 3
    # Each K's k-means ran the restarts asked for.
    runs = [r.getMessage() for r in caplog.records if "k-means (kmeans): K=" in r.getMessage()]
    assert len(runs) == 2 and all("n_init=3," in m for m in runs)
    # One training run: the same encoder and decoder in both, clustered twice.
    networks = {name: digest for name, digest in manifests[4].files.items()
                if name.startswith(("encoder/variables", "decoder/variables"))}
    assert networks and all(manifests[6].files[name] == digest
                            for name, digest in networks.items())
    assert manifests[4].files["centroids.joblib"] != manifests[6].files["centroids.joblib"]


def test_several_k_refuse_an_existing_version_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "repo" / "digits-k6" / "1"
    taken.mkdir(parents=True)
    (taken / "manifest.json").write_text("{}")
    code, _, err = _run(["train", "--dataset", "digits", "--model", "conv", "--clusters", "4,6",
                         "--out", str(tmp_path / "repo" / "digits" / "1")], capsys)
    assert code == 2 and "already holds a version; pass --overwrite" in err
    assert not (tmp_path / "repo" / "digits-k4").exists()


@pytest.mark.parametrize(("value", "message"), [
    ("4,x", "is not an integer, 'auto', or integers such as 10,20"),
    ("4,4", "--clusters 4,4 names a K twice"),
    ("4,0", "--clusters must be at least 1, got 0"),
    ("auto,4", "is not an integer"),
])
def test_bad_cluster_lists_exit_2(value: str, message: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--clusters", value, "--out", str(tmp_path / "m" / "1")])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_clusters_auto_saves_the_k_curves(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from service import bundle

    out = tmp_path / "repo" / "auto" / "1"
    code, _, err = _run(["train", "--dataset", "digits", "--model", "dense", "--epochs", "1",
                         "--clusters", "auto", "--k-range", "2-5", "--out", str(out)], capsys)
    assert code == 0, err
    manifest = bundle.read_manifest(out)
    curves = json.loads((out / "report" / "k_selection.json").read_text())
    assert curves["k_values"] == [2, 3, 4, 5]
    assert manifest.n_clusters == curves["chosen_k"]
    assert manifest.training.hyperparameters["clusters"] == "auto"
    assert (out / "report" / "k_selection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

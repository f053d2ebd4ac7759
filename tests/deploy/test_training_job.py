"""The training Job: the training image (the Dockerfile's ``train`` target) running
``python -m training train`` into the serving volume under the next version number, which the
service then hot-reloads."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from tests.deploy import manifests

Rendered = dict[str, list[manifests.Obj]]


def _pod_spec(job: manifests.Obj) -> manifests.Obj:
    spec: manifests.Obj = job["spec"]["template"]["spec"]
    return spec


def _env(job: manifests.Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in manifests.container(job).get("env", [])
            if "value" in e}


def _run_script(job: manifests.Obj, repo: Path, tmp_path: Path,
                stderr: list[str] | None = None, **env_overrides: str) -> list[str]:
    """Run the Job's shell script as the container would, with a stand-in ``python`` that
    prints the arguments it was given instead of training (its stderr lines are appended to
    ``stderr`` when given)."""
    container = manifests.container(job)
    assert container["command"] == ["/bin/sh", "-c"]
    script = container["args"][0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n', encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {**_env(job), "AEC_MODEL_REPO": str(repo),
           "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", **env_overrides}
    result = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    if stderr is not None:
        stderr.extend(result.stderr.splitlines())
    lines = result.stdout.splitlines()
    assert lines[0].startswith("training "), lines  # the script's own progress line
    return lines[1:]


def test_job_is_run_per_training_and_cleans_up(training_job: manifests.Obj) -> None:
    metadata = training_job["metadata"]
    # generateName + `kubectl create -f`: every run is a new Job, none collides with the last.
    assert "name" not in metadata and metadata["generateName"].endswith("-")
    assert metadata["namespace"] == "aecluster"
    spec = training_job["spec"]
    assert _pod_spec(training_job)["restartPolicy"] == "Never"
    assert spec["backoffLimit"] <= 2
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0


def test_job_uses_the_training_image_and_the_serving_volume(
    training_job: manifests.Obj, rendered: Rendered
) -> None:
    serving = manifests.one(rendered["gpu"], "Deployment")
    # The serving image has no training code: the Job runs the `train` target built from the
    # same Dockerfile, variant and version, named after the serving image with `-train`.
    name, _, tag = manifests.container(serving)["image"].rpartition(":")
    assert manifests.container(training_job)["image"] == f"{name}-train:{tag}"
    # and the Job's own comment says how to build it
    build = f"docker build --build-arg VARIANT=gpu --target train -t {name}-train:{tag} ."
    assert build in manifests.TRAINING_JOB.read_text(encoding="utf-8")

    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in _pod_spec(training_job)["volumes"] if "persistentVolumeClaim" in v}
    serving_claims = {v["persistentVolumeClaim"]["claimName"]
                      for v in serving["spec"]["template"]["spec"]["volumes"]
                      if "persistentVolumeClaim" in v}
    assert set(claims.values()) == serving_claims
    mounts = {m["name"]: m for m in manifests.container(training_job)["volumeMounts"]}
    (models,) = [mounts[name] for name in claims]
    # The writer of the repository: read-write here, read-only in the serving pods.
    assert not models.get("readOnly", False)
    assert models["mountPath"] == _env(training_job)["AEC_MODEL_REPO"] == "/models"


def test_job_pods_are_not_serving_pods(training_job: manifests.Obj, rendered: Rendered) -> None:
    """Training pods get no traffic, do not count in the PDB and are not scraped."""
    labels = training_job["spec"]["template"]["metadata"]["labels"]
    service = manifests.one(rendered["cpu"], "Service")
    pdb = manifests.one(rendered["cpu"], "PodDisruptionBudget")
    assert not manifests.selects(service["spec"]["selector"], labels)
    assert not manifests.selects(pdb["spec"]["selector"]["matchLabels"], labels)


def test_job_runs_on_a_gpu_with_the_serving_security_context(
    training_job: manifests.Obj, rendered: Rendered
) -> None:
    container = manifests.container(training_job)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    spec = _pod_spec(training_job)
    serving = manifests.one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]
    assert spec["tolerations"] == serving["tolerations"]
    assert spec["nodeSelector"] == serving["nodeSelector"]
    assert spec["securityContext"] == serving["securityContext"]
    assert container["securityContext"] == manifests.container(
        manifests.one(rendered["gpu"], "Deployment"))["securityContext"]
    assert spec["automountServiceAccountToken"] is False
    tmp = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/tmp"]
    assert "emptyDir" in {v["name"]: v for v in spec["volumes"]}[tmp]


def test_first_version_of_a_new_model_is_1(training_job: manifests.Obj, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    args = _run_script(training_job, repo, tmp_path)
    assert args[:3] == ["-m", "training", "train"]
    assert args[-2:] == ["--out", f"{repo}/digits/1"]


def test_next_version_is_one_above_the_highest(
    training_job: manifests.Obj, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    # Numeric, not lexical, order; export's hidden temporary folders and stray files ignored.
    for name in ("1", "2", "10", ".tmp-export-11", "notes"):
        (repo / "digits" / name).mkdir(parents=True)
    args = _run_script(training_job, repo, tmp_path)
    assert args[-2:] == ["--out", f"{repo}/digits/11"]


def test_job_arguments_are_accepted_by_the_training_cli(
    training_job: manifests.Obj, tmp_path: Path
) -> None:
    """The flags the Job passes exist (argparse would stop the pod with exit 2)."""
    from training import cli

    args = _run_script(training_job, tmp_path / "models", tmp_path)
    assert args[:2] == ["-m", "training"]
    # The CLI's own parser (private, but it is exactly what `python -m training` runs).
    parsed = cli.build_parser().parse_args(args[2:])
    env = _env(training_job)
    assert parsed.dataset == env["DATASET"]
    assert str(parsed.out) == f"{tmp_path}/models/{env['MODEL_NAME']}/1"
    assert shlex.split(env["TRAIN_ARGS"])  # several flags, split by the shell


@pytest.mark.parametrize("word", ["MirroredStrategy", "MultiWorkerMirroredStrategy",
                                  "TF_CONFIG", "JOB_COMPLETION_INDEX", "completionMode: Indexed"])
def test_multi_gpu_and_multi_worker_options_are_documented(word: str) -> None:
    assert word in manifests.TRAINING_JOB.read_text(encoding="utf-8")


# ---- signing (docs/security.md): the private key in a Secret, mounted in the Job only -----


def _secret_mount(job: manifests.Obj) -> tuple[manifests.Obj, manifests.Obj]:
    """The Job's Secret volume and its mount."""
    [volume] = [v for v in _pod_spec(job)["volumes"] if "secret" in v]
    [mount] = [m for m in manifests.container(job)["volumeMounts"]
               if m["name"] == volume["name"]]
    return volume, mount


def test_job_signs_with_the_key_from_its_secret(
    training_job: manifests.Obj, tmp_path: Path
) -> None:
    from training import cli

    volume, mount = _secret_mount(training_job)
    key = _env(training_job)["SIGNING_KEY"]
    assert volume["secret"]["secretName"] == "aecluster-signing-key"
    assert mount["readOnly"] is True and Path(key).parent == Path(mount["mountPath"])
    # The mounted key stands in at a temporary path: the script passes it on, before --out.
    stand_in = tmp_path / "signing-key.pem"
    stand_in.write_text("-----BEGIN PRIVATE KEY-----\n")
    args = _run_script(training_job, tmp_path / "models", tmp_path, SIGNING_KEY=str(stand_in))
    assert args[-4:] == ["--signing-key", str(stand_in), "--out", f"{tmp_path}/models/digits/1"]
    assert cli.build_parser().parse_args(args[2:]).signing_key == stand_in


def test_job_without_the_secret_trains_unsigned_and_says_so(
    training_job: manifests.Obj, tmp_path: Path
) -> None:
    volume, _ = _secret_mount(training_job)
    assert volume["secret"]["optional"] is True
    stderr: list[str] = []
    args = _run_script(training_job, tmp_path / "models", tmp_path, stderr)
    assert "--signing-key" not in args
    assert any("the version will not be signed" in line for line in stderr), stderr


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_the_private_key_never_reaches_a_serving_pod(rendered: Rendered, overlay: str) -> None:
    spec = manifests.one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    assert not [v for v in spec["volumes"] if "secret" in v]

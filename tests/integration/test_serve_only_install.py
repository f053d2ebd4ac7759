"""The service installs from requirements/serve-cpu.txt alone, as the serving image does, and
`python -m service` starts and answers there: no training package is needed to serve.

The environment is built the Dockerfile's way: the lock with --require-hashes --no-deps
(nothing resolved), then a wheel of the project built from pyproject.toml, README.md and
service/ only. It runs from a folder outside the repository, so nothing is imported from the
work tree. The lock is installed by uv (tests/clients/venv.py's ``uv_pip``): the same hashed,
unresolved install as the Dockerfile's pip, 7 s instead of 54.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.clients.venv import uv_pip
from tests.integration.server import Server, digit_png, start_server
from tests.keys import KeyPair
from tests.service.bundles import clone_version, sign_version

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE_LOCK = REPO_ROOT / "requirements" / "serve-cpu.txt"
# What the training extra adds and the service must do without (and the training code).
TRAINING_ONLY = ("matplotlib", "sklearn", "sknetwork", "scipy", "threadpoolctl", "training")


def _uv_pip(command: str, python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``uv pip`` acting on the environment of ``python``, which needs no pip of its own."""
    return subprocess.run(uv_pip(command, python, *args), capture_output=True, text=True,
                          timeout=900, check=False)


@pytest.fixture(scope="module")
def serve_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh venv holding serve-cpu.txt and the project's service."""
    work = tmp_path_factory.mktemp("serve-only")
    # The serving image's build context: no training/ folder, so the wheel has none.
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "service", source / "service",
                    ignore=shutil.ignore_patterns("__pycache__"))
    wheels = work / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "--wheel-dir", str(wheels), str(source)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("aecluster-*.whl")

    env = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True,
                   timeout=120)
    python = env / "bin" / "python"
    for command, *args in (("install", "--require-hashes", "--no-deps", "-r", str(SERVE_LOCK)),
                           ("install", "--no-deps", str(wheel)),
                           ("check",)):  # every installed package has what it depends on
        done = _uv_pip(command, python, *args)
        assert done.returncode == 0, (f"uv pip {command} {' '.join(args)}:\n"
                                      f"{done.stdout}{done.stderr}")
    return python


@pytest.fixture
def serve_only_server(serve_python: Path, model_repo: Path, tmp_path: Path) -> Iterator[Server]:
    cwd = tmp_path / "elsewhere"  # not the repository: only installed code is importable
    cwd.mkdir()
    server = start_server(str(serve_python), model_repo, tmp_path, cwd)
    yield server
    server.proc.terminate()
    server.proc.wait(timeout=30)


def test_the_serve_only_environment_has_no_training_packages(serve_python: Path) -> None:
    probe = ("import importlib.util, sys; "
             "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))")
    found = subprocess.run([str(serve_python), "-c", probe, *TRAINING_ONLY],
                           capture_output=True, text=True, timeout=60, check=True,
                           cwd=serve_python.parent, env={**os.environ, "PYTHONPATH": ""})
    assert found.stdout.split() == []
    where = subprocess.run([str(serve_python), "-c", "import service; print(service.__file__)"],
                           capture_output=True, text=True, timeout=60, check=True,
                           cwd=serve_python.parent)
    # The installed wheel, not the work tree.
    assert Path(where.stdout.strip()).is_relative_to(serve_python.parents[1] / "lib")
    installed = _uv_pip("list", serve_python, "--format=freeze").stdout.lower()
    assert "tensorflow==" in installed and "matplotlib" not in installed


def test_python_m_service_starts_and_answers(serve_only_server: Server) -> None:
    server = serve_only_server
    body = {"instances": [{"b64": base64.b64encode(digit_png(i)).decode()} for i in range(3)]}
    response = httpx.post(f"{server.url}/v1/models/digits:cluster", json=body, timeout=60)

    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    assert all(0 <= p["cluster_id"] < 10 and p["distance"] >= 0 for p in predictions)
    assert httpx.get(f"{server.url}/", timeout=10).status_code == 200  # the page's files
    assert httpx.get(f"{server.url}/favicon.ico", timeout=10).status_code == 200
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_the_serving_image_checks_signatures(
        serve_python: Path, model_repo: Path, digits_bundle: Path, tmp_path: Path,
        make_keys: Callable[[str], KeyPair]) -> None:
    """model_signing and what it imports (pyOpenSSL, undeclared by it) are in the serving
    lock: a signed version loads, an unsigned one beside it is refused and reported."""
    keys = make_keys("training")
    sign_version(model_repo / "digits" / "1", keys.private)
    clone_version(digits_bundle, model_repo, "digits", 2)  # unsigned, and the highest
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    server = start_server(str(serve_python), model_repo, tmp_path, cwd,
                          trusted_keys=str(keys.public))
    try:
        status = httpx.get(f"{server.url}/v1/models/digits", timeout=10).json()
        rows = {row["version"]: row for row in status["model_version_status"]}
        assert rows["1"]["state"] == "AVAILABLE", rows
        assert rows["2"]["state"] == "END"
        assert rows["2"]["status"]["error_message"].startswith("digits/2 is not signed")
        assert server.metric("aecluster_model_load_failures_total", model="digits") == 1
        assert "signature verified with trusted key training.pub" in server.log.read_text()
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)

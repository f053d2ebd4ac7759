"""The Open Inference Protocol against the real clients: tritonclient (HTTP and gRPC) and
KServe's V2 clients, run in their own venv (tests/clients/) against ``python -m service``.

The answers are checked against the same server's TF Serving ``:predict`` for the same
images, so V2 is held to the one data plane. A client venv that cannot be built fails
these tests with pip's output; they never skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.clients.venv import HERE as CLIENTS
from tests.clients.venv import ensure_client_venv
from tests.integration.server import Server, digit_png, start_server
from tests.service.bundles import clone_version

REPO_ROOT = Path(__file__).resolve().parents[2]
N = 6
IMAGES = (load_digits().images[:N] / 16.0).astype(np.float32)[..., None]


@pytest.fixture(scope="module")
def client_python() -> Path:
    return ensure_client_venv()


@pytest.fixture
def server(tmp_path: Path, model_repo: Path, digits_bundle: Path) -> Iterator[Server]:
    # Version 2 replaces 1 (the repository serves each model's highest version): calls
    # for version 2 are answered by it, calls for version 1 are NOT_FOUND.
    clone_version(digits_bundle, model_repo, "digits", 2)
    started = start_server(sys.executable, model_repo, tmp_path, REPO_ROOT,
                           max_images_per_request="16", max_image_pixels="10000")
    yield started
    started.proc.terminate()
    started.proc.wait(timeout=60)


def _run(python: Path, script: str, server: Server, tmp_path: Path,
         *extra: str) -> dict[str, Any]:
    inputs = tmp_path / "inputs"
    inputs.mkdir(exist_ok=True)
    np.save(inputs / "images.npy", IMAGES)
    for i in range(N):
        (inputs / f"{i}.png").write_bytes(digit_png(i))
    out = tmp_path / f"{script}.json"
    done = subprocess.run(
        [str(python), str(CLIENTS / script), "--http", server.url.removeprefix("http://"),
         "--grpc", server.grpc_target, "--inputs", str(inputs), "--out", str(out), *extra],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(out.read_text()))


def _predict(server: Server, images: np.ndarray, version: int | None = None) -> dict[str, Any]:
    path = "/v1/models/digits" + (f"/versions/{version}" if version else "") + ":predict"
    answer = httpx.post(server.url + path, json={"inputs": {"images": images.tolist()}},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["outputs"])


def test_tritonclient_http_and_grpc(client_python: Path, server: Server,
                                    tmp_path: Path) -> None:
    cases = _run(client_python, "triton_calls.py", server, tmp_path)
    expected = _predict(server, IMAGES)
    shape = [-1, 8, 8, 1]
    for proto in ("http", "grpc"):
        assert cases[f"{proto}/live"] is True and cases[f"{proto}/ready"] is True
        assert cases[f"{proto}/model_ready"] is True and cases[f"{proto}/model_ready_v2"] is True
        meta = cases[f"{proto}/server_metadata"]
        assert meta["name"] == "aecluster" and "binary_tensor_data" in meta["extensions"]
        for version in ("", "2"):
            model = cases[f"{proto}/model_metadata/{version}"]
            assert model["versions"] == ["2"]  # the repository serves the highest version
            inputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]])
                      for t in model["inputs"]}
            outputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]])
                       for t in model["outputs"]}
            assert inputs == {"images": ("FP32", shape), "image_bytes": ("BYTES", [-1])}
            assert outputs == {"cluster_id": ("INT64", [-1]), "distance": ("FP32", [-1]),
                               "is_outlier": ("BOOL", [-1]), "reconstruction": ("FP32", shape),
                               "embedding": ("FP32", [-1, 8])}
        modes = ("binary", "json") if proto == "http" else ("raw",)
        for mode in modes:
            every = cases[f"{proto}/{mode}/all"]["outputs"]
            assert set(every) == {"cluster_id", "distance", "is_outlier", "embedding",
                                  "reconstruction"}, (proto, mode)
            assert every["cluster_id"][:2] == ["int64", [N]]
            assert every["cluster_id"][2] == expected["cluster_id"]
            np.testing.assert_allclose(every["distance"][2], expected["distance"], rtol=1e-6)
            assert every["is_outlier"][:2] == ["bool", [N]]
            assert every["is_outlier"][2] == expected["is_outlier"]
            assert every["reconstruction"][1] == [N, 8, 8, 1]
            np.testing.assert_allclose(every["embedding"][2],
                                       np.ravel(expected["embedding"]), rtol=1e-5, atol=1e-6)
            two = cases[f"{proto}/{mode}/two"]["outputs"]
            assert set(two) == {"cluster_id", "distance"}
            assert two["cluster_id"][2] == expected["cluster_id"]
            uint8 = cases[f"{proto}/{mode}/uint8"]["outputs"]
            assert uint8["cluster_id"][2] == _predict(
                server, np.round(IMAGES * 255) / 255)["cluster_id"]
        assert cases[f"{proto}/bytes"]["outputs"]["cluster_id"][2] == expected["cluster_id"]
        assert cases[f"{proto}/version/2"]["version"] == "2"
        assert cases[f"{proto}/version/2"]["outputs"]["cluster_id"][2] == \
            _predict(server, IMAGES[:2], 2)["cluster_id"]


# Every bad input a V2 client can send -> (HTTP status, gRPC code) of the error table.
ERRORS = {
    "shape": ("400", "StatusCode.INVALID_ARGUMENT"),
    "nan": ("400", "StatusCode.INVALID_ARGUMENT"),
    "range": ("400", "StatusCode.INVALID_ARGUMENT"),
    "datatype": ("400", "StatusCode.INVALID_ARGUMENT"),
    "input_name": ("400", "StatusCode.INVALID_ARGUMENT"),
    "output_name": ("400", "StatusCode.INVALID_ARGUMENT"),
    "undecodable": ("400", "StatusCode.INVALID_ARGUMENT"),
    "unknown_model": ("404", "StatusCode.NOT_FOUND"),
    "metadata_unknown_model": ("404", "StatusCode.NOT_FOUND"),
    "too_many": ("413", "StatusCode.RESOURCE_EXHAUSTED"),
    "too_many_pixels": ("413", "StatusCode.RESOURCE_EXHAUSTED"),
}


def test_tritonclient_sees_the_error_table(client_python: Path, server: Server,
                                           tmp_path: Path) -> None:
    cases = _run(client_python, "triton_calls.py", server, tmp_path)
    for proto, column in (("http", 0), ("grpc", 1)):
        for version in ("1", "9"):  # 1 was replaced by 2; 9 never existed
            assert cases[f"{proto}/version/{version}"]["error"]["status"] == \
                ("404", "StatusCode.NOT_FOUND")[column]
        for case, statuses in ERRORS.items():
            error = cases[f"{proto}/error/{case}"].get("error")
            assert error is not None, (proto, case, cases[f"{proto}/error/{case}"])
            assert error["status"] == statuses[column], (proto, case, error)
            assert error["message"], (proto, case)
    assert server.proc.poll() is None


def test_tritonclient_without_a_token_is_unauthenticated(client_python: Path, tmp_path: Path,
                                                          model_repo: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("v2-client-token\n")
    server = start_server(sys.executable, model_repo, tmp_path, REPO_ROOT,
                          auth_tokens_file=str(tokens))
    try:
        cases = _run(client_python, "triton_calls.py", server, tmp_path,
                     "--auth-token", "v2-client-token")
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=60)
    assert cases["http/auth/none"]["error"]["status"] == "401"
    assert cases["grpc/auth/none"]["error"]["status"] == "StatusCode.UNAUTHENTICATED"
    expected_ids = None
    for proto in ("http", "grpc"):
        ids = cases[f"{proto}/auth/token"]["outputs"]["cluster_id"][2]
        assert len(ids) == N
        expected_ids = expected_ids or ids
        assert ids == expected_ids


def test_kserve_clients(client_python: Path, server: Server, tmp_path: Path) -> None:
    cases = _run(client_python, "kserve_calls.py", server, tmp_path)
    expected = _predict(server, IMAGES)
    for proto in ("rest", "grpc"):
        assert cases[proto]["cluster_id"][:2] == ["INT64", [N]]
        assert cases[proto]["cluster_id"][2] == expected["cluster_id"]
        np.testing.assert_allclose(cases[proto]["distance"][2], expected["distance"], rtol=1e-6)
    assert cases["rest_ready"] is True

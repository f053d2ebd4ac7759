"""bench/serve/ceiling.py's stripped servers answer correctly: the ceiling they measure is
the ceiling of a server that does the job, not of one that skips it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from service import bundle
from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc
from service.runtime import ModelRuntime
from tests.by_path import load_module

ROOT = Path(__file__).resolve().parents[2]
ceiling = load_module(ROOT / "bench" / "serve" / "ceiling.py", "bench_serve_ceiling")
run = load_module(ROOT / "bench" / "serve" / "run.py", "bench_serve_run")


def _call(port: int, image: np.ndarray, reconstruction: bool) -> pb.ClusterResponse:
    request = pb.ClusterRequest.FromString(
        run.native_grpc_request("digits", image[None], reconstruction))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return pb_grpc.ClusterServiceStub(channel).Cluster(request, timeout=30)


def _post(port: int, image: np.ndarray, reconstruction: bool) -> dict[str, Any]:
    response = httpx.post(f"http://127.0.0.1:{port}/v2/models/digits/infer",
                          content=run.v2_json_body(image[None], reconstruction),
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def _model_and_images(version_dir: Path) -> tuple[ModelRuntime, np.ndarray]:
    manifest = bundle.read_manifest(version_dir)
    model = ModelRuntime(version_dir, manifest, bundle.load_centroids(version_dir, manifest),
                         device="cpu", batch_sizes=(1,))
    spec = manifest.input
    images = np.random.default_rng(0).random((3, spec.height, spec.width, spec.channels),
                                             dtype=np.float32)
    return model, images


@contextmanager
def _child(mode: str, version_dir: Path, tmp_path: Path) -> Iterator[int]:
    """One of ceiling.py's stripped servers on a free port; its port, stopped on exit."""
    port = run.free_port()
    proc = ceiling._start_child(mode, port, version_dir, tmp_path / f"{mode}.log")
    try:
        yield port
    finally:
        ceiling._stop_child(proc)


def test_the_minimal_server_answers_as_the_model_does(digits_bundle: Path,
                                                       tmp_path: Path) -> None:
    model, images = _model_and_images(digits_bundle)
    with _child("minimal", digits_bundle, tmp_path) as port:
        for image in images:
            expected = model.run(image[None], with_reconstruction=True)
            assert expected.reconstruction is not None
            answer = _call(port, image, True).predictions[0]
            assert answer.cluster_id == int(expected.cluster_id[0])
            assert answer.distance == pytest.approx(float(expected.distance[0]), rel=1e-5)
            recon = np.frombuffer(answer.reconstruction_array.data, np.float32)
            assert recon.shape == (expected.reconstruction[0].size,)
            assert not _call(port, image, False).predictions[0].HasField("reconstruction_array")


def test_the_bare_server_answers_a_canned_prediction(digits_bundle: Path,
                                                     tmp_path: Path) -> None:
    with _child("bare", digits_bundle, tmp_path) as port:
        answer = _call(port, np.zeros((8, 8, 1), np.float32), True)
        assert [p.cluster_id for p in answer.predictions] == [3]


def test_the_minimal_http_server_answers_as_the_model_does(digits_bundle: Path,
                                                            tmp_path: Path) -> None:
    model, images = _model_and_images(digits_bundle)
    with _child("minimal-http", digits_bundle, tmp_path) as port:
        for image in images:
            expected = model.run(image[None], with_reconstruction=True)
            assert expected.reconstruction is not None
            answer = _post(port, image, True)
            assert answer["model_name"] == "digits"
            outputs = {tensor["name"]: tensor for tensor in answer["outputs"]}
            assert outputs["cluster_id"]["datatype"] == "INT64"
            assert outputs["cluster_id"]["data"] == [int(expected.cluster_id[0])]
            assert outputs["distance"]["datatype"] == "FP32"
            assert outputs["distance"]["data"][0] == pytest.approx(
                float(expected.distance[0]), rel=1e-5)
            recon = outputs["reconstruction"]
            assert recon["datatype"] == "FP32"
            assert recon["shape"] == [1, *expected.reconstruction[0].shape]
            assert len(recon["data"]) == expected.reconstruction[0].size
            without = _post(port, image, False)
            assert [t["name"] for t in without["outputs"]] == ["cluster_id", "distance"]


def test_the_bare_http_server_answers_a_canned_prediction(digits_bundle: Path,
                                                          tmp_path: Path) -> None:
    with _child("bare-http", digits_bundle, tmp_path) as port:
        answer = _post(port, np.zeros((8, 8, 1), np.float32), False)
        outputs = {tensor["name"]: tensor["data"] for tensor in answer["outputs"]}
        assert outputs["cluster_id"] == [3]
        assert outputs["distance"] == [1.5]
        assert len(outputs["reconstruction"]) == 28 * 28


def test_the_markdown_has_a_protocol_column() -> None:
    figures = {"rps": 1000.0, "mean_ms": 1.0, "p99_ms": 2.0}
    report = {"when": "2025-01-01 00:00", "machine": "2 cores, x86_64", "bundle": "b",
              "seconds": 8.0,
              "rows": [{"server": server, "protocol": protocol, "reconstruction": True,
                        "c1": figures, "c32": figures}
                       for server, protocol in (("bare", "grpc"), ("minimal-http", "http"))]}
    lines = ceiling.markdown(report).splitlines()
    assert lines[0].startswith("Serving ceiling")
    assert lines[2].startswith("| server | protocol | reconstruction |")
    assert "| bare | grpc | yes | 1.00 | 1,000 | 1,000 | 2.0 |" in lines
    assert "| minimal-http | http | yes |" in "\n".join(lines)

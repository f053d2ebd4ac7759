"""bench/serve/ceiling.py's stripped servers answer correctly: the ceiling they measure is
the ceiling of a server that does the job, not of one that skips it."""

from __future__ import annotations

from pathlib import Path

import grpc
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


def test_the_minimal_server_answers_as_the_model_does(digits_bundle: Path,
                                                       tmp_path: Path) -> None:
    manifest = bundle.read_manifest(digits_bundle)
    model = ModelRuntime(digits_bundle, manifest, bundle.load_centroids(digits_bundle, manifest),
                         device="cpu", batch_sizes=(1,))
    spec = manifest.input
    images = np.random.default_rng(0).random((3, spec.height, spec.width, spec.channels),
                                             dtype=np.float32)
    port = run.free_port()
    proc = ceiling._start_child("minimal", port, digits_bundle, tmp_path / "minimal.log")
    try:
        for image in images:
            expected = model.run(image[None], with_reconstruction=True)
            answer = _call(port, image, True).predictions[0]
            assert answer.cluster_id == int(expected.cluster_id[0])
            assert answer.distance == pytest.approx(float(expected.distance[0]), rel=1e-5)
            recon = np.frombuffer(answer.reconstruction_array.data, np.float32)
            assert recon.shape == (expected.reconstruction[0].size,)
            assert not _call(port, image, False).predictions[0].HasField("reconstruction_array")
    finally:
        ceiling._stop_child(proc)


def test_the_bare_server_answers_a_canned_prediction(digits_bundle: Path,
                                                     tmp_path: Path) -> None:
    port = run.free_port()
    proc = ceiling._start_child("bare", port, digits_bundle, tmp_path / "bare.log")
    try:
        answer = _call(port, np.zeros((8, 8, 1), np.float32), True)
        assert [p.cluster_id for p in answer.predictions] == [3]
    finally:
        ceiling._stop_child(proc)

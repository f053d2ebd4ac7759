"""bench/serve/run.py's arithmetic and its in-process child, and soak.py's RSS reading.

The in-process child runs for real on the digits bundle: it is the protocol between the
benchmark and the processes that measure the model alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.by_path import load_module

ROOT = Path(__file__).resolve().parents[2]
run = load_module(ROOT / "bench" / "serve" / "run.py", "bench_serve_run")
soak = load_module(ROOT / "bench" / "serve" / "soak.py", "bench_serve_soak")


def _figure(ms: float, batch: int) -> dict[str, float]:
    return {"ms_per_call": ms, "images_per_s": 1000.0 * batch / ms}


def test_the_reference_is_the_better_configuration_per_shape() -> None:
    measured = {
        "server": {(1, True): _figure(1.0, 1), (32, True): _figure(6.0, 32)},
        "tensorflow default": {(1, True): _figure(1.5, 1), (32, True): _figure(5.0, 32)},
    }
    best = run.reference(measured)
    assert best[(1, True)]["ms_per_call"] == 1.0
    assert best[(32, True)]["ms_per_call"] == 5.0


def test_ratios_against_the_model_and_the_peer() -> None:
    model = {(1, True): _figure(1.0, 1), (32, True): _figure(5.0, 32)}

    def row(server: str, path: str, c: int, rps: float, mean: float,
            images: int = 1) -> object:
        return run.Row(server, path, True, images, c,
                       {"rps": rps, "mean_ms": mean, "p50_ms": mean, "p99_ms": 2 * mean})

    rows = [row("aecluster", "grpc native tensor", 1, 500, 1.9),
            row("aecluster", "grpc native tensor", 32, 1600, 20.0),
            row("mlserver", "grpc v2 ModelInfer", 32, 800, 40.0)]
    run.add_ratios(rows, model)
    lone, loaded, peer = rows
    assert lone.ratios["ms_over_in_process_batch1"] == pytest.approx(0.9)
    assert loaded.ratios["of_in_process_batch32"] == pytest.approx(1600 / 6400)
    assert loaded.ratios["vs_mlserver"] == pytest.approx(2.0)
    assert loaded.ratios["p99_over_p50"] == pytest.approx(2.0)
    assert "vs_mlserver" not in peer.ratios


def test_the_in_process_child_measures_every_shape(digits_bundle: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serve" / "run.py"), "--in-process-child",
         str(digits_bundle), "1", "1", "0.2"],
        capture_output=True, text=True, timeout=300, check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    figures = json.loads(done.stdout.splitlines()[-1])
    assert set(figures) == {"1:False", "1:True", "32:False", "32:True"}
    for key, value in figures.items():
        batch = int(key.split(":")[0])
        assert value["ms_per_call"] > 0
        assert value["images_per_s"] == pytest.approx(1000 * batch / value["ms_per_call"])


def test_rss_is_read_from_proc() -> None:
    assert 1.0 < soak.rss_mib(os.getpid()) < 64 * 1024


def test_the_mlserver_peer_reads_the_bundle_contract_as_the_service_does() -> None:
    # The peer runs in MLServer's own venv, without this project, so it spells the bundle's
    # file, signature and tensor names itself: they must stay those of service/bundle.py.
    import ast

    from service import bundle

    tree = ast.parse((ROOT / "bench" / "serve" / "mlserver" / "runtime.py").read_text())
    spelled = {target.id: node.value.value for node in tree.body
               if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
               for target in node.targets if isinstance(target, ast.Name)
               and hasattr(bundle, target.id)}
    assert {"MANIFEST_FILE", "CENTROIDS_FILE", "SIGNATURE", "ENCODER_OUTPUT"} <= set(spelled)
    assert spelled == {name: getattr(bundle, name) for name in spelled}


def test_the_v2_requests_carry_the_images_and_the_peer_outputs() -> None:
    import json as json_module

    import numpy as np

    from service._generated.inference import grpc_predict_v2_pb2 as pb

    images = np.random.default_rng(0).random((1, 4, 4, 1), dtype=np.float32)
    request = pb.ModelInferRequest.FromString(run.v2_grpc_request("m", images, False))
    assert request.model_name == "m" and list(request.inputs[0].shape) == [1, 4, 4, 1]
    assert np.array_equal(np.frombuffer(request.raw_input_contents[0], "<f4"), images.ravel())
    assert [o.name for o in request.outputs] == ["cluster_id", "distance"]
    body = json_module.loads(run.v2_json_body(images, True))
    assert body["inputs"][0]["shape"] == [1, 4, 4, 1]
    assert np.allclose(body["inputs"][0]["data"], images.ravel())
    assert [o["name"] for o in body["outputs"]] == ["cluster_id", "distance", "reconstruction"]

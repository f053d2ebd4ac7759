"""Hostile inputs against the real server process: the event loop never stalls.

Issue 39 found requests that held the event loop for seconds (a 56-byte gRPC message
declaring 8,000,000 strings: 15-29 s) or took gigabytes (16 copies of a 4000x4000 PNG in a
334 KB body: 3.9 GB). While each reproducer is sent here, a second connection asks
``/healthz`` every 10 ms: every answer must come within LAG_LIMIT_S, and the server's RSS
must stay within RSS_GROWTH_LIMIT_MB of what it was before the first hostile request (read
from /proc with each /healthz answer).
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable

import grpc
import httpx
import numpy as np
from PIL import Image
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.integration.server import Server, digit_png

LAG_LIMIT_S = 0.100
# The largest image the defaults admit (16 M pixels) is decoded and converted on a worker
# thread: about 16 MB of pixels, 64 MB as float32, and the resize's buffers.
RSS_GROWTH_LIMIT_MB = 600.0


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), color=7).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


# The watch's loop, run in a process of its own: see HealthWatch.
_WATCH = """
import http.client, json, sys, threading, time
host, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

def rss_mb():
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")

connection = http.client.HTTPConnection(host, port, timeout=30)
worst, answers, failures, peak = 0.0, 0, [], rss_mb()
print("watching", flush=True)
while not stop.is_set():
    started = time.perf_counter()
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        failures.append(repr(exc))
        connection.close()
        connection = http.client.HTTPConnection(host, port, timeout=30)
        time.sleep(0.01)
        continue
    took = time.perf_counter() - started
    if response.status != 200:
        failures.append(f"status {response.status}")
    worst, answers, peak = max(worst, took), answers + 1, max(peak, rss_mb())
    time.sleep(0.01)
print(json.dumps({"worst_s": worst, "answers": answers, "failures": failures,
                  "peak_rss_mb": peak}), flush=True)
"""


class HealthWatch:
    """Asks /healthz every 10 ms on its own connection; keeps the slowest answer and the
    highest RSS the server had meanwhile.

    The loop runs in a process of its own, not on a thread of the test's: whatever holds
    this process's GIL - sending a 60 MB body, a collection of a heap hundreds of tests
    in - would delay the watch and be counted as the server's lag. A thread with the GC
    paused still measured 127-137 ms in fresh-clone CI runs on a case that answers in 4 ms
    when the test runs alone.
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        self.worst_s = 0.0
        self.answers = 0
        self.failures: list[str] = []
        self.peak_rss_mb = server.rss_mb()
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HealthWatch:
        address = urllib.parse.urlsplit(self._server.url)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WATCH, str(address.hostname), str(address.port),
             str(self._server.proc.pid)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        assert self._proc.stdout.readline().strip() == "watching"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate(timeout=60)  # closing stdin stops the loop
        assert self._proc.returncode == 0, out
        figures = json.loads(out.splitlines()[-1])
        self.worst_s, self.answers = figures["worst_s"], figures["answers"]
        self.failures = figures["failures"]
        self.peak_rss_mb = max(self.peak_rss_mb, figures["peak_rss_mb"])


def _cluster_body(pngs: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}
                                     for png in pngs]}).encode()


def _json_cluster(server: Server, pngs: list[bytes]) -> httpx.Response:
    return _post_json(server, "/v1/models/digits:cluster", _cluster_body(pngs))


def _string_bomb(server: Server) -> grpc.StatusCode:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.signature_name = "predict_bytes"
    tensor = request.inputs["image_bytes"]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add().size = 8_000_000
    tensor.string_val.append(b"x")
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            stub.Predict(request, timeout=60)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _deep_json(server: Server) -> httpx.Response:
    nested = '"x"'
    for _ in range(33):
        nested = f"[{nested}]"
    body = f'{{"signature_name": "predict_bytes", "instances": {nested}}}'
    return httpx.post(f"{server.url}/v1/models/digits:predict", content=body.encode(),
                      headers={"content-type": "application/json"}, timeout=60)


def _big_float_body() -> bytes:
    """60 MB of JSON numbers (float32 values written in full: 0.12345600128173828), over the
    32 MB body limit: refused from its Content-Length before a byte is read.

    Built before the watch starts, so that the case times the sending alone.
    """
    images = np.full((40_000, 8, 8, 1), 0.123456, dtype=np.float32).tolist()
    return json.dumps({"instances": images}).encode()


def _post_json(server: Server, path: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=body,
                      headers={"content-type": "application/json"}, timeout=120)


def test_hostile_inputs_never_stall_the_event_loop(digits_server: Server) -> None:
    server = digits_server
    large = _png(4000, 4000)  # 16 M pixels: the largest image the defaults admit
    bomb = _png(5000, 5000)  # 25 M pixels: over the per-image limit
    cluster, predict = "/v1/models/digits:cluster", "/v1/models/digits:predict"
    sixteen, one, oversized, floats = (_cluster_body([large] * 16), _cluster_body([large]),
                                       _cluster_body([bomb]), _big_float_body())
    cases: list[tuple[str, Callable[[], object], object]] = [
        ("16 x 4000x4000 PNG in one JSON body",
         lambda: _post_json(server, cluster, sixteen).status_code, 413),
        ("one 4000x4000 PNG (admitted)", lambda: _post_json(server, cluster, one).status_code,
         200),
        ("a 4000x4000 PNG as a raw body", lambda: httpx.post(
            f"{server.url}{cluster}", content=large, headers={"content-type": "image/png"},
            timeout=120).status_code, 200),
        ("a 5000x5000 PNG", lambda: _post_json(server, cluster, oversized).status_code, 413),
        ("Predict: DT_STRING [8,000,000] in 56 bytes", lambda: _string_bomb(server),
         grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("33-deep string JSON", lambda: _deep_json(server).status_code, 400),
        ("60 MB of JSON floats, 40,000 images", lambda: _post_json(server, predict,
                                                                   floats).status_code, 413),
    ]
    assert _json_cluster(server, [digit_png(0)]).status_code == 200
    rss_before = server.rss_mb()
    peak = rss_before
    report = []
    for name, send, expected in cases:
        with HealthWatch(server) as watch:
            time.sleep(0.05)
            started = time.perf_counter()
            got = send()
            took = time.perf_counter() - started
            time.sleep(0.05)
        peak = max(peak, watch.peak_rss_mb, server.rss_mb())
        report.append(f"{name}: {got} in {took * 1000:.0f} ms, /healthz worst "
                      f"{watch.worst_s * 1000:.1f} ms over {watch.answers} answers")
        assert got == expected, "\n".join(report)
        assert not watch.failures, (name, watch.failures)
        assert watch.answers >= 3, "\n".join(report)
        assert watch.worst_s < LAG_LIMIT_S, "\n".join(report)
    growth = peak - rss_before
    report.append(f"RSS {rss_before:.0f} MB before, peak {peak:.0f} MB (+{growth:.0f} MB)")
    print("\n".join(report))
    assert growth < RSS_GROWTH_LIMIT_MB, (growth, "\n".join(report))
    assert _json_cluster(server, [digit_png(1)]).status_code == 200


def _v2_body(images: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "images", "datatype": "FP32",
                                   "shape": list(images.shape),
                                   "data": images.ravel().tolist()}]}).encode()


def test_large_json_bodies_do_not_stall_the_event_loop(digits_server: Server) -> None:
    """Large JSON bodies of nested numbers on each JSON protocol, under the 32 MB body
    limit, parsed and converted in pieces (service/chunked.py) while /healthz is timed:
    26-31 MB refused for their 40,000 images (over the per-request limit), and 1.2-1.4 MB
    of 1,000 images answered."""
    refused = np.full((40_000, 8, 8, 1), 0.123456)
    # Pixels with full float precision, as a caller's normalised images are: 1.4 MB.
    admitted = np.random.default_rng(0).random((1000, 8, 8, 1))
    cases = [
        (":predict, 40,000 images", "/v1/models/digits:predict",
         json.dumps({"instances": refused.tolist()}).encode(), 413),
        (":cluster, 40,000 images", "/v1/models/digits:cluster",
         json.dumps({"instances": refused.tolist()}).encode(), 413),
        ("V2 infer, 40,000 images", "/v2/models/digits/infer", _v2_body(refused), 413),
        (":predict, 1,000 images", "/v1/models/digits:predict",
         json.dumps({"instances": admitted.tolist()}).encode(), 200),
        (":cluster, 1,000 images", "/v1/models/digits:cluster",
         json.dumps({"instances": admitted.tolist()}).encode(), 200),
        ("V2 infer, 1,000 images", "/v2/models/digits/infer", _v2_body(admitted), 200),
    ]
    report = []
    for name, path, body, expected in cases:
        assert len(body) < 32 * 1024 * 1024
        # A body is sent again when its worst answer is over the limit, and fails only if
        # both are: on CI's two shared cores a single gap of about 120 ms was seen once (the
        # 31.4 MB :predict; 15-47 ms in every other run), while a parse that holds the loop
        # holds it every time (1,031-1,069 ms on these bodies before the pieces).
        worst = []
        for _ in range(2):
            with HealthWatch(digits_server) as watch:
                time.sleep(0.05)
                started = time.perf_counter()
                answer = _post_json(digits_server, path, body)
                took = time.perf_counter() - started
                time.sleep(0.05)
            report.append(f"{name} ({len(body) / 1e6:.1f} MB): {answer.status_code} in "
                          f"{took * 1000:.0f} ms, /healthz worst {watch.worst_s * 1000:.1f} "
                          f"ms over {watch.answers} answers")
            assert answer.status_code == expected, (name, answer.text[:300])
            assert not watch.failures, (name, watch.failures)
            assert watch.answers >= 3, "\n".join(report)
            worst.append(watch.worst_s)
            if watch.worst_s < LAG_LIMIT_S:
                break
        assert min(worst) < LAG_LIMIT_S, "\n".join(report)
    print("\n".join(report))

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
import gc
import io
import json
import threading
import time
from collections.abc import Callable

import grpc
import httpx
import numpy as np
import pytest
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


class HealthWatch:
    """Asks /healthz every 10 ms on its own connection; keeps the slowest answer and the
    highest RSS the server had meanwhile."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self.peak_rss_mb = server.rss_mb()
        self._client = httpx.Client(base_url=server.url, timeout=30)
        self._stop = threading.Event()
        self.worst_s = 0.0
        self.answers = 0
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name="health-watch")

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                status = self._client.get("/healthz").status_code
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
                continue
            took = time.perf_counter() - started
            if status != 200:
                self.failures.append(f"status {status}")
            self.worst_s = max(self.worst_s, took)
            self.peak_rss_mb = max(self.peak_rss_mb, self._server.rss_mb())
            self.answers += 1
            time.sleep(0.01)

    def __enter__(self) -> HealthWatch:
        # The watch runs in the test's own process: a full collection of that process's
        # heap (hundreds of tests in, it takes 100 ms and more) would stall the watch's
        # thread and count as the server's lag. Two fresh-clone CI runs measured 136 ms on
        # the 60 MB case that answers in 4 ms when this test runs alone.
        gc.collect()
        gc.disable()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self._client.close()
        gc.enable()



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

    Built before the watch starts: encoding it holds this process's GIL, which would delay
    the watch's own thread and be counted as the server's lag.
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


@pytest.mark.xfail(strict=True, reason=(
    "known, not fixed (2026-12-07): the JSON body is parsed on a worker thread, but orjson and "
    "NumPy's list conversion hold the GIL for the whole parse, so the event loop waits; "
    "this 29 MB body held /healthz 1,022 ms; on the Fashion-MNIST bundle 9.5 MB (1,000 "
    "images, admitted) 248 ms and 28.4 MB 878 ms"))
def test_a_json_body_under_the_limit_does_not_stall_the_event_loop(
        digits_server: Server) -> None:
    """29 MB of nested JSON numbers, under the 32 MB body limit: read, parsed and refused
    (40,000 images, over the per-request limit) while /healthz is timed."""
    floats = json.dumps({"instances": np.full((40_000, 8, 8, 1), 0.123456).tolist()}).encode()
    assert len(floats) < 32 * 1024 * 1024
    with HealthWatch(digits_server) as watch:
        time.sleep(0.05)
        got = _post_json(digits_server, "/v1/models/digits:predict", floats).status_code
        time.sleep(0.05)
    assert got == 413
    assert watch.worst_s < LAG_LIMIT_S, f"/healthz worst {watch.worst_s * 1000:.0f} ms"

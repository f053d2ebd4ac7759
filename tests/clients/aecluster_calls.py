"""Run in the aecluster-client venv (tests/clients/aecluster_venv.py) by
tests/integration/test_aecluster_client.py: every API of the installed client against a real
server with a tiny queue, printing what it saw as one JSON object on stdout.

    python aecluster_calls.py HTTP_URL GRPC_TARGET IMAGE.png... > seen.json

The server must run with AEC_MAX_QUEUE=2 and AEC_MAX_BATCH_DELAY_MS=300: a lone request
then waits 300 ms in the queue, so concurrent callers find it full (503 + Retry-After /
RESOURCE_EXHAUSTED + grpc-retry-pushback-ms) and a request of 3 images can never fit (413 /
RESOURCE_EXHAUSTED without pushback). The assertions are the test's; this script only
records.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aecluster_client
import httpx
import numpy as np
from aecluster_client import (
    AsyncGrpcClient,
    AsyncHttpClient,
    ClusterError,
    GrpcClient,
    HttpClient,
    Prediction,
    RetryEvent,
    RetryPolicy,
)
from aecluster_client.proto import cluster_service_pb2 as pb
from aecluster_client.proto import cluster_service_pb2_grpc as pb_grpc

MODEL = "digits"
# Enough attempts for four callers taking turns at a queue of two, one second apart.
PATIENT = RetryPolicy(max_attempts=12)


def _ids(predictions: list[Prediction]) -> list[int]:
    return [p.cluster_id for p in predictions]


def _failure(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        call()
    except ClusterError as error:
        return {"code": error.code, "reason": error.reason, "http_status": error.http_status,
                "attempts": error.attempts, "retryable": error.retryable,
                "retry_after": error.retry_after, "request_id": error.request_id}
    return {"code": None}


class Recorder:
    """``on_retry``: every retry, thread-safe."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, event: RetryEvent) -> None:
        with self._lock:
            self.events.append({"attempt": event.attempt, "code": event.error.code,
                                "http_status": event.error.http_status,
                                "retry_after": event.error.retry_after, "wait": event.wait,
                                "reason": event.error.reason})


def sync_calls(http: str, target: str, images: list[Any]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    # A stream's requests reach the queue of two together: some meet it full and are
    # retried here too; the test counts them against the server's refusals.
    retries = {"grpc": Recorder(), "http": Recorder()}
    with GrpcClient(target, model=MODEL, on_retry=retries["grpc"]) as grpc_client, \
            HttpClient(http, model=MODEL, on_retry=retries["http"]) as http_client:
        for name, client in (("grpc", grpc_client), ("http", http_client)):
            one = client.cluster(images[0], reconstruction="array", embedding=True, top_k=3)
            png = client.cluster(images[0], reconstruction="png")
            seen[name] = {
                "one": [one.cluster_id, one.distance, one.is_outlier, one.label],
                "model_version": [one.model, one.version],
                "reconstruction": [list(one.reconstruction.shape), str(one.reconstruction.dtype)]
                if one.reconstruction is not None else None,
                "embedding": len(one.embedding) if one.embedding is not None else None,
                "top_k": [[c.cluster_id, c.distance] for c in one.top_k],
                "png": (png.reconstruction_png or b"")[:8].hex(),
                "batches": [_ids(client.cluster_batch(images[i:i + 2]))
                            for i in range(0, len(images), 2)],
                "stream": _ids(list(client.cluster_stream(iter(images), batch_size=2))),
                "invalid": _failure(lambda c=client: c.cluster(b"not an image")),
                "oversize": _failure(lambda c=client: c.cluster_batch(images[:3])),
                "retries": retries[name].events,
            }
        with GrpcClient(target, model="nosuchmodel") as missing:
            seen["grpc"]["not_found"] = _failure(lambda: missing.cluster(images[0]))
        with HttpClient(http, model="nosuchmodel") as missing_http:
            seen["http"]["not_found"] = _failure(lambda: missing_http.cluster(images[0]))
    return seen


async def async_calls(http: str, target: str, images: list[Any]) -> dict[str, Any]:
    async def source() -> AsyncIterator[Any]:
        for image in images:
            yield image

    seen: dict[str, Any] = {}
    retries = {"grpc_async": Recorder(), "http_async": Recorder()}
    async with AsyncGrpcClient(target, model=MODEL, on_retry=retries["grpc_async"]) \
            as grpc_client, \
            AsyncHttpClient(http, model=MODEL, on_retry=retries["http_async"]) as http_client:
        for name, client in (("grpc_async", grpc_client), ("http_async", http_client)):
            one = await client.cluster(images[0])
            seen[name] = {
                "one": [one.cluster_id, one.distance, one.is_outlier, one.label],
                "batches": [_ids(await client.cluster_batch(images[i:i + 2]))
                            for i in range(0, len(images), 2)],
                "stream": [p.cluster_id async for p in
                           client.cluster_stream(source(), batch_size=2)],
            }
            try:
                await client.cluster(b"not an image")
                seen[name]["invalid"] = {"code": None}
            except ClusterError as error:
                seen[name]["invalid"] = {"code": error.code, "attempts": error.attempts}
            seen[name]["retries"] = retries[name].events
    return seen


def overloaded(http: str, target: str, images: list[Any]) -> dict[str, Any]:
    """Four gRPC callers (asyncio) and four HTTP callers (threads) at a queue of two; then a
    stream whose first request meets a full queue and is sent again on a new stream."""
    seen: dict[str, Any] = {}

    async def grpc_callers() -> list[int]:
        async with AsyncGrpcClient(target, model=MODEL, retry_policy=PATIENT,
                                   on_retry=grpc_retries) as client:
            done = await asyncio.gather(*(client.cluster(images[i % len(images)])
                                          for i in range(4)))
        return _ids(list(done))

    grpc_retries = Recorder()
    start = time.monotonic()
    seen["grpc"] = {"ids": asyncio.run(grpc_callers())}
    seen["grpc"].update(seconds=time.monotonic() - start, retries=grpc_retries.events)

    http_retries = Recorder()
    answers: dict[int, int] = {}
    with HttpClient(http, model=MODEL, retry_policy=PATIENT, on_retry=http_retries) as client:
        def call(i: int) -> None:
            answers[i] = client.cluster(images[i % len(images)]).cluster_id

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    seen["http"] = {"ids": [answers.get(i) for i in range(4)],
                    "seconds": time.monotonic() - start, "retries": http_retries.events}

    # The stream: a plain stub (no retries) fills the queue with two images, which wait
    # 300 ms; the stream's first request, 50 ms later, finds it full.
    stream_retries = Recorder()
    with GrpcClient(target, model=MODEL, retry_policy=PATIENT,
                    on_retry=stream_retries) as client:
        blocker = pb_grpc.ClusterServiceStub(client._channel)  # the test's own filler
        filler = blocker.Cluster.future(pb.ClusterRequest(
            model=MODEL, images=[pb.Image(encoded=images[0]), pb.Image(encoded=images[1])]),
            timeout=30)
        time.sleep(0.05)
        streamed = _ids(list(client.cluster_stream(iter(images), batch_size=1)))
        filler.result()
    seen["stream"] = {"ids": streamed, "retries": stream_retries.events}

    # The same for the asyncio stream, fed by an async iterator.
    async def async_stream(recorder: Recorder) -> list[int]:
        async def source() -> AsyncIterator[Any]:
            for image in images:
                yield image

        async with AsyncGrpcClient(target, model=MODEL, retry_policy=PATIENT,
                                   on_retry=recorder) as client:
            return [p.cluster_id async for p in client.cluster_stream(source())]

    async_retries = Recorder()
    with GrpcClient(target, model=MODEL) as plain:
        filler = pb_grpc.ClusterServiceStub(plain._channel).Cluster.future(pb.ClusterRequest(
            model=MODEL, images=[pb.Image(encoded=images[0]), pb.Image(encoded=images[1])]),
            timeout=30)
        time.sleep(0.05)
        streamed = asyncio.run(async_stream(async_retries))
        filler.result()
    seen["stream_async"] = {"ids": streamed, "retries": async_retries.events}
    return seen


def main() -> int:
    http, target, *paths = sys.argv[1:]
    images: list[Any] = [Path(path).read_bytes() for path in paths]
    # One raw-pixel image too: the first file's pixels are unknown here (no PIL), so a
    # synthetic float64 array, which the client sends as float32.
    images.append(np.linspace(0.0, 1.0, 64).reshape(8, 8))
    seen: dict[str, Any] = {"images": len(images)}
    seen.update(sync_calls(http, target, images))
    seen.update(asyncio.run(async_calls(http, target, images)))
    seen["metrics_before"] = httpx.get(f"{http}/metrics", timeout=10).text
    seen["overloaded"] = overloaded(http, target, images)
    seen["metrics_after"] = httpx.get(f"{http}/metrics", timeout=10).text
    seen["modules"] = sorted({name.split(".")[0] for name in sys.modules})
    seen["client_file"] = aecluster_client.__file__
    sys.stdout.write(json.dumps(seen) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

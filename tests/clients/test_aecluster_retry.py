"""aecluster-client's retry decisions, from its source (clients/python) in the project's venv,
whose grpcio, protobuf, httpx and numpy are the client lock's versions: the policy's waits
and limits, ``Retry-After`` and ``grpc-retry-pushback-ms`` as real servers send them (a grpc
server and an HTTP server on free ports that answer what each test needs). The installed
client against the real aecluster server is tests/integration/test_aecluster_client.py.
"""

from __future__ import annotations

import email.utils
import json
import random
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

# The client is a distribution of its own, not installed in this venv: its source is.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))

from aecluster_client import (
    ClusterError,
    GrpcClient,
    HttpClient,
    RetryEvent,
    RetryPolicy,
    _grpc,
    _http,
    retry,
)

ANSWER = {"model": "digits", "version": 3, "predictions": [
    {"cluster_id": 4, "distance": 0.5, "is_outlier": False, "label": "8"}]}


def _retryable(retry_after: float | None = None) -> ClusterError:
    return ClusterError("UNAVAILABLE", "try later", retry_after=retry_after, retryable=True)


def test_the_wait_is_the_hint_plus_full_jitter_below_the_growing_ceiling() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.1, max_backoff=0.5,
                         rng=random.Random(0))
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)):
        waits = [policy.wait(_retryable(2.0), attempt, None) for _ in range(200)]
        assert all(w is not None and 2.0 <= w <= 2.0 + ceiling for w in waits), attempt
        assert max(w for w in waits if w is not None) > 2.0 + 0.8 * ceiling  # jitter spreads


def test_the_policy_gives_up() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.wait(ClusterError("INVALID_ARGUMENT", "bad"), 1, None) is None
    assert policy.wait(_retryable(), 3, None) is None  # the third attempt was the last
    assert policy.wait(_retryable(), 2, None) is not None
    assert policy.wait(_retryable(5.0), 1, remaining=4.0) is None  # past the deadline
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_call_retries_up_to_max_attempts_and_reports_each_wait() -> None:
    events: list[RetryEvent] = []
    calls: list[float | None] = []

    def attempt(remaining: float | None) -> None:
        calls.append(remaining)
        raise _retryable()

    policy = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.001)
    with pytest.raises(ClusterError) as raised:
        retry.call(attempt, policy, retry.Deadline(10.0), events.append)
    assert raised.value.attempts == 4 and len(calls) == 4
    assert [e.attempt for e in events] == [1, 2, 3]
    assert all(r is not None and r <= 10.0 for r in calls)  # each attempt gets what is left


def test_call_does_not_sleep_past_the_deadline() -> None:
    start = time.monotonic()
    with pytest.raises(ClusterError) as raised:
        retry.call(lambda remaining: (_ for _ in ()).throw(_retryable(30.0)), RetryPolicy(),
                   retry.Deadline(1.0))
    assert time.monotonic() - start < 0.5
    assert raised.value.attempts == 1 and raised.value.retry_after == 30.0


def test_next_wait_reports_the_wait_or_raises_the_error_it_gives_up_on() -> None:
    # The streams' reopen loops and the unary calls share this bookkeeping.
    events: list[RetryEvent] = []
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.001)
    error = _retryable(0.01)
    wait = retry.next_wait(error, 1, policy, retry.Deadline(None), events.append)
    assert 0.01 <= wait <= 0.011 and error.attempts == 1
    assert events == [RetryEvent(1, error, wait)]
    with pytest.raises(ClusterError) as raised:
        retry.next_wait(error, 2, policy, retry.Deadline(None), events.append)
    assert raised.value is error and error.attempts == 2 and len(events) == 1


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert _http._retry_after("3") == 3.0
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert _http._retry_after(in_ten) == pytest.approx(10, abs=1.5)
    assert _http._retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert _http._retry_after("soon") is None and _http._retry_after(None) is None


# ---- a real gRPC server whose Cluster answers the status each test sets -------------------

class _Aborting:
    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.trailers: tuple[tuple[str, str], ...] = ()
        self.calls = 0

    def cluster(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        context.set_trailing_metadata(self.trailers)
        context.abort(self.code, "as the test asked")
        return b""  # not reached: abort raises


@pytest.fixture
def grpc_server() -> Iterator[tuple[str, _Aborting]]:
    behaviour = _Aborting()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler("aecluster.v1.ClusterService", {
        "Cluster": grpc.unary_unary_rpc_method_handler(behaviour.cluster)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", behaviour
    server.stop(None)


@pytest.mark.parametrize(("code", "pushback", "retried", "hint"), [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "20", True, 0.02),  # a full queue
    (grpc.StatusCode.RESOURCE_EXHAUSTED, None, False, None),  # a size limit
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "-1", False, None),  # gRPC: negative = stop
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "soon", False, None),  # gRPC: unparsable = stop
    (grpc.StatusCode.UNAVAILABLE, None, True, None),
    (grpc.StatusCode.INVALID_ARGUMENT, None, False, None),
    (grpc.StatusCode.NOT_FOUND, None, False, None),
])
def test_grpc_statuses_and_pushback(grpc_server: tuple[str, _Aborting], code: grpc.StatusCode,
                                    pushback: str | None, retried: bool,
                                    hint: float | None) -> None:
    target, behaviour = grpc_server
    behaviour.code = code
    behaviour.trailers = (("grpc-retry-pushback-ms", pushback),) if pushback else ()
    events: list[RetryEvent] = []
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01)
    with GrpcClient(target, model="digits", retry_policy=policy, on_retry=events.append,
                    timeout=10) as client, pytest.raises(ClusterError) as raised:
        client.cluster(b"png")
    error = raised.value
    assert (error.code, error.reason, error.retry_after) == (code.name, "as the test asked", hint)
    assert behaviour.calls == error.attempts == (3 if retried else 1)
    if hint is not None:
        assert all(e.wait >= hint for e in events) and len(events) == 2


# ---- a real HTTP server: 429 with Retry-After, then the answer ----------------------------

@pytest.fixture
def http_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "body": body, "at": time.monotonic(),
                         "timeout": self.headers.get("X-Request-Timeout-Ms")})
            status, answer = (429, {"error": "slow down"}) if len(seen) == 1 else (200, ANSWER)
            data = json.dumps(answer).encode()
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_http_429_is_retried_after_retry_after(
        http_server: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = http_server
    with HttpClient(url, model="digits", version=3, timeout=10) as client:
        prediction = client.cluster(b"\x89PNG")
    assert len(seen) == 2 and seen[1]["at"] - seen[0]["at"] >= 1.0
    assert seen[0]["path"] == "/v1/models/digits/versions/3:cluster"
    assert seen[0]["body"]["instances"] == [{"b64": "iVBORw=="}]
    assert 0 < int(seen[1]["timeout"]) < int(seen[0]["timeout"]) <= 10_000
    assert (prediction.model, prediction.version, prediction.cluster_id, prediction.label) == (
        "digits", 3, 4, "8")


# ---- grpc.aio's lost stream status (grpc/grpc#36066) ----------------------------------------

def _aio_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_a_stream_status_lost_by_grpc_aio_is_retried_like_unavailable() -> None:
    # The fresh-clone CI met it once: the server refused a stream (full queue) while the
    # client wrote its next request, and grpc.aio reported this INTERNAL instead.
    lost = _aio_error(grpc.StatusCode.INTERNAL, _grpc.LOST_STATUS_DETAILS)
    error = _grpc._error(lost, stream=True)
    assert (error.code, error.retryable) == ("UNAVAILABLE", True)
    assert "grpc/grpc#36066" in error.reason
    # Only there: a unary call gets its status whole, and the server's own INTERNAL (its
    # message names the request id in the log) is never retried.
    assert _grpc._error(lost).code == "INTERNAL" and not _grpc._error(lost).retryable
    server_side = _aio_error(grpc.StatusCode.INTERNAL, "internal error; the server logged it")
    assert not _grpc._error(server_side, stream=True).retryable

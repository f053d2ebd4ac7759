"""bench/serve/loadgen.py against real servers: wrk on a local HTTP server, h2load on grpcio.

No mocks: the real Debian tools drive real servers on free 127.0.0.1 ports, for 1 s runs.
h2load and wrk are required: when missing, these tests fail with the install hint (CI installs
nghttp2-client and wrk) rather than skip, so a benchmark dependency cannot silently vanish.
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.by_path import load_module

ROOT = Path(__file__).resolve().parents[2]


loadgen = load_module(ROOT / "bench" / "serve" / "loadgen.py", "bench_serve_loadgen")

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# NUL bytes, quotes, a backslash, a non-UTF-8 byte: the body must reach the server unchanged
BODY = b'\x00\x01binary "body" \\ \xff' + bytes(range(256))
CONTENT_TYPE = "application/x-test; v=1"


@pytest.fixture(autouse=True)
def _tools() -> None:
    """Fail (not skip) with the install hint when a load generator is missing."""
    missing = [tool for tool in loadgen.PACKAGES if shutil.which(tool) is None]
    if missing:
        packages = " ".join(loadgen.PACKAGES[tool] for tool in missing)
        pytest.fail(f"{', '.join(missing)} not installed: apt-get install -y {packages} "
                    f"(or run loadgen.ensure_tools())")


def _assert_sane(result: object, tool: str, concurrency: int) -> None:
    """The invariants of any successful run."""
    assert isinstance(result, loadgen.LoadResult)
    assert result.tool == tool and result.concurrency == concurrency
    assert result.requests > 0 and result.seconds > 0
    assert result.rps == pytest.approx(result.requests / result.seconds)
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms
    assert 0 < result.mean_ms <= result.max_ms
    assert set(result.as_dict()) == {
        "tool", "concurrency", "seconds", "requests", "errors", "rps", "mean_ms", "p50_ms",
        "p90_ms", "p99_ms", "max_ms"}


def test_ensure_tools_is_a_no_op_when_installed() -> None:
    loadgen.ensure_tools()  # both on PATH (the autouse fixture checked): nothing to install


def test_grpc_frame() -> None:
    assert loadgen.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert loadgen.grpc_frame(b"") == b"\x00\x00\x00\x00\x00"
    assert loadgen.grpc_frame(b"x" * 300) == b"\x00\x00\x00\x01\x2c" + b"x" * 300
    # the framing of a real message, as h2load will send it
    message = health_pb2.HealthCheckRequest(service="svc").SerializeToString()
    assert loadgen.grpc_frame(message) == b"\x00\x00\x00\x00\x05" + b"\x0a\x03svc"


# --------------------------------------------------------------------------- HTTP / wrk


@dataclass
class HttpServer:
    """A local HTTP/1.1 server answering every POST with ``status``."""

    url: str
    posts: int = 0
    # what was wrong with a request, if anything (answered 400)
    problems: list[str] = field(default_factory=list)


class QuietServer(ThreadingHTTPServer):
    """Handler threads die with the test; wrk dropping its connections is no error."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def http_server() -> Iterator[Callable[[int], HttpServer]]:
    """Start servers answering ``status`` to POSTs that carry BODY, CONTENT_TYPE, X-Bench."""
    started: list[ThreadingHTTPServer] = []

    def start(status: int) -> HttpServer:
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
            # headers and body go out in two writes: without this, Nagle's algorithm and
            # delayed ACKs add 40 ms to every response
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                problems = []
                if body != BODY:
                    problems.append(f"body {body[:40]!r}... ({len(body)} bytes)")
                if self.headers.get("Content-Type") != CONTENT_TYPE:
                    problems.append(f"content-type {self.headers.get('Content-Type')!r}")
                if self.headers.get("X-Bench") != 'a "quoted" value':
                    problems.append(f"x-bench {self.headers.get('X-Bench')!r}")
                with lock:
                    served.posts += 1
                    served.problems.extend(problems)
                answer = b"ok"
                self.send_response(400 if problems else status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass  # thousands of requests: keep the test output readable

        server = QuietServer(("127.0.0.1", 0), Handler)
        started.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        served = HttpServer(url=f"http://127.0.0.1:{server.server_address[1]}/predict")
        return served

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("concurrency", [1, 4])
def test_wrk_posts_the_body_and_measures(http_server: Callable[[int], HttpServer],
                                         tmp_path: Path, concurrency: int) -> None:
    server = http_server(200)
    result = loadgen.wrk_http(server.url, BODY, CONTENT_TYPE, concurrency=concurrency,
                              seconds=1, warmup=1 if concurrency > 1 else 0,
                              workdir=tmp_path, headers={"X-Bench": 'a "quoted" value'})
    print(result.as_dict())
    assert server.problems == []
    _assert_sane(result, "wrk", concurrency)
    assert result.errors == 0
    # the warm-up run's requests reached the server too but are not in the result
    assert server.posts >= result.requests
    assert 0.9 < result.seconds < 2


def test_wrk_counts_error_statuses(http_server: Callable[[int], HttpServer],
                                  tmp_path: Path) -> None:
    """A 500 on every request: measured as usual, and every request is an error."""
    server = http_server(500)
    result = loadgen.wrk_http(server.url, BODY, CONTENT_TYPE, concurrency=2, seconds=1,
                              warmup=0, workdir=tmp_path,
                              headers={"X-Bench": 'a "quoted" value'})
    assert server.problems == []
    _assert_sane(result, "wrk", 2)
    assert result.errors == result.requests


def test_wrk_without_a_server_raises(tmp_path: Path) -> None:
    """Connection refused at start: wrk checks one connection first and exits 1."""
    with pytest.raises(loadgen.LoadgenError, match="Connection refused"):
        loadgen.wrk_http(f"http://127.0.0.1:{_closed_port()}/", BODY, CONTENT_TYPE,
                         concurrency=1, seconds=1, warmup=0, workdir=tmp_path)


# --------------------------------------------------------------------------- gRPC / h2load


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fail_every_other(_request: bytes, context: grpc.ServicerContext) -> bytes:
    """A unary handler whose odd calls fail (INTERNAL) and even calls answer empty."""
    with _CALLS_LOCK:
        _CALLS[0] += 1
        odd = _CALLS[0] % 2 == 1
    if odd:
        context.abort(grpc.StatusCode.INTERNAL, "every other call fails")
    return b""


_CALLS = [0]
_CALLS_LOCK = threading.Lock()
FLAKY = "/test.Flaky/Call"


@pytest.fixture(scope="module")
def grpc_port() -> Iterator[int]:
    """A grpcio server with the standard health service (serving) and FLAKY."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    identity = grpc.unary_unary_rpc_method_handler(_fail_every_other)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Flaky", {"Call": identity})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0).wait()


def _call(port: int, method_path: str, message: bytes) -> grpc.StatusCode:
    """One real call with a gRPC client: what callers must do before measuring."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(method_path)
        try:
            call(message, timeout=10)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("concurrency", [1, 4])
def test_h2load_replays_a_grpc_call(grpc_port: int, tmp_path: Path, concurrency: int) -> None:
    message = health_pb2.HealthCheckRequest().SerializeToString()
    assert _call(grpc_port, HEALTH_CHECK, message) == grpc.StatusCode.OK
    result = loadgen.h2load_grpc("127.0.0.1", grpc_port, HEALTH_CHECK, message,
                                 concurrency=concurrency, seconds=1, warmup=0.5,
                                 workdir=tmp_path)
    print(result.as_dict())
    _assert_sane(result, "h2load", concurrency)
    assert result.errors == 0
    assert result.seconds == 1.0
    # a second run in the same workdir: h2load appends to its log, the old rows must go
    again = loadgen.h2load_grpc("127.0.0.1", grpc_port, HEALTH_CHECK, message,
                                concurrency=concurrency, seconds=1, warmup=0,
                                workdir=tmp_path)
    log_rows = (tmp_path / "h2load.log").read_text().count("\n")
    assert again.requests == log_rows


def test_h2load_unimplemented_method_raises(grpc_port: int, tmp_path: Path) -> None:
    """A wrong method path: grpcio answers HTTP 200 with grpc-status 12 (UNIMPLEMENTED) in a
    trailers-only response, which h2load counts as a success. Its summary does show 0 bytes of
    DATA (a successful unary call returns a message of at least 5 bytes), so h2load_grpc
    raises rather than report thousands of fast "successful" calls."""
    message = health_pb2.HealthCheckRequest().SerializeToString()
    assert _call(grpc_port, "/grpc.health.v1.Health/Nope", message) == (
        grpc.StatusCode.UNIMPLEMENTED)
    with pytest.raises(loadgen.LoadgenError, match="UNIMPLEMENTED") as caught:
        loadgen.h2load_grpc("127.0.0.1", grpc_port, "/grpc.health.v1.Health/Nope", message,
                            concurrency=1, seconds=1, warmup=0, workdir=tmp_path)
    assert "0B (0) data" in str(caught.value)  # h2load's output is in the message


def test_h2load_cannot_see_an_error_that_carries_a_message(grpc_port: int,
                                                          tmp_path: Path) -> None:
    """The limit of the DATA check: grpcio's health servicer answers Check on an unknown
    service by setting NOT_FOUND *and* returning a (5-byte, empty) message, so every response
    has DATA and only the grpc-status trailer, which h2load ignores, tells the failure. The
    run reports no errors: this is why callers validate one real call first (as here)."""
    message = health_pb2.HealthCheckRequest(service="no.such.Service").SerializeToString()
    assert _call(grpc_port, HEALTH_CHECK, message) == grpc.StatusCode.NOT_FOUND
    result = loadgen.h2load_grpc("127.0.0.1", grpc_port, HEALTH_CHECK, message, concurrency=2,
                                 seconds=1, warmup=0, workdir=tmp_path)
    _assert_sane(result, "h2load", 2)
    assert result.errors == 0  # wrong, and unavoidable with h2load


def test_h2load_counts_some_grpc_errors(grpc_port: int, tmp_path: Path) -> None:
    """Half the calls fail: h2load sees only HTTP 200s, but the missing DATA bytes prove the
    failures. Without warm-up (whose bytes h2load adds to the count) the bound is nearly
    exact here; in general it is only a lower bound."""
    result = loadgen.h2load_grpc("127.0.0.1", grpc_port, FLAKY, b"", concurrency=2,
                                 seconds=1, warmup=0, workdir=tmp_path)
    print(result.as_dict())
    _assert_sane(result, "h2load", 2)
    assert 0.4 * result.requests <= result.errors <= 0.6 * result.requests


def test_h2load_without_a_server_raises(tmp_path: Path) -> None:
    """Connection refused: h2load exits 0 having done nothing."""
    with pytest.raises(loadgen.LoadgenError, match="no successful request"):
        loadgen.h2load_grpc("127.0.0.1", _closed_port(), HEALTH_CHECK, b"", concurrency=1,
                            seconds=1, warmup=0, workdir=tmp_path)


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        loadgen.h2load_grpc("127.0.0.1", 1, HEALTH_CHECK, b"", concurrency=0, seconds=1,
                            warmup=0, workdir=tmp_path)
    with pytest.raises(ValueError, match="seconds"):
        loadgen.wrk_http("http://127.0.0.1:1/", b"", "text/plain", concurrency=1, seconds=0,
                         warmup=0, workdir=tmp_path)

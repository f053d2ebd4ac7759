"""Both servers in one process and one event loop, with a graceful drain on SIGTERM.

Start-up order: bind gRPC and HTTP first (liveness answers at once, readiness is false),
then load the repository; readiness turns true once a model is loaded and warmed up.
On SIGTERM or SIGINT the server drains by itself, without relying on a preStop hook or a
load balancer (issue 39, item 7):

* readiness is false at once (HTTP /readyz 503, gRPC health NOT_SERVING);
* both servers keep listening; new work gets 503 / UNAVAILABLE ("retry on another
  replica"), and every HTTP answer carries ``Connection: close``, so keep-alive callers
  close their connections themselves after an answer instead of meeting a closed socket
  mid-request;
* queued and in-flight requests finish; the servers then linger until their callers have
  gone (``_linger``), within ``drain_seconds`` in all;
* gRPC stops with GOAWAY, HTTP closes what idle connections are left, and the process
  exits 0.

With TLS (``tls_cert_file``), both ports accept TLS only, and the certificate files are
followed every ``secrets_poll_seconds`` (as is ``auth_tokens_file``): a renewed certificate
is presented to new connections without a restart. ``operations_port`` adds a plain-HTTP
server for probes and Prometheus (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Generator
from typing import Any

import uvicorn

from service.dataplane import DataPlane
from service.grpc import GrpcServer, start_grpc_server
from service.metrics import Metrics
from service.repository import ModelRepository
from service.rest import create_app
from service.rest.app import create_operations_app
from service.runtime import configure_device, configure_threads, runtime_factory
from service.security import Security
from service.settings import Settings
from service.traffic import Traffic

logger = logging.getLogger(__name__)

# A drain stops the servers once their callers have sent nothing for this long.
LULL_SECONDS = 1.0
# How often the drain looks at the callers.
LINGER_POLL_SECONDS = 0.05


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handlers: shutdown is ours to order (drain first)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class AppServer:
    """The running service: data plane, HTTP and gRPC servers, repository polling."""

    def __init__(self, settings: Settings, security: Security | None = None) -> None:
        self.settings = settings
        # First: a bad certificate or token file is reported before any TensorFlow work.
        self.security = Security.from_settings(settings) if security is None else security
        self.metrics = Metrics()
        configure_threads(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
        self.device = configure_device(settings.device, memory_growth=settings.gpu_memory_growth)
        self.repository = ModelRepository(
            settings, self.metrics, runtime_factory(self.device, settings.batch_sizes()))
        self.dataplane = DataPlane(self.repository, settings, self.metrics)
        self.app = create_app(self.dataplane, settings, self.metrics, self.security)
        self._http: _HttpServer | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._operations: _HttpServer | None = None
        self._operations_task: asyncio.Task[None] | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._grpc: GrpcServer | None = None
        self._stop = asyncio.Event()
        self.http_port = settings.http_port
        self.grpc_port = settings.grpc_port
        self.operations_port = settings.operations_port

    async def start(self) -> None:
        """Bind the ports, then load the models (readiness follows the loads)."""
        self._grpc = await start_grpc_server(self.dataplane, self.settings, self.metrics,
                                             self.security)
        self.grpc_port = self._grpc.port
        tls = self.security.tls
        self._http, self._http_task, self.http_port = await _start_http(
            self.app, self.settings.host, self.settings.http_port, "http-server",
            None if tls is None else tls.ssl_context)
        if self.settings.operations_port is not None:
            self._operations, self._operations_task, self.operations_port = await _start_http(
                create_operations_app(self.dataplane, self.metrics), self.settings.host,
                self.settings.operations_port, "operations-server", None)
        if self.settings.secrets_poll_seconds > 0 and (tls or self.security.tokens):
            self._follow_task = asyncio.create_task(
                self.security.follow(self.settings.secrets_poll_seconds), name="follow-secrets")
        logger.info("listening", extra={"http_port": self.http_port, "grpc_port": self.grpc_port,
                                        "operations_port": self.operations_port,
                                        "tls": _tls_mode(self.security),
                                        "tokens": self.security.tokens is not None,
                                        "device": self.device,
                                        "model_repo": str(self.settings.model_repo)})
        started = time.monotonic()
        await self.repository.start()
        logger.info("ready" if self.dataplane.is_ready() else "started without a ready model",
                    extra={"models": self.repository.known_models(),
                           "seconds": round(time.monotonic() - started, 2)})

    def request_stop(self) -> None:
        """Begin the graceful shutdown (what SIGTERM does)."""
        self._stop.set()

    async def wait_and_shutdown(self) -> None:
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Drain (see the module's docstring), then stop both servers."""
        window = self.settings.drain_seconds
        deadline = time.monotonic() + window
        logger.info("shutting down: draining for up to %.1f s", window)
        drain = asyncio.create_task(self.dataplane.drain(window))  # readiness false now
        if self._grpc is not None:
            await self._grpc.set_serving(False)
        await drain
        await self._linger(deadline)
        stops: list[Awaitable[None]] = []
        if self._grpc is not None:
            stops.append(self._grpc.stop(grace=max(0.0, deadline - time.monotonic())))
        for server, task in ((self._http, self._http_task),
                             (self._operations, self._operations_task)):
            if server is not None and task is not None:
                server.should_exit = True
                stops.append(task)
        await asyncio.gather(*stops)
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
        logger.info("stopped")

    async def _linger(self, deadline: float) -> None:
        """Keep both servers listening until their callers have gone, or the window ends.

        Every HTTP answer now says ``Connection: close``, so a busy keep-alive caller closes
        its connection after its next answer; HTTP's callers are gone when no connection is
        left open, or none has sent a request for LULL_SECONDS (the rest are idle pools,
        and closing an idle connection is routine). gRPC's are gone after LULL_SECONDS
        without a call: its stop sends GOAWAY, but cancels calls already received and not
        yet started, so it must not come while callers still send.
        """
        http_traffic: Traffic = self.app.state.traffic
        while time.monotonic() < deadline:
            http_gone = self._http is None or not self._http.server_state.connections \
                or http_traffic.quiet_for() >= LULL_SECONDS
            grpc_gone = self._grpc is None or self._grpc.traffic.quiet_for() >= LULL_SECONDS
            if http_gone and grpc_gone:
                return
            await asyncio.sleep(LINGER_POLL_SECONDS)
        logger.warning("drain window over while callers still send; stopping anyway")


def _tls_mode(security: Security) -> str:
    if security.tls is None:
        return "off"
    return "mutual" if security.tls.requires_client_certificate else "on"


async def _start_http(app: Any, host: str, port: int, name: str,
                      context: ssl.SSLContext | None,
                      ) -> tuple[_HttpServer, asyncio.Task[None], int]:
    """Start uvicorn on ``host:port`` (TLS with ``context``, which stays the server's for
    its life: ``Security.refresh`` loads a renewed certificate into it); returns the server,
    its task and the bound port."""
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="off",
        timeout_keep_alive=30, limit_concurrency=None, server_header=False,
        ssl_context_factory=None if context is None else (lambda _config, _default: context),
    )
    server = _HttpServer(config)
    task = asyncio.create_task(server.serve(), name=name)
    while not server.started:
        if task.done():
            task.result()  # re-raise the bind error
            raise RuntimeError(f"the {name} stopped during start-up")
        await asyncio.sleep(0.01)
    return server, task, server.servers[0].sockets[0].getsockname()[1]


async def serve(settings: Settings, security: Security | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    server = AppServer(settings, security)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    await server.start()
    await server.wait_and_shutdown()
    return 0

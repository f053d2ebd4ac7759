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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Generator

import uvicorn

from service.dataplane import DataPlane
from service.grpc import GrpcServer, start_grpc_server
from service.metrics import Metrics
from service.repository import ModelRepository
from service.rest import create_app
from service.runtime import configure_device, configure_threads, runtime_factory
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

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        configure_threads(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
        self.device = configure_device(settings.device, memory_growth=settings.gpu_memory_growth)
        self.repository = ModelRepository(
            settings, self.metrics, runtime_factory(self.device, settings.batch_sizes()))
        self.dataplane = DataPlane(self.repository, settings, self.metrics)
        self.app = create_app(self.dataplane, settings, self.metrics)
        self._http: _HttpServer | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: GrpcServer | None = None
        self._stop = asyncio.Event()
        self.http_port = settings.http_port
        self.grpc_port = settings.grpc_port

    async def start(self) -> None:
        """Bind both ports, then load the models (readiness follows the loads)."""
        self._grpc = await start_grpc_server(self.dataplane, self.settings, self.metrics)
        self.grpc_port = self._grpc.port
        config = uvicorn.Config(
            self.app, host=self.settings.host, port=self.settings.http_port, log_config=None,
            access_log=False, lifespan="off", timeout_keep_alive=30,
            limit_concurrency=None, server_header=False,
        )
        self._http = _HttpServer(config)
        self._http_task = asyncio.create_task(self._http.serve(), name="http-server")
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # re-raise the bind error
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        self.http_port = self._http.servers[0].sockets[0].getsockname()[1]
        logger.info("listening", extra={"http_port": self.http_port, "grpc_port": self.grpc_port,
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
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            stops.append(self._http_task)
        await asyncio.gather(*stops)
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


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    server = AppServer(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    await server.start()
    await server.wait_and_shutdown()
    return 0

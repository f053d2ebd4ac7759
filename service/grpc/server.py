"""The grpc.aio server: servicers, health, reflection, message limits, TLS and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc
from service._generated.inference import grpc_predict_v2_pb2 as v2_pb
from service._generated.inference import grpc_predict_v2_pb2_grpc as v2_pb_grpc
from service.dataplane import DataPlane
from service.grpc.interceptor import ServiceInterceptor
from service.grpc.oip import InferenceServicer
from service.grpc.servicers import ClusterServicer, ModelServicer, PredictionServicer
from service.metrics import Metrics
from service.security import Security, ServerTls, TlsMaterial
from service.settings import Settings
from service.traffic import Traffic

logger = logging.getLogger(__name__)

CLUSTER_SERVICE = pb.DESCRIPTOR.services_by_name["ClusterService"].full_name
# Taken from the *_pb2 modules, not the *_pb2_grpc ones: importing them is also what puts
# the service descriptors in the default pool, where reflection looks them up.
PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name[
    "PredictionService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
INFERENCE_SERVICE = v2_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVICES = (CLUSTER_SERVICE, PREDICTION_SERVICE, MODEL_SERVICE, INFERENCE_SERVICE)
# Readiness can change without the server noticing (a model finishes loading, a drain
# starts), so the health status follows DataPlane.is_ready() on this period.
HEALTH_POLL_SECONDS = 0.5


class CurrentHealth(health_aio.HealthServicer):
    """grpc's health servicer, brought up to date before each ``Check`` is answered.

    The status otherwise follows readiness on a poll, and a checker that asked within the
    poll period of a model becoming ready got NOT_SERVING while HTTP /readyz already said
    200 (seen in CI: the two disagreed for 0.22 s). ``Watch`` streams keep following the
    poll.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refresh: Callable[[], Awaitable[object]] | None = None

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        if self.refresh is not None:
            await self.refresh()
        return await super().Check(request, context)


class GrpcServer:
    """A started gRPC server; built by :func:`start_grpc_server`."""

    def __init__(self, server: grpc.aio.Server, port: int, dataplane: DataPlane,
                 health: health_aio.HealthServicer, traffic: Traffic | None = None) -> None:
        self._server = server
        self.traffic = traffic if traffic is not None else Traffic()
        """When the last call arrived (every method, health checks included)."""
        self._dataplane = dataplane
        self._health = health
        self._serving = True
        self._reported: bool | None = None
        self._health_task = asyncio.create_task(self._follow_readiness(), name="grpc-health")
        if isinstance(health, CurrentHealth):
            health.refresh = self.refresh_health
        self.port = port
        """The bound port (the free one the OS picked when settings.grpc_port was 0)."""

    async def set_serving(self, serving: bool) -> None:
        """Allow (True) or force off (False) SERVING, and publish the result at once.

        SERVING also needs ``DataPlane.is_ready()``, which is followed on a short poll; the
        server's lifecycle calls ``set_serving(False)`` when a drain begins so that health
        checkers see NOT_SERVING without waiting for the poll.
        """
        self._serving = serving
        await self.refresh_health()

    async def refresh_health(self) -> bool:
        """Publish the current status at once; returns whether it is SERVING."""
        serving = self._serving and self._dataplane.is_ready()
        if serving != self._reported:
            status = (health_pb2.HealthCheckResponse.SERVING if serving
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            for service in ("", *SERVICES):
                await self._health.set(service, status)
            logger.info("grpc health: %s", "SERVING" if serving else "NOT_SERVING")
            self._reported = serving
        return serving

    async def _follow_readiness(self) -> None:
        while True:
            try:
                await self.refresh_health()
            except Exception:  # a failed update must not end health reporting
                logger.exception("grpc health update failed")
            await asyncio.sleep(HEALTH_POLL_SECONDS)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING for everyone, then stop: GOAWAY to every client, and the calls in
        flight get ``grace`` seconds. Calls the server has received but not yet started
        are CANCELLED by grpc: stop once callers are quiet (``traffic``), not before."""
        self._health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._health_task
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        logger.info("grpc server on port %d stopped", self.port)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _certificate_configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key, material.certificate_chain)],
        root_certificates=material.client_ca)


def tls_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Server credentials that follow ``tls.current``: grpc asks the fetcher before every new
    connection's handshake (on one of its own threads), and it hands over new material only
    when ``Security.refresh`` has loaded some; connections already open keep theirs."""
    served = [tls.current]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        material = tls.current
        if material is served[0]:
            return None  # unchanged
        served[0] = material
        logger.info("grpc: new connections get the reloaded certificate")
        return _certificate_configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        _certificate_configuration(served[0]), fetch,
        require_client_authentication=tls.requires_client_certificate)


def _transport(security: Security) -> str:
    if security.tls is None:
        return "plaintext"
    return "mutual TLS" if security.tls.requires_client_certificate else "TLS"


async def start_grpc_server(dataplane: DataPlane, settings: Settings, metrics: Metrics,
                            security: Security | None = None) -> GrpcServer:
    """Build, bind and start the gRPC server on ``settings.host:settings.grpc_port``.

    Serves ``aecluster.v1.ClusterService``, TensorFlow Serving's ``PredictionService`` and
    ``ModelService``, the Open Inference Protocol's ``inference.GRPCInferenceService``,
    ``grpc.health.v1.Health`` (following readiness) and server reflection;
    over TLS and with the token check when ``security`` (by default: loaded from the
    settings) says so.
    """
    if security is None:
        security = Security.from_settings(settings)
    limit = settings.grpc_max_message_bytes
    interceptor = ServiceInterceptor(metrics, tokens=security.tokens)
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Without this, a second server could bind the same port and steal half the calls.
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_ClusterServiceServicer_to_server(ClusterServicer(dataplane), server)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(dataplane, max_message_bytes=limit,
                           max_images=settings.max_images_per_request), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(dataplane), server)
    v2_pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dataplane, max_images=settings.max_images_per_request), server)
    health = CurrentHealth()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    address = _address(settings.host, settings.grpc_port)
    try:
        if security.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls_credentials(security.tls))
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC server cannot listen on {address}: {exc}") from exc
    if port == 0:  # older grpcio reports a failed bind this way
        raise RuntimeError(f"gRPC server cannot listen on {address}")
    await server.start()
    grpc_server = GrpcServer(server, port, dataplane, health, interceptor.traffic)
    await grpc_server.refresh_health()
    logger.info("grpc server listening on %s (port %d, %s)", address, port,
                _transport(security))
    return grpc_server

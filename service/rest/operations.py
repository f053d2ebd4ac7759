"""Operations endpoints: liveness, readiness, Prometheus metrics, and the model list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.dataplane import DataPlane
from service.metrics import Metrics
from service.rest.encoding import json_response

# Answered without a token when the server requires one.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def health_router(dataplane: DataPlane, metrics: Metrics) -> APIRouter:
    """``/healthz``, ``/readyz`` and ``/metrics``: what probes and Prometheus call, answered
    without a token (``OPEN_PATHS``) and on ``operations_port`` too."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", name="healthz", summary="Liveness",
                responses={503: {"description": "The process should be restarted."}})
    async def healthz() -> Response:
        """200 while the process can serve (Kubernetes livenessProbe)."""
        if dataplane.is_live():
            return json_response({"status": "live"})
        return json_response({"error": "not live"}, status_code=503)

    @router.get("/readyz", name="readyz", summary="Readiness",
                responses={503: {"description": "No model ready yet, or draining."}})
    async def readyz() -> Response:
        """200 when a model is loaded and warmed up and the server is not draining
        (Kubernetes readinessProbe); 503 otherwise."""
        if dataplane.is_ready():
            return json_response({"status": "ready"})
        return json_response(
            {"error": "not ready: no model version is loaded and warmed up, or the server "
                      "is draining"},
            status_code=503,
        )

    @router.get("/metrics", name="metrics", summary="Prometheus metrics",
                response_class=Response)
    async def prometheus(request: Request) -> Response:
        """Every ``aecluster_*`` metric in Prometheus' text exposition format, or in
        OpenMetrics (with exemplars) when ``Accept`` asks for
        ``application/openmetrics-text``."""
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return router


def operations_router(dataplane: DataPlane) -> APIRouter:
    """``/v1/models``: the loaded model versions (the main port serves :func:`health_router`'s
    routes beside it)."""
    router = APIRouter()

    @router.get("/v1/models", name="list_models", summary="Loaded model versions",
                tags=["operations"])
    async def list_models() -> Response:
        """Every loaded, available model version with its input and clusters."""
        models: list[dict[str, Any]] = [
            {"name": info.name, "version": info.version,
             "input": info.manifest.input.model_dump(mode="json"),
             "latent_dim": info.manifest.latent_dim, "n_clusters": info.manifest.n_clusters,
             "labels": info.manifest.label_map is not None}
            for info in dataplane.list_models()
        ]
        return json_response({"models": models})

    return router

"""The FastAPI application: routes, error rendering and per-request plumbing.

:func:`create_app` builds a new app around one data plane; there is no module-level app.
Errors follow one table (``service.errors``): every :class:`ServiceError` is answered with
its class's HTTP status and ``{"error": message}``; anything else is logged with its
traceback and answered 500 with a generic message (see :mod:`service.rest.middleware`).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import swagger_ui_bundle
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from service.dataplane import DataPlane
from service.errors import ServiceError
from service.metrics import Metrics
from service.oip import server_version
from service.rest.clusters import clusters_router
from service.rest.direct import DirectRoutes
from service.rest.encoding import error_response, logged_error_response
from service.rest.middleware import AuthMiddleware, RequestContextMiddleware
from service.rest.native import cluster_router
from service.rest.oip import oip_inference_router, oip_router
from service.rest.operations import health_router, operations_router
from service.rest.page import add_page
from service.rest.schemas import ClusterRequest, PredictRequest
from service.rest.tfserving import tfserving_inference_router, tfserving_router
from service.security import Security
from service.settings import Settings
from service.traffic import Traffic

# FastAPI's built-in OpenTelemetry spans, metrics and logs, off: the service traces,
# counts and logs each request itself (service/tracing.py, metrics.py, middleware.py), and
# the framework's check of the global providers cost about 10 µs on every request.
NO_FRAMEWORK_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

DESCRIPTION = """\
Groups images without labels: each image gets the cluster of its autoencoder embedding,
the distance to that cluster's centroid, an outlier flag and, if asked, the
reconstruction.

* **native**: `POST /v1/models/{name}[/versions/{v}]:cluster` with JSON, multipart file
  uploads or a raw `image/png` / `image/jpeg` body; `GET .../clusters` lists the clusters
  with their sizes, labels and exemplar thumbnails
  (`GET /v1/models/{name}/versions/{v}/exemplars/{cluster}/{index}.png`);
* **tensorflow-serving**: TensorFlow Serving's REST API (`:predict`, status, metadata);
* **open-inference-protocol**: KServe's and Triton's V2 API (`/v2/models/{name}/infer`,
  metadata, readiness) with the binary tensor data extension;
* **operations**: `/healthz`, `/readyz`, `/metrics`.

Errors are `{"error": "..."}` with the status of the error table (400 bad input, 401
missing or refused token (+ WWW-Authenticate), 404 unknown model/version/signature, 413 over
a limit, 503 queue full (+ Retry-After) or not ready, 504 deadline passed).

When the server requires tokens, every request but `/healthz`, `/readyz` and `/metrics`
sends `Authorization: Bearer <token>` or `x-api-key: <token>`.
"""
UNKNOWN_ROUTE = "unknown"
MODEL_ENDPOINTS = (
    "POST /v1/models/{name}[/versions/{v}]:cluster, POST ...:predict, "
    "GET /v1/models/{name}[/versions/{v}] (status), GET .../metadata, GET .../clusters, "
    "GET /v1/models/{name}/versions/{v}/exemplars/{cluster}/{index}.png"
)


class ServiceApp(FastAPI):
    """FastAPI with the native body schemas added to the OpenAPI document.

    The model endpoints read their bodies themselves (three content types, errors that
    name the bad image), so FastAPI does not see the body models; they are added here so
    ``/docs`` still shows them.
    """

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = super().openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (ClusterRequest, PredictRequest):
                model_schema = model.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
                for name, definition in model_schema.pop("$defs", {}).items():
                    components.setdefault(name, definition)
                components[model.__name__] = model_schema
        return self.openapi_schema or {}


DOCS_ASSETS = "/docs-static"


def _add_offline_docs(app: FastAPI) -> None:
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path),
              name="docs-static")

    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title="aecluster - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False, name="docs")


def create_app(dataplane: DataPlane, settings: Settings, metrics: Metrics,
               security: Security | None = None) -> FastAPI:
    """A new REST application serving ``dataplane``; with the token check when ``security``
    (by default: loaded from the settings) has tokens. TLS is the HTTP server's part."""
    if security is None:
        security = Security.from_settings(settings)
    # Swagger UI from the swagger-ui-bundle package instead of FastAPI's default CDN:
    # clusters without internet access still get working /docs.
    app = ServiceApp(title="aecluster", version=server_version(), description=DESCRIPTION,
                     docs_url=None, redoc_url=None, telemetry=NO_FRAMEWORK_TELEMETRY)
    _add_offline_docs(app)
    # app.state.traffic: when the last request came, for the server's drain (server.py).
    app.state.traffic = Traffic()
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Inference first: a request is matched against the routes in order, and these are
    # the ones called at rate. Their paths overlap no other router's (/v2/..., ":cluster",
    # ":predict"), so the order changes nothing else.
    inference = [oip_inference_router(dataplane, settings.max_images_per_request),
                 cluster_router(dataplane, settings), tfserving_inference_router(dataplane)]
    routers = [*inference, oip_router(dataplane), tfserving_router(dataplane),
               clusters_router(dataplane), health_router(dataplane, metrics),
               operations_router(dataplane)]
    add_routes(app, routers)
    # Middlewares, innermost first (add_middleware puts each outside the ones before it):
    # the inference routes served without FastAPI's per-request machinery; then the token
    # check; then the request context, so that a refusal has a request id and is counted
    # and logged like any other answer.
    app.add_middleware(DirectRoutes, routes=[route for router in inference
                                             for route in router.routes
                                             if isinstance(route, APIRoute)])
    if security.tokens is not None:
        app.add_middleware(AuthMiddleware, tokens=security.tokens)
    app.add_middleware(RequestContextMiddleware, metrics=metrics,
                       max_body_bytes=settings.max_body_bytes,
                       draining=lambda: dataplane.draining, traffic=app.state.traffic)
    add_page(app)
    # Last: anything else under /v1/models is answered here: 405 with Allow when another
    # method serves the path, else 404 with the valid endpoints.
    served = [route for router in routers for route in router.routes
              if isinstance(route, APIRoute)]
    app.add_api_route("/v1/models/{rest:path}", _unknown_model_endpoint(served),
                      name=UNKNOWN_ROUTE, methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                      include_in_schema=False)
    return app


def create_operations_app(dataplane: DataPlane, metrics: Metrics) -> FastAPI:
    """The app of ``operations_port``: ``/healthz``, ``/readyz`` and ``/metrics`` only, in
    plain HTTP and without tokens, for kubelet probes and Prometheus when the main port
    requires client certificates (they have none to present)."""
    app = FastAPI(title="aecluster operations", version=server_version(),
                  openapi_url=None, docs_url=None, redoc_url=None,
                  telemetry=NO_FRAMEWORK_TELEMETRY)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=1024)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    add_routes(app, [health_router(dataplane, metrics)])
    return app


def add_routes(app: FastAPI, routers: list[APIRouter]) -> None:
    """Put the routers' routes on the app's own route list, in order.

    Not ``include_router``: since FastAPI 0.137 it keeps each included router as a node
    that every request walks twice, once to match and once to dispatch, re-checking the
    routers' versions on the way. Measured (issue 38): through the whole app without the
    network, ``GET /v2/health/live`` took 126 µs with the routers included and 73 µs with
    their routes here; V2 JSON inference under wrk went from 1,790-1,860 to 2,150-2,170
    req/s at c = 32 (docs/serving.md). The routers here have no prefix, dependencies or
    responses of their own for ``include_router`` to combine; each route already carries
    its router's tags.
    """
    for router in routers:
        if router.prefix or router.dependencies:
            raise ValueError("add_routes takes routers without a prefix or dependencies")
        app.router.routes.extend(router.routes)


async def _service_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ServiceError):  # pragma: no cover - registered for ServiceError
        raise exc
    return logged_error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover
        raise exc
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ())) or 'request'}: {err.get('msg', '')}"
        for err in exc.errors()
    )
    return error_response(f"invalid request: {problems}", HTTPStatus.BAD_REQUEST)


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        raise exc
    if exc.status_code == HTTPStatus.NOT_FOUND:
        message = f"no endpoint {request.method} {request.url.path}; see /docs"
    elif exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        message = f"{request.method} is not allowed on {request.url.path}; see /docs"
    else:
        message = str(exc.detail)
    return error_response(message, exc.status_code, exc.headers)


def _unknown_model_endpoint(served: list[APIRoute]) -> Any:
    """The handler of every other request under /v1/models."""

    async def unknown(request: Request) -> Response:
        # A path that another method serves is 405 with Allow, as HTTP says (issue 39: it
        # was 404, so clients and fuzzers could not tell a wrong method from a wrong path).
        allowed: set[str] = set()
        for route in served:
            match, child = route.matches(request.scope)
            # "/v1/models/{name}" also matches "x:predict"; a name never holds a colon.
            if match == Match.PARTIAL and ":" not in child["path_params"].get("name", ""):
                allowed.update(route.methods or ())
        if allowed:
            return error_response(
                f"{request.method} is not allowed on {request.url.path}; allowed: "
                f"{', '.join(sorted(allowed))}", HTTPStatus.METHOD_NOT_ALLOWED,
                {"Allow": ", ".join(sorted(allowed))},
            )
        return error_response(
            f"no endpoint {request.method} {request.url.path}; model endpoints: "
            f"{MODEL_ENDPOINTS}", HTTPStatus.NOT_FOUND,
        )

    return unknown

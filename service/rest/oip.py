"""The Open Inference Protocol (KServe / Triton "V2") REST API.

``/v2`` (server metadata), ``/v2/health/{live,ready}`` and, per model and optionally per
version, metadata, readiness and ``/infer``: parse, call the data plane, encode. Errors are
the error table's, as ``{"error": "..."}``, which is also the protocol's error object.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service import oip, tracing
from service.dataplane import DataPlane
from service.errors import Unavailable, UnsupportedMediaType
from service.rest import params
from service.rest.encoding import (
    JSON_MEDIA_TYPE,
    check_json_media_type,
    json_response,
    media_type,
    off_loop,
)
from service.rest.native import ERROR_RESPONSES
from service.rest.oipbody import BINARY_MEDIA_TYPE, HEADER_LENGTH, parse_request, render_answer
from service.rest.params import VersionSegment

INFER_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {
        JSON_MEDIA_TYPE: {"schema": {
            "type": "object", "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "inputs": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["name", "datatype", "shape"],
                    "properties": {
                        "name": {"type": "string", "enum": ["images", "image_bytes"]},
                        "datatype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer",
                                                             "minimum": 0}},
                        "data": {},
                        "parameters": {"type": "object"},
                    }}},
                "outputs": {"type": "array", "items": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"},
                                   "parameters": {"type": "object"}}}},
                "parameters": {"type": "object"},
            }}},
        BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
    }},
    "parameters": [
        {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
         "schema": {"type": "integer", "minimum": 0},
         "description": "Binary tensor data extension: the body's first N bytes are the JSON "
                        "request, the rest the inputs' binary data."},
        {"name": "X-Request-Timeout-Ms", "in": "header", "required": False,
         "schema": {"type": "number", "exclusiveMinimum": 0},
         "description": "Give up (504) if the images are still queued after this long."},
    ],
}


def oip_inference_router(dataplane: DataPlane, max_images: int) -> APIRouter:
    """The V2 ``/infer`` routes, bound to one data plane (served directly:
    ``service/rest/direct.py``)."""
    router = APIRouter(tags=["open-inference-protocol"])

    async def infer(request: Request, name: str, version: str | None) -> Response:
        model = params.model_ref(name, version)
        deadline = params.deadline(request)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise UnsupportedMediaType(f"/infer does not read {encoding}-compressed bodies: "
                                       "send them uncompressed")
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is None:
            check_json_media_type(media_type(request.headers.get("content-type")),
                                  endpoint="/infer", alternatives="JSON and binary tensors "
                                  "with Inference-Header-Content-Length")
        with tracing.span("decode"):
            body = await request.body()
            parsed = await off_loop(len(body), lambda: parse_request(body, header_length,
                                                                     max_images=max_images))
        info, outputs = await dataplane.infer(model, parsed.inputs, parsed.outputs,
                                              deadline=deadline)
        # Rendering is CPU work on the event loop like parsing: off it past the same size
        # (about 8 bytes of JSON per value).
        size = sum(array.size for array in outputs.values())
        with tracing.span("encode"):
            content, json_length = await off_loop(size * 8, render_answer, info, outputs,
                                                  parsed)
        if json_length is None:
            return Response(content, media_type=JSON_MEDIA_TYPE)
        return Response(content, media_type=BINARY_MEDIA_TYPE,
                        headers={"Inference-Header-Content-Length": str(json_length)})

    @router.post("/v2/models/{name}/infer", name="v2_infer", responses=ERROR_RESPONSES,
                 openapi_extra=INFER_BODY, summary="V2 inference (default version)")
    async def infer_default(request: Request, name: str) -> Response:
        """Input ``images`` (FP32 in [0, 1] or UINT8, [N, H, W, C]) or ``image_bytes``
        (BYTES, PNG/JPEG, [N]); outputs ``cluster_id``, ``distance``, ``is_outlier``,
        ``embedding`` and ``reconstruction``, or those asked for. JSON, or JSON and binary
        tensors (the binary tensor data extension)."""
        return await infer(request, name, None)

    @router.post("/v2/models/{name}/versions/{version}/infer", name="v2_infer",
                 responses=ERROR_RESPONSES, openapi_extra=INFER_BODY,
                 summary="V2 inference (one version)")
    async def infer_version(request: Request, name: str, version: VersionSegment) -> Response:
        """As the default version's inference, answered by ``version``."""
        return await infer(request, name, version)

    return router


def oip_router(dataplane: DataPlane) -> APIRouter:
    """The V2 REST API's server and model metadata, health and readiness routes, bound to
    one data plane."""
    router = APIRouter(tags=["open-inference-protocol"])

    @router.get("/v2", name="v2_server_metadata", summary="V2 server metadata")
    async def server_metadata() -> Response:
        """Server name, version and the protocol extensions served."""
        return json_response({"name": oip.SERVER_NAME, "version": oip.server_version(),
                              "extensions": list(oip.EXTENSIONS)})

    @router.get("/v2/health/live", name="v2_server_live", summary="V2 server live")
    async def live() -> Response:
        """200 while the process can serve."""
        return json_response({"live": dataplane.is_live()})

    @router.get("/v2/health/ready", name="v2_server_ready", summary="V2 server ready",
                responses={503: {"description": "No model ready yet, or draining."}})
    async def ready() -> Response:
        """200 when a model is ready and the server is not draining; 503 otherwise."""
        if dataplane.is_ready():
            return json_response({"ready": True})
        raise Unavailable("not ready: no model version is loaded and warmed up, or the "
                          "server is draining")

    def metadata(name: str, version: str | None) -> Response:
        model = params.model_ref(name, version)
        info = oip.model_info(dataplane.model_metadata(model),
                              dataplane.model_status(model.name))
        return json_response({
            "name": info.name, "versions": info.versions, "platform": info.platform,
            "inputs": [_tensor(t) for t in info.inputs],
            "outputs": [_tensor(t) for t in info.outputs],
        })

    @router.get("/v2/models/{name}", name="v2_model_metadata", responses=ERROR_RESPONSES,
                summary="V2 model metadata (default version)")
    async def metadata_default(name: str) -> Response:
        """Inputs and outputs with their datatypes and shapes; the ready versions."""
        return metadata(name, None)

    @router.get("/v2/models/{name}/versions/{version}", name="v2_model_metadata",
                responses=ERROR_RESPONSES, summary="V2 model metadata (one version)")
    async def metadata_version(name: str, version: VersionSegment) -> Response:
        """As the default version's metadata, for ``version``."""
        return metadata(name, version)

    def model_ready(name: str, version: str | None) -> Response:
        if dataplane.model_ready(params.model_ref(name, version)):
            return json_response({"name": name, "ready": True})
        raise Unavailable(f"model {name!r} is not ready (loading, or the server is draining)")

    @router.get("/v2/models/{name}/ready", name="v2_model_ready", responses=ERROR_RESPONSES,
                summary="V2 model ready (default version)")
    async def ready_default(name: str) -> Response:
        """200 when the model answers now, 503 while it loads, 404 when it is unknown."""
        return model_ready(name, None)

    @router.get("/v2/models/{name}/versions/{version}/ready", name="v2_model_ready",
                responses=ERROR_RESPONSES, summary="V2 model ready (one version)")
    async def ready_version(name: str, version: VersionSegment) -> Response:
        """As the default version's readiness, for ``version``."""
        return model_ready(name, version)

    return router


def _tensor(spec: oip.TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}

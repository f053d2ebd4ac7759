"""TensorFlow Serving's REST API: ``:predict``, model status and model metadata.

Existing TF Serving clients work unchanged: same paths, same JSON request and answer
shapes, errors as ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service import chunked, tracing
from service.dataplane import DEFAULT_SIGNATURE, DataPlane, SignatureInfo
from service.errors import InvalidInput, NotFound
from service.rest import params, tfjson
from service.rest.encoding import (
    JSON_MEDIA_TYPE,
    check_json_media_type,
    dumps,
    expect_object,
    in_pieces,
    json_response,
    json_type,
    media_type,
    off_loop,
    parse_json,
)
from service.rest.native import ERROR_RESPONSES
from service.rest.params import VersionSegment
from service.types import ModelRef

# Above this many output values the answer is encoded on a worker thread.
INLINE_RENDER_VALUES = 256 * 1024

PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {JSON_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
    },
}
STATUS_EXAMPLE = {"model_version_status": [
    {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
]}


def tfserving_inference_router(dataplane: DataPlane) -> APIRouter:
    """TF Serving's ``:predict`` routes, bound to one data plane (served directly:
    ``service/rest/direct.py``)."""
    router = APIRouter(tags=["tensorflow-serving"])

    async def predict(request: Request, name: str, version: str | None) -> Response:
        model = params.model_ref(name, version)
        deadline = params.deadline(request)
        check_json_media_type(media_type(request.headers.get("content-type")),
                              endpoint=":predict")
        with tracing.span("decode"):
            body = await request.body()
            large = in_pieces(len(body))
            with chunked.collector_paused(large):
                document = await off_loop(len(body), _json_object, body)
                try:
                    signature_name, signature = _signature(dataplane, model, document)
                    inputs, row = await off_loop(len(body), _predict_inputs, document,
                                                 signature_name, signature)
                    output_filter = _output_filter(document.get("output_filter"))
                finally:
                    if large:  # freed in pieces on the worker thread, not here at once
                        await off_loop(len(body), chunked.release, document)
        _, outputs = await dataplane.predict(model, signature_name, inputs, output_filter,
                                             deadline=deadline)
        render = tfjson.row_answer if row else tfjson.columnar_answer
        with tracing.span("encode"):
            if sum(array.size for array in outputs.values()) > INLINE_RENDER_VALUES:
                body = await asyncio.to_thread(lambda: dumps(render(outputs)))
            else:
                body = dumps(render(outputs))
        return Response(body, media_type=JSON_MEDIA_TYPE)

    @router.post("/v1/models/{name}:predict", name="predict", responses=ERROR_RESPONSES,
                 openapi_extra=PREDICT_BODY, summary="TF Serving Predict (default version)")
    async def predict_default(request: Request, name: str) -> Response:
        """TF Serving's ``:predict``: row (``instances``) or columnar (``inputs``) format."""
        return await predict(request, name, None)

    @router.post("/v1/models/{name}/versions/{version}:predict", name="predict",
                 responses=ERROR_RESPONSES, openapi_extra=PREDICT_BODY,
                 summary="TF Serving Predict (one version)")
    async def predict_version(request: Request, name: str, version: VersionSegment) -> Response:
        """TF Serving's ``:predict`` answered by ``version``."""
        return await predict(request, name, version)

    return router


def tfserving_router(dataplane: DataPlane) -> APIRouter:
    """TF Serving's model status and metadata routes, bound to one data plane."""
    router = APIRouter(tags=["tensorflow-serving"])

    def status(name: str, version: str | None) -> Response:
        rows = dataplane.model_status(params.model_name(name), params.model_version(version))
        return json_response({"model_version_status": [
            {"version": str(row.version), "state": row.state,
             "status": {"error_code": row.error_code, "error_message": row.error_message}}
            for row in rows
        ]})

    status_doc: dict[str, Any] = {
        "name": "model_status", "responses": {
            **ERROR_RESPONSES,
            200: {"content": {JSON_MEDIA_TYPE: {"example": STATUS_EXAMPLE}}},
        },
    }

    @router.get("/v1/models/{name}", summary="TF Serving model status (every version)",
                **status_doc)
    async def status_all(name: str) -> Response:
        """TF Serving's GetModelStatus: the state of every known version."""
        return status(name, None)

    @router.get("/v1/models/{name}/versions/{version}", summary="TF Serving model status",
                **status_doc)
    async def status_version(name: str, version: VersionSegment) -> Response:
        """TF Serving's GetModelStatus for one version."""
        return status(name, version)

    def metadata(name: str, version: str | None, library_versions: bool) -> Response:
        return json_response(tfjson.metadata_answer(
            dataplane.model_metadata(params.model_ref(name, version)),
            library_versions=library_versions,
        ))

    @router.get("/v1/models/{name}/metadata", name="model_metadata", responses=ERROR_RESPONSES,
                summary="TF Serving model metadata (+ the bundle manifest)")
    async def metadata_default(name: str, include_library_versions: bool = False) -> Response:
        """Signatures in TF Serving's JSON shape, plus ``aecluster``: the bundle's manifest
        (its ``library_versions`` only with ``?include_library_versions=true``)."""
        return metadata(name, None, include_library_versions)

    @router.get("/v1/models/{name}/versions/{version}/metadata", name="model_metadata",
                responses=ERROR_RESPONSES, summary="TF Serving model metadata of one version")
    async def metadata_version(name: str, version: VersionSegment,
                               include_library_versions: bool = False) -> Response:
        """As the default-version metadata, for ``version``."""
        return metadata(name, version, include_library_versions)

    return router


def _json_object(body: bytes) -> dict[str, Any]:
    return expect_object(parse_json(body), what="the request body")


def _signature(dataplane: DataPlane, model: ModelRef,
               document: dict[str, Any]) -> tuple[str, SignatureInfo]:
    """The signature a ``:predict`` body names (its inputs' names and dtypes drive parsing)."""
    signature_name = document.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature_name, str):
        raise InvalidInput(f'"signature_name" must be a string, got {json_type(signature_name)}')
    signature_name = signature_name or DEFAULT_SIGNATURE
    signatures = dataplane.model_metadata(model).signatures
    signature = signatures.get(signature_name)
    if signature is None:
        raise NotFound(f"signature {signature_name!r} not found; signatures: "
                       f"{', '.join(sorted(signatures))}")
    return signature_name, signature


def _predict_inputs(document: dict[str, Any], signature_name: str,
                    signature: SignatureInfo) -> tuple[dict[str, Any], bool]:
    """(input tensors, is row format) of a ``:predict`` body."""
    has_rows, has_columns = "instances" in document, "inputs" in document
    if has_rows and has_columns:
        raise InvalidInput('the body has both "instances" and "inputs": send one, "instances" '
                           '(row format) or "inputs" (columnar format)')
    if not has_rows and not has_columns:
        raise InvalidInput('the body needs "instances" (row format) or "inputs" (columnar '
                           'format)')
    if has_rows:
        return tfjson.row_inputs(document["instances"], signature_name, signature), True
    return tfjson.columnar_inputs(document["inputs"], signature_name, signature), False


def _output_filter(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f'"output_filter" must be an array of output names, got '
                           f"{json_type(value)}")
    return value or None

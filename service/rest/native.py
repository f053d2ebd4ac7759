"""The native endpoint: ``POST /v1/models/{name}[/versions/{v}]:cluster``.

Three body forms, chosen by Content-Type:

* ``application/json`` (also no or any other type, so ``curl -d`` works):
  ``{"instances": [...], "return_reconstruction": ..., "return_embedding": ..., "top_k": ...}``
* ``multipart/form-data``: every file part is an image, options are form fields;
* ``image/*`` or ``application/octet-stream``: the body is one encoded image.

Query parameters carry options for every form; options in a JSON body or a form win.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import Response

from service import chunked, tracing
from service.dataplane import DataPlane, VersionInfo
from service.errors import InvalidInput, PayloadTooLarge
from service.imagecodec import encode_png
from service.rest import params
from service.rest.encoding import (
    JSON_MEDIA_TYPE,
    check_json_media_type,
    decode_b64,
    dumps,
    expect_object,
    finite_or_none,
    in_pieces,
    json_type,
    media_type,
    numeric_array,
    off_loop,
    parse_json,
    validation_message,
)
from service.rest.params import VersionSegment
from service.rest.schemas import (
    BINARY_SCHEMA,
    MULTIPART_SCHEMA,
    ClusterParams,
    ClusterResponse,
    ErrorBody,
)
from service.settings import Settings
from service.types import ClusterOptions, ClusterResult, ImageInput

# Encoding many reconstructions as PNG and JSON is CPU work: beyond this many output
# pixels it runs on a worker thread so the event loop keeps serving other requests.
INLINE_RENDER_PIXELS = 256 * 1024
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed request or image (the message says "
                                             "what and where)."},
    404: {"model": ErrorBody, "description": "Unknown model or version."},
    415: {"model": ErrorBody, "description": "A body in a media type the endpoint does not "
                                             "read."},
    413: {"model": ErrorBody, "description": "Body, image or image count over the limit."},
    503: {"model": ErrorBody, "description": "Queue full (with Retry-After), model not ready, "
                                             "or server draining."},
    504: {"model": ErrorBody, "description": "X-Request-Timeout-Ms passed while queued."},
}

CLUSTER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ClusterRequest"}},
            "multipart/form-data": {"schema": MULTIPART_SCHEMA},
            "image/png": {"schema": BINARY_SCHEMA},
            "image/jpeg": {"schema": BINARY_SCHEMA},
        },
    },
    "parameters": [
        {"name": name, "in": "query", "required": False, "schema": schema,
         "description": "Option for raw image bodies (JSON and form fields win)."}
        for name, schema in (
            ("return_reconstruction", {"type": "string", "enum": ["png", "array", "none"]}),
            ("return_embedding", {"type": "boolean"}),
            ("top_k", {"type": "integer", "minimum": 0}),
        )
    ] + [
        {"name": "X-Request-Timeout-Ms", "in": "header", "required": False,
         # what params.deadline accepts: a positive, finite number
         "schema": {"type": "number", "exclusiveMinimum": 0},
         "description": "Give up (504) if the images are still queued after this long."},
        {"name": "X-Request-Id", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "Echoed back and logged; generated when absent."},
    ],
}


def cluster_router(dataplane: DataPlane, settings: Settings) -> APIRouter:
    """The ``:cluster`` routes, bound to one data plane."""
    router = APIRouter(tags=["native"])

    async def handle(request: Request, name: str, version: str | None) -> Response:
        model = params.model_ref(name, version)
        deadline = params.deadline(request)
        with tracing.span("decode"):
            images, options = await read_cluster_request(request, settings)
        info, results = await dataplane.cluster(model, images, options, deadline=deadline)
        with tracing.span("encode"):
            return await render_cluster_answer(info, results, options)

    @router.post(
        "/v1/models/{name}:cluster", name="cluster", response_model=ClusterResponse,
        responses=ERROR_RESPONSES, openapi_extra=CLUSTER_BODY,
        summary="Cluster images with the model's default (highest ready) version",
    )
    async def cluster(request: Request, name: str) -> Response:
        """Cluster id, distance, outlier flag and label of each image, plus the
        reconstruction, embedding and nearest clusters when asked for."""
        return await handle(request, name, None)

    @router.post(
        "/v1/models/{name}/versions/{version}:cluster", name="cluster",
        response_model=ClusterResponse, responses=ERROR_RESPONSES, openapi_extra=CLUSTER_BODY,
        summary="Cluster images with one version of a model",
    )
    async def cluster_version(request: Request, name: str, version: VersionSegment) -> Response:
        """As the default-version endpoint, answered by ``version``."""
        return await handle(request, name, version)

    return router


async def read_cluster_request(
    request: Request, settings: Settings
) -> tuple[list[ImageInput], ClusterOptions]:
    """The images and options of a ``:cluster`` request, whichever body form it uses."""
    content_type = media_type(request.headers.get("content-type"))
    fields: dict[str, Any] = dict(request.query_params)
    if fields:
        # Checked on their own even when the body sets the same options (the body wins):
        # a bad query value is the caller's mistake, not something to ignore (issue 39's
        # fuzzing: top_k=-43438065284616 in the query was answered 200).
        _options(fields)
    if content_type == "multipart/form-data":
        images, form_fields = await _read_multipart(request, settings)
        fields.update(form_fields)
    elif content_type.startswith(RAW_IMAGE_TYPES):
        body = await request.body()
        if not body:
            raise InvalidInput(f"the request body is empty: send the image as a {content_type} "
                               "body")
        images = [ImageInput(encoded=body)]
    else:
        check_json_media_type(content_type, endpoint=":cluster",
                              alternatives="multipart/form-data file uploads, or an image/png "
                              "or image/jpeg body")
        body = await request.body()
        images, document = await off_loop(len(body), _json_request, body, content_type,
                                          settings)
        fields.update(document)
    return images, _options(fields)


def _json_request(body: bytes, content_type: str,
                  settings: Settings) -> tuple[list[ImageInput], dict[str, Any]]:
    """Images and the remaining (option) fields of a JSON body."""
    with chunked.collector_paused(in_pieces(len(body))):
        document = expect_object(_parse_json(body, content_type), what="the request body")
        instances = document.pop("instances", None)
        try:
            return _json_instances(instances, settings), document
        finally:
            chunked.release(instances)  # here, in pieces, not all at once later


def _parse_json(body: bytes, content_type: str) -> Any:
    try:
        return parse_json(body)
    except InvalidInput as exc:
        if content_type in ("", JSON_MEDIA_TYPE) or content_type.endswith("+json"):
            raise
        # curl -d without -H sends a form type: say which bodies are understood.
        raise InvalidInput(
            f"{exc.message} (Content-Type {content_type}: send JSON, multipart/form-data "
            "file uploads, or an image/png or image/jpeg body)"
        ) from exc


def _options(fields: Mapping[str, Any]) -> ClusterOptions:
    unknown = sorted(set(fields) - set(ClusterParams.model_fields))
    if unknown:
        raise InvalidInput(f"unknown option(s) {unknown}; options: instances, "
                           f"{', '.join(ClusterParams.model_fields)}")
    try:
        parsed = ClusterParams.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInput(f"invalid options: {validation_message(exc)}") from exc
    return ClusterOptions(return_reconstruction=parsed.return_reconstruction,
                          return_embedding=parsed.return_embedding, top_k=parsed.top_k)


def _json_instances(instances: Any, settings: Settings) -> list[ImageInput]:
    if instances is None:
        raise InvalidInput('the body has no "instances": send {"instances": [{"b64": ...}, ...]}')
    if not isinstance(instances, list):
        raise InvalidInput(f'"instances" must be an array of images, got {json_type(instances)}')
    if not instances:
        raise InvalidInput('"instances" is empty: send at least one image')
    _check_count(len(instances), settings)
    return [_json_image(value, index) for index, value in enumerate(instances)]


def _json_image(value: Any, index: int) -> ImageInput:
    where = f"instance {index}"
    if isinstance(value, dict):
        return ImageInput(encoded=decode_b64(value, where=where))
    if isinstance(value, list):
        return ImageInput(array=numeric_array(value, where=where))
    raise InvalidInput(
        f'{where} must be {{"b64": "<base64 PNG/JPEG>"}} or a nested array of pixel values, '
        f"got {json_type(value)}"
    )


def _check_count(count: int, settings: Settings) -> None:
    if count > settings.max_images_per_request:
        raise PayloadTooLarge(
            f"{count} images in one request; the limit is {settings.max_images_per_request} "
            "(AEC_MAX_IMAGES_PER_REQUEST)"
        )


async def _read_multipart(request: Request,
                          settings: Settings) -> tuple[list[ImageInput], dict[str, str]]:
    # Read through the body limit first, then parse the bytes in memory: the parser never
    # sees more than max_body_bytes.
    body = await request.body()

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, replay(),
                             max_files=settings.max_images_per_request, max_fields=32)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise PayloadTooLarge(
                f"more than {settings.max_images_per_request} files in one request "
                "(AEC_MAX_IMAGES_PER_REQUEST)"
            ) from exc
        raise InvalidInput(f"malformed multipart body: {exc.message}") from exc
    images: list[ImageInput] = []
    fields: dict[str, str] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                images.append(ImageInput(encoded=await value.read()))
            elif key in fields:
                raise InvalidInput(f"form field {key!r} is given twice")
            else:
                fields[key] = value
    finally:
        await form.close()
    if not images:
        raise InvalidInput("the form has no file parts: upload each image as a file "
                           "(curl -F 'file=@image.png')")
    return images, fields


async def render_cluster_answer(info: VersionInfo, results: Sequence[ClusterResult],
                                options: ClusterOptions) -> Response:
    """The JSON answer; PNG and JSON encoding of big answers happen on a worker thread."""
    pixels = sum(r.reconstruction.size for r in results if r.reconstruction is not None)
    if pixels > INLINE_RENDER_PIXELS:
        body = await asyncio.to_thread(_cluster_body, info, results, options)
    else:
        body = _cluster_body(info, results, options)
    return Response(body, media_type=JSON_MEDIA_TYPE)


def _cluster_body(info: VersionInfo, results: Sequence[ClusterResult],
                  options: ClusterOptions) -> bytes:
    return dumps({
        "model": info.name,
        "version": info.version,
        "predictions": [_prediction(r, options) for r in results],
    })


def _prediction(result: ClusterResult, options: ClusterOptions) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "cluster_id": result.cluster_id,
        "distance": finite_or_none(result.distance),
        "is_outlier": result.is_outlier,
        "label": result.label,
    }
    if result.reconstruction is not None:
        if options.return_reconstruction == "png":
            png = encode_png(result.reconstruction)
            entry["reconstruction"] = {"b64": base64.b64encode(png).decode("ascii")}
        else:
            entry["reconstruction"] = result.reconstruction  # numpy: dumps writes it in C
    if result.reconstruction_error is not None:
        entry["reconstruction_error"] = finite_or_none(result.reconstruction_error)
    if result.psnr is not None:
        entry["psnr"] = finite_or_none(result.psnr)
    if result.embedding is not None:
        entry["embedding"] = result.embedding
    if options.top_k > 0:
        entry["top_k"] = [{"cluster_id": c, "distance": finite_or_none(d)}
                          for c, d in result.top_k]
    return entry

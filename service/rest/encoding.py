"""JSON in and out of the REST API: bodies, base64, nested arrays and answers.

Every helper that reads caller data raises :class:`service.errors.InvalidInput` with a
message naming where the problem is (``instance 3``, ``inputs['images']``...).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import ValidationError
from starlette.responses import Response

from service import chunked
from service.errors import (
    InternalError,
    InvalidInput,
    MethodNotAllowed,
    QueueFull,
    ServiceError,
    Unauthenticated,
    UnsupportedMediaType,
)

logger = logging.getLogger(__name__)

# What a caller sees of a 500: the details are in the server's log only.
INTERNAL_MESSAGE = "internal server error; the server log has the details"
JSON_MEDIA_TYPE = "application/json"
# What a JSON body may be labelled: JSON itself, no label at all, or curl's `-d` default
# (TF Serving's own REST examples post JSON with `curl -d` and no Content-Type).
JSON_LABELS = ("", JSON_MEDIA_TYPE, "application/x-www-form-urlencoded")
# Parsing a body and turning nested lists into arrays is CPU work that holds the event
# loop; past this many bytes it runs on a worker thread so other requests keep flowing.
INLINE_PARSE_BYTES = 256 * 1024
# Past this many bytes a body is parsed in pieces (service/chunked.py): one orjson call
# holds the GIL, so even on the worker thread it held every other request, 1.3 s for 30 MB.
# Callers pause the garbage collector for such bodies until the parsed lists are released.
CHUNKED_PARSE_BYTES = 1024 * 1024

T = TypeVar("T")


async def off_loop(size: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` inline for small inputs (``size`` bytes), on a worker thread for big ones."""
    if size > INLINE_PARSE_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def media_type(content_type: str | None) -> str:
    """The bare, lower-case media type of a Content-Type header ("" when there is none)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_json_media_type(media: str, *, endpoint: str, alternatives: str = "") -> None:
    """Refuse a body labelled as something other than JSON (415) before reading it.

    Issue 39: ``:predict`` parsed JSON sent as ``image/png``, so the schema promised less
    than the server took and a mislabelled body got a misleading answer.
    """
    if media in JSON_LABELS or media.endswith("+json"):
        return
    also = f", or {alternatives}" if alternatives else ""
    raise UnsupportedMediaType(
        f"{endpoint} does not read a {media} body: send JSON (Content-Type: "
        f"{JSON_MEDIA_TYPE}){also}"
    )


def in_pieces(size: int) -> bool:
    """Whether a body of ``size`` bytes is parsed, converted and freed in pieces, with the
    garbage collector paused until its lists are freed (service/chunked.py)."""
    return size > CHUNKED_PARSE_BYTES


def parse_json(body: bytes) -> Any:
    """Decode a request body as JSON (NaN/Infinity literals are accepted, as TF Serving does).

    orjson parses (in C, several times faster than the standard library on the nested
    number arrays of image requests); a body it refuses is parsed again by the standard
    library, which accepts the NaN and Infinity literals and names the line and column of
    a real syntax error.
    """
    if not body.strip():
        raise InvalidInput("the request body is empty: send a JSON object")
    if in_pieces(len(body)):
        parsed = chunked.loads_in_chunks(body)
        if parsed is not None:
            return parsed
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the body is not UTF-8 encoded JSON: {exc.reason}") from exc
    except RecursionError as exc:
        raise InvalidInput("malformed JSON: nested too deeply") from exc


def expect_object(value: Any, *, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else InvalidInput."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def is_b64_object(value: Any) -> bool:
    """True for ``{"b64": ...}``, TensorFlow Serving's wrapper for binary values."""
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def decode_b64(value: Any, *, where: str) -> bytes:
    """The bytes of a ``{"b64": "..."}`` object (standard or URL-safe alphabet)."""
    if not is_b64_object(value):
        keys = sorted(value) if isinstance(value, dict) else None
        got = f"an object with keys {keys}" if keys is not None else json_type(value)
        raise InvalidInput(f'{where} must be {{"b64": "<base64 bytes>"}}, got {got}')
    text = value["b64"]
    if not isinstance(text, str):
        raise InvalidInput(f'{where}: "b64" must be a string, got {json_type(text)}')
    # Line-wrapped base64 (the `base64` tool wraps at 76 columns) is still base64.
    compact = "".join(text.split())
    altchars = b"-_" if ("-" in compact or "_" in compact) else None
    try:
        return base64.b64decode(compact, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f'{where}: "b64" is not valid base64 ({exc})') from exc


def numeric_array(value: Any, *, where: str) -> np.ndarray:
    """A nested JSON list of numbers as an array (int64 or float64); rejects anything else.

    Ranges, NaN/inf, rank and channels are the data plane's to check: it knows the model.
    """
    try:
        array = chunked.asarray_in_slices(value)
    except (ValueError, TypeError) as exc:
        # numpy raises for ragged nesting ("inhomogeneous shape after 2 dimensions").
        raise InvalidInput(f"{where} is not a rectangular array of numbers: {exc}") from exc
    if array.dtype.kind == "b":
        raise InvalidInput(f"{where} holds booleans; pixel values must be numbers")
    if array.dtype.kind not in "iuf":
        raise InvalidInput(
            f"{where} holds non-numeric values ({_kind_name(array)}); pixel values must be "
            "numbers"
        )
    return array


def _kind_name(array: np.ndarray) -> str:
    if array.dtype.kind in "US":
        return "strings"
    return "null or mixed values" if array.dtype.kind == "O" else str(array.dtype)


def validation_message(exc: ValidationError, *, prefix: str = "") -> str:
    """Pydantic errors as one line: ``field: problem; field: problem``."""
    return "; ".join(
        f"{prefix}{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
        for err in exc.errors()
    )


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: such values are sent as null."""
    return value if math.isfinite(value) else None


def dumps(content: Any) -> bytes:
    """Compact UTF-8 JSON; numpy arrays and scalars are written as they are (no tolist()).

    orjson writes C-contiguous arrays in C; other arrays go through ``tolist``. Values are
    written at their own precision: a float32 as the shortest text that reads back as the
    same float32. Callers send non-finite floats as null (:func:`finite_or_none`); orjson
    would write null for them too rather than the invalid JSON ``NaN``.
    """
    return orjson.dumps(content, default=_numpy_value,
                        option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def _numpy_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):  # not C-contiguous, or a dtype orjson does not write
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_response(content: Any, *, status_code: int = 200,
                  headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer encoded with :func:`dumps` (numpy values must be converted first)."""
    return Response(dumps(content), status_code=status_code, headers=headers,
                    media_type=JSON_MEDIA_TYPE)


def error_response(message: str, status_code: int,
                   headers: Mapping[str, str] | None = None) -> Response:
    """The body every error has: ``{"error": message}``."""
    return json_response({"error": message}, status_code=status_code, headers=headers)


def logged_error_response(exc: ServiceError) -> Response:
    """:func:`service_error_response`, with the refusal logged: at INFO with its class, or
    with its traceback at ERROR for an internal error. What every REST path answers a
    :class:`ServiceError` with."""
    if isinstance(exc, InternalError) or exc.http_status == HTTPStatus.INTERNAL_SERVER_ERROR:
        logger.error("internal error: %s", exc.message, exc_info=exc)
    else:
        logger.info("request refused (%d): %s", exc.http_status, exc.message,
                    extra={"error_class": type(exc).__name__})
    return service_error_response(exc)


def service_error_response(exc: ServiceError) -> Response:
    """The error table's HTTP rendering of ``exc`` (``service/errors.py``): its class's
    status and ``{"error": message}``, a generic message for a 500, ``Retry-After`` for a
    full queue, ``WWW-Authenticate`` for a missing or refused token and ``Allow`` for a
    method the path is not served for."""
    status = int(exc.http_status)
    internal = isinstance(exc, InternalError) or status == 500
    headers: dict[str, str] = {}
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = exc.challenge
    if isinstance(exc, MethodNotAllowed):
        headers["Allow"] = ", ".join(exc.allow)
    return error_response(INTERNAL_MESSAGE if internal else exc.message, status, headers)

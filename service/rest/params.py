"""What every model endpoint reads from the URL and headers: model, version, deadline."""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import Path
from starlette.requests import Request

from service import bundle
from service.errors import InvalidInput, MethodNotAllowed, NotFound
from service.types import ModelRef

TIMEOUT_HEADER = "x-request-timeout-ms"
# The verbs a model path ends with (``/v1/models/m:cluster``), all served for POST only.
POST_VERBS = ("cluster", "predict")

# The ``{version}`` path segment, documented as what the server accepts, a positive integer
# (issue 39: the schema said string). It stays a string to the framework, so that
# model_version parses it and a bad one gets this service's own 400 message.
VersionSegment = Annotated[str, Path(
    description="A model version: a positive integer.",
    json_schema_extra={"type": "integer", "minimum": 1},
)]


def model_name(name: str) -> str:
    """``name`` if it can be a model's name; never lets a path reach the repository.

    Starlette has already percent-decoded the path, so ``..``, ``%2e%2e`` and ``%2f`` all
    arrive here as dots and slashes and fail the bundle's name pattern.
    """
    if ":" in name:
        _check_post_verb(name)
        verb = name.rpartition(":")[2]
        raise NotFound(
            f"no endpoint {verb!r} for this method: POST :cluster and :predict, GET the model "
            "(status) or /metadata"
        )
    try:
        return bundle.validate_model_name(name)
    except bundle.BundleError as exc:
        raise NotFound(str(exc)) from exc


def _check_post_verb(segment: str) -> None:
    """Refuse ``m:cluster`` or ``1:predict`` as the last segment of a GET route's path.

    Only GET routes end in {name} or {version}, so such a segment is a GET of a POST
    endpoint: 405 with Allow, as HTTP says (issue 39: it was 404 or 400, as if the path
    were not served at all).
    """
    head, colon, verb = segment.rpartition(":")
    if colon and verb in POST_VERBS and ":" not in head:
        raise MethodNotAllowed(f":{verb} is served for POST only; allowed: POST",
                               allow=("POST",))


def model_version(text: str | None) -> int | None:
    """The version segment of ``/versions/{v}`` as a positive integer (None: absent)."""
    if text is None:
        return None
    _check_post_verb(text)
    if not text.isascii() or not text.isdigit() or int(text) <= 0 or len(text) > 18:
        raise InvalidInput(f"version must be a positive integer, got {text!r}")
    return int(text)


def model_ref(name: str, version: str | None = None) -> ModelRef:
    """A :class:`ModelRef` from the URL's path parameters."""
    return ModelRef(model_name(name), model_version(version))


def deadline(request: Request) -> float | None:
    """Absolute ``time.monotonic()`` deadline from ``X-Request-Timeout-Ms`` (None: absent)."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        millis = float(raw)
    except ValueError:
        millis = math.nan
    if not math.isfinite(millis) or millis <= 0:
        raise InvalidInput(
            f"X-Request-Timeout-Ms must be a positive number of milliseconds, got {raw!r}"
        )
    return time.monotonic() + millis / 1000.0

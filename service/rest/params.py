"""What every model endpoint reads from the URL and headers: model, version, deadline."""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import Path
from starlette.requests import Request

from service import bundle
from service.errors import InvalidInput, NotFound
from service.types import ModelRef

TIMEOUT_HEADER = "x-request-timeout-ms"

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
        verb = name.rpartition(":")[2]
        raise NotFound(
            f"no endpoint {verb!r} for this method: POST :cluster and :predict, GET the model "
            "(status) or /metadata"
        )
    try:
        return bundle.validate_model_name(name)
    except bundle.BundleError as exc:
        raise NotFound(str(exc)) from exc


def model_version(text: str | None) -> int | None:
    """The version segment of ``/versions/{v}`` as a positive integer (None: absent)."""
    if text is None:
        return None
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

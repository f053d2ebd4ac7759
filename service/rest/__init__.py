"""The REST transport (FastAPI): native ``:cluster``, TensorFlow Serving's REST API and
operations endpoints, as thin adapters over one :class:`service.dataplane.DataPlane`.

Modules: ``app`` (factory and error rendering), ``middleware`` (request id, body limit,
metrics), ``native`` (``:cluster``), ``tfserving`` + ``tfjson`` (TF Serving's API and JSON
formats), ``operations`` (health, readiness, metrics), ``page`` (the web page at
``/`` and ``/static/``), ``params`` (model, version, deadline), ``encoding`` (JSON, base64,
arrays), ``schemas`` (pydantic models for /docs).
"""

from __future__ import annotations

from service.rest.app import create_app

__all__ = ["create_app"]

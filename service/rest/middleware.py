"""Per-request plumbing around every route: request id, body limit, metrics, access log,
the request's span when tracing is on (``service/tracing.py``), and ``Connection: close``
on every answer once the server drains, and the token check when the server requires
tokens.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware) so that it can wrap
``receive`` - the body limit is enforced while the body streams in - and so that an
unexpected exception becomes one logged traceback and one generic 500, not two.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs, tracing
from service.errors import PayloadTooLarge, Unauthenticated
from service.metrics import Metrics, RequestMetrics, RequestModel, request_model
from service.rest.encoding import dumps, service_error_response
from service.rest.operations import OPEN_PATHS
from service.security import API_KEY, AUTHORIZATION, TokenFile
from service.traffic import Traffic

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("service.rest.access")

REQUEST_ID_HEADER = "x-request-id"
# A caller's id is echoed into headers and logs: accept only short, boring ones.
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# nginx's code for "the client went away before the answer": not a server error.
CLIENT_CLOSED = 499
UNKNOWN_METHOD = "unknown"


def incoming_request_id(value: str | None) -> str:
    """The caller's ``X-Request-Id`` if it is reasonable, else a new id."""
    if value is not None and _REQUEST_ID_PATTERN.match(value):
        return value
    return logs.new_request_id()


def method_label(scope: Scope) -> str:
    """The API method of a request for metric labels: the matched route's name.

    Route names are a fixed set, so labels stay few whatever paths callers invent.
    """
    route = scope.get("route")
    name = getattr(route, "name", None)
    return name if isinstance(name, str) and name else UNKNOWN_METHOD


class BodyLimit:
    """A ``receive`` that refuses a body over ``limit`` bytes.

    The declared Content-Length is checked before the first byte is read; chunked bodies
    (no length) are counted as they arrive and refused as soon as they pass the limit, so an
    oversized body is never read in full. Raised inside the handler's read, the error is
    rendered like any other :class:`PayloadTooLarge`.
    """

    def __init__(self, receive: Receive, headers: Headers, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._seen = 0
        self._declared = headers.get("content-length")

    async def __call__(self) -> Message:
        if self._declared is not None and self._declared.isdigit() \
                and int(self._declared) > self._limit:
            raise PayloadTooLarge(
                f"the request body is {self._declared} bytes; the limit is {self._limit} "
                "bytes (AEC_MAX_BODY_BYTES)"
            )
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._limit:
                raise PayloadTooLarge(
                    f"the request body is over the limit of {self._limit} bytes "
                    "(AEC_MAX_BODY_BYTES)"
                )
        return message


class RequestContextMiddleware:
    """Request id in/out, body limit, ``aecluster_requests_total`` and latency (with the
    trace as exemplar when tracing is on), access log, and the request's span.

    While ``draining()`` is true every answer carries ``Connection: close``: a keep-alive
    caller closes its connection after this answer and opens the next one elsewhere,
    instead of having the connection closed under a request it is sending (issue 39: with
    no preStop hook, keep-alive callers got connection resets).
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int,
                 draining: Callable[[], bool] = lambda: False,
                 traffic: Traffic | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.draining = draining
        self.traffic = traffic if traffic is not None else Traffic()
        self._requests = RequestMetrics(metrics, "http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        self.traffic.seen()
        headers = Headers(scope=scope)
        rid = incoming_request_id(headers.get(REQUEST_ID_HEADER))
        token = logs.request_id.set(rid)
        model = RequestModel()  # the data plane writes the resolved model here
        model_token = request_model.set(model)
        # Probes and scrapes (OPEN_PATHS) are not traced: they would bury the requests.
        span = tracing.http_request(scope, headers, rid) \
            if tracing.enabled and scope["path"] not in OPEN_PATHS else None
        state: dict[str, Any] = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                state["status"] = message["status"]
                raw = [*message.get("headers", []), (b"x-request-id", rid.encode("ascii"))]
                if self.draining():
                    raw.append((b"connection", b"close"))
                message = {**message, "headers": raw}
            await send(message)

        try:
            await self.app(scope, BodyLimit(receive, headers, self.max_body_bytes), send_with_id)
        except ClientDisconnect:
            state["status"] = CLIENT_CLOSED
            logger.info("the client disconnected before the request was read")
        except Exception:
            logger.exception("unhandled error serving %s %s", scope["method"], scope["path"])
            if not state["started"]:
                await _send_internal_error(send_with_id, rid)
            state["status"] = 500
        finally:
            status = int(state["status"])
            # Recorded while the span is current: the access log line carries its trace id.
            self._record(scope, rid, status, model.labels, time.perf_counter() - started,
                         None if span is None else span.exemplar())
            if span is not None:
                tracing.end_http_request(span, scope, status)
            request_model.reset(model_token)
            logs.request_id.reset(token)

    def _record(self, scope: Scope, rid: str, status: int, model: tuple[str, str],
                seconds: float, exemplar: dict[str, str] | None = None) -> None:
        method = method_label(scope)
        self._requests.record(method, status, model, seconds, exemplar)
        access_logger.info(
            "%s %s %d", scope["method"], scope["path"], status,
            # request_id explicitly too: handlers other than ours (tests' caplog) see it.
            extra={"request_id": rid, "http_method": scope["method"], "path": scope["path"],
                   "status": status, "api_method": method,
                   "duration_ms": round(seconds * 1000.0, 3)},
        )


class AuthMiddleware:
    """Answers 401 (``WWW-Authenticate: Bearer``) to every request outside ``OPEN_PATHS``
    without an accepted ``Authorization: Bearer`` or ``x-api-key`` token, before any route
    or body is read. Mounted inside :class:`RequestContextMiddleware`, so refusals carry a
    request id and are counted. The token is never logged."""

    def __init__(self, app: ASGIApp, *, tokens: TokenFile) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            headers = Headers(scope=scope)
            try:
                self.tokens.authenticate(headers.get(AUTHORIZATION), headers.get(API_KEY))
            except Unauthenticated as exc:
                logger.info("request refused (401): %s", exc.message,
                            extra={"error_class": type(exc).__name__})
                await service_error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _send_internal_error(send: Send, rid: str) -> None:
    body = dumps({"error": f"internal server error (request id {rid}); the server log has "
                           "the details"})
    await send({
        "type": "http.response.start",
        "status": 500,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii"))],
    })
    await send({"type": "http.response.body", "body": body})

"""One server interceptor for every RPC of the data plane.

It does, once for all servicers, what each handler would otherwise repeat:

* parses the request itself, so a malformed protobuf is INVALID_ARGUMENT naming the method
  (grpc's own deserializer would answer a bare INTERNAL);
* renders :class:`~service.errors.ServiceError` as ``grpc.StatusCode[err.grpc_code]`` with
  its message (the one error table of ``service/errors.py``), and any other exception as a
  logged traceback plus a generic INTERNAL;
* takes the ``x-request-id`` metadata (or makes one), binds it to the logging context and
  sends it back in the trailing metadata, with the status (measured, issue 38: echoing it
  in the initial metadata took one more batch operation and event-loop wake-up per call,
  and cost 12 % of the throughput at c = 32; grpc.aio sends initial metadata on its own
  only empty);
* counts ``requests_total`` and times ``request_duration_seconds`` with protocol "grpc" and
  the model the data plane resolved (``service.metrics.resolved``);
* when tracing is on (``service/tracing.py``), makes the call's span, child of the
  ``traceparent`` metadata when there is one, and puts its trace id on the latency
  histogram as an exemplar;
* when the server requires tokens, refuses every call but the health service's without an
  accepted ``authorization: Bearer <token>`` or ``x-api-key`` metadata value as
  UNAUTHENTICATED, before the request is parsed (``service/security.py``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from service import logs, tracing
from service.errors import InvalidInput, QueueFull, ServiceError, Unauthenticated
from service.metrics import Metrics, RequestMetrics, RequestModel, request_model
from service.security import API_KEY, AUTHORIZATION, TokenFile
from service.traffic import Traffic

logger = logging.getLogger(__name__)

PROTOCOL = "grpc"
REQUEST_ID_KEY = "x-request-id"
# gRPC's standard server pushback trailer: clients with a retry policy wait this long.
PUSHBACK_KEY = "grpc-retry-pushback-ms"
INTERNAL_MESSAGE = "internal error; the server logged the details (request id {request_id})"
# Request ids end up in logs and response headers: accept only short, plain tokens.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

# Full method name -> metric label. Methods not listed (health, reflection) pass through.
METHODS: dict[str, str] = {
    "/aecluster.v1.ClusterService/Cluster": "cluster",
    "/aecluster.v1.ClusterService/ClusterStream": "cluster_stream",
    "/tensorflow.serving.PredictionService/Predict": "predict",
    "/tensorflow.serving.PredictionService/GetModelMetadata": "model_metadata",
    "/tensorflow.serving.ModelService/GetModelStatus": "model_status",
    "/inference.GRPCInferenceService/ServerLive": "v2_server_live",
    "/inference.GRPCInferenceService/ServerReady": "v2_server_ready",
    "/inference.GRPCInferenceService/ModelReady": "v2_model_ready",
    "/inference.GRPCInferenceService/ServerMetadata": "v2_server_metadata",
    "/inference.GRPCInferenceService/ModelMetadata": "v2_model_metadata",
    "/inference.GRPCInferenceService/ModelInfer": "v2_infer",
}

# Answered without a token: the health service (Kubernetes' gRPC probes, load balancers).
OPEN_SERVICES = ("/grpc.health.v1.Health/",)

Handler = Any  # grpc.RpcMethodHandler (untyped in grpcio)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Errors, request ids and metrics for the methods in ``methods``; with ``tokens``, the
    token check for every method outside ``OPEN_SERVICES``."""

    def __init__(self, metrics: Metrics, methods: dict[str, str] | None = None,
                 tokens: TokenFile | None = None, traffic: Traffic | None = None) -> None:
        self.traffic = traffic if traffic is not None else Traffic()
        self._metrics = RequestMetrics(metrics, PROTOCOL)
        self._methods = dict(METHODS if methods is None else methods)
        self._tokens = tokens
        # The wrapped handler of each method, built on its first call: the servicers'
        # handlers never change, and building the wrapper per call was measurable.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Handler]],
        handler_call_details: Any,
    ) -> Handler:
        self.traffic.seen()
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if self._tokens is not None and handler is not None \
                and not method.startswith(OPEN_SERVICES):
            try:
                _authenticate(self._tokens, handler_call_details.invocation_metadata)
            except Unauthenticated as exc:
                return self._refusal(method, handler, exc)
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        if handler is not None:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        label = self._methods.get(method)
        if handler is None or label is None:
            return handler
        parse = _parser(method, handler.request_deserializer)
        if handler.unary_unary is not None:
            return handler._replace(
                request_deserializer=None,
                unary_unary=self._unary(handler.unary_unary, parse, label, method),
            )
        if handler.stream_stream is not None:
            return handler._replace(
                request_deserializer=None,
                stream_stream=self._stream(handler.stream_stream, parse, label, method),
            )
        return handler  # no unary-stream or stream-unary methods in METHODS

    def _refusal(self, method: str, handler: Handler, exc: Unauthenticated) -> Handler:
        """A handler of ``handler``'s kind that answers ``exc`` without reading the request
        (counted and logged like any failed call of the data plane's methods)."""
        label = self._methods.get(method)

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            if label is None:
                logger.info("grpc %s refused: %s", method, exc.message)
                await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)
            else:
                call = _Call(self._metrics, label, context, method)
                call.begin()
                await call.fail(exc)

        kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
                    if getattr(handler, k) is not None)
        return handler._replace(request_deserializer=None, **{kind: refuse})

    def _unary(self, behavior: Callable[..., Awaitable[Any]], parse: Callable[[bytes], Any],
               label: str, method: str,
               ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(self._metrics, label, context, method)
            try:
                call.begin()
                return await behavior(parse(raw), context)
            except BaseException as exc:
                await call.fail(exc)
                raise
            finally:
                call.end()

        return handle

    def _stream(self, behavior: Callable[..., AsyncIterator[Any]], parse: Callable[[bytes], Any],
                label: str, method: str,
                ) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext],
                              AsyncIterator[Any]]:
        async def handle(raw: AsyncIterator[bytes],
                         context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(self._metrics, label, context, method)
            try:
                call.begin()
                async for response in behavior(_parsed(raw, parse), context):
                    yield response
            except BaseException as exc:
                await call.fail(exc)
                raise
            finally:
                call.end()

        return handle


class _Call:
    """Bookkeeping of one RPC: request id, status code, duration, and its span when tracing
    is on."""

    def __init__(self, metrics: RequestMetrics, label: str,
                 context: grpc.aio.ServicerContext, method: str) -> None:
        self.metrics = metrics
        self.label = label
        self.context = context
        self.method = method
        self.code = "OK"
        self.start = time.perf_counter()
        self.request_id = ""
        self.ended = False
        self.model = RequestModel()  # the data plane writes the resolved model here
        self.span: tracing.RequestSpan | None = None

    def begin(self) -> None:
        metadata = self.context.invocation_metadata()
        for key, value in metadata or ():
            if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.match(value):
                self.request_id = value
        if not self.request_id:
            self.request_id = logs.new_request_id()
        logs.request_id.set(self.request_id)
        # Like the request id, not reset: grpc.aio runs each RPC in a task of its own.
        request_model.set(self.model)
        self.context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        if tracing.enabled:
            # Attached here, in the handler's task: the servicer, the data plane and the
            # batcher start their spans under it.
            self.span = tracing.grpc_request(self.method, metadata, self.request_id)

    async def fail(self, exc: BaseException) -> None:
        """Turn ``exc`` into the RPC's status; raises grpc's AbortError for the server."""
        if isinstance(exc, grpc.aio.AbortError):
            # The handler aborted by itself: keep the code it chose.
            self.code = _code_name(self.context.code()) or "UNKNOWN"
            return
        trailers: tuple[tuple[str, str], ...] = ((REQUEST_ID_KEY, self.request_id),)
        if isinstance(exc, ServiceError):
            self.code = exc.grpc_code
            level = logging.ERROR if self.code == "INTERNAL" else logging.INFO
            logger.log(level, "grpc %s failed: %s %s", self.label, self.code, exc.message)
            if isinstance(exc, QueueFull):
                trailers += ((PUSHBACK_KEY, str(max(0, round(exc.retry_after * 1000)))),)
            # Recorded before abort: once the status is sent the client may look at metrics.
            self.end()
            await self.context.abort(grpc.StatusCode[self.code], exc.message,
                                     trailing_metadata=trailers)
        if not isinstance(exc, Exception):  # CancelledError, KeyboardInterrupt...
            self.code = "CANCELLED"
            return
        self.code = "INTERNAL"
        logger.error("grpc %s failed with an unexpected error", self.label, exc_info=exc)
        self.end()
        await self.context.abort(grpc.StatusCode.INTERNAL,
                                 INTERNAL_MESSAGE.format(request_id=self.request_id),
                                 trailing_metadata=trailers)

    def end(self) -> None:
        """Count and time the call, once; end its span."""
        if self.ended:
            return
        self.ended = True
        span = self.span
        if span is None:
            self.metrics.record(self.label, self.code, self.model.labels,
                                time.perf_counter() - self.start)
            return
        self.metrics.record(self.label, self.code, self.model.labels,
                            time.perf_counter() - self.start, span.exemplar())
        tracing.end_grpc_request(span, self.code, grpc.StatusCode[self.code].value[0])


def _authenticate(tokens: TokenFile, metadata: Any) -> None:
    authorization = api_key = None
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str):
            authorization = value
        elif key == API_KEY and isinstance(value, str):
            api_key = value
    tokens.authenticate(authorization, api_key)


def _parser(method: str, deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except DecodeError as exc:
            raise InvalidInput(
                f"the request is not a valid protobuf message for {method}: {exc}"
            ) from exc

    return parse


async def _parsed(raw: AsyncIterator[bytes], parse: Callable[[bytes], Any]) -> AsyncIterator[Any]:
    async for message in raw:
        yield parse(message)


def _code_name(code: Any) -> str | None:
    return code.name if isinstance(code, grpc.StatusCode) else None

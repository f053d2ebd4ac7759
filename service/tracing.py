"""OpenTelemetry tracing of requests: off unless ``OTEL_TRACES_EXPORTER`` asks for it.

:func:`configure_from_environment` follows the OpenTelemetry SDK's own reading of the
environment (``opentelemetry.sdk._configuration``): ``OTEL_TRACES_EXPORTER`` unset or
``none`` means no exporter, so no tracing; ``otlp`` is the OTLP exporter over gRPC unless
``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` says otherwise; ``OTEL_SDK_DISABLED=true`` wins
over everything. The SDK itself then reads the rest (endpoint, headers, sampler, service
name, batch processor limits). docs/tracing.md has the variables and the span tree.

The transports, the data plane and the batcher read :data:`enabled` before any other call
here: with tracing off a request pays one attribute read at each place a span would start
(issue 38 measures the request path in microseconds), and never calls the tracer, attaches
a context or parses a ``traceparent``. The flag is module state, like the SDK's own global
provider, rather than an object handed to every constructor: the checks sit on the hot
path, and a flag costs one load there.

Spans recorded per request, under the request's own span (HTTP or gRPC, a SERVER span
whose parent is the caller's W3C ``traceparent`` when one came):

* ``decode``: the transport reads and parses the body or protobuf into the data plane's
  inputs;
* ``preprocess``: the data plane decodes PNG/JPEG images and resizes them, or checks
  float arrays, into the model's batch;
* ``queue wait``: from entering the batcher's queue until the worker took the batch;
* ``model``: the model call of that batch on the worker thread, with the batch's size;
* ``encode``: the transport writes the answer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.settings import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

enabled: bool = False
"""Whether requests are traced. Read it before calling anything else here."""

_tracer: trace.Tracer = trace.NoOpTracer()
_provider: TracerProvider | None = None
# W3C Trace Context only, whatever OTEL_PROPAGATORS says: traceparent is what the issue and
# every OpenTelemetry SDK send by default; baggage and B3 are not read.
_PROPAGATOR = TraceContextTextMapPropagator()
_OFF: AbstractContextManager[None] = nullcontext()

TRACER_NAME = "aecluster"
DEFAULT_SERVICE_NAME = "aecluster"
# Exporter names OTEL_TRACES_EXPORTER may hold here: the SDK's names for the exporters this
# distribution installs ("otlp" resolves to the gRPC one as the SDK resolves it).
OTLP_EXPORTERS = ("otlp", "otlp_proto_grpc")
CONSOLE_EXPORTER = "console"
GRPC_PROTOCOL = "grpc"
# gRPC codes that make a server span an error (OpenTelemetry's RPC conventions); the rest
# (INVALID_ARGUMENT, NOT_FOUND, ...) are the caller's doing.
GRPC_SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL",
                                "UNAVAILABLE", "DATA_LOSS"})


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The trace exporters ``environ`` asks for ([]: tracing stays off).

    Raises :class:`ConfigError` for an exporter or OTLP protocol this server cannot use,
    rather than starting without the traces the operator asked for.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    value = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not value or value == "none":
        return []
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in (*OTLP_EXPORTERS, CONSOLE_EXPORTER)]
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={value!r}: {', '.join(unknown)} not installed; use otlp "
            "(OTLP over gRPC), console (spans printed to stdout) or none"
        )
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or GRPC_PROTOCOL).strip()
    if "otlp" in names and protocol != GRPC_PROTOCOL:
        raise ConfigError(
            f"OTLP protocol {protocol!r} (OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL): only the "
            "grpc exporter is installed; unset it or set it to grpc (the collector's port "
            "4317)"
        )
    return ["otlp" if name in OTLP_EXPORTERS else name for name in dict.fromkeys(names)]


def configure_from_environment(environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on when the environment asks for an exporter; returns whether it is on.

    The SDK reads its own variables from ``os.environ`` (endpoint, headers, timeout,
    sampler, resource, batch sizes); ``environ`` only decides whether and which exporters.
    """
    names = exporter_names(os.environ if environ is None else environ)
    if not names:
        return False
    # Imported here: the SDK and the gRPC exporter load only when tracing is on.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER[_ARG], span limits
    for name in names:
        exporter: SpanExporter
        if name == CONSOLE_EXPORTER:
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP[_TRACES]_*
        # A batch processor: spans leave from its own thread, never from the event loop.
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
    install(provider)
    return True


def install(provider: TracerProvider) -> None:
    """Trace requests into ``provider`` (what the environment's set-up and tests call).

    The provider stays this module's own, never the API's global one: the global can be
    set only once per process, and FastAPI's built-in telemetry (``fastapi.telemetry``)
    turns itself on once the global provider is configured, which would trace every HTTP
    request a second time, with spans of its own.
    """
    global enabled, _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME)
    enabled = True


def shutdown() -> None:
    """Stop tracing; the provider's processors export what they still hold."""
    global enabled, _tracer, _provider
    enabled = False
    _tracer = trace.NoOpTracer()
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


# ---- only called when ``enabled`` ---------------------------------------------------------


class RequestSpan:
    """The SERVER span of one request, current (attached) until :meth:`end`.

    Its parent is the caller's ``traceparent`` when ``carrier`` holds a valid one; child
    spans started anywhere while it is current (the data plane, the batcher) nest under it.
    """

    __slots__ = ("_token", "span")

    def __init__(self, name: str, carrier: Any, attributes: Mapping[str, str | int]) -> None:
        parent = _PROPAGATOR.extract(carrier)
        self.span = _tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                       attributes=attributes)
        self._token = otel_context.attach(trace.set_span_in_context(self.span, parent))

    def exemplar(self) -> dict[str, str] | None:
        """The ``trace_id`` and ``span_id`` labels of a latency exemplar (None when the
        trace is not sampled: an exemplar would point at a trace nobody stored)."""
        context = self.span.get_span_context()
        if not context.trace_flags.sampled:
            return None
        return {"trace_id": trace.format_trace_id(context.trace_id),
                "span_id": trace.format_span_id(context.span_id)}

    def end(self, attributes: Mapping[str, str | int], *, error: str | None = None,
            name: str | None = None) -> None:
        """Record the answer, end the span and detach it (in the task that attached it)."""
        span = self.span
        if name is not None:
            span.update_name(name)
        span.set_attributes(attributes)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
        otel_context.detach(self._token)


def http_request(scope: Mapping[str, Any], headers: Any, request_id: str) -> RequestSpan:
    """The span of an HTTP request; renamed ``METHOD /route/{template}`` at its end."""
    return RequestSpan(scope["method"], headers, {
        "http.request.method": scope["method"],
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "aecluster.request_id": request_id,
    })


def end_http_request(span: RequestSpan, scope: Mapping[str, Any], status: int) -> None:
    route = getattr(scope.get("route"), "path", None)
    attributes: dict[str, str | int] = {"http.response.status_code": status}
    name = None
    if isinstance(route, str):
        attributes["http.route"] = route
        name = f"{scope['method']} {route}"
    # Server spans: 5xx are the server's errors, 4xx the caller's (HTTP conventions).
    span.end(attributes, error=f"HTTP {status}" if status >= 500 else None, name=name)


def grpc_request(method: str, metadata: Iterable[tuple[str, Any]] | None,
                 request_id: str) -> RequestSpan:
    """The span of an RPC, named ``package.Service/Method`` (RPC conventions)."""
    name = method.lstrip("/")
    service, _, rpc = name.partition("/")
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    return RequestSpan(name, carrier, {
        "rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc,
        "aecluster.request_id": request_id,
    })


def end_grpc_request(span: RequestSpan, code: str, status_code: int) -> None:
    span.end({"rpc.grpc.status_code": status_code},
             error=code if code in GRPC_SERVER_ERRORS else None)


def record(name: str, start_ns: int, end_ns: int, attributes: Mapping[str, str | int]) -> None:
    """A finished child span of the current span, from times taken elsewhere (the batcher's
    worker thread stamps them; the span is made on the event loop)."""
    _tracer.start_span(name, start_time=start_ns, attributes=attributes).end(end_time=end_ns)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the span current in this task, in hex; None outside one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def now_ns() -> int:
    """Wall-clock nanoseconds, the time base of spans."""
    return time.time_ns()


# ---- called on every request --------------------------------------------------------------


def span(name: str) -> AbstractContextManager[Any]:
    """A child span of the current span around a ``with`` block; with tracing off a shared
    no-op context (no tracer call)."""
    if not enabled:
        return _OFF
    return _tracer.start_as_current_span(name)

"""An OTLP/gRPC trace receiver on a free port: what an OpenTelemetry Collector listens
with on 4317, for the tests that export spans to one."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every export request it receives."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.port = 0
        self._lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[trace_pb2.Span]:
        with self._lock:
            return [span for request in self.requests for resource in request.resource_spans
                    for scope in resource.scope_spans for span in scope.spans]

    def service_names(self) -> set[str]:
        with self._lock:
            return {attribute.value.string_value for request in self.requests
                    for resource in request.resource_spans
                    for attribute in resource.resource.attributes
                    if attribute.key == "service.name"}


@contextlib.contextmanager
def running_collector() -> Iterator[Collector]:
    """A receiver on 127.0.0.1 (``collector.port``) for the block."""
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    collector.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector
    finally:
        server.stop(0)

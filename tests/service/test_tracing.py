"""Tracing (service/tracing.py) against real servers: the FastAPI app through httpx and a
grpc.aio server on a free port, over a real DataPlane serving a real digits bundle, with
the OpenTelemetry SDK's in-memory exporter; the OTLP exporter against a real OTLP/gRPC
receiver; and the same request path with tracing off.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from PIL import Image
from sklearn.datasets import load_digits
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from service import logs, tracing
from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc
from service._generated.inference import grpc_predict_v2_pb2 as v2
from service._generated.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.grpc import GrpcServer, start_grpc_server
from service.grpc.converters import array_to_tensor_proto
from service.metrics import Metrics
from service.settings import ConfigError
from tests.otlp_receiver import Collector, running_collector
from tests.service.stacks import in_process

pytestmark = pytest.mark.anyio

DIGITS = (load_digits().images[:6] / 16.0).astype(np.float32)[..., None]  # [6, 8, 8, 1]
# The caller's span: what a client that traces sends in traceparent.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
CHILDREN = ["decode", "preprocess", "queue wait", "model", "encode"]
# A batch window long enough that requests sent together on one loop share a model call.
BATCH_DELAY_MS = 200


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Stack:
    """Both transports over one data plane, on the test's loop."""

    http: httpx.AsyncClient
    metrics: Metrics
    native: pb_grpc.ClusterServiceStub
    predict: prediction_service_pb2_grpc.PredictionServiceStub
    v2: v2_grpc.GRPCInferenceServiceStub
    server: GrpcServer


@pytest.fixture
async def stack(model_repo: Path) -> AsyncIterator[Stack]:
    async with in_process(model_repo, host="127.0.0.1", grpc_port=0, max_batch_size=8,
                          max_batch_delay_ms=BATCH_DELAY_MS, drain_seconds=2) as served:
        server = await start_grpc_server(served.dataplane, served.settings, served.metrics)
        async with served.client("http://aecluster") as http, \
                grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Stack(http, served.metrics, pb_grpc.ClusterServiceStub(channel),
                        prediction_service_pb2_grpc.PredictionServiceStub(channel),
                        v2_grpc.GRPCInferenceServiceStub(channel), server)
        await server.stop(0)


class StartCounter(SpanProcessor):
    """Counts every span a tracer starts, ended or not: a request path that called the
    tracer at all shows here even if it never ended its span."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started.append(span.name)


@dataclass
class Recorder:
    exporter: InMemorySpanExporter
    starts: StartCounter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """Tracing on into an in-memory exporter (every span sampled, exported when it ends)."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    starts = StartCounter()
    provider.add_span_processor(starts)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield Recorder(exporter, starts)
    tracing.shutdown()


# ---- one call per data-plane API, each sending the caller's traceparent ------------------

Call = Callable[[Stack], Awaitable[None]]
HEADERS = {"traceparent": TRACEPARENT}
METADATA = (("traceparent", TRACEPARENT),)


async def _http_native(stack: Stack) -> None:
    answer = await stack.http.post("/v1/models/digits:cluster", headers=HEADERS, json={
        "instances": [{"b64": base64.b64encode(_png(DIGITS[0])).decode()}]})
    assert answer.status_code == 200, answer.text


async def _http_tfserving(stack: Stack) -> None:
    answer = await stack.http.post("/v1/models/digits:predict", headers=HEADERS,
                                   json={"instances": DIGITS[:2].tolist()})
    assert answer.status_code == 200, answer.text


async def _http_v2(stack: Stack) -> None:
    answer = await stack.http.post("/v2/models/digits/infer", headers=HEADERS, json={
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 8, 8, 1],
                    "data": DIGITS[0].ravel().tolist()}]})
    assert answer.status_code == 200, answer.text


async def _grpc_native(stack: Stack) -> None:
    answer = await stack.native.Cluster(
        pb.ClusterRequest(model="digits", images=[pb.Image(encoded=_png(DIGITS[0]))]),
        metadata=METADATA)
    assert len(answer.predictions) == 1


async def _grpc_tfserving(stack: Stack) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["images"].CopyFrom(array_to_tensor_proto(DIGITS[:2]))
    answer = await stack.predict.Predict(request, metadata=METADATA)
    assert answer.outputs["cluster_id"].tensor_shape.dim[0].size == 2


async def _grpc_v2(stack: Stack) -> None:
    request = v2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="images", datatype="FP32", shape=[1, 8, 8, 1])
    request.raw_input_contents.append(DIGITS[0].astype("<f4").tobytes())
    answer = await stack.v2.ModelInfer(request, metadata=METADATA)
    assert answer.outputs


APIS: dict[str, tuple[Call, str]] = {
    "http native": (_http_native, "POST /v1/models/{name}:cluster"),
    "http tfserving": (_http_tfserving, "POST /v1/models/{name}:predict"),
    "http v2": (_http_v2, "POST /v2/models/{name}/infer"),
    "grpc native": (_grpc_native, "aecluster.v1.ClusterService/Cluster"),
    "grpc tfserving": (_grpc_tfserving, "tensorflow.serving.PredictionService/Predict"),
    "grpc v2": (_grpc_v2, "inference.GRPCInferenceService/ModelInfer"),
}


def _tree(spans: list[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one SERVER span and its children (in start order); nothing else was recorded."""
    (root,) = [span for span in spans if span.kind == SpanKind.SERVER]
    assert root.context is not None
    children = sorted((span for span in spans if span is not root),
                      key=lambda span: span.start_time or 0)
    for child in children:
        assert child.parent is not None and child.parent.span_id == root.context.span_id, \
            f"{child.name} is not a child of {root.name}"
        assert child.context is not None
        assert child.context.trace_id == root.context.trace_id
    return root, children


@pytest.mark.parametrize("api", list(APIS))
async def test_each_api_records_one_request_span_under_the_callers_traceparent(
        stack: Stack, recorder: Recorder, api: str) -> None:
    call, name = APIS[api]
    await call(stack)
    root, children = _tree(recorder.spans())
    assert root.name == name
    assert root.context is not None and root.parent is not None
    # The caller's span is the parent: same trace, the traceparent's span id.
    assert f"{root.context.trace_id:032x}" == CALLER_TRACE
    assert f"{root.parent.span_id:016x}" == CALLER_SPAN
    assert root.parent.is_remote
    assert [child.name for child in children] == CHILDREN
    assert root.status.status_code == StatusCode.UNSET
    # Each child lies within the request, and they follow one another.
    assert root.start_time is not None and root.end_time is not None
    previous_end = root.start_time
    for child in children:
        assert child.start_time is not None and child.end_time is not None
        assert previous_end <= child.start_time <= child.end_time <= root.end_time, child.name
        previous_end = child.end_time
    model = children[CHILDREN.index("model")]
    assert model.attributes is not None
    images = 2 if "tfserving" in api else 1
    assert model.attributes["aecluster.batch.size"] == images
    assert model.attributes["aecluster.batch.requests"] == 1
    assert model.attributes["aecluster.model"] == "digits"
    assert model.attributes["aecluster.model_version"] == 1


async def test_http_request_span_has_the_http_attributes(stack: Stack,
                                                         recorder: Recorder) -> None:
    await _http_native(stack)
    root, _ = _tree(recorder.spans())
    assert root.attributes is not None
    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.route"] == "/v1/models/{name}:cluster"
    assert root.attributes["url.path"] == "/v1/models/digits:cluster"
    assert root.attributes["http.response.status_code"] == 200
    assert re.fullmatch(r"[0-9a-f]{32}", str(root.attributes["aecluster.request_id"]))


async def test_without_traceparent_a_request_starts_a_trace(stack: Stack,
                                                            recorder: Recorder) -> None:
    await stack.native.Cluster(pb.ClusterRequest(model="digits",
                                                 images=[pb.Image(encoded=_png(DIGITS[0]))]))
    root, children = _tree(recorder.spans())
    assert root.parent is None
    assert [child.name for child in children] == CHILDREN
    assert root.attributes is not None
    assert root.attributes["rpc.system"] == "grpc"
    assert root.attributes["rpc.grpc.status_code"] == 0


async def test_requests_computed_together_each_get_the_model_call(
        stack: Stack, recorder: Recorder) -> None:
    """Three callers in one batch: each trace holds the model call with the batch's size,
    times and number, parented on its own request span."""
    requests = [pb.ClusterRequest(model="digits", images=[pb.Image(encoded=_png(image))
                                                          for image in DIGITS[i:i + 1 + i]])
                for i in range(3)]  # 1, 2 and 3 images
    await asyncio.gather(*(stack.native.Cluster(request) for request in requests))
    spans = recorder.spans()
    roots = {_ids(span)[1]: span for span in spans if span.kind == SpanKind.SERVER}
    models = [span for span in spans if span.name == "model"]
    assert len(roots) == 3 and len(models) == 3
    assert len({_ids(root)[0] for root in roots.values()}) == 3
    for model in models:
        assert model.parent is not None and model.parent.span_id in roots
        assert _ids(model)[0] == _ids(roots[model.parent.span_id])[0]
    # One model call for the three (the batch window is 200 ms): the same times, size 6.
    assert len({(model.start_time, model.end_time) for model in models}) == 1
    attributes = [dict(model.attributes or {}) for model in models]
    assert len({a["aecluster.batch.number"] for a in attributes}) == 1
    assert {a["aecluster.batch.size"] for a in attributes} == {6}
    assert {a["aecluster.batch.requests"] for a in attributes} == {3}
    assert sorted(str(a["aecluster.images"]) for a in attributes) == ["1", "2", "3"]


def _ids(span: ReadableSpan) -> tuple[int, int]:
    """(trace id, span id) of a recorded span."""
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


async def test_a_stream_is_one_span_with_the_children_of_each_message(
        stack: Stack, recorder: Recorder) -> None:
    async def messages() -> AsyncIterator[pb.ClusterRequest]:
        for image in DIGITS[:2]:
            yield pb.ClusterRequest(model="digits", images=[pb.Image(encoded=_png(image))])

    answers = [answer async for answer in stack.native.ClusterStream(messages(),
                                                                     metadata=METADATA)]
    assert len(answers) == 2
    root, children = _tree(recorder.spans())
    assert root.name == "aecluster.v1.ClusterService/ClusterStream"
    assert sorted(child.name for child in children) == sorted(CHILDREN * 2)


async def test_a_failed_call_marks_its_span_and_logs_its_trace_id(
        stack: Stack, recorder: Recorder) -> None:
    with _captured_logs() as records, pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.native.Cluster(pb.ClusterRequest(
            model="digits", images=[pb.Image(encoded=b"not an image")]), metadata=METADATA)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    root, children = _tree(recorder.spans())
    # A caller's mistake is not the server's error (RPC conventions)...
    assert root.status.status_code == StatusCode.UNSET
    assert root.attributes is not None
    assert root.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # ...but the step that refused it says so, and nothing was queued.
    assert [child.name for child in children] == ["decode", "preprocess"]
    assert children[1].status.status_code == StatusCode.ERROR
    (failed,) = [r for r in records if r.getMessage().startswith("grpc cluster failed")]
    assert failed.trace_id == CALLER_TRACE  # type: ignore[attr-defined]
    assert root.context is not None
    assert failed.span_id == f"{root.context.span_id:016x}"  # type: ignore[attr-defined]


@contextlib.contextmanager
def _captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record of INFO and above, through the service's log filter, for the block."""
    handler = _LogRecords()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


class _LogRecords(logging.Handler):
    """Keeps records as the service's own handler sees them (its filter applied)."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(logs.RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_log_lines_carry_the_trace_and_span_ids(stack: Stack,
                                                      recorder: Recorder) -> None:
    with _captured_logs() as records:
        await _http_native(stack)
    root, _ = _tree(recorder.spans())
    assert root.context is not None
    (line,) = [record for record in records if record.name == "service.rest.access"]
    assert line.trace_id == CALLER_TRACE  # type: ignore[attr-defined]
    assert line.span_id == f"{root.context.span_id:016x}"  # type: ignore[attr-defined]
    formatted = json.loads(logs.JsonFormatter().format(line))
    assert formatted["trace_id"] == CALLER_TRACE
    assert formatted["span_id"] == f"{root.context.span_id:016x}"


async def test_an_openmetrics_scrape_shows_the_trace_as_an_exemplar(
        stack: Stack, recorder: Recorder) -> None:
    await _http_native(stack)
    await _grpc_native(stack)
    spans = {span.name: span for span in recorder.spans() if span.kind == SpanKind.SERVER}
    openmetrics = await stack.http.get(
        "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    for protocol, method, name in (("http", "cluster", "POST /v1/models/{name}:cluster"),
                                   ("grpc", "cluster", "aecluster.v1.ClusterService/Cluster")):
        context = spans[name].context
        assert context is not None
        # bucket{labels} count # {exemplar labels} value timestamp
        exemplar = {f'trace_id="{context.trace_id:032x}"', f'span_id="{context.span_id:016x}"'}
        lines = [line for line in openmetrics.text.splitlines()
                 if line.startswith("aecluster_request_duration_seconds_bucket{")
                 and f'protocol="{protocol}"' in line and f'method="{method}"' in line
                 and " # {" in line
                 and set(line.split(" # {")[1].split("}")[0].split(",")) == exemplar]
        assert lines, f"no exemplar of {name} in the OpenMetrics scrape"
    # Prometheus' text format (the default) has no exemplars.
    text = await stack.http.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    assert "aecluster_request_duration_seconds_bucket{" in text.text
    assert "trace_id" not in text.text


async def test_an_unsampled_caller_gets_no_spans_and_no_exemplar(
        stack: Stack, recorder: Recorder) -> None:
    unsampled = TRACEPARENT[:-2] + "00"
    answer = await stack.http.post("/v1/models/digits:cluster",
                                   headers={"traceparent": unsampled}, json={
                                       "instances": [{"b64": base64.b64encode(
                                           _png(DIGITS[0])).decode()}]})
    assert answer.status_code == 200
    assert recorder.spans() == []
    scrape = await stack.http.get("/metrics",
                                  headers={"accept": "application/openmetrics-text"})
    assert "trace_id" not in scrape.text


async def test_probes_and_scrapes_are_not_traced(stack: Stack, recorder: Recorder) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await stack.http.get(path, headers=HEADERS)).status_code == 200
    assert recorder.spans() == []
    # ...while another operations route is.
    assert (await stack.http.get("/v1/models", headers=HEADERS)).status_code == 200
    assert [span.name for span in recorder.spans()] == ["GET /v1/models"]


@pytest.mark.parametrize("api", list(APIS))
async def test_off_the_request_path_never_calls_the_tracer(
        stack: Stack, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, api: str) -> None:
    """A tracer is installed but the flag is off: no span is even started (the start
    counter sees every start), none is current, and the latency has no exemplar."""
    monkeypatch.setattr(tracing, "enabled", False)
    with _captured_logs() as records:
        await APIS[api][0](stack)
        with pytest.raises(grpc.aio.AioRpcError):
            await stack.native.Cluster(pb.ClusterRequest(
                model="digits", images=[pb.Image(encoded=b"not an image")]), metadata=METADATA)
    assert recorder.starts.started == []
    assert recorder.spans() == []
    assert records, "the failed call logged nothing to look at"
    assert not any(hasattr(record, "trace_id") for record in records)
    scrape = await stack.http.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert "trace_id" not in scrape.text


# ---- configuration from the OTEL_* variables ---------------------------------------------


@pytest.mark.parametrize(("environ", "names"), [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, []),  # an endpoint alone
    ({"OTEL_TRACES_EXPORTER": "none"}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "OTLP_PROTO_GRPC"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console, otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     ["console", "otlp"]),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, ["otlp"]),
])
def test_which_variables_turn_tracing_on(environ: dict[str, str], names: list[str]) -> None:
    assert tracing.exporter_names(environ) == names


@pytest.mark.parametrize(("environ", "message"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin not installed"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     "only the grpc exporter"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
     "only the grpc exporter"),
])
def test_exporters_that_are_not_installed_are_refused(environ: dict[str, str],
                                                      message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tracing.exporter_names(environ)


def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure_from_environment() is False
    assert tracing.enabled is False


@pytest.fixture
def collector() -> Iterator[Collector]:
    with running_collector() as receiver:
        yield receiver


@pytest.mark.parametrize("service_name", [None, "clusters-eu"])
async def test_otlp_from_the_environment_reaches_a_collector(
        stack: Stack, collector: Collector, monkeypatch: pytest.MonkeyPatch,
        service_name: str | None) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_RESOURCE_ATTRIBUTES",
                 "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(name, raising=False)
    if service_name is None:
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    else:
        monkeypatch.setenv("OTEL_SERVICE_NAME", service_name)
    try:
        assert tracing.configure_from_environment() is True
        await _grpc_native(stack)
    finally:
        await asyncio.to_thread(tracing.shutdown)  # the batch processor exports now
    assert tracing.enabled is False
    # The global provider was never set: FastAPI's own telemetry stayed off.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    exported = collector.spans()
    assert sorted(span.name for span in exported) == sorted(
        ["aecluster.v1.ClusterService/Cluster", *CHILDREN])
    assert {span.trace_id.hex() for span in exported} == {CALLER_TRACE}
    assert collector.service_names() == {service_name or "aecluster"}

"""The interceptor on a real grpc.aio server: the error table, request ids, metrics, deadlines.

The servicer here raises on demand (the request's ``model`` names what to raise), so every
error class of ``service/errors.py`` is rendered by the real interceptor and seen by a real
client; test_grpc_server.py drives the same paths through the real data plane.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from service import errors, logs
from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc
from service.grpc.interceptor import INTERNAL_MESSAGE, PUSHBACK_KEY, ServiceInterceptor
from service.grpc.servicers import deadline_of
from service.metrics import Metrics, resolved

pytestmark = pytest.mark.anyio

SECRET = "db password is hunter2"


class RaisingServicer(pb_grpc.ClusterServiceServicer):
    """Raises the error class named by ``request.model``; ``ok`` answers normally."""

    def __init__(self) -> None:
        self.seen_request_ids: list[str] = []

    async def Cluster(self, request: pb.ClusterRequest,
                      context: grpc.aio.ServicerContext) -> pb.ClusterResponse:
        self.seen_request_ids.append(logs.request_id.get())
        return self._answer(request, context)

    async def ClusterStream(self, request_iterator: AsyncIterator[pb.ClusterRequest],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ClusterResponse]:
        async for request in request_iterator:
            yield self._answer(request, context)

    @staticmethod
    def _answer(request: pb.ClusterRequest, context: grpc.aio.ServicerContext
                ) -> pb.ClusterResponse:
        if request.model == "ok":
            return pb.ClusterResponse(model="ok")
        if request.model == "resolved":  # what the data plane does with a loaded version
            resolved(("digits", "3"))
            return pb.ClusterResponse(model="digits", version=3)
        if request.model == "deadline":
            deadline = deadline_of(context)
            if deadline is None:
                return pb.ClusterResponse(model="no deadline")
            remaining_ms = round((deadline - time.monotonic()) * 1000)
            return pb.ClusterResponse(model="deadline", version=remaining_ms)
        if request.model == "bug":
            raise RuntimeError(SECRET)
        cls = next(c for c in errors.ERROR_CLASSES if c.__name__ == request.model)
        raise cls(f"{cls.__name__} happened: fix the request")


@dataclass
class Served:
    stub: pb_grpc.ClusterServiceStub
    channel: grpc.aio.Channel
    metrics: Metrics
    servicer: RaisingServicer


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    metrics = Metrics()
    servicer = RaisingServicer()
    server = grpc.aio.server(interceptors=[ServiceInterceptor(metrics)])
    pb_grpc.add_ClusterServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Served(pb_grpc.ClusterServiceStub(channel), channel, metrics, servicer)
    await server.stop(0)


def _count(metrics: Metrics, method: str, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "aecluster_requests_total", {"protocol": "grpc", "method": method, "code": code,
                                     "model": "_none", "version": "_none"})
    return value or 0.0


@pytest.mark.parametrize("cls", errors.ERROR_CLASSES, ids=lambda c: c.__name__)
async def test_each_error_class_reaches_the_client_with_its_code(
        served: Served, cls: type[errors.ServiceError]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.Cluster(pb.ClusterRequest(model=cls.__name__))
    assert caught.value.code() == grpc.StatusCode[cls.grpc_code]
    assert caught.value.details() == f"{cls.__name__} happened: fix the request"
    assert _count(served.metrics, "cluster", cls.grpc_code) == 1
    # The same table applies inside a stream, and the server keeps serving.
    call = served.stub.ClusterStream(iter([pb.ClusterRequest(model="ok"),
                                           pb.ClusterRequest(model=cls.__name__)]))
    answers = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for answer in call:
            answers.append(answer.model)
    assert answers == ["ok"]
    assert caught.value.code() == grpc.StatusCode[cls.grpc_code]
    assert _count(served.metrics, "cluster_stream", cls.grpc_code) == 1
    assert (await served.stub.Cluster(pb.ClusterRequest(model="ok"))).model == "ok"


async def test_queue_full_tells_the_client_when_to_retry(served: Served) -> None:
    call = served.stub.Cluster(pb.ClusterRequest(model="QueueFull"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (PUSHBACK_KEY, "1000") in tuple(caught.value.trailing_metadata() or ())
    # Failed calls carry their request id too, beside the pushback.
    assert any(k == "x-request-id" for k, _ in caught.value.trailing_metadata() or ())


async def test_unexpected_errors_are_logged_and_hidden(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="service.grpc.interceptor")
    caplog.handler.addFilter(logs.RequestIdFilter())  # what configure_logging installs
    call = served.stub.Cluster(pb.ClusterRequest(model="bug"),
                               metadata=(("x-request-id", "req-42"),))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == INTERNAL_MESSAGE.format(request_id="req-42")
    assert ("x-request-id", "req-42") in tuple(caught.value.trailing_metadata() or ())
    assert SECRET not in caught.value.details()
    [record] = [r for r in caplog.records if r.exc_info]
    assert SECRET in caplog.text and "RuntimeError" in caplog.text
    assert record.request_id == "req-42"  # type: ignore[attr-defined]
    assert _count(served.metrics, "cluster", "INTERNAL") == 1


async def test_malformed_protobuf_is_invalid_argument(served: Served) -> None:
    raw = served.channel.unary_unary("/aecluster.v1.ClusterService/Cluster")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"\xff\xff\xff\xff")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message for /aecluster.v1.ClusterService/Cluster" in (
        caught.value.details())
    stream = served.channel.stream_stream("/aecluster.v1.ClusterService/ClusterStream")
    call = stream(iter([pb.ClusterRequest(model="ok").SerializeToString(), b"\x0a\x05ab"]))
    answers = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for answer in call:
            answers.append(pb.ClusterResponse.FromString(answer).model)
    assert answers == ["ok"]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await served.stub.Cluster(pb.ClusterRequest(model="ok"))).model == "ok"


async def test_request_id_in_and_out(served: Served) -> None:
    call = served.stub.Cluster(pb.ClusterRequest(model="ok"),
                               metadata=(("x-request-id", "trace-7.a:b"),))
    await call
    # In the trailing metadata, sent with the status (no extra operation per call).
    assert ("x-request-id", "trace-7.a:b") in tuple(await call.trailing_metadata())
    generated = served.stub.Cluster(pb.ClusterRequest(model="ok"))
    await generated
    [rid] = [v for k, v in await generated.trailing_metadata() if k == "x-request-id"]
    assert len(rid) == 32 and int(rid, 16) >= 0
    # Ids end up in logs: anything but a short plain token is replaced by a fresh one.
    hostile = served.stub.Cluster(pb.ClusterRequest(model="ok"),
                                  metadata=(("x-request-id", "a b\"}{" * 10),))
    await hostile
    [replaced] = [v for k, v in await hostile.trailing_metadata() if k == "x-request-id"]
    assert len(replaced) == 32
    assert served.servicer.seen_request_ids == ["trace-7.a:b", rid, replaced]


async def test_metrics_count_and_time_every_call(served: Served) -> None:
    for _ in range(3):
        await served.stub.Cluster(pb.ClusterRequest(model="ok"))
    assert _count(served.metrics, "cluster", "OK") == 3
    count = served.metrics.registry.get_sample_value(
        "aecluster_request_duration_seconds_count",
        {"protocol": "grpc", "method": "cluster", "model": "_none", "version": "_none"})
    assert count == 3


async def test_calls_count_under_the_model_the_handler_resolved(served: Served) -> None:
    await served.stub.Cluster(pb.ClusterRequest(model="resolved"))
    await served.stub.Cluster(pb.ClusterRequest(model="ok"))
    answers = [a async for a in served.stub.ClusterStream(
        iter([pb.ClusterRequest(model="resolved"), pb.ClusterRequest(model="ok")]))]
    assert len(answers) == 2
    sample = served.metrics.registry.get_sample_value
    digits = {"protocol": "grpc", "code": "OK", "model": "digits", "version": "3"}
    assert sample("aecluster_requests_total", {**digits, "method": "cluster"}) == 1
    assert sample("aecluster_requests_total", {**digits, "method": "cluster_stream"}) == 1
    assert _count(served.metrics, "cluster", "OK") == 1  # "ok" resolved none: _none
    # The next call on the same server starts from _none again.
    assert sample("aecluster_request_duration_seconds_count",
                  {"protocol": "grpc", "method": "cluster", "model": "digits",
                   "version": "3"}) == 1


async def test_grpc_deadline_reaches_the_handler(served: Served) -> None:
    # The client's timeout arrives as an absolute monotonic deadline the data plane can use.
    with_deadline = await served.stub.Cluster(pb.ClusterRequest(model="deadline"), timeout=30)
    assert with_deadline.model == "deadline"
    # gRPC core rounds the grpc-timeout header up to a coarse unit on the wire (seen here:
    # 30.099 s left of a 30 s timeout), so the server may see slightly more than was asked.
    assert 25_000 < with_deadline.version <= 31_000
    without = await served.stub.Cluster(pb.ClusterRequest(model="deadline"))
    assert without.model == "no deadline"

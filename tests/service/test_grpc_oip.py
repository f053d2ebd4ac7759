"""``inference.GRPCInferenceService`` on a real grpc.aio server on a free port over a real
DataPlane, called through the project's generated stubs."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from sklearn.datasets import load_digits

from service._generated.inference import grpc_predict_v2_pb2 as pb
from service._generated.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from service.dataplane import DataPlane
from service.grpc import GrpcServer, start_grpc_server
from service.metrics import Metrics
from service.repository import ModelRepository
from service.runtime import runtime_factory
from service.settings import Settings
from service.types import ModelRef
from tests.integration.server import digit_png

pytestmark = pytest.mark.anyio

DIGITS = (load_digits().images[:4] / 16.0).astype(np.float32)[..., None]  # [4, 8, 8, 1]
MAX_IMAGES = 8


@dataclass
class Stack:
    server: GrpcServer
    dataplane: DataPlane
    metrics: Metrics
    stub: pb_grpc.GRPCInferenceServiceStub


@pytest.fixture
async def stack(model_repo: Path) -> AsyncIterator[Stack]:
    settings = Settings(model_repo=model_repo, host="127.0.0.1", grpc_port=0, poll_seconds=0,
                        max_batch_size=8, max_batch_delay_ms=2,
                        max_images_per_request=MAX_IMAGES, max_image_pixels=10_000)
    metrics = Metrics()
    repository = ModelRepository(settings, metrics, runtime_factory("/CPU:0",
                                                                    settings.batch_sizes()))
    await repository.start()
    dataplane = DataPlane(repository, settings, metrics)
    server = await start_grpc_server(dataplane, settings, metrics)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Stack(server, dataplane, metrics, pb_grpc.GRPCInferenceServiceStub(channel))
    await server.stop(0)
    await repository.stop(1)


def _raw_request(images: np.ndarray, *outputs: str, **fields: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(**{"model_name": "digits", **fields})
    request.inputs.add(name="images", datatype="FP32", shape=list(images.shape))
    request.raw_input_contents.append(images.astype("<f4").tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


async def test_health_and_metadata(stack: Stack) -> None:
    assert (await stack.stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stack.stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await stack.stub.ModelReady(pb.ModelReadyRequest(name="digits"))).ready
    assert (await stack.stub.ModelReady(pb.ModelReadyRequest(name="digits", version="1"))).ready
    server = await stack.stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "aecluster" and list(server.extensions) == ["binary_tensor_data"]
    meta = await stack.stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"))
    assert meta.name == "digits" and list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("images", "FP32", [-1, 8, 8, 1]), ("image_bytes", "BYTES", [-1])]
    assert {t.name: (t.datatype, list(t.shape)) for t in meta.outputs} == {
        "cluster_id": ("INT64", [-1]), "distance": ("FP32", [-1]),
        "is_outlier": ("BOOL", [-1]), "reconstruction": ("FP32", [-1, 8, 8, 1]),
        "embedding": ("FP32", [-1, 8])}


async def test_raw_inference_answers_raw_and_what_predict_answers(stack: Stack) -> None:
    answer = await stack.stub.ModelInfer(_raw_request(DIGITS, "distance", "cluster_id",
                                                      "is_outlier", id="abc"))
    _, expected = await stack.dataplane.predict(ModelRef("digits"), None, {"images": DIGITS})
    assert answer.model_name == "digits" and answer.model_version == "1" and answer.id == "abc"
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
        ("distance", "FP32", [4]), ("cluster_id", "INT64", [4]), ("is_outlier", "BOOL", [4])]
    distance, cluster, outlier = answer.raw_output_contents
    np.testing.assert_array_equal(np.frombuffer(distance, "<f4"), expected["distance"])
    np.testing.assert_array_equal(np.frombuffer(cluster, "<i8"), expected["cluster_id"])
    np.testing.assert_array_equal(np.frombuffer(outlier, "?"), expected["is_outlier"])


async def test_typed_contents_get_typed_contents(stack: Stack) -> None:
    request = pb.ModelInferRequest(model_name="digits", model_version="1")
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=list(DIGITS.shape))
    uint8 = np.round(DIGITS * 255).astype(np.uint8)
    tensor.contents.uint_contents.extend(uint8.ravel().tolist())
    answer = await stack.stub.ModelInfer(request)
    assert not answer.raw_output_contents
    outputs = {o.name: o for o in answer.outputs}
    assert list(outputs) == ["cluster_id", "distance", "is_outlier", "reconstruction",
                             "embedding"]
    _, expected = await stack.dataplane.predict(
        ModelRef("digits"), None, {"images": uint8.astype(np.float32) / 255})
    assert list(outputs["cluster_id"].contents.int64_contents) == expected["cluster_id"].tolist()
    assert len(outputs["reconstruction"].contents.fp32_contents) == DIGITS.size


async def test_bytes_input(stack: Stack) -> None:
    pngs = [digit_png(i) for i in range(3)]
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[3])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(p)) + p for p in pngs))
    request.outputs.add(name="cluster_id")
    answer = await stack.stub.ModelInfer(request)
    assert len(np.frombuffer(answer.raw_output_contents[0], "<i8")) == 3


def _bad_raw_count() -> pb.ModelInferRequest:
    request = _raw_request(DIGITS[:1])
    request.raw_input_contents.append(b"")
    return request


def _classification() -> pb.ModelInferRequest:
    request = _raw_request(DIGITS[:1])
    request.outputs.add(name="cluster_id").parameters["classification"].int64_param = 2
    return request


BAD = [
    ("no model", lambda: pb.ModelInferRequest(), grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown model", lambda: _raw_request(DIGITS[:1], model_name="nope"),
     grpc.StatusCode.NOT_FOUND),
    ("unknown version", lambda: _raw_request(DIGITS[:1], model_version="5"),
     grpc.StatusCode.NOT_FOUND),
    ("bad version", lambda: _raw_request(DIGITS[:1], model_version="latest"),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("shape", lambda: _raw_request(np.zeros((1, 8, 9, 1), np.float32)),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("raw count", _bad_raw_count, grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown output", lambda: _raw_request(DIGITS[:1], "logits"),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("classification", _classification, grpc.StatusCode.INVALID_ARGUMENT),
    ("too many", lambda: _raw_request(np.zeros((9, 8, 8, 1), np.float32)),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
]


@pytest.mark.parametrize(("case", "make", "code"), BAD, ids=[b[0] for b in BAD])
async def test_bad_requests_get_the_error_table(stack: Stack, case: str, make: object,
                                                code: grpc.StatusCode) -> None:
    assert callable(make)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.stub.ModelInfer(make())
    assert raised.value.code() == code, raised.value.details()
    assert raised.value.details()
    trailers = dict(raised.value.trailing_metadata() or ())
    assert trailers.get("x-request-id")  # the interceptor handled it
    # Refused before or after the model resolved: count under whichever model it was.
    counted = sum(s.value for family in stack.metrics.registry.collect()
                  for s in family.samples if s.name == "aecluster_requests_total"
                  and s.labels["method"] == "v2_infer" and s.labels["code"] == code.name)
    assert counted == 1


async def test_metadata_of_an_unknown_model_is_not_found(stack: Stack) -> None:
    for call in (stack.stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")),
                 stack.stub.ModelReady(pb.ModelReadyRequest(name="nope"))):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

"""Model labels come only from loaded versions: 500 requests naming random models, over the
real FastAPI app (httpx) and the real gRPC server on one data plane and a real digits bundle,
leave the number of series in /metrics unchanged, and an unloaded version's series go."""

from __future__ import annotations

import secrets
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc
from service._generated.inference import grpc_predict_v2_pb2 as v2
from service._generated.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.grpc import start_grpc_server
from service.metrics import Metrics
from service.repository import ModelRepository
from tests.service.bundles import clone_version
from tests.service.stacks import in_process

pytestmark = pytest.mark.anyio

RANDOM_NAMES = 500
GRPC_SHARE = 5  # every fifth random name goes over gRPC
DIGIT = (load_digits().images[:1] / 16.0).astype(np.float32)[..., None]  # [1, 8, 8, 1]


@dataclass
class Stack:
    http: httpx.AsyncClient
    channel: grpc.aio.Channel
    metrics: Metrics
    repository: ModelRepository
    repo: Path


@pytest.fixture
async def stack(model_repo: Path) -> AsyncIterator[Stack]:
    async with in_process(model_repo, host="127.0.0.1", grpc_port=0, max_batch_size=8,
                          max_batch_delay_ms=1, drain_seconds=2) as served:
        server = await start_grpc_server(served.dataplane, served.settings, served.metrics)
        async with served.client() as http, \
                grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Stack(http, channel, served.metrics, served.repository, model_repo)
        await server.stop(0)


def _http_calls(http: httpx.AsyncClient) -> list[Callable[[str], Awaitable[httpx.Response]]]:
    """Requests of every kind that name a model: each answers 404 for a name not loaded."""
    instances = {"instances": DIGIT.tolist()}
    v2_body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 8, 8, 1],
                           "data": DIGIT.ravel().tolist()}]}
    return [
        lambda name: http.post(f"/v1/models/{name}:cluster", json=instances),
        lambda name: http.post(f"/v1/models/{name}:predict", json=instances),
        lambda name: http.get(f"/v1/models/{name}"),
        lambda name: http.get(f"/v1/models/{name}/metadata"),
        lambda name: http.get(f"/v1/models/{name}/clusters"),
        lambda name: http.post(f"/v2/models/{name}/infer", json=v2_body),
        lambda name: http.get(f"/v2/models/{name}/ready"),
        # A loaded model, a version that is not: the version must not become a label either.
        lambda name: http.post(f"/v1/models/digits/versions/{int(name[1:7], 16) + 2}:cluster",
                               json=instances),
    ]


def _grpc_calls(channel: grpc.aio.Channel) -> list[Callable[[str], Awaitable[object]]]:
    native = pb_grpc.ClusterServiceStub(channel)
    tfs = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    status = model_service_pb2_grpc.ModelServiceStub(channel)
    oip = v2_grpc.GRPCInferenceServiceStub(channel)
    image = pb.Image(tensor=pb.Tensor(shape=[8, 8, 1], dtype="float32",
                                      data=DIGIT[0].astype("<f4").tobytes()))

    def predict(name: str) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.inputs["images"].CopyFrom(_tf_tensor())
        return request

    def model_status(name: str) -> get_model_status_pb2.GetModelStatusRequest:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        return request

    return [
        lambda name: native.Cluster(pb.ClusterRequest(model=name, images=[image])),
        lambda name: tfs.Predict(predict(name)),
        lambda name: status.GetModelStatus(model_status(name)),
        lambda name: oip.ModelMetadata(v2.ModelMetadataRequest(name=name)),
        lambda name: oip.ModelReady(v2.ModelReadyRequest(name=name)),
    ]


def _tf_tensor() -> object:
    import tensorflow as tf  # the TF Serving protos' helper; TensorFlow is loaded already

    return tf.make_tensor_proto(DIGIT)


def _random_name() -> str:
    return "m" + secrets.token_hex(8)


async def _send(stack: Stack, count: int, codes: Counter[str]) -> None:
    http, grpc_calls = _http_calls(stack.http), _grpc_calls(stack.channel)
    for i in range(count):
        name = _random_name()
        if i % GRPC_SHARE == 0:
            try:
                await grpc_calls[(i // GRPC_SHARE) % len(grpc_calls)](name)
                codes["grpc OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[f"grpc {exc.code().name}"] += 1
        else:
            answer = await http[i % len(http)](name)
            codes[f"http {answer.status_code}"] += 1


def _series(text: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every sample of the exposition (name and labels): one per series."""
    return [(sample.name, tuple(sorted(sample.labels.items())))
            for family in text_string_to_metric_families(text) for sample in family.samples]


def _requests_counted(text: str) -> float:
    return sum(value for (name, labels), value in _values(text).items()
               if name == "aecluster_requests_total")


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_random_model_names_do_not_grow_the_series(stack: Stack) -> None:
    # One good request per protocol, then one round of every kind of call with random
    # names: the series a server has once it has seen such traffic at all.
    assert (await stack.http.post("/v1/models/digits:cluster",
                                  json={"instances": DIGIT.tolist()})).status_code == 200
    warm: Counter[str] = Counter()
    await _send(stack, GRPC_SHARE * 8 * 5, warm)
    await stack.http.get("/metrics")  # the scrape itself is a request: count it once before
    before = (await stack.http.get("/metrics")).text

    codes: Counter[str] = Counter()
    await _send(stack, RANDOM_NAMES, codes)
    after = (await stack.http.get("/metrics")).text

    series_before, series_after = _series(before), _series(after)
    assert len(series_after) == len(series_before), (
        f"{len(series_before)} series before {RANDOM_NAMES} random model names, "
        f"{len(series_after)} after: "
        f"{sorted(set(series_after) - set(series_before))[:5]}")
    assert set(series_after) == set(series_before)
    # The requests were answered and counted (under the fixed value), not dropped.
    assert sum(codes.values()) == RANDOM_NAMES and codes["http 404"] > 300, codes
    assert codes["grpc NOT_FOUND"] + codes["grpc OK"] == RANDOM_NAMES // GRPC_SHARE, codes
    assert _requests_counted(after) - _requests_counted(before) == RANDOM_NAMES + 1  # + scrape
    models = {dict(labels).get("model") for _, labels in series_after}
    assert models == {None, "_none", "digits"}, models


async def _serve_every_kind(stack: Stack) -> None:
    """One answered request of each inference kind on digits, over HTTP and gRPC."""
    instances = {"instances": DIGIT.tolist()}
    for path in ("/v1/models/digits:cluster", "/v1/models/digits:predict"):
        assert (await stack.http.post(path, json=instances)).status_code == 200
    v2_body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 8, 8, 1],
                           "data": DIGIT.ravel().tolist()}]}
    assert (await stack.http.post("/v2/models/digits/infer", json=v2_body)).status_code == 200
    await _grpc_calls(stack.channel)[0]("digits")  # native Cluster
    await _grpc_calls(stack.channel)[1]("digits")  # TF Serving Predict


def _versions(text: str) -> Counter[str]:
    """Series per version label (of the digits model) in an exposition."""
    return Counter(dict(labels).get("version", "") for _, labels in _series(text)
                   if dict(labels).get("model") == "digits")


async def test_an_unloaded_versions_series_leave_the_exposition(stack: Stack) -> None:
    await _serve_every_kind(stack)
    first = (await stack.http.get("/metrics")).text
    assert _versions(first)["1"] > 100, _versions(first)  # requests, clusters, histograms

    # Version 2 replaces version 1 (hot reload): version 1's series go, 2's come with traffic.
    clone_version(stack.repo / "digits" / "1", stack.repo, "digits", 2)
    await stack.repository.poll_once()
    await _serve_every_kind(stack)
    second = (await stack.http.get("/metrics")).text
    assert _versions(second)["1"] == 0, sorted(
        name for name, labels in _series(second) if ("version", "1") in labels)[:5]
    assert _versions(second)["2"] == _versions(first)["1"], (_versions(first),
                                                             _versions(second))
    assert any(name == "aecluster_model_info" and ("version", "2") in labels
               for name, labels in _series(second))

    # Version 2 removed: the server falls back to version 1, which counts from zero again,
    # through the same transports' cached label children.
    shutil.rmtree(stack.repo / "digits" / "2")
    await stack.repository.poll_once()
    await _serve_every_kind(stack)
    third = (await stack.http.get("/metrics")).text
    assert _versions(third)["2"] == 0
    assert _versions(third)["1"] == _versions(first)["1"]
    counted = {labels: value for (name, labels), value in _values(third).items()
               if name == "aecluster_requests_total" and ("version", "1") in labels}
    assert counted and all(value == 1 for value in counted.values()), counted

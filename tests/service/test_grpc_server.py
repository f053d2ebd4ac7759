"""The gRPC server end to end: a real grpc.aio server on a free port over a real DataPlane
serving a real digits bundle, called through the generated native stubs and through the
tensorflow-serving-api package's stubs exactly as a TF Serving client would call them.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from sklearn.datasets import load_digits
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc
from service.dataplane import DataPlane
from service.grpc import GrpcServer, start_grpc_server
from service.metrics import Metrics
from service.repository import ModelRepository
from service.runtime import runtime_factory
from service.settings import Settings
from service.types import ClusterOptions, ImageInput, ModelRef

pytestmark = pytest.mark.anyio

MESSAGE_LIMIT = 256 * 1024
MAX_IMAGES = 64
MAX_PIXELS = 10_000
CLIENT_OPTIONS = [("grpc.max_send_message_length", 8 * MESSAGE_LIMIT),
                  ("grpc.max_receive_message_length", 8 * MESSAGE_LIMIT)]


@dataclass
class Stack:
    """A running server and what the tests call it with."""

    server: GrpcServer
    dataplane: DataPlane
    metrics: Metrics
    channel: grpc.aio.Channel
    native: pb_grpc.ClusterServiceStub
    predict: prediction_service_pb2_grpc.PredictionServiceStub
    models: model_service_pb2_grpc.ModelServiceStub
    health: health_pb2_grpc.HealthStub

    async def still_serving(self) -> None:
        """One good call: the server survived whatever the test just sent."""
        answer = await self.native.Cluster(pb.ClusterRequest(
            model="digits", images=[_tensor_image(DIGITS[0])]))
        assert len(answer.predictions) == 1


@pytest.fixture
async def stack(model_repo: Path) -> AsyncIterator[Stack]:
    settings = Settings(model_repo=model_repo, host="127.0.0.1", grpc_port=0, poll_seconds=0,
                        max_batch_size=8, max_batch_delay_ms=20, max_images_per_request=MAX_IMAGES,
                        max_image_pixels=MAX_PIXELS, grpc_max_message_bytes=MESSAGE_LIMIT,
                        drain_seconds=2)
    metrics = Metrics()

    factory = runtime_factory("/CPU:0", settings.batch_sizes())

    repository = ModelRepository(settings, metrics, factory)
    await repository.start()
    dataplane = DataPlane(repository, settings, metrics)
    server = await start_grpc_server(dataplane, settings, metrics)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}",
                                         options=CLIENT_OPTIONS) as channel:
        yield Stack(server, dataplane, metrics, channel, pb_grpc.ClusterServiceStub(channel),
                    prediction_service_pb2_grpc.PredictionServiceStub(channel),
                    model_service_pb2_grpc.ModelServiceStub(channel),
                    health_pb2_grpc.HealthStub(channel))
    await server.stop(0)
    await repository.stop(1)


DIGITS = (load_digits().images[:12] / 16.0).astype(np.float32)[..., None]  # [12, 8, 8, 1]


def _tensor_image(image: np.ndarray) -> pb.Image:
    data = np.ascontiguousarray(image, dtype="<f4")
    return pb.Image(tensor=pb.Tensor(shape=list(data.shape), dtype="float32", data=data.tobytes()))


def _png(image: np.ndarray, size: int | None = None) -> bytes:
    pixels = Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8), mode="L")
    if size is not None:
        pixels = pixels.resize((size, size), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    pixels.save(buffer, "PNG")
    return buffer.getvalue()


def _array(tensor: pb.Tensor) -> np.ndarray:
    assert tensor.dtype == "float32"
    return np.frombuffer(tensor.data, dtype="<f4").reshape(list(tensor.shape))


# ---- native API --------------------------------------------------------------------------


async def test_cluster_relays_the_data_plane_exactly(stack: Stack) -> None:
    request = pb.ClusterRequest(model="digits", images=[_tensor_image(i) for i in DIGITS],
                                return_reconstruction=pb.ClusterRequest.ARRAY,
                                return_embedding=True, top_k=3)
    call = stack.native.Cluster(request, metadata=(("x-request-id", "native-1"),))
    answer = await call
    assert ("x-request-id", "native-1") in tuple(await call.trailing_metadata())
    info, expected = await stack.dataplane.cluster(
        ModelRef("digits"), [ImageInput(array=i) for i in DIGITS],
        ClusterOptions(return_reconstruction="array", return_embedding=True, top_k=3))
    assert (answer.model, answer.version) == (info.name, info.version) == ("digits", 1)
    assert len(answer.predictions) == len(DIGITS)
    for got, want in zip(answer.predictions, expected, strict=True):
        assert got.cluster_id == want.cluster_id
        assert got.distance == pytest.approx(want.distance, rel=1e-6)
        assert got.is_outlier == want.is_outlier
        assert (got.label if got.HasField("label") else None) == want.label
        assert got.WhichOneof("reconstruction") == "reconstruction_array"
        np.testing.assert_array_equal(_array(got.reconstruction_array), want.reconstruction)
        assert got.reconstruction_error == pytest.approx(want.reconstruction_error, rel=1e-6)
        assert got.psnr == pytest.approx(want.psnr, rel=1e-6)
        np.testing.assert_allclose(got.embedding, want.embedding, rtol=1e-6)
        assert [(k.cluster_id, pytest.approx(k.distance, rel=1e-6)) for k in got.top_k] == (
            want.top_k)
        assert got.top_k[0].cluster_id == got.cluster_id


async def test_cluster_takes_uint8_tensors_and_encoded_images_of_other_sizes(stack: Stack) -> None:
    gray8 = np.round(DIGITS[3] * 255).astype(np.uint8)
    rgb8 = np.repeat(gray8, 3, axis=2)
    answer = await stack.native.Cluster(pb.ClusterRequest(
        model="digits", version=1, return_reconstruction=pb.ClusterRequest.PNG,
        images=[
            pb.Image(tensor=pb.Tensor(shape=[8, 8], dtype="uint8", data=gray8.tobytes())),
            pb.Image(tensor=pb.Tensor(shape=[8, 8, 3], dtype="uint8", data=rgb8.tobytes())),
            pb.Image(encoded=_png(DIGITS[3])),
            pb.Image(encoded=_png(DIGITS[3], size=32)),  # resized to 8x8 as the manifest says
        ]))
    gray, rgb, png, large = answer.predictions
    # The same pixels as a gray tensor and as a PNG give the same answer; as RGB they go
    # through the luminance weights (which sum to 0.9999), so nearly the same.
    assert png.cluster_id == gray.cluster_id
    assert png.distance == pytest.approx(gray.distance, abs=1e-5)
    assert rgb.cluster_id == gray.cluster_id
    assert rgb.distance == pytest.approx(gray.distance, rel=0.02)
    assert 0 <= large.cluster_id < 10
    for prediction in answer.predictions:
        png = Image.open(io.BytesIO(prediction.reconstruction_png))
        assert (png.format, png.size, png.mode) == ("PNG", (8, 8), "L")
        assert prediction.HasField("psnr") and prediction.HasField("reconstruction_error")
        assert not prediction.embedding and not prediction.top_k


async def test_cluster_stream_answers_each_request_in_order(stack: Stack) -> None:
    requests = [pb.ClusterRequest(model="digits",
                                  images=[_tensor_image(i) for i in DIGITS[k:k + 1 + k % 3]])
                for k in range(10)]
    streamed = [answer async for answer in stack.native.ClusterStream(iter(requests))]
    unary = [await stack.native.Cluster(request) for request in requests]
    assert [len(a.predictions) for a in streamed] == [1 + k % 3 for k in range(10)]
    # The batcher may put streamed images in one batch and unary ones in others; the
    # encoder's float arithmetic depends on the batch shape (oneDNN kernels), so distances
    # agree to float noise rather than bit for bit.
    for s, u in zip(streamed, unary, strict=True):
        assert (s.model, s.version) == (u.model, u.version)
        assert [(p.cluster_id, p.label) for p in s.predictions] == \
            [(p.cluster_id, p.label) for p in u.predictions]
        assert [p.distance for p in s.predictions] == \
            pytest.approx([p.distance for p in u.predictions], rel=1e-4)


async def test_an_error_ends_the_stream_after_the_answers_before_it(stack: Stack) -> None:
    requests = [pb.ClusterRequest(model="digits", images=[_tensor_image(DIGITS[0])]),
                pb.ClusterRequest(model="nope", images=[_tensor_image(DIGITS[0])]),
                pb.ClusterRequest(model="digits", images=[_tensor_image(DIGITS[1])])]
    answers = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for answer in stack.native.ClusterStream(iter(requests)):
            answers.append(answer)
    assert len(answers) == 1
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "model 'nope' is not served here" in caught.value.details()
    await stack.still_serving()


async def test_concurrent_calls_share_batches(stack: Stack) -> None:
    calls = [stack.native.Cluster(pb.ClusterRequest(model="digits",
                                                    images=[_tensor_image(DIGITS[i % 12])]))
             for i in range(16)]
    answers = await asyncio.gather(*calls)
    assert all(len(a.predictions) == 1 for a in answers)
    labels = {"model": "digits", "version": "1"}
    batches = stack.metrics.registry.get_sample_value("aecluster_batch_size_count", labels)
    images = stack.metrics.registry.get_sample_value("aecluster_batch_size_sum", labels)
    assert images == 16 and batches is not None and batches < 16


# ---- TensorFlow Serving API --------------------------------------------------------------


async def test_predict_serving_default_like_a_tf_serving_client(stack: Stack) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.signature_name = "serving_default"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(DIGITS))
    response = await stack.predict.Predict(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("digits", 1, "serving_default")
    outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    assert sorted(outputs) == ["cluster_id", "distance", "embedding", "is_outlier",
                               "reconstruction"]
    assert outputs["cluster_id"].dtype == np.int64 and outputs["cluster_id"].shape == (12,)
    assert outputs["distance"].dtype == np.float32
    assert outputs["is_outlier"].dtype == np.bool_
    assert outputs["reconstruction"].shape == (12, 8, 8, 1)
    assert outputs["embedding"].shape == (12, 8)
    native = await stack.native.Cluster(pb.ClusterRequest(
        model="digits", images=[_tensor_image(i) for i in DIGITS]))
    assert outputs["cluster_id"].tolist() == [p.cluster_id for p in native.predictions]
    np.testing.assert_allclose(outputs["distance"], [p.distance for p in native.predictions],
                               rtol=1e-6)


async def test_predict_bytes_with_output_filter(stack: Stack) -> None:
    pngs = [_png(image) for image in DIGITS[:5]]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.version.value = 1
    request.model_spec.signature_name = "predict_bytes"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(pngs, dtype=tf.string))
    request.output_filter.extend(["cluster_id", "distance"])
    response = await stack.predict.Predict(request)
    assert sorted(response.outputs) == ["cluster_id", "distance"]
    native = await stack.native.Cluster(pb.ClusterRequest(
        model="digits", images=[pb.Image(encoded=png) for png in pngs]))
    assert tf.make_ndarray(response.outputs["cluster_id"]).tolist() == [
        p.cluster_id for p in native.predictions]
    # No reconstruction asked for: the decoder did not run, so no reconstruction error either.
    assert stack.metrics.registry.get_sample_value(
        "aecluster_reconstruction_error_count", {"model": "digits", "version": "1"}) is None


async def test_predict_with_a_blocking_client_reading_typed_fields(stack: Stack) -> None:
    # The classic TF Serving client: a blocking channel, reading int64_val / float_val.
    def call() -> predict_pb2.PredictResponse:
        with grpc.insecure_channel(f"127.0.0.1:{stack.server.port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "digits"
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(DIGITS[:2]))
            request.output_filter.append("cluster_id")
            result: predict_pb2.PredictResponse = stub.Predict(request, 30.0)
            return result

    response = await asyncio.to_thread(call)
    ids = list(response.outputs["cluster_id"].int64_val)
    assert len(ids) == 2 and all(0 <= i < 10 for i in ids)


async def test_get_model_metadata(stack: Stack) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "digits"
    response = await stack.predict.GetModelMetadata(request)
    assert (response.model_spec.name, response.model_spec.version.value) == ("digits", 1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert sorted(signatures.signature_def) == ["predict_bytes", "serving_default"]
    default = signatures.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    images = default.inputs["images"]
    assert images.dtype == tf.float32.as_datatype_enum
    assert [d.size for d in images.tensor_shape.dim] == [-1, 8, 8, 1]
    assert signatures.signature_def["predict_bytes"].inputs["image_bytes"].dtype == (
        tf.string.as_datatype_enum)
    outputs = default.outputs
    assert sorted(outputs) == ["cluster_id", "distance", "embedding", "is_outlier",
                               "reconstruction"]
    assert outputs["cluster_id"].dtype == tf.int64.as_datatype_enum
    assert outputs["is_outlier"].dtype == tf.bool.as_datatype_enum
    assert [d.size for d in outputs["embedding"].tensor_shape.dim] == [-1, 8]


async def test_get_model_status(stack: Stack) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "digits"
    response = await stack.models.GetModelStatus(request)
    [row] = response.model_version_status
    assert row.version == 1
    assert row.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert row.status.error_code == 0 and row.status.error_message == ""
    request.model_spec.version.value = 1
    assert (await stack.models.GetModelStatus(request)).model_version_status[0].version == 1


async def test_unimplemented_tf_serving_methods_say_what_is_served(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.predict.Classify(_classification_request())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "use Predict" in caught.value.details()


def _classification_request() -> object:
    from tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "digits"
    return request


# ---- operations --------------------------------------------------------------------------


async def _health(stack: Stack, service: str = "") -> int:
    response = await stack.health.Check(health_pb2.HealthCheckRequest(service=service))
    return int(response.status)


async def test_health_follows_readiness_and_set_serving(stack: Stack) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", "aecluster.v1.ClusterService", "tensorflow.serving.PredictionService",
                    "tensorflow.serving.ModelService"):
        assert await _health(stack, service) == serving
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _health(stack, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await stack.server.set_serving(False)
    assert await _health(stack) == not_serving
    await stack.server.set_serving(True)
    assert await _health(stack) == serving


async def test_a_check_answers_readiness_now_not_at_the_next_poll(
        monkeypatch: pytest.MonkeyPatch, stack: Stack) -> None:
    # HTTP /readyz answers DataPlane.is_ready() as it is; gRPC's Check must too. With the
    # poll that publishes changes slowed to an hour, a Check right after readiness is lost
    # still says NOT_SERVING (before the fix it said SERVING until the poll came round).
    from service.grpc import server as grpc_server_module

    monkeypatch.setattr(grpc_server_module, "HEALTH_POLL_SECONDS", 3600)
    await asyncio.sleep(0.6)  # the poll's current 0.5 s sleep ends; the next lasts an hour
    assert await _health(stack) == health_pb2.HealthCheckResponse.SERVING
    drain = asyncio.create_task(stack.dataplane.drain(1.0))
    await asyncio.sleep(0)  # the drain starts: readiness is lost
    assert not stack.dataplane.is_ready()
    assert await _health(stack) == health_pb2.HealthCheckResponse.NOT_SERVING
    await drain


async def test_draining_turns_health_off_and_refuses_new_calls(stack: Stack) -> None:
    drain = asyncio.create_task(stack.dataplane.drain(1.0))
    # No set_serving call here: the health service follows DataPlane.is_ready() by itself.
    for _ in range(40):
        if await _health(stack) == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        await asyncio.sleep(0.05)
    assert await _health(stack, "aecluster.v1.ClusterService") == (
        health_pb2.HealthCheckResponse.NOT_SERVING)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.native.Cluster(pb.ClusterRequest(model="digits",
                                                     images=[_tensor_image(DIGITS[0])]))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in caught.value.details()
    await drain


async def test_reflection_lists_and_describes_every_service(stack: Stack) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="aecluster.v1.ClusterService"),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="tensorflow.serving.PredictionService"),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="tensorflow.serving.ModelService"),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="inference.GRPCInferenceService")]
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert names == {"aecluster.v1.ClusterService", "tensorflow.serving.PredictionService",
                     "tensorflow.serving.ModelService", "inference.GRPCInferenceService",
                     "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    expected_files = ("aecluster/v1/cluster_service.proto",
                      "tensorflow_serving/apis/prediction_service.proto",
                      "tensorflow_serving/apis/model_service.proto",
                      "inference/grpc_predict_v2.proto")
    for response, filename in zip(responses[1:], expected_files, strict=True):
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                 for raw in response.file_descriptor_response.file_descriptor_proto]
        assert filename in [f.name for f in files], response


async def test_port_zero_binds_a_free_port_that_cannot_be_shared(stack: Stack,
                                                                 model_repo: Path) -> None:
    assert stack.server.port > 0
    taken = Settings(model_repo=model_repo, host="127.0.0.1", grpc_port=stack.server.port)
    with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{stack.server.port}"):
        await start_grpc_server(stack.dataplane, taken, Metrics())


async def test_request_metrics_use_protocol_grpc(stack: Stack) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "digits"
    await stack.models.GetModelStatus(request)
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.native.Cluster(pb.ClusterRequest(model="nope",
                                                     images=[_tensor_image(DIGITS[0])]))
    sample = stack.metrics.registry.get_sample_value
    # Neither resolves a loaded version (status reads any name; "nope" is not loaded).
    none = {"model": "_none", "version": "_none"}
    assert sample("aecluster_requests_total",
                  {"protocol": "grpc", "method": "model_status", "code": "OK", **none}) == 1
    assert sample("aecluster_requests_total",
                  {"protocol": "grpc", "method": "cluster", "code": "NOT_FOUND", **none}) == 1
    assert sample("aecluster_request_duration_seconds_count",
                  {"protocol": "grpc", "method": "model_status", **none}) == 1


# ---- errors: each reaches the client with its code, and the server keeps serving --------


def _cluster(**fields: object) -> Callable[[Stack], Awaitable[object]]:
    fields.setdefault("model", "digits")
    return lambda s: s.native.Cluster(pb.ClusterRequest(**fields))  # type: ignore[arg-type]


def _predict(signature: str = "", *, label: str = "", output_filter: tuple[str, ...] = (),
             **inputs: object) -> Callable[[Stack], Awaitable[object]]:
    def call(s: Stack) -> Awaitable[object]:
        request = predict_pb2.PredictRequest(output_filter=list(output_filter))
        request.model_spec.name = "digits"
        request.model_spec.signature_name = signature
        if label:
            request.model_spec.version_label = label
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        return s.predict.Predict(request)

    return call


def _metadata(name: str) -> Callable[[Stack], Awaitable[object]]:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = name
    return lambda s: s.predict.GetModelMetadata(request)


def _status(name: str, version: int | None = None) -> Callable[[Stack], Awaitable[object]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return lambda s: s.models.GetModelStatus(request)


def _raw(method: str, payload: bytes) -> Callable[[Stack], Awaitable[object]]:
    return lambda s: s.channel.unary_unary(method)(payload)


GOOD = [_tensor_image(DIGITS[0])]
NAN = np.full((8, 8), np.nan, dtype="<f4")
BOMB = _png(np.zeros((8, 8, 1), dtype=np.float32), size=200)  # 40 000 px > MAX_PIXELS

ERROR_CASES: dict[str, tuple[Callable[[Stack], Awaitable[object]], str, str]] = {
    "unknown model": (_cluster(model="nope", images=GOOD), "NOT_FOUND", "model 'nope'"),
    "unknown version": (_cluster(version=9, images=GOOD), "NOT_FOUND", "version 9"),
    "path traversal": (_cluster(model="../digits", images=GOOD), "NOT_FOUND", "'../digits'"),
    "empty model name": (_cluster(model="", images=GOOD), "INVALID_ARGUMENT", "'model' is empty"),
    "no images": (_cluster(), "INVALID_ARGUMENT", "no images"),
    "undecodable bytes": (_cluster(images=[pb.Image(encoded=b"not an image")]),
                          "INVALID_ARGUMENT", "image 0"),
    "decompression bomb": (_cluster(images=[pb.Image(encoded=BOMB)]), "RESOURCE_EXHAUSTED",
                           "over the limit of 10000 pixels"),
    "NaN pixels": (_cluster(images=[pb.Image(tensor=pb.Tensor(
        shape=[8, 8], dtype="float32", data=NAN.tobytes()))]), "INVALID_ARGUMENT", "NaN"),
    "wrong rank": (_cluster(images=[pb.Image(tensor=pb.Tensor(
        shape=[1, 2, 8, 8], dtype="uint8", data=bytes(128)))]), "INVALID_ARGUMENT", "image 0"),
    "four-byte dtype lie": (_cluster(images=[pb.Image(tensor=pb.Tensor(
        shape=[8, 8], dtype="float32", data=bytes(64)))]), "INVALID_ARGUMENT", "needs 256"),
    "negative top_k": (_cluster(images=GOOD, top_k=-1), "INVALID_ARGUMENT", "top_k"),
    "too many images": (_cluster(images=GOOD * (MAX_IMAGES + 1)), "RESOURCE_EXHAUSTED",
                        f"limit is {MAX_IMAGES}"),
    "message over the size limit": (_cluster(images=[pb.Image(encoded=bytes(MESSAGE_LIMIT))]),
                                    "RESOURCE_EXHAUSTED", ""),
    "malformed protobuf": (_raw("/aecluster.v1.ClusterService/Cluster", b"\x0a\xff\xff"),
                           "INVALID_ARGUMENT", "not a valid protobuf"),
    "malformed TF Serving protobuf": (_raw("/tensorflow.serving.PredictionService/Predict",
                                           b"\x12\x80"), "INVALID_ARGUMENT", "Predict"),
    "unknown signature": (_predict("classify", images=DIGITS[:1]), "NOT_FOUND", "classify"),
    "unknown output": (_predict(output_filter=("logits",), images=DIGITS[:1]),
                       "INVALID_ARGUMENT", "logits"),
    "unknown input": (_predict(pixels=DIGITS[:1]), "INVALID_ARGUMENT", "'images'"),
    "wrong image shape": (_predict(images=np.zeros((1, 28, 28, 1), np.float32)),
                          "INVALID_ARGUMENT", "[N, 8, 8, 1]"),
    "unsupported dtype": (_predict(images=np.zeros((1, 8, 8, 1), np.complex64)),
                          "INVALID_ARGUMENT", "DT_COMPLEX64"),
    "version label": (_predict(label="canary", images=DIGITS[:1]), "NOT_FOUND", "canary"),
    "metadata of unknown model": (_metadata("nope"), "NOT_FOUND", "nope"),
    "status of unknown model": (_status("nope"), "NOT_FOUND", "nope"),
    "status of unknown version": (_status("digits", 7), "NOT_FOUND", "version 7"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
async def test_bad_requests_get_their_code_and_the_server_keeps_serving(stack: Stack,
                                                                        case: str) -> None:
    call, code, fragment = ERROR_CASES[case]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stack)
    assert caught.value.code() == grpc.StatusCode[code], caught.value.details()
    assert fragment in (caught.value.details() or "")
    await stack.still_serving()


async def test_a_tiny_predict_declaring_millions_of_images_is_refused_at_once(
        stack: Stack) -> None:
    # Issue 39: a 56-byte Predict (DT_STRING of shape [8,000,000], one string_val) held the
    # event loop for 15-29 s while it was expanded, before the image count was checked.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.signature_name = "predict_bytes"
    bomb = request.inputs["image_bytes"]
    bomb.dtype = tf.string.as_datatype_enum
    bomb.tensor_shape.dim.add().size = 8_000_000
    bomb.string_val.append(b"x")
    assert len(request.SerializeToString()) < 80
    started = asyncio.get_running_loop().time()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.predict.Predict(request)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"holds 8000000 images; the limit is {MAX_IMAGES}" in (caught.value.details() or "")
    assert asyncio.get_running_loop().time() - started < 1.0
    await stack.still_serving()


async def test_a_huge_model_name_is_not_found_with_a_bounded_message(stack: Stack) -> None:
    # Issue 39: a 10 KB name echoed into the status trailer passed grpc's 8 KB metadata limit,
    # and the caller got RESOURCE_EXHAUSTED instead of NOT_FOUND.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.native.Cluster(pb.ClusterRequest(model="a" * 10_000,
                                                     images=[_tensor_image(DIGITS[0])]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    details = caught.value.details() or ""
    assert len(details) < 1100 and details.endswith("more characters not shown)")
    await stack.still_serving()

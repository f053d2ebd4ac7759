"""gRPC servicers: parse the protobuf request, call the data plane, encode the answer.

Errors are raised as :class:`~service.errors.ServiceError` and rendered by
:mod:`service.grpc.interceptor`; nothing here picks a status code for the data plane.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from service import tracing
from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc
from service.dataplane import DEFAULT_SIGNATURE, DataPlane, deadline_from_timeout
from service.grpc import converters

# Stream requests being computed at once per ClusterStream call: enough that one stream
# fills the batcher's batches, few enough that one client cannot queue unbounded work.
STREAM_WINDOW = 8


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's gRPC deadline as an absolute ``time.monotonic()`` value (None: none)."""
    return deadline_from_timeout(context.time_remaining())


class ClusterServicer(pb_grpc.ClusterServiceServicer):
    """``aecluster.v1.ClusterService``: the native API."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    async def Cluster(
        self, request: pb.ClusterRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClusterResponse:
        """Cluster every image of one request."""
        return await self._cluster(request, deadline_of(context))

    async def ClusterStream(
        self, request_iterator: AsyncIterator[pb.ClusterRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ClusterResponse]:
        """Answer each request of the stream in order, computing up to STREAM_WINDOW at once.

        Requests are started as they arrive so that one stream's requests share batches;
        answers are still sent in request order. The first error ends the stream.
        """
        started: asyncio.Queue[asyncio.Task[pb.ClusterResponse] | None] = asyncio.Queue(
            maxsize=STREAM_WINDOW)
        deadline = deadline_of(context)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await started.put(asyncio.ensure_future(self._cluster(request, deadline)))
            finally:
                await started.put(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await started.get()) is not None:
                yield await task
            await reader  # re-raises a failure to read or parse the stream
        finally:
            reader.cancel()
            leftovers: list[asyncio.Task[Any]] = [reader]
            while not started.empty():
                item = started.get_nowait()
                if item is not None:
                    item.cancel()
                    leftovers.append(item)
            # Collect the cancelled tasks so none reports an exception nobody retrieved.
            with contextlib.suppress(BaseException):
                await asyncio.gather(*leftovers, return_exceptions=True)

    async def _cluster(self, request: pb.ClusterRequest,
                       deadline: float | None) -> pb.ClusterResponse:
        with tracing.span("decode"):
            model, images, options = converters.cluster_args(request)
        info, results = await self._dataplane.cluster(model, images, options, deadline=deadline)
        with tracing.span("encode"):
            return converters.cluster_response(info, results, options)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService``: Predict and GetModelMetadata."""

    def __init__(self, dataplane: DataPlane, *, max_message_bytes: int,
                 max_images: int | None = None) -> None:
        self._dataplane = dataplane
        self._max_bytes = max_message_bytes
        self._max_images = max_images

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        """TF Serving's Predict over the ``serving_default`` and ``predict_bytes`` signatures."""
        model = converters.model_ref(request.model_spec)
        with tracing.span("decode"):
            inputs = {
                name: converters.tensor_proto_to_array(proto, name, max_bytes=self._max_bytes,
                                                       max_images=self._max_images)
                for name, proto in request.inputs.items()
            }
        signature = request.model_spec.signature_name or None
        info, outputs = await self._dataplane.predict(
            model, signature, inputs, list(request.output_filter) or None,
            deadline=deadline_of(context),
        )
        with tracing.span("encode"):
            response = predict_pb2.PredictResponse()
            converters.fill_model_spec(response.model_spec, info,
                                       signature or DEFAULT_SIGNATURE)
            for name, array in outputs.items():
                response.outputs[name].CopyFrom(converters.array_to_tensor_proto(array))
        return response

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """The ``signature_def`` metadata of a model version."""
        converters.check_metadata_fields(list(request.metadata_field))
        metadata = self._dataplane.model_metadata(converters.model_ref(request.model_spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        converters.fill_model_spec(response.model_spec, metadata)
        response.metadata[converters.SIGNATURE_DEF_FIELD].Pack(
            converters.signature_def_map(metadata))
        return response

    async def Classify(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> None:
        """Not served: these models have no classification signature."""
        await _unimplemented(context, "Classify")

    async def Regress(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> None:
        """Not served: these models have no regression signature."""
        await _unimplemented(context, "Regress")

    async def MultiInference(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> None:
        """Not served: use Predict."""
        await _unimplemented(context, "MultiInference")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: GetModelStatus."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """The state of one version, or of every known version of the model."""
        model = converters.model_ref(request.model_spec)
        statuses = self._dataplane.model_status(model.name, model.version)
        return converters.model_status_response(statuses)

    async def HandleReloadConfigRequest(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> None:
        """Not served: the repository is reloaded by polling its directory."""
        await _unimplemented(context, "HandleReloadConfigRequest")


async def _unimplemented(context: grpc.aio.ServicerContext, method: str) -> None:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{method} is not served here: use Predict, GetModelMetadata or GetModelStatus "
        "(or aecluster.v1.ClusterService)",
    )

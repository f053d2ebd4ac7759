"""The Open Inference Protocol (KServe / Triton "V2") gRPC API:
``inference.GRPCInferenceService``, with protobuf <-> data-plane conversion.

Requests whose inputs come in ``raw_input_contents`` get their outputs in
``raw_output_contents`` (what tritonclient sends and reads); requests with typed
``contents`` get typed ``contents`` back. Errors are raised as ServiceErrors and rendered
by the interceptor.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from service import oip, tracing
from service._generated.inference import grpc_predict_v2_pb2 as pb
from service._generated.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from service.dataplane import DataPlane
from service.errors import InvalidInput
from service.grpc.servicers import deadline_of
from service.types import ModelRef

# V2 datatype -> the InferTensorContents field holding its values.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over the data plane."""

    def __init__(self, dataplane: DataPlane, *, max_images: int) -> None:
        self._dataplane = dataplane
        self._max_images = max_images

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dataplane.is_live())

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dataplane.is_ready())

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        model = _model_ref(request.name, request.version)
        return pb.ModelReadyResponse(ready=self._dataplane.model_ready(model))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=oip.SERVER_NAME, version=oip.server_version(),
                                         extensions=list(oip.EXTENSIONS))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        model = _model_ref(request.name, request.version)
        info = oip.model_info(self._dataplane.model_metadata(model),
                              self._dataplane.model_status(model.name))
        response = pb.ModelMetadataResponse(name=info.name, versions=info.versions,
                                            platform=info.platform)
        for target, specs in ((response.inputs, info.inputs), (response.outputs, info.outputs)):
            for spec in specs:
                target.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
        return response

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        model = _model_ref(request.model_name, request.model_version)
        with tracing.span("decode"):
            inputs = infer_inputs(request, max_images=self._max_images)
        for output in request.outputs:
            if "classification" in output.parameters:
                raise InvalidInput(f"output {output.name!r}: the classification extension is "
                                   "not served")
        wanted = [output.name for output in request.outputs] or None
        info, outputs = await self._dataplane.infer(model, inputs, wanted,
                                                    deadline=deadline_of(context))
        with tracing.span("encode"):
            return _infer_response(request, info.name, info.version, outputs)


def _infer_response(request: pb.ModelInferRequest, name: str, version: int,
                    outputs: dict[str, np.ndarray]) -> pb.ModelInferResponse:
    """Raw outputs for a request with raw inputs (what tritonclient reads), else typed."""
    response = pb.ModelInferResponse(model_name=name, model_version=str(version), id=request.id)
    raw = bool(request.raw_input_contents)
    for output, array in outputs.items():
        tensor = response.outputs.add(name=output, datatype=oip.datatype_of(array),
                                      shape=list(array.shape))
        if raw:
            response.raw_output_contents.append(oip.to_raw(array))
        else:
            getattr(tensor.contents, _CONTENTS_FIELD[tensor.datatype]).extend(
                array.ravel().tolist())
    return response


def _model_ref(name: str, version: str) -> ModelRef:
    if not name:
        raise InvalidInput("the model name is empty: name the model to use")
    return ModelRef(name, oip.model_version(version))


def infer_inputs(request: pb.ModelInferRequest, *, max_images: int) -> dict[str, np.ndarray]:
    """The input tensors of a ``ModelInferRequest``, from raw or typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents holds {len(raw)} entries for "
                           f"{len(request.inputs)} inputs: send one per input, in order")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input {name!r} is sent twice")
        oip.checked_datatype(tensor.datatype, name)
        shape = oip.check_shape(list(tensor.shape), name, max_images=max_images)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {name!r} has contents, but the request carries its "
                                   "inputs in raw_input_contents")
            inputs[name] = oip.from_raw(raw[i], tensor.datatype, shape, name)
            continue
        field = _CONTENTS_FIELD.get(tensor.datatype)
        if field is None:
            raise InvalidInput(f"input {name!r}: {tensor.datatype} is sent in "
                               "raw_input_contents only")
        values: Any = getattr(tensor.contents, field)
        inputs[name] = oip.from_values(list(values), tensor.datatype, shape, name)
    return inputs

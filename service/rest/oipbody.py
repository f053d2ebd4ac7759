"""Open Inference Protocol REST bodies: the JSON inference request and answer, and the
binary tensor data extension.

With the extension a body is a JSON header of ``Inference-Header-Content-Length`` bytes
followed by the raw bytes of every input whose ``parameters`` hold ``binary_data_size``, in
the order of ``inputs``; an answer puts the outputs asked for with ``binary_data`` (or all,
with the request parameter ``binary_data_output``) after its JSON the same way.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service import chunked, oip
from service.dataplane import VersionInfo
from service.errors import InvalidInput
from service.rest.encoding import dumps, expect_object, in_pieces, json_type, parse_json

HEADER_LENGTH = "inference-header-content-length"
BINARY_MEDIA_TYPE = "application/octet-stream"


@dataclass
class InferBody:
    """What an inference request asks for."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: every output
    # An output's own binary_data parameter, where it has one; else the request parameter
    # binary_data_output (what tritonclient sends when it names no outputs).
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False

    def is_binary(self, name: str) -> bool:
        return self.binary_outputs.get(name, self.binary_default)


def parse_request(body: bytes, header_length: str | None, *, max_images: int) -> InferBody:
    """The inference request of a body, with its binary part when ``header_length`` (the
    ``Inference-Header-Content-Length`` header) is given."""
    binary = b""
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length must be the byte length of the JSON part of "
                f"the body (at most {len(body)}), got {header_length!r}")
        split = int(header_length)
        body, binary = body[:split], body[split:]
    with chunked.collector_paused(in_pieces(len(body))):
        document = expect_object(parse_json(body), what="the inference request")
        try:
            return _request(document, binary, max_images=max_images)
        finally:
            chunked.release(document)  # here, in pieces, not all at once later


def _request(document: dict[str, Any], binary: bytes, *, max_images: int) -> InferBody:
    """The request of a parsed JSON part and its binary part."""
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f'"id" must be a string, got {json_type(request_id)}')
    parameters = _parameters(document.get("parameters"), "the request")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput('"inputs" must be a non-empty array of input tensors, got '
                           f"{json_type(raw_inputs)}")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        tensor = expect_object(raw, what=f"inputs[{i}]")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f'inputs[{i}].name must be a non-empty string')
        if name in inputs:
            raise InvalidInput(f"input {name!r} is sent twice")
        datatype = oip.checked_datatype(tensor.get("datatype"), name)
        shape = oip.check_shape(tensor.get("shape"), name, max_images=max_images)
        size = _parameters(tensor.get("parameters"), f"input {name!r}").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be a byte count")
            if "data" in tensor:
                raise InvalidInput(f"input {name!r} has both data and binary_data_size")
            if offset + size > len(binary):
                raise InvalidInput(f"input {name!r}: binary_data_size {size} passes the end of "
                                   f"the binary part ({len(binary) - offset} bytes left)")
            inputs[name] = oip.from_raw(binary[offset:offset + size], datatype, shape, name)
            offset += size
            continue
        if "data" not in tensor:
            raise InvalidInput(f"input {name!r} has no data (and no binary_data_size)")
        data = tensor["data"]
        if not isinstance(data, list):
            data = [data]
        if datatype == "BYTES" and _parameters(tensor.get("parameters"), name).get(
                "content_type") == "base64":
            data = _base64_elements(data, name)
        inputs[name] = oip.from_values(data, datatype, shape, name)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of the binary part belong to no input")
    outputs, binary_outputs = _requested_outputs(document.get("outputs"))
    default = parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidInput("parameter binary_data_output must be a boolean")
    return InferBody(request_id, inputs, outputs, binary_outputs, default)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    return expect_object(value, what=f"the parameters of {where}")


def _base64_elements(data: list[Any], name: str) -> list[bytes]:
    # MLServer's convention for binary BYTES in JSON ("content_type": "base64"): PNG bytes
    # are not UTF-8 text, so a JSON string cannot hold them as they are.
    try:
        return [base64.b64decode(item, validate=True) for item in np.asarray(data).ravel()]
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInput(f"input {name!r}: an element is not valid base64 ({exc})") from exc


def _requested_outputs(value: Any) -> tuple[list[str] | None, dict[str, bool]]:
    if value is None:
        return None, {}
    if not isinstance(value, list):
        raise InvalidInput(f'"outputs" must be an array, got {json_type(value)}')
    names: list[str] = []
    binary: dict[str, bool] = {}
    for i, raw in enumerate(value):
        output = expect_object(raw, what=f"outputs[{i}]")
        name = output.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"outputs[{i}].name must be a non-empty string")
        parameters = _parameters(output.get("parameters"), f"output {name!r}")
        if "classification" in parameters:
            raise InvalidInput(f"output {name!r}: the classification extension is not served")
        if "binary_data" in parameters:
            flag = parameters["binary_data"]
            if not isinstance(flag, bool):
                raise InvalidInput(f"output {name!r}: binary_data must be a boolean")
            binary[name] = flag
        names.append(name)
    return names or None, binary


def render_answer(info: VersionInfo, outputs: dict[str, np.ndarray],
                  request: InferBody) -> tuple[bytes, int | None]:
    """The answer's body and, when some outputs are binary, the length of its JSON part."""
    tensors: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for name, array in outputs.items():
        tensor: dict[str, Any] = {"name": name, "datatype": oip.datatype_of(array),
                                  "shape": list(array.shape)}
        if request.is_binary(name):
            raw = oip.to_raw(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        else:
            tensor["data"] = np.ascontiguousarray(array).ravel()
        tensors.append(tensor)
    answer: dict[str, Any] = {"model_name": info.name, "model_version": str(info.version),
                              "outputs": tensors}
    if request.id is not None:
        answer["id"] = request.id
    head = dumps(answer)
    if not parts:
        return head, None
    return b"".join([head, *parts]), len(head)

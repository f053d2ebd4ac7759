"""The Open Inference Protocol's REST API: the FastAPI app through httpx over a real
DataPlane serving the digits bundle; answers held to DataPlane.predict's."""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from service.dataplane import DataPlane
from service.metrics import Metrics
from service.types import ModelRef
from tests.service.stacks import in_process

pytestmark = pytest.mark.anyio

DIGITS = (load_digits().images[:5] / 16.0).astype(np.float32)[..., None]  # [5, 8, 8, 1]
MAX_IMAGES = 8
INFER = "/v2/models/digits/infer"


@dataclass
class Stack:
    http: httpx.AsyncClient
    dataplane: DataPlane
    metrics: Metrics


@pytest.fixture
async def stack(model_repo: Path) -> AsyncIterator[Stack]:
    async with in_process(model_repo, max_batch_size=8, max_batch_delay_ms=2,
                          max_images_per_request=MAX_IMAGES, max_image_pixels=10_000,
                          max_body_bytes=256 * 1024) as served, served.client() as http:
        yield Stack(http, served.dataplane, served.metrics)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def _json_input(images: np.ndarray, datatype: str = "FP32") -> dict[str, Any]:
    return {"name": "images", "datatype": datatype, "shape": list(images.shape),
            "data": images.ravel().tolist()}


async def _expected(stack: Stack, images: np.ndarray) -> dict[str, np.ndarray]:
    _, outputs = await stack.dataplane.predict(ModelRef("digits"), None, {"images": images})
    return outputs


def _split(response: httpx.Response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON part and the binary outputs of an answer."""
    length = int(response.headers["inference-header-content-length"])
    head = json.loads(response.content[:length])
    binary: dict[str, np.ndarray] = {}
    offset = length
    dtypes = {"INT64": "<i8", "FP32": "<f4", "BOOL": "?"}
    for output in head["outputs"]:
        if "data" in output:
            continue
        size = output["parameters"]["binary_data_size"]
        raw = response.content[offset:offset + size]
        binary[output["name"]] = np.frombuffer(raw, dtypes[output["datatype"]]).reshape(
            output["shape"])
        offset += size
    assert offset == len(response.content)
    return head, binary


async def test_server_metadata_and_health(stack: Stack) -> None:
    meta = (await stack.http.get("/v2")).json()
    assert meta["name"] == "aecluster" and meta["extensions"] == ["binary_tensor_data"]
    assert (await stack.http.get("/v2/health/live")).status_code == 200
    assert (await stack.http.get("/v2/health/ready")).status_code == 200
    assert (await stack.http.get("/v2/models/digits/ready")).status_code == 200
    assert (await stack.http.get("/v2/models/digits/versions/1/ready")).status_code == 200
    assert (await stack.http.get("/v2/models/nope/ready")).status_code == 404
    assert (await stack.http.get("/v2/models/digits/versions/7/ready")).status_code == 404


async def test_model_metadata_has_the_real_shapes(stack: Stack) -> None:
    for path in ("/v2/models/digits", "/v2/models/digits/versions/1"):
        meta = (await stack.http.get(path)).json()
        assert meta["name"] == "digits" and meta["versions"] == ["1"]
        assert meta["inputs"] == [
            {"name": "images", "datatype": "FP32", "shape": [-1, 8, 8, 1]},
            {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
        assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
            "cluster_id": ("INT64", [-1]), "distance": ("FP32", [-1]),
            "is_outlier": ("BOOL", [-1]), "reconstruction": ("FP32", [-1, 8, 8, 1]),
            "embedding": ("FP32", [-1, 8])}


async def test_json_inference_answers_what_predict_answers(stack: Stack) -> None:
    response = await stack.http.post(INFER, json={"id": "r1", "inputs": [_json_input(DIGITS)]})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "digits" and answer["model_version"] == "1"
    assert answer["id"] == "r1"
    expected = await _expected(stack, DIGITS)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert list(outputs) == ["cluster_id", "distance", "is_outlier", "reconstruction",
                             "embedding"]
    assert outputs["cluster_id"]["datatype"] == "INT64"
    assert outputs["cluster_id"]["data"] == expected["cluster_id"].tolist()
    assert outputs["is_outlier"]["datatype"] == "BOOL"
    assert outputs["is_outlier"]["data"] == expected["is_outlier"].tolist()
    np.testing.assert_allclose(outputs["distance"]["data"], expected["distance"], rtol=1e-6)
    assert outputs["reconstruction"]["shape"] == [5, 8, 8, 1]
    assert outputs["embedding"]["shape"] == [5, 8]


async def test_binary_inputs_and_requested_binary_outputs(stack: Stack) -> None:
    head = json.dumps({"inputs": [{"name": "images", "datatype": "FP32",
                                   "shape": list(DIGITS.shape),
                                   "parameters": {"binary_data_size": DIGITS.nbytes}}],
                       "outputs": [{"name": "distance", "parameters": {"binary_data": True}},
                                   {"name": "cluster_id"}]}).encode()
    recon_before = _recon_count(stack)
    response = await stack.http.post(
        INFER, content=head + DIGITS.astype("<f4").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)),
                 "Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    assert _recon_count(stack) == recon_before  # the decoder did not run
    answer, binary = _split(response)
    expected = await _expected(stack, DIGITS)
    assert _recon_count(stack) == recon_before + len(DIGITS)  # the count can move
    assert [o["name"] for o in answer["outputs"]] == ["distance", "cluster_id"]
    assert answer["outputs"][1]["data"] == expected["cluster_id"].tolist()
    np.testing.assert_array_equal(binary["distance"], expected["distance"])


async def test_binary_data_output_and_uint8_and_bytes(stack: Stack) -> None:
    pngs = [_png(image) for image in DIGITS]
    raw = b"".join(struct.pack("<I", len(p)) + p for p in pngs)
    head = json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES",
                                   "shape": [len(pngs)],
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    response = await stack.http.post(INFER, content=head + raw,
                                     headers={"Inference-Header-Content-Length": str(len(head))})
    assert response.status_code == 200, response.text
    _, binary = _split(response)
    assert set(binary) == {"cluster_id", "distance", "is_outlier", "reconstruction",
                           "embedding"}
    uint8 = np.round(DIGITS * 255).astype(np.uint8)
    expected = await _expected(stack, uint8.astype(np.float32) / 255)
    np.testing.assert_array_equal(binary["cluster_id"], expected["cluster_id"])
    as_uint8 = await stack.http.post(INFER, json={"inputs": [_json_input(uint8, "UINT8")],
                                                  "outputs": [{"name": "cluster_id"}]})
    assert as_uint8.json()["outputs"][0]["data"] == expected["cluster_id"].tolist()
    b64 = await stack.http.post(INFER, json={"inputs": [{
        "name": "image_bytes", "datatype": "BYTES", "shape": [len(pngs)],
        "parameters": {"content_type": "base64"},
        "data": [base64.b64encode(p).decode() for p in pngs]}],
        "outputs": [{"name": "cluster_id"}]})
    assert b64.json()["outputs"][0]["data"] == expected["cluster_id"].tolist()


async def test_an_outputs_own_binary_data_wins_over_binary_data_output(stack: Stack) -> None:
    response = await stack.http.post(INFER, json={
        "inputs": [_json_input(DIGITS)], "parameters": {"binary_data_output": True},
        "outputs": [{"name": "cluster_id", "parameters": {"binary_data": False}},
                    {"name": "distance"}]})
    answer, binary = _split(response)
    assert "data" in answer["outputs"][0] and set(binary) == {"distance"}


def _recon_count(stack: Stack) -> float:
    return sum(sample.value for family in stack.metrics.registry.collect()
               if family.name == "aecluster_reconstruction_error"
               for sample in family.samples if sample.name.endswith("_count"))


BAD = [
    ("not json", {"content": b"{", "headers": {"Content-Type": "application/json"}}, 400),
    ("no inputs", {"json": {"inputs": []}}, 400),
    ("shape", {"json": {"inputs": [_json_input(np.zeros((1, 9, 8, 1), np.float32))]}}, 400),
    ("data count", {"json": {"inputs": [{**_json_input(DIGITS[:1]), "shape": [2, 8, 8, 1]}]}},
     400),
    ("range", {"json": {"inputs": [_json_input(DIGITS[:1] * 255)]}}, 400),
    ("datatype", {"json": {"inputs": [_json_input(DIGITS[:1], "FP64")]}}, 400),
    ("no such datatype", {"json": {"inputs": [_json_input(DIGITS[:1], "FLOAT")]}}, 400),
    ("two inputs", {"json": {"inputs": [_json_input(DIGITS[:1]),
                                        {**_json_input(DIGITS[:1]), "name": "other"}]}}, 400),
    ("unknown output", {"json": {"inputs": [_json_input(DIGITS[:1])],
                                 "outputs": [{"name": "logits"}]}}, 400),
    ("classification", {"json": {"inputs": [_json_input(DIGITS[:1])], "outputs": [
        {"name": "cluster_id", "parameters": {"classification": 2}}]}}, 400),
    ("header length", {"content": b"{}", "headers": {
        "Inference-Header-Content-Length": "99"}}, 400),
    ("binary left over", {"content": json.dumps({"inputs": [_json_input(DIGITS[:1])]}).encode()
                          + b"xx", "headers": {"Inference-Header-Content-Length": str(len(
                              json.dumps({"inputs": [_json_input(DIGITS[:1])]})))}}, 400),
    ("too many", {"json": {"inputs": [_json_input(np.zeros((9, 8, 8, 1), np.float32))]}}, 413),
    ("media type", {"content": b"\x89PNG", "headers": {"Content-Type": "image/png"}}, 415),
    ("compressed", {"content": b"x", "headers": {"Content-Encoding": "gzip"}}, 415),
]


@pytest.mark.parametrize(("case", "request_kwargs", "status"), BAD, ids=[b[0] for b in BAD])
async def test_bad_requests_get_the_error_table(stack: Stack, case: str,
                                                request_kwargs: dict[str, Any],
                                                status: int) -> None:
    response = await stack.http.post(INFER, **request_kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]


async def test_unknown_model_version_and_method(stack: Stack) -> None:
    body = {"inputs": [_json_input(DIGITS[:1])]}
    assert (await stack.http.post("/v2/models/nope/infer", json=body)).status_code == 404
    assert (await stack.http.post("/v2/models/digits/versions/3/infer",
                                  json=body)).status_code == 404
    answer = await stack.http.post("/v2/models/digits/versions/1/infer", json=body)
    assert answer.json()["model_version"] == "1"
    wrong = await stack.http.get(INFER)
    assert wrong.status_code == 405 and "POST" in wrong.headers["allow"]
    assert (await stack.http.get("/v2/models/nope")).status_code == 404


async def test_requests_are_counted_under_their_v2_route(stack: Stack) -> None:
    await stack.http.post(INFER, json={"inputs": [_json_input(DIGITS[:1])]})
    counted = stack.metrics.requests_total.labels("http", "v2_infer", "200", "digits",
                                                  "1")._value.get()
    assert counted == 1

"""Calls a running aecluster server with tritonclient (HTTP and gRPC) and writes what came
back as JSON; run in the client venv (tests/clients/venv.py) by
tests/integration/test_v2_clients.py, which checks the answers.

    python triton_calls.py --http HOST:PORT --grpc HOST:PORT --inputs DIR --out FILE

DIR holds images.npy (float32 [N, H, W, C] in [0, 1]) and 0.png, 1.png, ... Each case is
recorded as {"outputs": {name: [datatype, shape, values]}, "version": ...} or
{"error": {"status": ..., "message": ...}}.
"""

from __future__ import annotations

import argparse
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "digits"
OUTPUTS = ("cluster_id", "distance", "is_outlier", "embedding", "reconstruction")


def _record(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        return call()
    except InferenceServerException as exc:
        return {"error": {"status": str(exc.status()), "message": exc.message()}}


def _result(result: Any, response: Any, names: list[str]) -> dict[str, Any]:
    outputs = {}
    for name in names:
        array = result.as_numpy(name)
        if array is not None:
            outputs[name] = [str(array.dtype), list(array.shape), array.ravel().tolist()]
    return {"outputs": outputs, "version": str(response["model_version"])}


def _tensor(module: Any, name: str, array: np.ndarray, datatype: str,
            binary: bool | None) -> Any:
    tensor = module.InferInput(name, list(array.shape), datatype)
    if binary is None:
        tensor.set_data_from_numpy(array)
    else:
        tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def run(http: str, grpc_target: str, images: np.ndarray, pngs: list[bytes]) -> dict[str, Any]:
    h = httpclient.InferenceServerClient(http)
    g = grpcclient.InferenceServerClient(grpc_target)
    cases: dict[str, Any] = {}
    byte_images = np.array(pngs, dtype=np.object_)
    uint8 = np.round(images * 255).astype(np.uint8)

    for proto, client, module in (("http", h, httpclient), ("grpc", g, grpcclient)):
        cases.update(_protocol_cases(proto, client, module, images, uint8, byte_images))
    return cases


def _protocol_cases(proto: str, client: Any, module: Any, images: np.ndarray,
                    uint8: np.ndarray, byte_images: np.ndarray) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    binary_modes = (True, False) if proto == "http" else (None,)
    grpc_kw: dict[str, Any] = {"as_json": True} if proto == "grpc" else {}
    cases[f"{proto}/live"] = client.is_server_live()
    cases[f"{proto}/ready"] = client.is_server_ready()
    cases[f"{proto}/model_ready"] = client.is_model_ready(MODEL)
    cases[f"{proto}/model_ready_v2"] = client.is_model_ready(MODEL, "2")
    cases[f"{proto}/server_metadata"] = client.get_server_metadata(**grpc_kw)
    for version in ("", "2"):
        cases[f"{proto}/model_metadata/{version}"] = _record(
            lambda v=version: client.get_model_metadata(MODEL, v, **grpc_kw))

    def infer(inputs: list[Any], wanted: list[str] | None, version: str = "",
              binary_out: bool = True, model: str = MODEL) -> dict[str, Any]:
        if wanted is None:
            outputs = None
        elif proto == "http":
            outputs = [module.InferRequestedOutput(n, binary_data=binary_out)
                       for n in wanted]
        else:
            outputs = [module.InferRequestedOutput(n) for n in wanted]
        result = client.infer(model, inputs, model_version=version, outputs=outputs)
        response = result.get_response(**grpc_kw)
        return _result(result, response, list(wanted or OUTPUTS))

    for binary in binary_modes:
        tag = {True: "binary", False: "json", None: "raw"}[binary]
        cases[f"{proto}/{tag}/all"] = _record(
            lambda b=binary: infer([_tensor(module, "images", images, "FP32", b)], None))
        cases[f"{proto}/{tag}/two"] = _record(
            lambda b=binary: infer([_tensor(module, "images", images, "FP32", b)],
                                   ["distance", "cluster_id"], binary_out=bool(b)))
        cases[f"{proto}/{tag}/uint8"] = _record(
            lambda b=binary: infer([_tensor(module, "images", uint8, "UINT8", b)],
                                   ["cluster_id", "distance"], binary_out=bool(b)))
    # BYTES over JSON would have to be UTF-8 text; PNGs travel as binary data.
    cases[f"{proto}/bytes"] = _record(lambda: infer(
        [_tensor(module, "image_bytes", byte_images, "BYTES",
                 True if proto == "http" else None)], ["cluster_id", "distance"]))
    for version in ("1", "2", "9"):
        cases[f"{proto}/version/{version}"] = _record(lambda v=version: infer(
            [_tensor(module, "images", images[:2], "FP32", None)], ["cluster_id"],
            version=v))

    def bad(array: np.ndarray, datatype: str = "FP32", name: str = "images",
            wanted: list[str] | None = None, model: str = MODEL) -> Callable[[], Any]:
        return lambda: infer([_tensor(module, name, array, datatype, None)], wanted,
                             model=model)

    wrong = np.zeros((1, 9, 8, 1), np.float32)
    nan = images[:1].copy()
    nan[0, 0, 0, 0] = np.nan
    errors = {
        "shape": bad(wrong),
        "nan": bad(nan),
        "range": bad(images[:1] * 255.0),
        "datatype": bad(images[:1].astype(np.float64), "FP64"),
        "input_name": bad(images[:1], name="pixels"),
        "output_name": bad(images[:1], wanted=["logits"]),
        "undecodable": bad(np.array([b"not an image"], dtype=np.object_), "BYTES",
                           "image_bytes"),
        "unknown_model": bad(images[:1], model="nope"),
        "too_many": bad(np.zeros((17, 8, 8, 1), np.float32)),
        "too_many_pixels": bad(np.array([_big_png()], dtype=np.object_), "BYTES",
                               "image_bytes"),
    }
    for case, call in errors.items():
        cases[f"{proto}/error/{case}"] = _record(call)
    cases[f"{proto}/error/metadata_unknown_model"] = _record(
        lambda: client.get_model_metadata("nope", **grpc_kw))
    return cases


def run_auth(http: str, grpc_target: str, images: np.ndarray, token: str) -> dict[str, Any]:
    """One inference per protocol without a token and with ``token`` (Authorization:
    Bearer, as an HTTP header and as gRPC metadata)."""
    cases: dict[str, Any] = {}
    for proto, module, target in (("http", httpclient, http), ("grpc", grpcclient, grpc_target)):
        client = module.InferenceServerClient(target)
        tensor = _tensor(module, "images", images, "FP32", None)
        as_json = {"as_json": True} if proto == "grpc" else {}

        def infer(headers: dict[str, str] | None, client: Any = client, tensor: Any = tensor,
                  as_json: dict[str, bool] = as_json) -> dict[str, Any]:
            result = client.infer(MODEL, [tensor], headers=headers)
            return _result(result, result.get_response(**as_json), ["cluster_id"])

        cases[f"{proto}/auth/none"] = _record(lambda f=infer: f(None))
        cases[f"{proto}/auth/token"] = _record(
            lambda f=infer: f({"authorization": f"Bearer {token}"}))
    return cases


def _big_png() -> bytes:
    # A 200x200 PNG: 40,000 pixels, over the test server's AEC_MAX_IMAGE_PIXELS. Written by
    # hand because this venv has no Pillow.
    width = height = 200
    raw = b"".join(b"\0" + bytes(width) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", required=True)
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--auth-token", help="only the token cases, with this token")
    args = parser.parse_args()
    images = np.load(args.inputs / "images.npy")
    if args.auth_token:
        cases = run_auth(args.http, args.grpc, images, args.auth_token)
    else:
        pngs = [(args.inputs / f"{i}.png").read_bytes() for i in range(len(images))]
        cases = run(args.http, args.grpc, images, pngs)
    args.out.write_text(json.dumps(cases))


if __name__ == "__main__":
    main()

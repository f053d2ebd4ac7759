"""Check a running MLServer peer against the aecluster service's in-process results.

Run with the MLServer venv's python (numpy, grpcio and mlserver's protos)::

    bench/serve/mlserver/.venv/bin/python bench/serve/mlserver/check.py \
        --http-port P --grpc-port Q --reference ref.npz [--request-file req.bin ...]

``ref.npz`` comes from reference.py (project venv). Every call below must return the
reference's cluster ids exactly, its distances and reconstructions to float32 rounding:
V2 REST with 1 and 32 images, V2 gRPC (raw FP32 contents) with 1 and 32 images, on both
models; 32 concurrent single-image requests per protocol (merged by the adaptive batcher,
then split back along the first axis); a bad shape must give HTTP 400. Each
``--request-file`` (from ``serve.py grpc-request``) is sent as-is to
/inference.GRPCInferenceService/ModelInfer. Exit status 0 when all checks pass.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

MODELS = {"aecluster": True, "aecluster-norecon": False}
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_DTYPES = {"INT64": "<i8", "FP32": "<f4"}

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        failures.append(what)


def wait_ready(base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"error: {base}/v2/health/ready is not 200 after {timeout:.0f}s")
        time.sleep(0.5)


def rest_body(images: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{
        "name": "images", "datatype": "FP32", "shape": list(images.shape),
        "data": images.ravel().tolist(),
    }]}).encode()


def rest_infer(base: str, model: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}/v2/models/{model}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def rest_outputs(reply: dict) -> dict[str, np.ndarray]:
    return {
        o["name"]: np.asarray(o["data"], dtype=_DTYPES[o["datatype"]]).reshape(o["shape"])
        for o in reply["outputs"]
    }


def grpc_request(model: str, images: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="images", datatype="FP32")
    tensor.shape.extend(images.shape)
    request.raw_input_contents.append(np.ascontiguousarray(images, dtype="<f4").tobytes())
    return request


def grpc_outputs(reply: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    outputs = {}
    for i, tensor in enumerate(reply.outputs):
        if reply.raw_output_contents:  # a raw request gets a raw reply
            array = np.frombuffer(reply.raw_output_contents[i], dtype=_DTYPES[tensor.datatype])
        elif tensor.datatype == "INT64":
            array = np.asarray(tensor.contents.int64_contents, dtype="<i8")
        else:
            array = np.asarray(tensor.contents.fp32_contents, dtype="<f4")
        outputs[tensor.name] = array.reshape(list(tensor.shape))
    return outputs


def compare(what: str, got: dict[str, np.ndarray], ref: dict[str, np.ndarray],
            rows: slice, reconstruction: bool) -> None:
    n = rows.stop - rows.start
    expected = {"cluster_id", "distance"} | ({"reconstruction"} if reconstruction else set())
    if set(got) != expected:
        check(False, f"{what}: outputs {sorted(got)}, expected {sorted(expected)}")
        return
    ids, dist = got["cluster_id"], got["distance"]
    ok = (
        ids.shape == (n,) and dist.shape == (n,)
        and bool(np.all((ids >= 0) & (ids < int(ref["n_clusters"]))))
        and np.array_equal(ids, ref["cluster_id"][rows])
        and np.allclose(dist, ref["distance"][rows], rtol=1e-4, atol=1e-5)
    )
    detail = f"ids {ids[:8].tolist()}{'...' if n > 8 else ''}"
    if ok and reconstruction:
        recon = got["reconstruction"]
        ok = (recon.shape == ref["reconstruction"][rows].shape
              and np.allclose(recon, ref["reconstruction"][rows], rtol=1e-4, atol=1e-5))
        detail += f", reconstruction {list(recon.shape)}"
    if not ok:
        detail += (f" vs reference {ref['cluster_id'][rows][:8].tolist()}, max |d distance| "
                   f"{np.max(np.abs(dist - ref['distance'][rows])) if dist.shape == (n,) else '?'}")
    check(ok, f"{what}: {detail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--reference", required=True, help="npz from reference.py")
    parser.add_argument("--request-file", action="append", default=[],
                        help="serialized ModelInferRequest (serve.py grpc-request)")
    parser.add_argument("--ready-timeout", type=float, default=120)
    args = parser.parse_args()

    ref = dict(np.load(args.reference))
    images = ref["images"]
    if len(images) < 64:
        sys.exit("error: the reference needs at least 64 images")
    base = f"http://127.0.0.1:{args.http_port}"
    wait_ready(base, args.ready_timeout)
    channel = grpc.insecure_channel(f"127.0.0.1:{args.grpc_port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    for model, recon in MODELS.items():
        for rows in (slice(0, 1), slice(0, 32)):
            n = rows.stop - rows.start
            status, reply = rest_infer(base, model, rest_body(images[rows]))
            if status != 200:
                check(False, f"REST {model} {n} image(s): HTTP {status} {reply}")
            else:
                compare(f"REST {model} {n} image(s)", rest_outputs(reply), ref, rows, recon)
            reply = stub.ModelInfer(grpc_request(model, images[rows]), timeout=30)
            compare(f"gRPC {model} {n} image(s)", grpc_outputs(reply), ref, rows, recon)

        # Concurrent single-image requests: the adaptive batcher merges them along the
        # first axis and splits the outputs back; each must get its own row.
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            started = time.perf_counter()
            rest_replies = list(pool.map(
                lambda i, m=model: rest_infer(base, m, rest_body(images[i:i + 1])),
                range(32, 64)))
            rest_s = time.perf_counter() - started
        bad = [i for i, (status, _) in zip(range(32, 64), rest_replies, strict=True)
               if status != 200]
        if bad:
            check(False, f"REST {model} 32 concurrent: HTTP errors for rows {bad}")
        else:
            before = len(failures)
            for i, (_, reply) in zip(range(32, 64), rest_replies, strict=True):
                compare(f"REST {model} concurrent row {i}", rest_outputs(reply), ref,
                        slice(i, i + 1), recon)
            check(len(failures) == before,
                  f"REST {model} 32 concurrent single-image requests ({rest_s:.2f}s)")
        futures = [stub.ModelInfer.future(grpc_request(model, images[i:i + 1]), timeout=30)
                   for i in range(32, 64)]
        before = len(failures)
        for i, future in zip(range(32, 64), futures, strict=True):
            compare(f"gRPC {model} concurrent row {i}", grpc_outputs(future.result()), ref,
                    slice(i, i + 1), recon)
        check(len(failures) == before, f"gRPC {model} 32 concurrent single-image requests")

    wrong = np.zeros((1, images.shape[1] + 1, images.shape[2], images.shape[3]), np.float32)
    status, reply = rest_infer(base, "aecluster", rest_body(wrong))
    check(status == 400, f"REST bad shape {list(wrong.shape)}: HTTP {status} {reply}")

    raw_call = channel.unary_unary(GRPC_METHOD, request_serializer=None,
                                   response_deserializer=pb.ModelInferResponse.FromString)
    for path in args.request_file:
        with open(path, "rb") as handle:
            data = handle.read()
        request = pb.ModelInferRequest.FromString(data)
        reply = raw_call(data, timeout=30)
        outputs = grpc_outputs(reply)
        n = int(request.inputs[0].shape[0])
        ok = (outputs["cluster_id"].shape == (n,)
              and bool(np.all((outputs["cluster_id"] >= 0)
                              & (outputs["cluster_id"] < int(ref["n_clusters"]))))
              and set(outputs) == ({"cluster_id", "distance", "reconstruction"}
                                   if MODELS[request.model_name] else {"cluster_id", "distance"}))
        ids = outputs["cluster_id"][:8].tolist()
        check(ok, f"{path} ({len(data)} bytes, model {request.model_name}, {n} images) via "
                  f"{GRPC_METHOD}: outputs {sorted(outputs)}, ids {ids}")

    channel.close()
    print(f"{'all checks passed' if not failures else f'{len(failures)} check(s) failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

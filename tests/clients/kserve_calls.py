"""Calls a running aecluster server with KServe's Python V2 clients (InferenceRESTClient,
InferenceGRPCClient) and writes the answers as JSON; run in the client venv by
tests/integration/test_v2_clients.py (in a process of its own: kserve and tritonclient.grpc
cannot be imported together, both register the `inference.*` protobuf messages).

    python kserve_calls.py --http HOST:PORT --grpc HOST:PORT --inputs DIR --out FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "digits"


def _request(images: np.ndarray) -> Any:
    from kserve import InferInput, InferRequest

    tensor = InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=False)
    return InferRequest(model_name=MODEL, infer_inputs=[tensor])


def _outputs(response: Any) -> dict[str, Any]:
    return {output.name: [output.datatype, list(output.shape),
                          output.as_numpy().ravel().tolist()]
            for output in response.outputs}


async def run(http: str, grpc_target: str, images: np.ndarray) -> dict[str, Any]:
    from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig

    cases: dict[str, Any] = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    try:
        response = await rest.infer(f"http://{http}", _request(images), model_name=MODEL)
        cases["rest"] = _outputs(response)
        cases["rest_ready"] = await rest.is_model_ready(f"http://{http}", MODEL)
    finally:
        await rest.close()
    client = InferenceGRPCClient(grpc_target, retries=0)
    try:
        cases["grpc"] = _outputs(await client.infer(_request(images)))
    finally:
        await client.close()
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", required=True)
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    # kserve parses sys.argv with its model server's options when it is imported, and
    # --grpc is ambiguous there: it sees none of ours.
    sys.argv = sys.argv[:1]
    images = np.load(args.inputs / "images.npy")
    args.out.write_text(json.dumps(asyncio.run(run(args.http, args.grpc, images))))


if __name__ == "__main__":
    main()

"""What a Python server can reach on this machine, before any of aecluster's own code.

Issue 38 asks for single-image gRPC at c = 32 to reach 50 % (with reconstruction) and 35 %
(without) of the in-process batch-32 figure. This script measures stripped servers under
the same load as `make bench` (h2load for gRPC, wrk for HTTP), so the targets can be set
against what the runtime allows:

* ``bare``: grpc.aio answering every call with a canned ``ClusterResponse`` (grpc.aio's own
  cost per call, nothing else);
* ``minimal``: grpc.aio plus the real model: the request parsed, its image queued to one
  worker thread that forms batches of up to 32 and calls ``ModelRuntime.run``, and the
  answer built. No validation, metrics, request ids, deadlines or error handling: the
  least code that answers correctly;
* ``bare-http``: uvicorn (httptools, as aecluster's server) and a raw ASGI app, no
  framework, that reads the body and answers a canned V2 JSON inference answer;
* ``minimal-http``: the same ASGI app plus the real model: the V2 JSON body
  (``POST /v2/models/{name}/infer``) parsed with orjson, its image queued to the same
  worker as ``minimal``'s, the V2 JSON answer written with orjson.

Then aecluster's own server on the same bundle, in the same run: its native gRPC method and
its V2 JSON route.

    .venv/bin/python bench/serve/ceiling.py            # -> bench/results/ceiling.{json,md}
    .venv/bin/python bench/serve/ceiling.py --protocols http

Each server runs in a process of its own, with TensorFlow's pools at 1 + 1 threads as the
server's defaults, and the load generator on the same 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import loadgen  # noqa: E402  (bench/serve is not a package)
import run  # noqa: E402

METHOD = "/aecluster.v1.ClusterService/Cluster"
MAX_BATCH = 32
SERVERS = ("bare", "minimal", "aecluster")
PROTOCOLS = ("grpc", "http")
JSON = "application/json"

# One image's answer, encoded for the wire: (cluster id, distance, reconstruction or None).
Answer = Callable[[int, float, np.ndarray | None], bytes]


# ---- the stripped servers (run as child processes) -----------------------------------------


def _load_model(version_dir: Path) -> Any:
    """The bundle's ``ModelRuntime``, warm, with TensorFlow's pools as the server's
    defaults."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from service import bundle
    from service.runtime import ModelRuntime

    manifest = bundle.read_manifest(version_dir)
    model = ModelRuntime(version_dir, manifest, bundle.load_centroids(version_dir, manifest),
                         device="cpu", batch_sizes=(1, 2, 4, 8, 16, 32))
    model.warmup()
    return model


class _Batcher:
    """One worker thread that takes what is queued, up to ``MAX_BATCH`` images, runs it as
    one ``ModelRuntime.run`` call and hands each image's answer back on the event loop: the
    batching both minimal servers share, so the gRPC and HTTP rows differ only in the
    protocol."""

    def __init__(self, model: Any, loop: asyncio.AbstractEventLoop, answer: Answer) -> None:
        self._model = model
        self._loop = loop
        self._answer = answer
        self._queue: collections.deque[tuple[np.ndarray, bool, asyncio.Future[bytes]]] = (
            collections.deque())
        self._ready = threading.Condition()
        threading.Thread(target=self._work, daemon=True).start()

    async def submit(self, image: np.ndarray, reconstruction: bool) -> bytes:
        """The encoded answer for ``image`` ([1, H, W, C] float32)."""
        future: asyncio.Future[bytes] = self._loop.create_future()
        with self._ready:
            self._queue.append((image, reconstruction, future))
            self._ready.notify()
        return await future

    def _deliver(self, batch: list[tuple[np.ndarray, bool, asyncio.Future[bytes]]],
                 output: Any) -> None:
        # On the event loop (call_soon_threadsafe): asyncio futures are not thread-safe,
        # and the worker goes back to the model while the loop encodes the answers.
        for i, (_, recon, future) in enumerate(batch):
            if not future.done():
                future.set_result(self._answer(
                    int(output.cluster_id[i]), float(output.distance[i]),
                    output.reconstruction[i] if recon else None))

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                batch = [self._queue.popleft()
                         for _ in range(min(MAX_BATCH, len(self._queue)))]
            images = np.concatenate([image for image, _, _ in batch])
            output = self._model.run(images, with_reconstruction=any(r for _, r, _ in batch))
            self._loop.call_soon_threadsafe(self._deliver, batch, output)


def _serve(mode: str, port: int, version_dir: Path) -> None:
    if mode.endswith("-http"):
        _serve_http(mode, port, version_dir)
    else:
        _serve_grpc(mode, port, version_dir)


def _serve_grpc(mode: str, port: int, version_dir: Path) -> None:
    import grpc

    from service._generated.aecluster.v1 import cluster_service_pb2 as pb

    def answer(cluster_id: int, distance: float, reconstruction: np.ndarray | None) -> bytes:
        prediction = pb.Prediction(cluster_id=cluster_id, distance=distance)
        if reconstruction is not None:
            prediction.reconstruction_array.CopyFrom(pb.Tensor(
                shape=list(reconstruction.shape), dtype="float32",
                data=reconstruction.tobytes()))
        return bytes(pb.ClusterResponse(model="fashion", version=1,
                                        predictions=[prediction]).SerializeToString())

    canned = answer(3, 1.5, np.zeros((28, 28, 1), np.float32))
    model = _load_model(version_dir) if mode == "minimal" else None
    batcher: _Batcher | None = None

    async def handle(raw: bytes, context: Any) -> bytes:
        if batcher is None:
            return canned
        request = pb.ClusterRequest.FromString(raw)
        tensor = request.images[0].tensor
        image = np.frombuffer(tensor.data, np.float32).reshape(1, *tensor.shape)
        return await batcher.submit(
            image, request.return_reconstruction == pb.ClusterRequest.ARRAY)

    async def main() -> None:
        nonlocal batcher
        if model is not None:
            batcher = _Batcher(model, asyncio.get_running_loop(), answer)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "aecluster.v1.ClusterService",
            {"Cluster": grpc.unary_unary_rpc_method_handler(handle)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def _v2_answer(model_name: str, cluster_id: int, distance: float,
               reconstruction: np.ndarray | None) -> bytes:
    """A V2 JSON inference answer for one image, as aecluster's (flat data, the batch
    dimension in the shapes)."""
    import orjson

    outputs: list[dict[str, Any]] = [
        {"name": "cluster_id", "datatype": "INT64", "shape": [1], "data": [cluster_id]},
        {"name": "distance", "datatype": "FP32", "shape": [1], "data": [distance]},
    ]
    if reconstruction is not None:
        outputs.append({"name": "reconstruction", "datatype": "FP32",
                        "shape": [1, *reconstruction.shape], "data": reconstruction.ravel()})
    return orjson.dumps({"model_name": model_name, "outputs": outputs},
                        option=orjson.OPT_SERIALIZE_NUMPY)


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _serve_http(mode: str, port: int, version_dir: Path) -> None:
    import orjson
    import uvicorn

    from service import bundle

    # The name in the answers; the app does no routing, so it answers any path as the
    # bundle's /v2/models/{name}/infer.
    name = bundle.read_manifest(version_dir).name
    canned = _v2_answer(name, 3, 1.5, np.zeros((28, 28, 1), np.float32))
    model = _load_model(version_dir) if mode == "minimal-http" else None
    batcher: _Batcher | None = None

    async def answer(body: bytes) -> bytes:
        if batcher is None:
            return canned
        document = orjson.loads(body)
        tensor = next(t for t in document["inputs"] if t["name"] == "images")
        image = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
        # V2: the outputs listed, or all of them when the body lists none.
        wanted = document.get("outputs")
        recon = wanted is None or any(o["name"] == "reconstruction" for o in wanted)
        return await batcher.submit(image, recon)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        chunks = []
        more = True
        while more:  # a body of a few kB may come in more than one piece
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = await answer(b"".join(chunks))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def main() -> None:
        nonlocal batcher
        if model is not None:
            batcher = _Batcher(model, asyncio.get_running_loop(),
                               lambda *prediction: _v2_answer(name, *prediction))
        # aecluster's uvicorn settings (service/server.py), on asyncio's own loop as its
        # `asyncio.run` has (uvicorn would pick uvloop only in uvicorn.run).
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_config=None, access_log=False,
                                               lifespan="off"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()  # re-raise the bind error
                raise RuntimeError("uvicorn stopped during start-up")
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        await task

    asyncio.run(main())


def _start_child(mode: str, port: int, version_dir: Path, log_path: Path) -> subprocess.Popen[str]:
    with log_path.open("w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, __file__, "--serve", mode, str(port),
                                 str(version_dir)], stdout=subprocess.PIPE, stderr=log,
                                text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise run.BenchError(f"the {mode} server did not start; see {log_path}")
    return proc


def _stop_child(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# ---- the measurement -----------------------------------------------------------------------


def _figures(result: loadgen.LoadResult, where: str) -> dict[str, float]:
    if result.errors:
        raise run.BenchError(f"{result.errors} errors at c = {result.concurrency} on {where}")
    return {"rps": round(result.rps, 1), "mean_ms": round(result.mean_ms, 3),
            "p99_ms": round(result.p99_ms, 3)}


def measure(port: int, message: bytes, concurrency: int, seconds: float,
            workdir: Path) -> dict[str, float]:
    result = loadgen.h2load_grpc("127.0.0.1", port, METHOD, message, concurrency=concurrency,
                                 seconds=seconds, warmup=2.0, workdir=workdir)
    return _figures(result, f"port {port}")


def measure_http(url: str, body: bytes, concurrency: int, seconds: float,
                 workdir: Path) -> dict[str, float]:
    result = loadgen.wrk_http(url, body, JSON, concurrency=concurrency, seconds=seconds,
                              warmup=2.0, workdir=workdir)
    return _figures(result, url)


def measure_row(protocol: str, port: int, model: str, request: bytes, seconds: float,
                workdir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """c = 1 and c = 32 figures of ``request`` on the server at ``port``."""
    if protocol == "grpc":
        return (measure(port, request, 1, seconds, workdir),
                measure(port, request, 32, seconds, workdir))
    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    # wrk counts a non-2xx answer as an error too, but this one says what went wrong.
    run.check_http(url, request, JSON)
    return (measure_http(url, request, 1, seconds, workdir),
            measure_http(url, request, 32, seconds, workdir))


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Serving ceiling, {report['when']}: {report['machine']}; bundle {report['bundle']}; "
        f"h2load (gRPC) and wrk (HTTP), {report['seconds']:.0f} s per row after 2 s of "
        "warm-up, one image per call.",
        "",
        "| server | protocol | reconstruction | c = 1 mean ms | c = 1 req/s | c = 32 req/s "
        "| c = 32 p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['server']} | {row['protocol']} | "
                     f"{'yes' if row['reconstruction'] else 'no'} | "
                     f"{row['c1']['mean_ms']:.2f} | {row['c1']['rps']:,.0f} | "
                     f"{row['c32']['rps']:,.0f} | {row['c32']['p99_ms']:.1f} |")
    lines += ["", "bare: grpc.aio returning a canned answer; minimal: grpc.aio, one worker thread "
              "forming batches, the real ModelRuntime, no validation, metrics or error handling; "
              "bare-http: uvicorn (httptools) and a raw ASGI app, no framework, returning a "
              "canned V2 JSON answer; minimal-http: the same app, the V2 JSON body parsed and "
              "the answer written with orjson, and minimal's worker and model; aecluster: "
              "`python -m service` with its defaults, its native gRPC method (grpc) or "
              "`/v2/models/{name}/infer` (http).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                        help="the protocols to measure (default: both)")
    parser.add_argument("--out", type=Path, default=run.RESULTS / "ceiling.json")
    parser.add_argument("--serve", nargs=3, metavar=("MODE", "PORT", "BUNDLE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve[0], int(args.serve[1]), Path(args.serve[2]))
        return 0
    loadgen.ensure_tools()
    version_dir = run.ensure_bundle(args.bundle)
    workdir = run.WORK / "ceiling"
    workdir.mkdir(parents=True, exist_ok=True)
    image = run.sample_images(version_dir, 1)
    repo, name = run.link_repository(version_dir, workdir)
    rows = []
    for protocol in PROTOCOLS:
        if protocol not in args.protocols:
            continue  # in PROTOCOLS' order whatever the order given
        for server in SERVERS:
            for recon in (True, False):
                if server == "bare" and not recon:
                    continue  # the canned answer is the same either way
                request = (run.native_grpc_request(name, image, recon) if protocol == "grpc"
                           else run.v2_json_body(image, recon))
                mode = server if protocol == "grpc" or server == "aecluster" else (
                    f"{server}-http")
                run.log(f"ceiling: {mode} ({protocol}), reconstruction {recon}")
                if server == "aecluster":
                    with run.aecluster(repo, workdir / "aecluster.log") as (
                            _, http_port, grpc_port):
                        if protocol == "grpc":
                            run.check_native_grpc(f"127.0.0.1:{grpc_port}", request, 1)
                        c1, c32 = measure_row(protocol,
                                              grpc_port if protocol == "grpc" else http_port,
                                              name, request, args.seconds, workdir)
                else:
                    port = run.free_port()
                    proc = _start_child(mode, port, version_dir, workdir / f"{mode}.log")
                    try:
                        c1, c32 = measure_row(protocol, port, name, request, args.seconds,
                                              workdir)
                    finally:
                        _stop_child(proc)
                rows.append({"server": mode, "protocol": protocol, "reconstruction": recon,
                             "c1": c1, "c32": c32})
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "bundle": str(version_dir.relative_to(run.REPO_ROOT)
                      if version_dir.is_relative_to(run.REPO_ROOT) else version_dir),
        "seconds": args.seconds,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

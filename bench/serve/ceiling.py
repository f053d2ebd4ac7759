"""What a Python gRPC server can reach on this machine, before any of aecluster's own code.

Issue 38 asks for single-image gRPC at c = 32 to reach 50 % (with reconstruction) and 35 %
(without) of the in-process batch-32 figure. This script measures two stripped servers
under the same h2load request as `make bench`, so the targets can be set against what the
runtime allows:

* ``bare``: grpc.aio answering every call with a canned ``ClusterResponse`` (grpc.aio's own
  cost per call, nothing else);
* ``minimal``: grpc.aio plus the real model: the request parsed, its image queued to one
  worker thread that forms batches of up to 32 and calls ``ModelRuntime.run``, and the
  answer built. No validation, metrics, request ids, deadlines or error handling: the
  least code that answers correctly.

Then aecluster's own server on the same bundle, in the same run.

    .venv/bin/python bench/serve/ceiling.py            # -> bench/results/ceiling.{json,md}

Each server runs in a process of its own, with TensorFlow's pools at 1 + 1 threads as the
server's defaults, and h2load on the same 2 cores.
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


# ---- the stripped servers (run as child processes) -----------------------------------------


def _serve(mode: str, port: int, version_dir: Path) -> None:
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
    queue: collections.deque[tuple[np.ndarray, bool, asyncio.Future[bytes]]] = (
        collections.deque())
    ready = threading.Condition()
    loop: asyncio.AbstractEventLoop | None = None
    model: Any = None

    if mode == "minimal":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from service import bundle
        from service.runtime import ModelRuntime

        manifest = bundle.read_manifest(version_dir)
        model = ModelRuntime(version_dir, manifest, bundle.load_centroids(version_dir, manifest),
                             device="cpu", batch_sizes=(1, 2, 4, 8, 16, 32))
        model.warmup()

    def deliver(batch: list[tuple[np.ndarray, bool, asyncio.Future[bytes]]],
                output: Any) -> None:
        for i, (_, recon, future) in enumerate(batch):
            if not future.done():
                future.set_result(answer(int(output.cluster_id[i]), float(output.distance[i]),
                                         output.reconstruction[i] if recon else None))

    def work() -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                batch = [queue.popleft() for _ in range(min(MAX_BATCH, len(queue)))]
            images = np.concatenate([image for image, _, _ in batch])
            output = model.run(images, with_reconstruction=any(r for _, r, _ in batch))
            assert loop is not None
            loop.call_soon_threadsafe(deliver, batch, output)

    async def handle(raw: bytes, context: Any) -> bytes:
        if mode == "bare":
            return canned
        request = pb.ClusterRequest.FromString(raw)
        tensor = request.images[0].tensor
        image = np.frombuffer(tensor.data, np.float32).reshape(1, *tensor.shape)
        assert loop is not None
        future: asyncio.Future[bytes] = loop.create_future()
        with ready:
            queue.append((image, request.return_reconstruction == pb.ClusterRequest.ARRAY,
                          future))
            ready.notify()
        return await future

    async def main() -> None:
        nonlocal loop
        loop = asyncio.get_running_loop()
        if model is not None:
            threading.Thread(target=work, daemon=True).start()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "aecluster.v1.ClusterService",
            {"Cluster": grpc.unary_unary_rpc_method_handler(handle)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

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


def measure(port: int, message: bytes, concurrency: int, seconds: float,
            workdir: Path) -> dict[str, float]:
    result = loadgen.h2load_grpc("127.0.0.1", port, METHOD, message, concurrency=concurrency,
                                 seconds=seconds, warmup=2.0, workdir=workdir)
    if result.errors:
        raise run.BenchError(f"{result.errors} errors at c = {concurrency} on port {port}")
    return {"rps": round(result.rps, 1), "mean_ms": round(result.mean_ms, 3),
            "p99_ms": round(result.p99_ms, 3)}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"gRPC ceiling, {report['when']}: {report['machine']}; bundle {report['bundle']}; "
        f"h2load, {report['seconds']:.0f} s per row after 2 s of warm-up, one image per call.",
        "",
        "| server | reconstruction | c = 1 mean ms | c = 1 req/s | c = 32 req/s | c = 32 p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['server']} | {'yes' if row['reconstruction'] else 'no'} | "
                     f"{row['c1']['mean_ms']:.2f} | {row['c1']['rps']:,.0f} | "
                     f"{row['c32']['rps']:,.0f} | {row['c32']['p99_ms']:.1f} |")
    lines += ["", "bare: grpc.aio returning a canned answer; minimal: grpc.aio, one worker thread "
              "forming batches, the real ModelRuntime, no validation, metrics or error handling; "
              "aecluster: `python -m service` with its defaults.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=8.0)
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
    for server in SERVERS:
        for recon in (True, False):
            if server == "bare" and not recon:
                continue  # the canned answer is the same either way
            message = run.native_grpc_request(name, image, recon)
            run.log(f"ceiling: {server}, reconstruction {recon}")
            if server == "aecluster":
                with run.aecluster(repo, workdir / "aecluster.log") as (_, _, grpc_port):
                    run.check_native_grpc(f"127.0.0.1:{grpc_port}", message, 1)
                    c1 = measure(grpc_port, message, 1, args.seconds, workdir)
                    c32 = measure(grpc_port, message, 32, args.seconds, workdir)
            else:
                port = run.free_port()
                proc = _start_child(server, port, version_dir, workdir / f"{server}.log")
                try:
                    c1 = measure(port, message, 1, args.seconds, workdir)
                    c32 = measure(port, message, 32, args.seconds, workdir)
                finally:
                    _stop_child(proc)
            rows.append({"server": server, "reconstruction": recon, "c1": c1, "c32": c32})
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

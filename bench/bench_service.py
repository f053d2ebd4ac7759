"""Serving benchmark: single-image requests over HTTP and gRPC vs the compiled function.

Starts ``python -m service`` on free loopback ports over a model repository, then for
each protocol, concurrency (1 and 32) and reconstruction setting sends single-image
requests for a fixed time and reports requests per second and p50/p99 latency. In the
same run it times ``ModelRuntime.run`` in-process at batch 1 and at the maximum batch
size, so the figures compare as ratios on the same machine and load.

    .venv/bin/python bench/bench_service.py --model-repo models --model digits \
        --seconds 10 --out bench/results/service.json

The load generator shares the machine's cores with the server: on a 2-core box it
costs the server throughput, which the figures include.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.round(image[..., 0] * 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(buffer, "PNG")
    return buffer.getvalue()


async def _load(call: Callable[[], Awaitable[None]], concurrency: int,
                seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await call()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    if not latencies:
        return {"requests": 0, "errors": errors, "rps": 0.0, "p50_ms": float("nan"),
                "p99_ms": float("nan")}
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


async def _http_runs(url: str, model: str, png: bytes, seconds: float,
                     concurrencies: list[int]) -> list[dict[str, Any]]:
    import httpx

    rows = []
    b64 = base64.b64encode(png).decode()
    limits = httpx.Limits(max_connections=max(concurrencies), max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        for recon in ("none", "png"):
            body = {"instances": [{"b64": b64}], "return_reconstruction": recon}

            async def call(body: dict[str, Any] = body) -> None:
                response = await client.post(f"/v1/models/{model}:cluster", json=body)
                response.raise_for_status()

            await _load(call, 4, 1.0)  # warm connections and the server
            for conc in concurrencies:
                stats = await _load(call, conc, seconds)
                rows.append({"protocol": "http", "reconstruction": recon != "none",
                             "concurrency": conc, **stats})
                print(json.dumps(rows[-1]), flush=True)
    return rows


async def _grpc_runs(target: str, model: str, png: bytes, seconds: float,
                     concurrencies: list[int]) -> list[dict[str, Any]]:
    import grpc

    from service._generated.aecluster.v1 import cluster_service_pb2 as pb
    from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc

    rows = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ClusterServiceStub(channel)
        for recon in (pb.ClusterRequest.NONE, pb.ClusterRequest.PNG):
            request = pb.ClusterRequest(model=model, images=[pb.Image(encoded=png)],
                                        return_reconstruction=recon)

            async def call(request: Any = request) -> None:
                await stub.Cluster(request, timeout=30)

            await _load(call, 4, 1.0)
            for conc in concurrencies:
                stats = await _load(call, conc, seconds)
                rows.append({"protocol": "grpc", "reconstruction": recon != pb.ClusterRequest.NONE,
                             "concurrency": conc, **stats})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _in_process(version_dir: Path, max_batch: int, seconds: float) -> list[dict[str, Any]]:
    """Images per second of the compiled function alone (no transport, no batcher)."""
    from service import bundle
    from service.runtime import ModelRuntime

    manifest = bundle.read_manifest(version_dir)
    centroids = bundle.load_centroids(version_dir, manifest)
    sizes = tuple(sorted({1, max_batch}))
    runtime = ModelRuntime(version_dir, manifest, centroids, device="/CPU:0", batch_sizes=sizes)
    runtime.warmup()
    spec = manifest.input
    rows = []
    for batch in sizes:
        for recon in (False, True):
            images = np.random.default_rng(0).random(
                (batch, spec.height, spec.width, spec.channels), dtype=np.float32)
            calls = 0
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                runtime.run(images, with_reconstruction=recon)
                calls += 1
            elapsed = time.perf_counter() - started
            rows.append({"protocol": "in-process", "reconstruction": recon, "batch": batch,
                         "calls_per_s": calls / elapsed, "images_per_s": calls * batch / elapsed,
                         "ms_per_call": 1000 * elapsed / calls})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repo", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-delay-ms", type=float, default=2.0)
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "bench" / "results" / "service.json")
    args = parser.parse_args()

    from service import bundle

    versions = bundle.list_versions(args.model_repo / args.model)
    if not versions:
        raise SystemExit(f"no complete version of {args.model!r} under {args.model_repo}; "
                         "run `make run` (or python -m training train ...) first")
    version_dir = args.model_repo / args.model / str(versions[-1])
    manifest = bundle.read_manifest(version_dir)
    spec = manifest.input
    image = np.random.default_rng(1).random((spec.height, spec.width, 1), dtype=np.float32)
    png = _png(image)

    http_port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "AEC_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "service", "--model-repo", str(args.model_repo),
               "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
               "--max-batch-size", str(args.max_batch_size),
               "--max-batch-delay-ms", str(args.max_batch_delay_ms), "--poll-seconds", "0"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env)
    url = f"http://127.0.0.1:{http_port}"
    try:
        _wait_ready(url, proc)
        rows = asyncio.run(_http_runs(url, args.model, png, args.seconds, args.concurrency))
        rows += asyncio.run(_grpc_runs(f"127.0.0.1:{grpc_port}", args.model, png, args.seconds,
                                       args.concurrency))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    rows += _in_process(version_dir, args.max_batch_size, args.seconds)
    result = {
        "model": args.model, "version": versions[-1],
        "input": f"{spec.height}x{spec.width}x{spec.channels}",
        "max_batch_size": args.max_batch_size, "max_batch_delay_ms": args.max_batch_delay_ms,
        "seconds_per_measurement": args.seconds, "cpus": os.cpu_count(), "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(_markdown(rows))
    args.out.with_suffix(".md").write_text(_markdown(rows) + "\n")
    return 0


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| protocol | reconstruction | concurrency / batch | req/s (or images/s) "
             "| p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for row in rows:
        if row["protocol"] == "in-process":
            lines.append(f"| in-process `ModelRuntime.run` | {row['reconstruction']} | batch "
                         f"{row['batch']} | {row['images_per_s']:.0f} images/s | "
                         f"{row['ms_per_call']:.2f} per call | |")
        else:
            lines.append(f"| {row['protocol']} | {row['reconstruction']} | {row['concurrency']} | "
                         f"{row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Would several server processes serve faster than one? Measured, not assumed.

Issue 38 asked whether Python itself is the ceiling, and if so whether to scale with
processes. This starts N independent ``python -m service`` processes on the benchmark's
bundle (each with its own ports, models and batcher: what N replicas on one machine, or N
workers behind one port, would be) and splits the same total concurrency over them, one
load-generator instance per process. N = 1 gets the same split (all instances against the
one server), so the load generators' own cost is the same in every row.

    .venv/bin/python bench/serve/processes.py                  # N = 1 and 2, c = 32
    .venv/bin/python bench/serve/processes.py --processes 1 2 4

Results: bench/results/processes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402  (bench/serve is not a package)
import run  # noqa: E402

SPLIT = 2  # load-generator instances in every row


def serve_processes(n: int, repo: Path, workdir: Path, stack: ExitStack) -> list[dict[str, Any]]:
    """Start ``n`` servers on ``repo``; their ports."""
    servers = []
    for i in range(n):
        _, http_port, grpc_port = stack.enter_context(
            run.aecluster(repo, workdir / f"server-{i}.log", f"aecluster {i}"))
        servers.append({"http": http_port, "grpc": grpc_port})
    return servers


def drive(kind: str, servers: list[dict[str, Any]], body: bytes, url_path: str,
          concurrency: int, seconds: float, warmup: float, workdir: Path) -> dict[str, Any]:
    """``SPLIT`` load-generator instances at once, spread over the servers; summed."""
    share = concurrency // SPLIT

    def one(i: int) -> loadgen.LoadResult:
        server = servers[i % len(servers)]
        scratch = workdir / f"load-{i}"
        scratch.mkdir(exist_ok=True)
        if kind == "grpc":
            return loadgen.h2load_grpc("127.0.0.1", server["grpc"], url_path, body,
                                       concurrency=share, seconds=seconds, warmup=warmup,
                                       workdir=scratch)
        return loadgen.wrk_http(f"http://127.0.0.1:{server['http']}{url_path}", body,
                                "application/json", concurrency=share, seconds=seconds,
                                warmup=warmup, workdir=scratch)

    with ThreadPoolExecutor(SPLIT) as pool:
        results = list(pool.map(one, range(SPLIT)))
    rps = sum(r.rps for r in results)
    return {"rps": rps, "errors": sum(r.errors for r in results),
            "mean_ms": sum(r.mean_ms * r.rps for r in results) / rps if rps else 0.0,
            "p99_ms": max(r.p99_ms for r in results)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=run.RESULTS / "processes.json")
    args = parser.parse_args(argv)
    if min(args.processes) < 1 or args.concurrency < SPLIT or args.concurrency % SPLIT:
        parser.error(f"--processes >= 1; --concurrency a multiple of {SPLIT}")
    try:
        loadgen.ensure_tools()
        version_dir = run.ensure_bundle(None)
        images = run.sample_images(version_dir, 1)
        model = run.bundle_facts(version_dir)["name"]
        grpc_message = run.native_grpc_request(model, images, True)
        json_body = json.dumps({"instances": images.tolist(),
                                "return_reconstruction": "array"}).encode()
        rows = []
        with tempfile.TemporaryDirectory(prefix="aecluster-processes-") as scratch:
            workdir = Path(scratch)
            repo, _ = run.link_repository(version_dir, workdir)
            for n in args.processes:
                with ExitStack() as stack:
                    servers = serve_processes(n, repo, workdir, stack)
                    for kind, body, path in (
                        ("grpc", grpc_message, run.CLUSTER_METHOD),
                        ("http json", json_body, f"/v1/models/{model}:cluster"),
                    ):
                        result = drive(kind.split()[0], servers, body, path, args.concurrency,
                                       args.seconds, args.warmup, workdir)
                        rows.append({"processes": n, "path": kind, **result})
                        run.log(f"{n} process(es), {kind}, c={args.concurrency}: "
                                f"{result['rps']:.0f} req/s, mean {result['mean_ms']:.2f} ms")
    except (run.BenchError, loadgen.LoadgenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(),
              "concurrency": args.concurrency, "seconds": args.seconds, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Server processes, {report['date']}: {report['cores']} cores; native requests of "
             f"one image with reconstruction, c = {args.concurrency} in total split over "
             f"{SPLIT} load-generator instances; {args.seconds:.0f} s per row.", "",
             "| processes | path | req/s | mean ms | worst p99 ms | errors |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['processes']} | {r['path']} | {r['rps']:.0f} | {r['mean_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['errors']} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

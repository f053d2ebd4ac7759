"""Does the server's memory stay flat under sustained load? RSS over a long run at c = 32.

Starts ``python -m service`` on the benchmark's bundle, loads it for ``--warmup`` seconds,
then for ``--minutes`` with gRPC (h2load) and HTTP JSON (wrk) at once, half the
concurrency each, native requests of one image with reconstruction. The server's resident
set size (VmRSS) is read every ``--every`` seconds. The target (issue 38): RSS at the end
within 5 % of RSS after the warm-up.

    .venv/bin/python bench/serve/soak.py                      # 10 minutes after 60 s
    .venv/bin/python bench/serve/soak.py --minutes 1 --warmup 10

Writes bench/results/soak.{json,md} and soak.svg (RSS against time).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402  (bench/serve is not a package)
import run  # noqa: E402

TARGET = 0.05  # RSS growth allowed from the end of the warm-up to the end of the run


def rss_mib(pid: int) -> float:
    """The resident set size of process ``pid`` in MiB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise run.BenchError(f"no VmRSS for process {pid}")


def load(grpc_port: int, http_port: int, model: str, concurrency: int, seconds: float,
         workdir: Path) -> list[loadgen.LoadResult]:
    """gRPC and HTTP JSON load at once for ``seconds``, ``concurrency`` split evenly."""
    images = run.sample_images(run.ensure_bundle(None), 1)
    message = run.native_grpc_request(model, images, True)
    body = json.dumps({"instances": images.tolist(), "return_reconstruction": "array"}).encode()
    half = max(1, concurrency // 2)
    (workdir / "grpc").mkdir(exist_ok=True)
    (workdir / "http").mkdir(exist_ok=True)
    with ThreadPoolExecutor(2) as pool:
        grpc = pool.submit(loadgen.h2load_grpc, "127.0.0.1", grpc_port, run.CLUSTER_METHOD,
                           message, concurrency=half, seconds=seconds, warmup=0,
                           workdir=workdir / "grpc")
        http = pool.submit(loadgen.wrk_http, f"http://127.0.0.1:{http_port}/v1/models/"
                           f"{model}:cluster", body, "application/json", concurrency=half,
                           seconds=seconds, warmup=0, workdir=workdir / "http")
        return [grpc.result(), http.result()]


def plot(samples: list[tuple[float, float]], warmup: float, out: Path) -> None:
    """RSS against time, the warm-up shaded and the 5 % band drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    after_warmup = min(samples, key=lambda s: abs(s[0] - warmup))[1]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot([t / 60 for t, _ in samples], [r for _, r in samples], color="#1f77b4")
    ax.axvspan(0, warmup / 60, color="#dddddd", label="warm-up")
    ax.axhspan(after_warmup * (1 - TARGET), after_warmup * (1 + TARGET), color="#d4f0d4",
               label="within 5 % of RSS after warm-up")
    ax.set_xlabel("minutes under load (c = 32)")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_ylim(0, 1.15 * max(after_warmup * (1 + TARGET), max(r for _, r in samples)))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS reads")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=run.RESULTS / "soak.json")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.warmup <= 0 or args.every <= 0 or args.concurrency < 2:
        parser.error("--minutes, --warmup and --every must be > 0, --concurrency >= 2")
    samples: list[tuple[float, float]] = []
    try:
        loadgen.ensure_tools()
        version_dir = run.ensure_bundle(None)
        with tempfile.TemporaryDirectory(prefix="aecluster-soak-") as scratch:
            workdir = Path(scratch)
            repo, model = run.link_repository(version_dir, workdir)
            with run.aecluster(repo, workdir / "server.log") as (proc, http_port, grpc_port):
                idle = rss_mib(proc.pid)
                total = args.warmup + 60 * args.minutes
                done = threading.Event()
                results: list[loadgen.LoadResult] = []

                def drive() -> None:
                    try:
                        results.extend(load(grpc_port, http_port, model, args.concurrency,
                                            total, workdir))
                    finally:
                        done.set()

                driver = threading.Thread(target=drive, daemon=True)
                started = time.monotonic()
                driver.start()
                while not done.wait(args.every):
                    elapsed = time.monotonic() - started
                    samples.append((elapsed, rss_mib(proc.pid)))
                    run.log(f"soak {elapsed / 60:5.1f} min: RSS {samples[-1][1]:.1f} MiB")
                driver.join()
                if len(results) != 2:
                    raise run.BenchError("the load generators failed; see the log above")
    except (run.BenchError, loadgen.LoadgenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    after_warmup = next(r for t, r in samples if t >= args.warmup)
    final = samples[-1][1]
    growth = final / after_warmup - 1.0
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "minutes": args.minutes,
        "warmup_s": args.warmup, "concurrency": args.concurrency,
        "rss_idle_mib": idle, "rss_after_warmup_mib": after_warmup, "rss_final_mib": final,
        "growth": growth, "within_target": growth <= TARGET,
        "load": [r.as_dict() for r in results], "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(samples, args.warmup, args.out.with_suffix(".svg"))
    grpc, http = results
    text = (f"Soak, {report['date']}: {args.minutes:g} min at c = {args.concurrency} after "
            f"{args.warmup:.0f} s of warm-up (gRPC {grpc.rps:.0f} req/s and HTTP JSON "
            f"{http.rps:.0f} req/s at once, errors {grpc.errors + http.errors}).\n\n"
            f"| RSS idle | after warm-up | at the end | growth | target |\n|---|---|---|---|---|\n"
            f"| {idle:.0f} MiB | {after_warmup:.0f} MiB | {final:.0f} MiB | "
            f"{100 * growth:+.2f} % | within {100 * TARGET:.0f} %: "
            f"{'met' if growth <= TARGET else 'NOT met'} |\n\n![RSS against time](soak.svg)\n")
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

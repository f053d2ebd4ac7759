"""Where a serving request's time goes: py-spy samples the live server under h2load.

Starts ``python -m service`` (settings from the AEC_* environment, as `make bench` does) on
the benchmark's bundle, drives one path with h2load at a fixed concurrency, and meanwhile
records every thread of the server with py-spy (busy threads only, Python frames; without
pausing the server: with --native, py-spy must stop it for every sample, which cut gRPC at
c = 32 from about 1,100 to 110 req/s here and so profiled another workload). Time in C code
(grpc's core, TensorFlow's kernels) shows under the Python frame that called it. Writes
a flame graph (SVG) and, beside it (.txt), a table of the frames holding the most samples, by
own time and, for the service's own functions, by inclusive time.

    .venv/bin/python bench/serve/profile.py                       # gRPC, c = 32, reconstruction
    .venv/bin/python bench/serve/profile.py --no-reconstruction --out bench/results/x.svg

py-spy reads the server's memory with ptrace: it needs root or CAP_SYS_PTRACE.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402  (bench/serve is not a package)
import run  # noqa: E402

PY_SPY = Path(sys.executable).with_name("py-spy")
LINE = re.compile(r" \((.*):\d+\)$")


def top_functions(collapsed: Path, n: int) -> tuple[list[tuple[str, float]],
                                                    list[tuple[str, float]]]:
    """The ``n`` frames with the largest share of samples: own (leaf) and inclusive.

    ``collapsed`` is py-spy's raw format: one ``frame;frame;...;leaf count`` line a stack.
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # "function (file.py:123)": one entry per function, whatever line it was on
        frames = [LINE.sub(r" (\1)", frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):  # the first frame is the thread's name
            if "(service/" in frame:  # inclusive time: the project's own functions
                inclusive[frame] += count
    if total == 0:
        raise run.BenchError(f"py-spy recorded no sample in {collapsed}")
    return ([(f, c / total) for f, c in own.most_common(n)],
            [(f, c / total) for f, c in inclusive.most_common(n)])


def record(pid: int, seconds: float, out: Path, fmt: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)),
         "--rate", "200", "--threads", "--nonblocking", "--format", fmt, "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None,
                        help="bundle version directory (default: the benchmark's)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--no-reconstruction", action="store_true")
    parser.add_argument("--out", type=Path,
                        default=run.RESULTS / "profile-grpc-c32.svg")
    args = parser.parse_args(argv)
    if not PY_SPY.exists():
        print(f"error: {PY_SPY} not found: run `make venv` (the dev extra installs py-spy)",
              file=sys.stderr)
        return 2
    try:
        loadgen.ensure_tools()
        version_dir = run.ensure_bundle(args.bundle)
        return _profile(args, version_dir)
    except (run.BenchError, loadgen.LoadgenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _profile(args: argparse.Namespace, version_dir: Path) -> int:
    from service import bundle

    manifest = bundle.read_manifest(version_dir)
    images = run.sample_images(version_dir, 1)
    message = run.native_grpc_request(manifest.name, images, not args.no_reconstruction)
    with tempfile.TemporaryDirectory(prefix="aecluster-profile-") as scratch:
        work = Path(scratch)
        repo, _ = run.link_repository(version_dir, work)
        with run.aecluster(repo, work / "server.log") as (server, _, grpc_port):
            run.check_native_grpc(f"127.0.0.1:{grpc_port}", message, 1)
            raw = work / "stacks.txt"
            load: dict[str, loadgen.LoadResult | Exception] = {}

            def drive() -> None:
                try:
                    load["result"] = loadgen.h2load_grpc(
                        "127.0.0.1", grpc_port, run.CLUSTER_METHOD, message,
                        concurrency=args.concurrency, seconds=args.seconds + 2, warmup=1.0,
                        workdir=work)
                except (loadgen.LoadgenError, OSError) as exc:  # reported below
                    load["result"] = exc

            driver = threading.Thread(target=drive)
            driver.start()
            # Both formats from one window would need two samplers at once; take the raw
            # stacks and the SVG one after the other inside the same steady load.
            half = max(1.0, args.seconds / 2)
            for out, fmt in ((raw, "raw"), (args.out, "flamegraph")):
                spy = record(server.pid, half, out, fmt)
                _, err = spy.communicate(timeout=half + 60)
                if spy.returncode != 0:
                    raise run.BenchError(f"py-spy failed: {err.decode(errors='replace')}")
            driver.join(timeout=args.seconds + 120)
        own, inclusive = top_functions(raw, 12)
    result = load.get("result")
    if isinstance(result, Exception):
        raise run.BenchError(f"the load during the profile failed: {result}")
    lines = [f"profile of {manifest.name} v{manifest.version}, gRPC native, c = "
             f"{args.concurrency}, reconstruction {not args.no_reconstruction}"
             + (f": {result.rps:.0f} req/s under the profiler" if result else ""),
             f"flame graph: {args.out}",
             "", "own time (leaf frames), share of all samples of all threads:"]
    lines += [f"  {100 * share:5.1f} %  {frame}" for frame, share in own]
    lines += ["", "inclusive time of the service's own functions:"]
    lines += [f"  {100 * share:5.1f} %  {frame}" for frame, share in inclusive]
    text = "\n".join(lines) + "\n"
    args.out.with_suffix(".txt").write_text(text)  # the table beside its flame graph
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

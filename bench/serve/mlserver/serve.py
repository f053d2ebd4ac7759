"""MLServer 1.7.1 as the benchmark's peer server for an aecluster bundle.

Run with python3.11 (stdlib only for ``setup`` and ``start``)::

    python3.11 serve.py setup
    python3.11 serve.py start --bundle DIR --http-port P --grpc-port Q --workdir W
    python3.11 serve.py grpc-request --bundle DIR --images N --out FILE [--reconstruction]
    python3.11 serve.py rest-request --bundle DIR --images N --out FILE [--reconstruction]

``setup`` makes ``.venv`` next to this file from the hashed lock ``requirements.txt``;
``start`` writes MLServer's settings into W and execs the venv's ``mlserver start W``;
``grpc-request`` / ``rest-request`` write one request body for replay tools (h2load, wrk),
re-running themselves with the venv's python when numpy / mlserver are needed.
See README.md for the request design.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported at run time only inside the MLServer venv
    import numpy as np

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
MLSERVER = VENV / "bin" / "mlserver"
LOCK = HERE / "requirements.txt"
STAMP = VENV / ".aecluster-lock.sha256"

# One bundle, two MLServer models: each model has its own adaptive batcher, so requests that
# want the reconstruction are never merged with requests that do not (the batcher merges
# request parameters and requested outputs across a batch, so one model could not keep
# them apart). Name -> whether the model returns the reconstruction.
MODELS = {"aecluster": True, "aecluster-norecon": False}
INPUT_NAME = "images"
MAX_BATCH_SIZE = 32  # requests per merged batch (MLServer counts requests, not images)
MAX_BATCH_TIME = 0.002  # seconds the batcher waits for a batch to fill
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


class UsageError(Exception):
    """A problem the user can fix; printed as one sentence, exit status 2."""


def log(message: str) -> None:
    print(f"mlserver-peer: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- setup


def lock_digest() -> str:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()


def venv_is_current() -> bool:
    return (
        VENV_PYTHON.exists()
        and MLSERVER.exists()
        and STAMP.is_file()
        and STAMP.read_text(encoding="utf-8").strip() == lock_digest()
    )


def cmd_setup(_args: argparse.Namespace) -> int:
    if not LOCK.is_file():
        raise UsageError(f"{LOCK} is missing: it is the hashed lock setup installs from")
    if venv_is_current():
        log(f"{VENV} is up to date with {LOCK.name} (sha256 {lock_digest()[:12]}); nothing to do")
        return 0
    started = time.monotonic()
    if VENV.exists():
        log(f"{VENV} is stale or incomplete: recreating it")
        shutil.rmtree(VENV)
    log(f"creating {VENV} with {sys.executable} -m venv")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    log(f"installing {LOCK.name} (--require-hashes --no-deps); TensorFlow makes this take minutes")
    subprocess.run(
        [str(VENV_PYTHON), "-m", "pip", "install", "--disable-pip-version-check",
         "--no-input", "--quiet", "--require-hashes", "--no-deps", "-r", str(LOCK)],
        check=True,
    )
    log("checking that mlserver, tensorflow, joblib and numpy import")
    check = subprocess.run(
        [str(VENV_PYTHON), "-c", "import mlserver, tensorflow, joblib, numpy"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if check.returncode != 0:
        sys.stderr.write(check.stdout)
        raise subprocess.CalledProcessError(check.returncode, check.args)
    STAMP.write_text(lock_digest() + "\n", encoding="utf-8")
    log(f"done in {time.monotonic() - started:.0f}s: {MLSERVER}")
    return 0


def require_venv() -> None:
    if not MLSERVER.exists():
        raise UsageError(
            f"the MLServer venv {VENV} does not exist: run "
            f"`python3.11 {Path(__file__).as_posix()} setup` first"
        )
    if not venv_is_current():
        raise UsageError(
            f"the MLServer venv {VENV} does not match {LOCK.name} (or its setup did not "
            f"finish): run `python3.11 {Path(__file__).as_posix()} setup` again"
        )


# ---------------------------------------------------------------------------- bundle


def read_bundle(bundle: str) -> tuple[Path, dict]:
    """The bundle's absolute path and its manifest; UsageError when either is missing."""
    path = Path(bundle).expanduser().resolve()
    if not path.is_dir():
        raise UsageError(f"bundle {bundle} is not a directory: pass a version directory "
                         "such as models/fashion/1")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise UsageError(f"bundle {path} has no manifest.json: it is not a complete bundle "
                         "version directory (such as models/fashion/1)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        spec = manifest["input"]
        for key in ("height", "width", "channels"):
            if not isinstance(spec[key], int) or spec[key] < 1:
                raise ValueError(f"input.{key} is not a positive integer")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{manifest_path} is not a readable bundle manifest: {exc}") from exc
    return path, manifest


def input_shape(manifest: dict) -> list[int]:
    spec = manifest["input"]
    return [spec["height"], spec["width"], spec["channels"]]


# ---------------------------------------------------------------------------- start


def settings_json(args: argparse.Namespace) -> dict:
    return {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        # 0: inference runs in this one process, on a worker thread of the runtime (as the
        # aecluster service does); see README.md for why on 2 cores.
        "parallel_workers": args.parallel_workers,
        # Prometheus metrics on, as the aecluster service always records them, on a port of
        # their own (MLServer's default 8082 would clash between runs); off with --no-metrics.
        "metrics_endpoint": None if args.no_metrics else "/metrics",
        "metrics_port": args.metrics_port,
        "metrics_dir": str(Path(args.workdir).resolve() / ".metrics"),
        "environments_dir": str(Path(args.workdir).resolve() / ".envs"),
        "load_models_at_startup": True,
        "model_repository_root": str(Path(args.workdir).resolve()),
        # Fashion-MNIST batches of 32 with reconstruction fit the 4 MiB default, but the
        # peer must not refuse what the aecluster service accepts.
        "grpc_max_message_length": 64 * 1024 * 1024,
        # aecluster does not compress responses; MLServer would gzip REST replies of 1 KB+
        # for clients that send Accept-Encoding: gzip.
        "gzip_enabled": False,
    }


def model_settings_json(name: str, reconstruction: bool, bundle: Path, manifest: dict) -> dict:
    shape = input_shape(manifest)
    outputs = [
        {"name": "cluster_id", "datatype": "INT64", "shape": [-1]},
        {"name": "distance", "datatype": "FP32", "shape": [-1]},
    ]
    if reconstruction:
        outputs.append({"name": "reconstruction", "datatype": "FP32", "shape": [-1, *shape]})
    return {
        "name": name,
        "implementation": "runtime.AEClusterRuntime",
        "platform": "tensorflow",
        "max_batch_size": MAX_BATCH_SIZE,
        "max_batch_time": MAX_BATCH_TIME,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *shape]}],
        "outputs": outputs,
        "parameters": {
            "uri": str(bundle),
            "version": str(manifest.get("version", "")),
            "extra": {"reconstruction": reconstruction},
        },
    }


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cmd_start(args: argparse.Namespace) -> int:
    bundle, manifest = read_bundle(args.bundle)
    require_venv()
    if not args.no_metrics and args.metrics_port == 0:
        args.metrics_port = free_port()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "settings.json", settings_json(args))
    for name, reconstruction in MODELS.items():
        write_json(workdir / name / "model-settings.json",
                   model_settings_json(name, reconstruction, bundle, manifest))
    env = dict(os.environ)
    # runtime.py is imported as `runtime` (model-settings `implementation`); MLServer only
    # adds each model's own folder to sys.path while importing, so put this folder on it.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    command = [str(MLSERVER), "start", str(workdir)]
    metrics = "off" if args.no_metrics else f"127.0.0.1:{args.metrics_port}/metrics"
    log(f"http 127.0.0.1:{args.http_port}, grpc 127.0.0.1:{args.grpc_port}, metrics {metrics}, "
        f"parallel_workers {args.parallel_workers}, models "
        f"{', '.join(MODELS)} from {bundle}; exec {' '.join(command)}")
    os.chdir(workdir)  # MLServer puts .envs / .metrics relative to the working directory
    os.execve(command[0], command, env)
    return 0  # not reached


# ---------------------------------------------------------------------------- requests


def in_venv_python(args: argparse.Namespace) -> int | None:
    """Re-run this command with the venv's python unless already there (numpy, mlserver)."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return None
    require_venv()
    completed = subprocess.run([str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])
    return completed.returncode


def random_images(manifest: dict, n: int, seed: int) -> np.ndarray:  # venv only
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.random((n, *input_shape(manifest)), dtype=np.float32)


def model_name(reconstruction: bool) -> str:
    return next(name for name, flag in MODELS.items() if flag == reconstruction)


def grpc_request_bytes(images: np.ndarray, reconstruction: bool) -> bytes:  # venv only
    """One serialized inference.ModelInferRequest with the images as raw FP32 contents."""
    import numpy as np
    from mlserver.grpc import dataplane_pb2 as pb

    array = np.ascontiguousarray(images, dtype="<f4")
    request = pb.ModelInferRequest(model_name=model_name(reconstruction))
    tensor = request.inputs.add()
    tensor.name = INPUT_NAME
    tensor.datatype = "FP32"
    tensor.shape.extend(array.shape)
    request.raw_input_contents.append(array.tobytes())
    return request.SerializeToString()


def rest_request_body(images: np.ndarray) -> bytes:  # venv only
    """The V2 REST JSON body: flat row-major data plus the shape."""
    body = {"inputs": [{
        "name": INPUT_NAME,
        "datatype": "FP32",
        "shape": list(images.shape),
        "data": images.ravel().tolist(),
    }]}
    return json.dumps(body, separators=(",", ":")).encode()


def check_images(n: int) -> None:
    if n < 1:
        raise UsageError(f"--images must be at least 1, got {n}")


def cmd_request(args: argparse.Namespace) -> int:
    """grpc-request / rest-request: one request of N random images written to --out."""
    _, manifest = read_bundle(args.bundle)
    check_images(args.images)
    rc = in_venv_python(args)
    if rc is not None:
        return rc
    images = random_images(manifest, args.images, args.seed)
    if args.command == "grpc-request":
        data = grpc_request_bytes(images, args.reconstruction)
        what = (f"inference.ModelInferRequest for model {model_name(args.reconstruction)}, "
                f"{args.images} FP32 images {input_shape(manifest)}; h2load path {GRPC_METHOD}")
    else:
        data = rest_request_body(images)
        what = (f"POST /v2/models/{model_name(args.reconstruction)}/infer, {args.images} FP32 "
                f"images {input_shape(manifest)}")
    Path(args.out).write_bytes(data)
    log(f"wrote {len(data)} bytes to {args.out}: {what}")
    return 0


# ---------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="serve.py", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", help="create .venv from requirements.txt (idempotent)")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("start", help="write MLServer settings into WORKDIR and exec mlserver")
    p.add_argument("--bundle", required=True, help="bundle version directory (REPO/NAME/VERSION)")
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--workdir", required=True, help="where settings.json and the models go")
    p.add_argument("--parallel-workers", type=int, default=0, choices=(0, 1, 2),
                   help="MLServer inference worker processes (default 0: in-process)")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="Prometheus metrics port (default 0: a free one)")
    p.add_argument("--no-metrics", action="store_true", help="no metrics server, no metrics")
    p.set_defaults(func=cmd_start)

    for name, func, what in (
        ("grpc-request", cmd_request, "a serialized inference.ModelInferRequest"),
        ("rest-request", cmd_request, "a V2 REST JSON body"),
    ):
        p = sub.add_parser(name, help=f"write {what} of N random images")
        p.add_argument("--bundle", required=True, help="bundle version directory")
        p.add_argument("--images", type=int, required=True, help="images in the request")
        p.add_argument("--out", required=True, help="file to write")
        p.add_argument("--reconstruction", action="store_true",
                       help="address the model that also returns reconstructions")
        p.add_argument("--seed", type=int, default=0)
        p.set_defaults(func=func)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(map(str, exc.cmd))} failed with status {exc.returncode}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

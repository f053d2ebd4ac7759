"""The serving benchmark (`make bench`): aecluster against its own model and against MLServer.

In one run, on one machine:

1. the in-process figure: ``ModelRuntime.run`` (one ``tf.function`` call) at batch 1 and 32,
   with and without the reconstruction, once with the server's TensorFlow thread settings and
   once with TensorFlow's default pools (one thread per core); the better is the reference;
2. aecluster (``python -m service`` with its default settings) driven by C load generators,
   ``h2load`` for gRPC (one pre-serialised request replayed) and ``wrk`` for HTTP, each row
   a warm-up and then a fixed window;
3. MLServer 1.7.1 (its own venv under bench/serve/mlserver/, adaptive batching 32 / 2 ms,
   Open Inference Protocol v2) serving the same bundle through a small custom runtime.

Results go to bench/results/serve.{json,md} as figures and ratios: throughput against the
in-process batch-32 figure, c = 1 latency against the in-process batch-1 call, aecluster
against MLServer on the paths they share, and p99 / p50.

    .venv/bin/python bench/serve/run.py                    # trains a small bundle if needed
    .venv/bin/python bench/serve/run.py --bundle models/fashion/1 --seconds 10

Without ``--bundle`` it serves bench/work/models/fashion/1, trained once with the default
(`contrastive`) architecture for one epoch on Fashion-MNIST: serving cost depends on the
architecture and the input shape (28x28x1, embedding 138, K = 10), not on how long it trained.
The load generators and both servers share the machine's cores, as the figures say.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402  (bench/serve is not a package)

WORK = REPO_ROOT / "bench" / "work"
DEFAULT_BUNDLE = WORK / "models" / "fashion" / "1"
RESULTS = REPO_ROOT / "bench" / "results"
MLSERVER = HERE / "mlserver"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# The small default bundle: the default recipe's architecture, one epoch of each stage.
TRAIN_ARGS = ["--dataset", "fashion-mnist", "--model", "contrastive", "--epochs", "1",
              "--head-epochs", "1", "--decoder-epochs", "1", "--clusters", "10", "--seed", "0"]
BATCH = 32
CLUSTER_METHOD = "/aecluster.v1.ClusterService/Cluster"
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
V2_METHOD = "/inference.GRPCInferenceService/ModelInfer"


class BenchError(Exception):
    """A benchmark step that cannot go on; the message says which and why."""


@dataclass
class Row:
    """One measured path: a server, a protocol and a request shape at one concurrency."""

    server: str
    path: str
    reconstruction: bool
    images_per_request: int
    concurrency: int
    result: dict[str, Any]
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return float(self.result["rps"]) * self.images_per_request

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "path": self.path, "reconstruction": self.reconstruction,
                "images_per_request": self.images_per_request,
                "concurrency": self.concurrency, "images_per_s": self.images_per_s,
                **self.result, "ratios": self.ratios}


def log(message: str) -> None:
    """Progress on stderr: the run takes several minutes."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---- the bundle ----------------------------------------------------------------------------


def ensure_bundle(bundle_dir: Path | None) -> Path:
    """The version directory to serve: ``bundle_dir``, or the small default trained once."""
    if bundle_dir is not None:
        if not (bundle_dir / "manifest.json").is_file():
            raise BenchError(f"{bundle_dir} is not a bundle version (no manifest.json)")
        return bundle_dir.resolve()
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        return DEFAULT_BUNDLE
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        install_debian(["dataset-fashion-mnist"])
    log(f"training the default bundle into {DEFAULT_BUNDLE} (one epoch per stage; minutes)")
    subprocess.run([sys.executable, "-m", "training", "train", *TRAIN_ARGS,
                    "--out", str(DEFAULT_BUNDLE)], cwd=REPO_ROOT, check=True)
    return DEFAULT_BUNDLE


def install_debian(packages: list[str]) -> None:
    """apt-get install ``packages`` (the bench's own tools and data), or say how to."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    log(f"installing {' '.join(packages)} from Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([*sudo, "apt-get", "install", "-y", "-q", *packages],
                    [*sudo, "apt-get", "update", "-q"],
                    [*sudo, "apt-get", "install", "-y", "-q", *packages]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode == 0 and command[-1] == packages[-1]:
            return
    raise BenchError(f"could not install {' '.join(packages)}: run "
                     f"`apt-get install {' '.join(packages)}` as root\n{done.stderr[-2000:]}")


# ---- in process ----------------------------------------------------------------------------


# TensorFlow's own thread pools (one per core) and the server's settings: the server's
# defaults came from this comparison, and the better of the two is the reference.
THREAD_CONFIGS = {"tensorflow default": (0, 0)}


Figures = dict[tuple[int, bool], dict[str, float]]  # (batch, reconstruction) -> values


def in_process(version_dir: Path, seconds: float) -> dict[str, Figures]:
    """Thread configuration -> (batch, reconstruction) -> ms per call and images/s of
    ``ModelRuntime.run`` alone, each configuration measured in a process of its own
    (TensorFlow's pools are fixed once it has run an op)."""
    from service.settings import Settings

    settings = Settings()  # the AEC_* environment the server will read too
    configs = {f"server (intra {settings.tf_intra_op_threads}, inter "
               f"{settings.tf_inter_op_threads})":
               (settings.tf_intra_op_threads, settings.tf_inter_op_threads),
               **THREAD_CONFIGS}
    measured = {}
    for name, (intra, inter) in configs.items():
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--in-process-child",
             str(version_dir), str(intra), str(inter), str(seconds)],
            cwd=REPO_ROOT, capture_output=True, text=True, check=False,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if done.returncode != 0:
            raise BenchError(f"the in-process measurement ({name}) failed:\n{done.stderr[-3000:]}")
        figures = {(int(b), r == "True"): v
                   for key, v in json.loads(done.stdout.splitlines()[-1]).items()
                   for b, r in [key.split(":")]}
        measured[name] = figures
        for (batch, reconstruction), value in sorted(figures.items()):
            log(f"in-process, {name}: batch {batch} reconstruction {reconstruction}: "
                f"{value['ms_per_call']:.2f} ms per call")
    return measured


def reference(measured: dict[str, Figures]) -> Figures:
    """The model's best figure per (batch, reconstruction) over the thread configurations."""
    keys = next(iter(measured.values())).keys()
    return {key: min((figures[key] for figures in measured.values()),
                     key=lambda value: value["ms_per_call"]) for key in keys}


def _measure_child(version_dir: Path, intra: int, inter: int, seconds: float) -> None:
    """The in-process measurement in this (child) process; prints one JSON line."""
    from service import bundle
    from service.runtime import ModelRuntime, configure_threads

    configure_threads(intra, inter)
    manifest = bundle.read_manifest(version_dir)
    centroids = bundle.load_centroids(version_dir, manifest)
    runtime = ModelRuntime(version_dir, manifest, centroids, device="/CPU:0",
                           batch_sizes=(1, BATCH))
    runtime.warmup()
    spec = manifest.input
    figures = {}
    for batch in (1, BATCH):
        images = np.random.default_rng(0).random(
            (batch, spec.height, spec.width, spec.channels), dtype=np.float32)
        for reconstruction in (False, True):
            for _ in range(20):  # warm the kernels for this shape
                runtime.run(images, with_reconstruction=reconstruction)
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                runtime.run(images, with_reconstruction=reconstruction)
                calls += 1
            elapsed = time.perf_counter() - started
            figures[f"{batch}:{reconstruction}"] = {"ms_per_call": 1000 * elapsed / calls,
                                                    "images_per_s": calls * batch / elapsed}
    print(json.dumps(figures))


# ---- servers -------------------------------------------------------------------------------


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise BenchError(f"{what} was not ready after {timeout:.0f} s ({url})")


@contextmanager
def running(command: list[str], ready_url: str, what: str, log_path: Path,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command``, wait for ``ready_url`` to answer 200, stop it afterwards."""
    with log_path.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env or os.environ.copy(),
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_http(ready_url, proc, what)
        yield proc
    except BenchError as exc:
        raise BenchError(f"{exc}; its log: {log_path}") from None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def link_repository(version_dir: Path, workdir: Path) -> tuple[Path, str]:
    """A model repository under ``workdir`` holding ``version_dir`` (a symlink named as its
    manifest says); returns the repository and the model's name."""
    from service import bundle

    manifest = bundle.read_manifest(version_dir)
    repo = workdir / "repo"
    target = repo / manifest.name / str(manifest.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(version_dir, target_is_directory=True)
    return repo, manifest.name


@contextmanager
def aecluster(repo: Path, log_path: Path,
              what: str = "aecluster") -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """``python -m service`` on ``repo`` (settings from the AEC_* environment, quiet logs, no
    polling) on free ports, ready; yields the process and its HTTP and gRPC ports."""
    http_port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "service", "--model-repo", str(repo), "--host",
               "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
               "--poll-seconds", "0"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "AEC_LOG_LEVEL": "WARNING"}
    with running(command, f"http://127.0.0.1:{http_port}/readyz", what, log_path, env) as proc:
        yield proc, http_port, grpc_port


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- requests ------------------------------------------------------------------------------


def sample_images(version_dir: Path, n: int) -> np.ndarray:
    """``n`` float32 images in [0, 1] of the bundle's input shape (Fashion-MNIST's test
    images when they are there, so the model sees what it was trained on)."""
    from service import bundle

    spec = bundle.read_manifest(version_dir).input
    shape = (spec.height, spec.width, spec.channels)
    if shape == (28, 28, 1) and (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        import gzip

        with gzip.open(FASHION_DIR / "t10k-images-idx3-ubyte.gz", "rb") as source:
            raw = np.frombuffer(source.read(), dtype=np.uint8, offset=16)
        return (raw[: n * 784].reshape(n, 28, 28, 1) / 255.0).astype(np.float32)
    return np.random.default_rng(0).random((n, *shape), dtype=np.float32)


def native_grpc_request(model: str, images: np.ndarray, reconstruction: bool) -> bytes:
    from service._generated.aecluster.v1 import cluster_service_pb2 as pb

    recon = pb.ClusterRequest.ARRAY if reconstruction else pb.ClusterRequest.NONE
    return pb.ClusterRequest(
        model=model, return_reconstruction=recon,
        images=[pb.Image(tensor=pb.Tensor(shape=list(image.shape), dtype="float32",
                                          data=image.tobytes())) for image in images],
    ).SerializeToString()


def predict_grpc_request(model: str, images: np.ndarray, reconstruction: bool) -> bytes:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    outputs = ["cluster_id", "distance"] + (["reconstruction"] if reconstruction else [])
    request.output_filter.extend(outputs)
    return bytes(request.SerializeToString())


# The V2 outputs asked for: what MLServer's peer model returns on the matching path (it has
# one model per reconstruction setting and its requests name no outputs; aecluster has one
# model and is told which outputs to compute).
V2_OUTPUTS = {True: ("cluster_id", "distance", "reconstruction"),
              False: ("cluster_id", "distance")}


def v2_grpc_request(model: str, images: np.ndarray, reconstruction: bool) -> bytes:
    """An Open Inference Protocol ``ModelInferRequest``: the images as raw FP32 contents (as
    in MLServer's peer request) and the outputs of ``V2_OUTPUTS`` requested."""
    from service._generated.inference import grpc_predict_v2_pb2 as pb

    array = np.ascontiguousarray(images, dtype="<f4")
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name = "images"
    tensor.datatype = "FP32"
    tensor.shape.extend(array.shape)
    request.raw_input_contents.append(array.tobytes())
    for name in V2_OUTPUTS[reconstruction]:
        request.outputs.add(name=name)
    return bytes(request.SerializeToString())


def v2_json_body(images: np.ndarray, reconstruction: bool) -> bytes:
    """The V2 REST JSON body: flat row-major data and the shape (as in MLServer's peer
    request) and the outputs of ``V2_OUTPUTS``."""
    return json.dumps({
        "inputs": [{"name": "images", "datatype": "FP32", "shape": list(images.shape),
                    "data": images.ravel().tolist()}],
        "outputs": [{"name": name} for name in V2_OUTPUTS[reconstruction]],
    }, separators=(",", ":")).encode()


def check_native_grpc(target: str, message: bytes, images: int) -> None:
    """One real call through the generated stub: h2load counts a gRPC error (HTTP 200 with a
    grpc-status trailer) as a success, so the request is proven good first."""
    import grpc

    from service._generated.aecluster.v1 import cluster_service_pb2 as pb
    from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.ClusterServiceStub(channel).Cluster(
            pb.ClusterRequest.FromString(message), timeout=30)
    if len(reply.predictions) != images:
        raise BenchError(f"the native gRPC request answered {len(reply.predictions)} "
                         f"predictions for {images} images")


def check_predict_grpc(target: str, message: bytes) -> None:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            predict_pb2.PredictRequest.FromString(message), timeout=30)
    if "cluster_id" not in reply.outputs:
        raise BenchError("the TF Serving Predict request answered no cluster_id")


def check_http(url: str, body: bytes, content_type: str) -> None:
    import httpx

    response = httpx.post(url, content=body, headers={"content-type": content_type}, timeout=30)
    if response.status_code != 200:
        raise BenchError(f"POST {url} answered {response.status_code}: {response.text[:300]}")


# ---- the run -------------------------------------------------------------------------------


@dataclass
class Plan:
    """What every load row shares."""

    seconds: float
    warmup: float
    workdir: Path
    rows: list[Row] = field(default_factory=list)

    def grpc(self, server: str, path: str, port: int, method: str, message: bytes, *,
             reconstruction: bool, images: int, concurrency: int) -> None:
        result = loadgen.h2load_grpc("127.0.0.1", port, method, message,
                                     concurrency=concurrency, seconds=self.seconds,
                                     warmup=self.warmup, workdir=self.workdir)
        self._add(Row(server, path, reconstruction, images, concurrency, result.as_dict()))

    def http(self, server: str, path: str, url: str, body: bytes, content_type: str, *,
             reconstruction: bool, images: int, concurrency: int) -> None:
        result = loadgen.wrk_http(url, body, content_type, concurrency=concurrency,
                                  seconds=self.seconds, warmup=self.warmup,
                                  workdir=self.workdir)
        self._add(Row(server, path, reconstruction, images, concurrency, result.as_dict()))

    def _add(self, row: Row) -> None:
        self.rows.append(row)
        log(f"{row.server} {row.path} c={row.concurrency}: {row.result['rps']:.0f} req/s, "
            f"mean {row.result['mean_ms']:.2f} ms, p99 {row.result['p99_ms']:.2f} ms, "
            f"errors {row.result['errors']}")


def bench_aecluster(plan: Plan, version_dir: Path, images: np.ndarray,
                    concurrencies: list[int]) -> None:
    """The aecluster rows: native, TF Serving and V2 gRPC; native, V2 and TF Serving HTTP."""
    repo, model = link_repository(version_dir, plan.workdir)
    one, batch = images[:1], images[:BATCH]
    with aecluster(repo, plan.workdir / "aecluster.log") as (_, http_port, grpc_port):
        url = f"http://127.0.0.1:{http_port}"
        log(f"aecluster ready on HTTP {http_port}, gRPC {grpc_port}")
        for reconstruction in (True, False):
            message = native_grpc_request(model, one, reconstruction)
            check_native_grpc(f"127.0.0.1:{grpc_port}", message, 1)
            for c in concurrencies:
                plan.grpc("aecluster", "grpc native tensor", grpc_port, CLUSTER_METHOD,
                          message, reconstruction=reconstruction, images=1, concurrency=c)
        message = native_grpc_request(model, batch, True)
        check_native_grpc(f"127.0.0.1:{grpc_port}", message, BATCH)
        plan.grpc("aecluster", "grpc native tensor", grpc_port, CLUSTER_METHOD, message,
                  reconstruction=True, images=BATCH, concurrency=4)
        message = predict_grpc_request(model, one, True)
        check_predict_grpc(f"127.0.0.1:{grpc_port}", message)
        for c in concurrencies:
            plan.grpc("aecluster", "grpc tf-serving Predict", grpc_port, PREDICT_METHOD,
                      message, reconstruction=True, images=1, concurrency=c)
        for reconstruction in (True, False):
            message = v2_grpc_request(model, one, reconstruction)
            check_raw_grpc(f"127.0.0.1:{grpc_port}", V2_METHOD, message)
            for c in concurrencies:
                plan.grpc("aecluster", "grpc v2 ModelInfer", grpc_port, V2_METHOD, message,
                          reconstruction=reconstruction, images=1, concurrency=c)
        infer_url = f"{url}/v2/models/{model}/infer"
        body = v2_json_body(one, True)
        check_http(infer_url, body, "application/json")
        for c in concurrencies:
            plan.http("aecluster", "http v2 json", infer_url, body, "application/json",
                      reconstruction=True, images=1, concurrency=c)
        cluster_url = f"{url}/v1/models/{model}:cluster"
        bodies = {
            "http native json floats": {"instances": one.tolist(),
                                        "return_reconstruction": "array"},
            "http native b64 png": {"instances": [{"b64": png_b64(one[0])}],
                                    "return_reconstruction": "png"},
        }
        for path, payload in bodies.items():
            body = json.dumps(payload).encode()
            check_http(cluster_url, body, "application/json")
            for c in concurrencies:
                plan.http("aecluster", path, cluster_url, body, "application/json",
                          reconstruction=True, images=1, concurrency=c)
        predict_url = f"{url}/v1/models/{model}:predict"
        body = json.dumps({"instances": one.tolist()}).encode()
        check_http(predict_url, body, "application/json")
        for c in concurrencies:
            plan.http("aecluster", "http tf-serving :predict json", predict_url, body,
                      "application/json", reconstruction=True, images=1, concurrency=c)


def check_raw_grpc(target: str, method: str, message: bytes) -> None:
    """One real call of ``method`` with ``message`` as it is (no stubs: grpc passes bytes
    through when no serializer is given), for servers whose stubs this venv lacks."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = channel.unary_unary(method)(message, timeout=30)
        except grpc.RpcError as exc:
            raise BenchError(f"{method} refused the benchmark's request: {exc.code().name} "
                             f"{exc.details()}") from None
    if not reply:
        raise BenchError(f"{method} answered an empty message")


def bench_mlserver(plan: Plan, version_dir: Path, concurrencies: list[int]) -> None:
    """The MLServer rows: V2 gRPC ModelInfer and V2 REST JSON on the same bundle."""
    script = [sys.executable, str(MLSERVER / "serve.py")]
    log("MLServer's venv (bench/serve/mlserver/.venv; about a minute the first time)")
    subprocess.run([*script, "setup"], check=True, stdout=subprocess.DEVNULL)
    http_port, grpc_port = free_port(), free_port()
    command = [*script, "start", "--bundle", str(version_dir), "--http-port", str(http_port),
               "--grpc-port", str(grpc_port), "--workdir", str(plan.workdir / "mlserver")]
    url = f"http://127.0.0.1:{http_port}"

    def request(kind: str, images: int, reconstruction: bool) -> bytes:
        out = plan.workdir / f"mlserver-{kind}-{images}-{reconstruction}"
        subprocess.run([*script, f"{kind}-request", "--bundle", str(version_dir), "--images",
                        str(images), "--out", str(out),
                        *(["--reconstruction"] if reconstruction else [])],
                       check=True, stdout=subprocess.DEVNULL)
        return out.read_bytes()

    with running(command, f"{url}/v2/health/ready", "MLServer", plan.workdir / "mlserver.log"):
        log(f"MLServer ready on HTTP {http_port}, gRPC {grpc_port}")
        target = f"127.0.0.1:{grpc_port}"
        for reconstruction in (True, False):
            message = request("grpc", 1, reconstruction)
            check_raw_grpc(target, V2_METHOD, message)
            for c in concurrencies:
                plan.grpc("mlserver", "grpc v2 ModelInfer", grpc_port, V2_METHOD, message,
                          reconstruction=reconstruction, images=1, concurrency=c)
        message = request("grpc", BATCH, True)
        check_raw_grpc(target, V2_METHOD, message)
        plan.grpc("mlserver", "grpc v2 ModelInfer", grpc_port, V2_METHOD, message,
                  reconstruction=True, images=BATCH, concurrency=4)
        body = request("rest", 1, True)
        infer_url = f"{url}/v2/models/aecluster/infer"
        check_http(infer_url, body, "application/json")
        for c in concurrencies:
            plan.http("mlserver", "http v2 json", infer_url, body, "application/json",
                      reconstruction=True, images=1, concurrency=c)


def png_b64(image: np.ndarray) -> str:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8), mode="L").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ---- ratios and the report -----------------------------------------------------------------

# aecluster's paths and the MLServer path that carries the same request over the same
# protocol (Open Inference Protocol v2 is MLServer's only API).
PEERS = {
    "grpc v2 ModelInfer": "grpc v2 ModelInfer",  # the same protocol on both servers
    "http v2 json": "http v2 json",
    "grpc native tensor": "grpc v2 ModelInfer",
    "grpc tf-serving Predict": "grpc v2 ModelInfer",
    "http native json floats": "http v2 json",
    "http tf-serving :predict json": "http v2 json",
}


def add_ratios(rows: list[Row], model: dict[tuple[int, bool], dict[str, float]]) -> None:
    """Each row's ratios: against the in-process call and against MLServer's same path."""
    peers = {(r.path, r.reconstruction, r.images_per_request, r.concurrency): r
             for r in rows if r.server == "mlserver"}
    for row in rows:
        result = row.result
        if result["p50_ms"] > 0:
            row.ratios["p99_over_p50"] = result["p99_ms"] / result["p50_ms"]
        if row.concurrency == 1 and row.images_per_request == 1:
            row.ratios["ms_over_in_process_batch1"] = (
                result["mean_ms"] - model[(1, row.reconstruction)]["ms_per_call"])
        else:
            row.ratios["of_in_process_batch32"] = (
                row.images_per_s / model[(BATCH, row.reconstruction)]["images_per_s"])
        peer = peers.get((PEERS.get(row.path, ""), row.reconstruction, row.images_per_request,
                          row.concurrency))
        if row.server == "aecluster" and peer is not None and peer.result["rps"] > 0:
            row.ratios["vs_mlserver"] = result["rps"] / peer.result["rps"]


def markdown(report: dict[str, Any]) -> str:
    """The table people read: one line a row, the ratios beside the figures."""
    model = report["in_process"]
    lines = [
        f"Serving benchmark, {report['date']}: {report['machine']}; bundle "
        f"{report['bundle']['name']} v{report['bundle']['version']} "
        f"({report['bundle']['input']}, embedding {report['bundle']['embedding_dim']}, "
        f"K = {report['bundle']['clusters']}); aecluster settings: "
        f"{_settings_text(report['aecluster_settings'])}; {report['seconds']:.0f} s per row after "
        f"{report['warmup']:.0f} s of warm-up; h2load (gRPC) and wrk (HTTP) on the same cores.",
        "",
        "In-process `ModelRuntime.run` (one tf.function call), in a process of its own per "
        "TensorFlow thread configuration; the ratios below use the better of the two "
        "(the reference):",
        "",
        "| TensorFlow threads | batch | reconstruction | ms per call | images/s |",
        "|---|---|---|---|---|",
    ]
    for entry in model:
        lines.append(f"| {entry['threads']} | {entry['batch']} | {entry['reconstruction']} | "
                     f"{entry['ms_per_call']:.2f} | {entry['images_per_s']:.0f} |")
    lines += [
        "",
        "| server | path | recon | images/req | c | req/s | images/s | mean ms | p50 ms "
        "| p99 ms | p99/p50 | vs model | vs MLServer | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        ratios = row["ratios"]
        if "ms_over_in_process_batch1" in ratios:
            versus = f"+{ratios['ms_over_in_process_batch1']:.2f} ms"
        else:
            versus = f"{100 * ratios['of_in_process_batch32']:.0f} % of batch {BATCH}"
        peer = f"{ratios['vs_mlserver']:.2f}x" if "vs_mlserver" in ratios else ""
        lines.append(
            f"| {row['server']} | {row['path']} | {'yes' if row['reconstruction'] else 'no'} "
            f"| {row['images_per_request']} | {row['concurrency']} | {row['rps']:.0f} "
            f"| {row['images_per_s']:.0f} | {row['mean_ms']:.2f} | {row['p50_ms']:.2f} "
            f"| {row['p99_ms']:.2f} | {ratios.get('p99_over_p50', 0):.1f} | {versus} | {peer} "
            f"| {row['errors']} |")
    lines += ["", "vs model: at c = 1, the mean latency above the in-process batch-1 call; "
              f"otherwise images/s as a share of the in-process batch-{BATCH} figure (same "
              "reconstruction setting). vs MLServer: aecluster's req/s over MLServer's on the "
              "same protocol, request shape and concurrency."]
    return "\n".join(lines) + "\n"


def _settings_text(settings: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"


def bundle_facts(version_dir: Path) -> dict[str, Any]:
    from service import bundle

    manifest = bundle.read_manifest(version_dir)
    spec = manifest.input
    return {"path": str(version_dir), "name": manifest.name, "version": manifest.version,
            "input": f"{spec.height}x{spec.width}x{spec.channels}",
            "embedding_dim": manifest.latent_dim, "clusters": manifest.n_clusters}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None,
                        help="a bundle version directory (default: the small Fashion-MNIST one "
                             "under bench/work/, trained if absent)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before each row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--no-mlserver", action="store_true",
                        help="leave out the MLServer rows (no ratios against it)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    parser.add_argument("--in-process-child", nargs=4, metavar=("BUNDLE", "INTRA", "INTER",
                                                                 "SECONDS"),
                        help=argparse.SUPPRESS)  # what in_process() runs in a child
    args = parser.parse_args(argv)
    if args.in_process_child:
        bundle_dir, intra, inter, seconds = args.in_process_child
        _measure_child(Path(bundle_dir), int(intra), int(inter), float(seconds))
        return 0
    if args.seconds <= 0 or args.warmup < 0 or min(args.concurrency) < 1:
        parser.error("--seconds must be > 0, --warmup >= 0 and every --concurrency >= 1")
    try:
        loadgen.ensure_tools()
        version_dir = ensure_bundle(args.bundle)
        measured = in_process(version_dir, min(args.seconds, 5.0))
        model = reference(measured)
        images = sample_images(version_dir, BATCH)
        with tempfile.TemporaryDirectory(prefix="aecluster-bench-") as scratch:
            plan = Plan(args.seconds, args.warmup, Path(scratch))
            bench_aecluster(plan, version_dir, images, args.concurrency)
            if not args.no_mlserver:
                bench_mlserver(plan, version_dir, args.concurrency)
            rows = plan.rows
    except (BenchError, loadgen.LoadgenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    add_ratios(rows, model)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, CPU only"
                   if not _gpus() else f"{os.cpu_count()} cores, GPU",
        "seconds": args.seconds, "warmup": args.warmup, "bundle": bundle_facts(version_dir),
        # aecluster reads AEC_* from the environment it inherits: record what differed
        # from its defaults (e.g. AEC_MAX_BATCH_DELAY_MS=0 make bench).
        "aecluster_settings": {k: v for k, v in sorted(os.environ.items())
                               if k.startswith("AEC_")},
        "in_process": [{"threads": name, "batch": b, "reconstruction": r, **value}
                       for name, figures in measured.items()
                       for (b, r), value in sorted(figures.items())],
        "reference": [{"batch": b, "reconstruction": r, **value}
                      for (b, r), value in sorted(model.items())],
        "rows": [row.as_dict() for row in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


def _gpus() -> bool:
    return shutil.which("nvidia-smi") is not None


if __name__ == "__main__":
    raise SystemExit(main())

"""The client CLI against a recording HTTP server on a free port, and against the real one."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service import client

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeState:
    """What the recording server saw, and how it should behave."""

    requests: list[Recorded] = field(default_factory=list)
    ready: bool = True


def recon_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def fake_cluster_answer(model: str, version: int, body: dict[str, Any]) -> dict[str, Any]:
    """An answer in the :cluster format that depends on the bytes it received."""
    predictions = []
    for index, instance in enumerate(body["instances"]):
        data = base64.b64decode(instance["b64"], validate=True)
        prediction: dict[str, Any] = {
            "cluster_id": len(data) % 10, "distance": round(len(data) / 1000, 3),
            "is_outlier": False, "label": str(len(data) % 10),
        }
        if body["return_reconstruction"] == "png":
            prediction["reconstruction"] = {
                "b64": base64.b64encode(recon_png(index)).decode("ascii")}
        elif body["return_reconstruction"] == "array":
            prediction["reconstruction"] = [[[0.5]] * 2] * 2
        if body["return_reconstruction"] != "none":
            prediction["reconstruction_error"], prediction["psnr"] = 0.01, 20.0
        if body["return_embedding"]:
            prediction["embedding"] = [0.25] * 8
        if body["top_k"]:
            prediction["top_k"] = [{"cluster_id": k, "distance": float(k)}
                                   for k in range(body["top_k"])]
        predictions.append(prediction)
    return {"model": model, "version": version, "predictions": predictions}


def make_handler(state: FakeState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def _answer(self, status: int, payload: Any, headers: dict[str, str] | None = None,
                    raw: bytes | None = None) -> None:
            data = raw if raw is not None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type",
                             "text/html" if raw is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Recorded:
            length = int(self.headers.get("Content-Length", "0"))
            entry = Recorded(self.command, self.path, dict(self.headers.items()),
                             self.rfile.read(length))
            state.requests.append(entry)
            return entry

        def do_POST(self) -> None:
            entry = self._record()
            path = entry.path
            if path.startswith("/v1/models/missing"):
                self._answer(404, {"error": "model 'missing' is not loaded; loaded: digits"})
            elif path.startswith("/v1/models/busy"):
                self._answer(503, {"error": "queue full: 1024 images waiting"},
                             {"Retry-After": "2"})
            elif path.startswith("/v1/models/broken"):
                self._answer(502, None, raw=b"<html><body>Bad   gateway\n</body></html>")
            elif path.startswith("/v1/models/slow"):
                time.sleep(2.0)
                self._answer(200, {})
            elif path == "/v1/models/digits:cluster":
                self._answer(200, fake_cluster_answer("digits", 1, json.loads(entry.body)))
            elif path == "/v1/models/digits/versions/3:cluster":
                self._answer(200, fake_cluster_answer("digits", 3, json.loads(entry.body)))
            else:
                self._answer(404, {"error": f"no route {path}"})

        def do_GET(self) -> None:
            entry = self._record()
            if entry.path == "/readyz":
                if state.ready:
                    self._answer(200, {"status": "ready"})
                else:
                    self._answer(503, {"error": "not ready: the server is draining"})
            elif entry.path in ("/v1/models/digits", "/v1/models/digits/versions/1"):
                self._answer(200, {"model_version_status": [
                    {"version": "1", "state": "AVAILABLE",
                     "status": {"error_code": "OK", "error_message": ""}}]})
            else:
                self._answer(404, {"error": f"no route {entry.path}"})

    return Handler


class QuietServer(ThreadingHTTPServer):
    """Clients that time out close their socket; the handler's late write then fails.

    socketserver prints such errors to stderr from the handler thread, possibly while a
    later test is capturing stderr - expected here, so they are dropped.
    """

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[tuple[str, FakeState]]:
    """A real HTTP server on a free loopback port that records every request."""
    state = FakeState()
    server = QuietServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Two real image files of different formats and sizes."""
    rng = np.random.default_rng(7)
    png = tmp_path / "in" / "seven.png"
    png.parent.mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(png)
    jpg = tmp_path / "in" / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(jpg)
    return [png, jpg]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = client.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cluster_posts_b64_instances_and_prints_the_answer(
    fake: tuple[str, FakeState], images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = fake
    code, out, err = run_cli(capsys, "cluster", *map(str, images), "--url", url,
                             "--model", "digits", "--embedding", "--top-k", "3",
                             "--timeout", "7.5")
    assert (code, err) == (0, "")
    [request] = state.requests
    assert (request.method, request.path) == ("POST", "/v1/models/digits:cluster")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Request-Timeout-Ms"] == "7500"
    body = json.loads(request.body)
    assert [base64.b64decode(i["b64"]) for i in body["instances"]] == [
        p.read_bytes() for p in images]
    assert body["return_reconstruction"] == "none"
    assert body["return_embedding"] is True and body["top_k"] == 3
    answer = json.loads(out)
    assert answer == fake_cluster_answer("digits", 1, body)
    assert out.startswith('{\n  "model": "digits"')  # pretty, for people
    assert [p["cluster_id"] for p in answer["predictions"]] == [
        len(p.read_bytes()) % 10 for p in images]


def test_version_and_reconstruction_array(
    fake: tuple[str, FakeState], images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = fake
    code, out, _ = run_cli(capsys, "cluster", str(images[0]), "--url", url + "/",
                           "--version", "3", "--reconstruction", "array")
    assert code == 0
    assert state.requests[0].path == "/v1/models/digits/versions/3:cluster"
    answer = json.loads(out)
    assert answer["version"] == 3
    assert answer["predictions"][0]["reconstruction"] == [[[0.5]] * 2] * 2


def test_save_reconstructions_writes_the_served_pngs(
    fake: tuple[str, FakeState], images: list[Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, state = fake
    target = tmp_path / "out" / "recon"
    code, out, err = run_cli(capsys, "cluster", *map(str, images), "--url", url,
                             "--save-reconstructions", str(target))
    assert code == 0
    assert json.loads(state.requests[0].body)["return_reconstruction"] == "png"
    assert sorted(p.name for p in target.iterdir()) == ["0-seven.png", "1-photo.png"]
    assert (target / "0-seven.png").read_bytes() == recon_png(0)
    assert (target / "1-photo.png").read_bytes() == recon_png(1)
    assert "wrote 2 reconstruction(s)" in err
    assert len(json.loads(out)["predictions"]) == 2


def test_save_reconstructions_refuses_a_non_png_format(
    fake: tuple[str, FakeState], images: list[Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, state = fake
    code, _, err = run_cli(capsys, "cluster", str(images[0]), "--url", url,
                           "--reconstruction", "array", "--save-reconstructions", str(tmp_path))
    assert code == 2
    assert "--save-reconstructions needs --reconstruction png" in err
    assert state.requests == []


def test_missing_image_file_is_one_line_and_sends_nothing(
    fake: tuple[str, FakeState], images: list[Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, state = fake
    missing = tmp_path / "nope.png"
    code, out, err = run_cli(capsys, "cluster", str(images[0]), str(missing), "--url", url)
    assert (code, out) == (1, "")
    assert err == f"error: cannot read image {missing}: No such file or directory\n"
    assert state.requests == []


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("missing", "HTTP 404 from POST {url}/v1/models/missing:cluster: model 'missing' is "
                    "not loaded; loaded: digits"),
        ("busy", "HTTP 503 from POST {url}/v1/models/busy:cluster: queue full: 1024 images "
                 "waiting (retry after 2 s)"),
        ("broken", "HTTP 502 from POST {url}/v1/models/broken:cluster: <html><body>Bad "
                   "gateway </body></html>"),
    ],
)
def test_http_errors_print_the_servers_message(
    model: str, expected: str, fake: tuple[str, FakeState], images: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = fake
    code, out, err = run_cli(capsys, "cluster", str(images[0]), "--url", url, "--model", model)
    assert (code, out) == (1, "")
    assert err == "error: " + expected.format(url=url) + "\n"


def test_model_name_is_one_quoted_path_segment(
    fake: tuple[str, FakeState], images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = fake
    code, _, _ = run_cli(capsys, "cluster", str(images[0]), "--url", url, "--model", "../etc")
    assert code == 1
    assert state.requests[0].path == "/v1/models/..%2Fetc:cluster"


def test_connection_refused(images: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = run_cli(capsys, "cluster", str(images[0]),
                             "--url", f"http://127.0.0.1:{port}")
    assert (code, out) == (1, "")
    assert err.startswith(f"error: cannot connect to http://127.0.0.1:{port}: ")
    assert "refused" in err.lower()
    assert err.count("\n") == 1


def test_timeout(fake: tuple[str, FakeState], images: list[Path],
                 capsys: pytest.CaptureFixture[str]) -> None:
    url, state = fake
    started = time.monotonic()
    code, _, err = run_cli(capsys, "cluster", str(images[0]), "--url", url, "--model", "slow",
                           "--timeout", "0.3")
    assert code == 1
    assert time.monotonic() - started < 1.5
    assert err == f"error: no answer from {url}/v1/models/slow:cluster within 0.3 s\n"
    assert state.requests[0].headers["X-Request-Timeout-Ms"] == "300"


def test_status_and_health(fake: tuple[str, FakeState],
                           capsys: pytest.CaptureFixture[str]) -> None:
    url, state = fake
    code, out, _ = run_cli(capsys, "status", "--url", url, "--model", "digits")
    assert code == 0
    assert json.loads(out)["model_version_status"][0]["state"] == "AVAILABLE"
    code, out, _ = run_cli(capsys, "status", "--url", url, "--version", "1")
    assert code == 0
    code, out, _ = run_cli(capsys, "health", "--url", url)
    assert (code, json.loads(out)) == (0, {"status": "ready"})
    state.ready = False
    code, out, err = run_cli(capsys, "health", "--url", url)
    assert (code, out) == (1, "")
    assert err == (f"error: HTTP 503 from GET {url}/readyz: not ready: the server is "
                   "draining\n")
    assert [(r.method, r.path) for r in state.requests] == [
        ("GET", "/v1/models/digits"), ("GET", "/v1/models/digits/versions/1"),
        ("GET", "/readyz"), ("GET", "/readyz")]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["cluster"], "the following arguments are required: IMAGE"),
        (["cluster", "x.png", "--top-k", "-1"], "must be >= 0"),
        (["cluster", "x.png", "--version", "0"], "must be >= 1"),
        (["cluster", "x.png", "--timeout", "0"], "must be a positive number"),
        (["cluster", "x.png", "--reconstruction", "jpeg"], "invalid choice: 'jpeg'"),
        (["predict"], "invalid choice: 'predict'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], needle: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert needle in err


def test_bad_url_is_a_clear_error(images: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "cluster", str(images[0]), "--url", "localhost:8501")
    assert code == 1
    assert err == "error: url must start with http:// or https://, got 'localhost:8501'\n"


def test_module_entry_point(fake: tuple[str, FakeState], images: list[Path]) -> None:
    url, _ = fake
    done = subprocess.run(
        [sys.executable, "-m", "service.client", "cluster", str(images[0]), "--url", url,
         "--top-k", "2"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["predictions"][0]["top_k"][1] == {"cluster_id": 1,
                                                                     "distance": 1.0}
    done = subprocess.run(
        [sys.executable, "-m", "service.client", "status", "--url", url, "--model", "missing"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: HTTP 404 from GET ")


# --- against the real server ----------------------------------------------------------------

@pytest.fixture
def real_server(model_repo: Path) -> Iterator[str]:
    """``service.server.AppServer`` on free loopback ports, in its own event loop thread."""
    from service.server import AppServer
    from service.settings import Settings

    settings = Settings(model_repo=model_repo, host="127.0.0.1", http_port=0, grpc_port=0,
                        max_batch_size=4, poll_seconds=0, drain_seconds=5, log_json=False)
    started = threading.Event()
    box: dict[str, Any] = {}

    async def run() -> None:
        server = AppServer(settings)
        box["server"], box["loop"] = server, asyncio.get_running_loop()
        try:
            await server.start()
        finally:
            started.set()
        await server.wait_and_shutdown()

    def target() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # surfaced to the test below
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=target, name="real-server", daemon=True)
    thread.start()
    assert started.wait(120), "the server did not start within 120 s"
    if "error" in box:
        raise box["error"]
    try:
        yield f"http://127.0.0.1:{box['server'].http_port}"
    finally:
        box["loop"].call_soon_threadsafe(box["server"].request_stop)
        thread.join(30)


def test_against_the_real_server(real_server: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for index in range(3):
        path = tmp_path / f"digit{index}.png"
        pixels = np.round(digits.images[index] / 16.0 * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((24, 24)).save(path)  # another size: server resizes
        paths.append(path)
    code, out, err = run_cli(capsys, "health", "--url", real_server)
    assert code == 0, err
    code, out, err = run_cli(capsys, "cluster", *map(str, paths), "--url", real_server,
                             "--model", "digits", "--embedding", "--top-k", "2",
                             "--save-reconstructions", str(tmp_path / "recon"))
    assert code == 0, err
    answer = json.loads(out)
    assert (answer["model"], answer["version"]) == ("digits", 1)
    assert len(answer["predictions"]) == 3
    for prediction, saved in zip(answer["predictions"], sorted((tmp_path / "recon").iterdir()),
                                 strict=True):
        assert 0 <= prediction["cluster_id"] < 10
        assert len(prediction["embedding"]) == 8
        assert prediction["top_k"][0]["cluster_id"] == prediction["cluster_id"]
        with Image.open(saved) as png:
            assert (png.format, png.size) == ("PNG", (8, 8))
    code, out, _ = run_cli(capsys, "status", "--url", real_server, "--model", "digits")
    assert code == 0
    assert "AVAILABLE" in out
    code, _, err = run_cli(capsys, "cluster", str(paths[0]), "--url", real_server,
                           "--model", "nosuch")
    assert code == 1
    assert err.startswith(f"error: HTTP 404 from POST {real_server}/v1/models/nosuch:cluster: ")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    code, _, err = run_cli(capsys, "cluster", str(bad), "--url", real_server)
    assert code == 1
    assert "HTTP 400" in err and "image 0:" in err

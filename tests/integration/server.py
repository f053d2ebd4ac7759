"""The real server process (`python -m service`) on free ports, for the integration tests."""

from __future__ import annotations

import io
import os
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits


def digit_png(index: int) -> bytes:
    """scikit-learn's digit ``index`` as an 8x8 grey PNG: a real image to send."""
    pixels = np.round(load_digits().images[index] / 16 * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    grpc_target: str
    repo: Path
    log: Path

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    total += sample.value
        return total

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


def start_server(python: str, repo: Path, tmp_path: Path, cwd: Path, *,
                 tls: ssl.SSLContext | None = None, **settings: str) -> Server:
    """Start ``python -m service`` in ``cwd`` serving ``repo`` (settings as AEC_* variables)
    and wait until /readyz answers 200; its output goes to ``tmp_path/server.log``. With
    ``tls`` (the server's TLS settings among ``settings``) the URL is https:// and readiness
    is asked over that client context."""
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "AEC_MODEL_REPO": str(repo),
           "AEC_HOST": "127.0.0.1", "AEC_HTTP_PORT": str(http_port),
           "AEC_GRPC_PORT": str(grpc_port), "AEC_POLL_SECONDS": "0.5",
           **{f"AEC_{k.upper()}": v for k, v in settings.items()}}
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([python, "-m", "service"], cwd=cwd, env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    scheme = "http" if tls is None else "https"
    server = Server(proc, f"{scheme}://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", repo,
                    log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1,
                         verify=True if tls is None else tls).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("server not ready:\n" + log.read_text())

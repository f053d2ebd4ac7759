"""Tracing in the real server process (`python -m service`): the OTEL_* variables turn it
on and the spans reach an OTLP/gRPC receiver; an exporter that is not installed stops the
server before it loads anything."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import REPO_ROOT
from tests.integration.server import digit_png, start_server
from tests.otlp_receiver import running_collector

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
CHILDREN = ["decode", "preprocess", "queue wait", "model", "encode"]


def test_the_server_process_exports_its_spans_over_otlp(
        tmp_path: Path, model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_collector() as collector:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "aecluster-test")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # ms: export soon after the call
        server = start_server(sys.executable, model_repo, tmp_path, REPO_ROOT)
        try:
            answer = httpx.post(f"{server.url}/v1/models/digits:cluster", timeout=30,
                                headers={"traceparent": TRACEPARENT},
                                json={"instances": [{"b64": base64.b64encode(
                                    digit_png(0)).decode()}]})
            assert answer.status_code == 200, answer.text
            deadline = time.monotonic() + 30
            while len(collector.spans()) < 1 + len(CHILDREN) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            server.proc.terminate()
            server.proc.wait(timeout=60)
    spans = collector.spans()
    assert sorted(span.name for span in spans) == sorted(
        ["POST /v1/models/{name}:cluster", *CHILDREN])
    assert {span.trace_id.hex() for span in spans} == {TRACE}
    assert collector.service_names() == {"aecluster-test"}
    # The access log line of that request names its trace.
    lines = [json.loads(line) for line in server.log.read_text().splitlines()
             if line.startswith("{")]
    (access,) = [line for line in lines if line.get("logger") == "service.rest.access"
                 and line.get("path") == "/v1/models/digits:cluster"]
    assert access["trace_id"] == TRACE
    assert any(line.get("message") == "tracing on" for line in lines)


def test_an_exporter_that_is_not_installed_stops_the_server_at_once(tmp_path: Path) -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "zipkin", "AEC_MODEL_REPO": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "OTEL_TRACES_EXPORTER='zipkin': zipkin not installed" in done.stderr
    assert "listening" not in done.stderr

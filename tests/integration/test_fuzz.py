"""Schema fuzzing of the real server with schemathesis: 0 server errors, kept in CI.

Every check is on, with a fixed seed and example budget, against a real server process
serving a real model (tests/integration/fuzz.toml names it and lists the few places where
the OpenAPI schema cannot say what the server needs, each with its reason). A finding
fails the test with schemathesis's own report, which includes a curl command to replay it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.server import Server

CONFIG = Path(__file__).with_name("fuzz.toml")
SEED = 1
# About 1,300 requests in 15 s on the 2-core machine; `make test-slow` runs more.
MAX_EXAMPLES = 50
# Each run must really test: a broken schema URL or filter would "pass" with nothing done.
MIN_CASES = 1000



def _fuzz(server: Server, tmp_path: Path, max_examples: int, seed: int) -> str:
    st = Path(sys.executable).with_name("st")
    command = [str(st), "--config-file", str(CONFIG), "run", f"{server.url}/openapi.json",
               "--checks", "all", "--seed", str(seed), "--max-examples", str(max_examples),
               "--workers", "1", "--no-color", "--generation-database", "none"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1200,
                          check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-20_000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated is not None, output[-5000:]
    assert int(generated.group(1)) == int(generated.group(2)) >= MIN_CASES, output[-5000:]
    schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    operations = sum(len(methods) for methods in schema["paths"].values())
    assert f"Selected: {operations}/{operations}" in output, output[-5000:]
    assert f"Tested: {operations}" in output, output[-5000:]
    log = server.log.read_text()
    levels = re.findall(r'"level": ?"([A-Z]+)"', log)
    assert levels, log[-5000:]  # the server logs JSON lines: the check below can fail
    assert "unhandled error" not in log and "ERROR" not in levels, log[-5000:]
    return output


def test_schema_fuzzing_finds_no_server_error(digits_server: Server, tmp_path: Path) -> None:
    _fuzz(digits_server, tmp_path, MAX_EXAMPLES, SEED)


@pytest.mark.slow
def test_schema_fuzzing_with_a_larger_budget(digits_server: Server, tmp_path: Path) -> None:
    _fuzz(digits_server, tmp_path, 300, 7)

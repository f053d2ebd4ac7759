"""Every `sh` and `python` block of docs/calling-native.md, docs/calling-tfserving.md and
docs/calling-v2.md runs as pasted against a real server (`python -m service` on the digits
bundle), from a folder that holds what the repository's root holds for them: the committed
examples/ and .venv/. calling-v2.md's Python blocks use tritonclient, which cannot live in
the project's venv (protobuf < 7): they run with the V2 clients' venv (tests/clients/).
calling-native.md's use the installable client (clients/python): they run in its own venv,
which holds the client and its four dependencies only, as a caller's would.

Only the addresses change: `make run`'s localhost:8501 and localhost:8500 become the test
server's free ports. grpcurl is not installed (nor in Debian): a stand-in of the same name,
``grpcurl_standin.py``, makes the call through the server's reflection and Python's
protobuf, so the commands and their request JSON are what is tested, not grpcurl itself.
A command line ending in ``# NNN`` must print NNN (the status code the page promises).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.aecluster_venv import ensure_aecluster_client_venv
from tests.clients.venv import ensure_client_venv
from tests.integration.server import Server, start_server
from tests.service.bundles import clone_version

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("calling-native.md", "calling-tfserving.md", "calling-v2.md")
# The Python client each page's examples use; calling-v2.md's run in the client venv.
PYTHON_CLIENTS = {"calling-native.md": "from aecluster_client import",
                  "calling-tfserving.md": "grpc.insecure_channel",
                  "calling-v2.md": "tritonclient"}
# Pages whose Python blocks run in a venv of their own: the builder of each venv.
CLIENT_VENV_PAGES = {"calling-v2.md": ensure_client_venv,
                     "calling-native.md": ensure_aecluster_client_venv}
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```$", re.M | re.S)
# A JSON error body, as the REST API writes it.
ERROR_BODY = re.compile(r'\{\s*"error"\s*:')


def blocks(page: str) -> list[tuple[str, str]]:
    """(language, code) of every runnable block of ``docs/PAGE``, in order."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    return [(m[1], m[2]) for m in BLOCK.finditer(text)]


CASES = [pytest.param(page, i, id=f"{page}:{i}")
         for page in PAGES for i in range(len(blocks(page)))]


def test_the_pages_have_examples_of_every_kind() -> None:
    for page in PAGES:
        code = "\n".join(c for _, c in blocks(page))
        assert {lang for lang, _ in blocks(page)} == {"sh", "python"}, page
        for tool in ("curl -s", "grpcurl -plaintext", PYTHON_CLIENTS[page]):
            assert tool in code, (page, tool)
        # The images are the committed ones, and exist.
        images = set(re.findall(r"examples/[\w.-]+\.png", code))
        assert images and all((ROOT / image).is_file() for image in images), images


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits_bundle: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("calling-docs")
    repo = tmp / "repo"
    clone_version(digits_bundle, repo, "digits", 1)
    started = start_server(sys.executable, repo, tmp, ROOT)
    yield started
    started.proc.terminate()
    started.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the examples run: examples/ and .venv/ as at the repository's root, and a
    ``grpcurl`` on PATH."""
    work = tmp_path_factory.mktemp("work")
    (work / "examples").symlink_to(ROOT / "examples")
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    grpcurl = bin_dir / "grpcurl"
    grpcurl.write_text(f'#!/bin/sh\nexec "{sys.executable}" '
                       f'"{Path(__file__).with_name("grpcurl_standin.py")}" "$@"\n')
    grpcurl.chmod(0o755)
    return work


def _local(code: str, server: Server) -> str:
    http = server.url.removeprefix("http://")
    return code.replace("localhost:8501", http).replace("localhost:8500", server.grpc_target)


@pytest.mark.parametrize(("page", "index"), CASES)
def test_example_runs_against_the_server(server: Server, workdir: Path,
                                         page: str, index: int) -> None:
    language, code = blocks(page)[index]
    code = _local(code, server)
    env = {**os.environ, "PATH": f"{workdir / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    if language == "sh":
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        script = workdir / f"example-{page}-{index}.py"
        script.write_text(code, encoding="utf-8")
        python = CLIENT_VENV_PAGES[page]() if page in CLIENT_VENV_PAGES \
            else Path(sys.executable)
        command = [str(python), str(script)]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=240, check=False)
    where = f"docs/{page}, block {index}:\n{code}\nstdout:\n{result.stdout}\n" \
            f"stderr:\n{result.stderr}"
    assert result.returncode == 0, where
    assert result.stdout.strip(), where
    promised = re.findall(r"#\s*(\d{3})\s*$", code, re.M)
    if promised:
        assert result.stdout.split() == promised, where
    else:
        assert not ERROR_BODY.search(result.stdout), where

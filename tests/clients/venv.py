"""The V2 clients' own venv (tests/clients/.venv) from the hashed lock requirements.txt.

``python -m venv --without-pip``, then ``uv pip install --require-hashes --no-deps`` (the
dev lock's uv: the same hashed, unresolved install as pip's, in a seventh of the time, see
:func:`uv_pip`); a stamp holds the lock's SHA-256, so a current venv is reused and a changed
lock rebuilds it. A venv that cannot be built raises :class:`ClientVenvError` with the
installer's output: the tests that need it fail with that message, they never skip.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from uv import find_uv_bin

HERE = Path(__file__).resolve().parent
LOCK = HERE / "requirements.txt"
VENV = HERE / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".aecluster-lock.sha256"
# Two processes: tritonclient.grpc and kserve both register the `inference.*` protobuf
# messages (from files of different names), so one process cannot import both.
IMPORTS = ("import tritonclient.http, tritonclient.grpc, numpy", "import kserve, numpy")


class ClientVenvError(RuntimeError):
    """The client venv could not be built or does not import its clients."""


def uv_pip(command: str, python: Path | str, *args: str) -> list[str]:
    """``uv pip <command>`` acting on the environment of ``python``.

    The test venvs are installed by uv, not pip: the serve-only venv took 54 s with pip
    (unpacking TensorFlow from pip's cache) and takes 7 s with uv on a cold cache, 1.4 s on
    a warm one. ``--require-hashes --no-deps`` mean the same to both: nothing is resolved
    and every file is checked against the lock's hash. The environment needs no pip.
    """
    return [find_uv_bin(), "pip", command, "--python", str(python), *args]


def ensure_client_venv(python: str = sys.executable, *, venv: Path = VENV,
                       lock: Path = LOCK) -> Path:
    """The venv's python, building the venv first unless it matches the lock."""
    venv_python = venv / "bin" / "python"
    stamp = venv / STAMP.name
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if venv_python.exists() and stamp.is_file() and stamp.read_text().strip() == digest:
        return venv_python
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        [python, "-m", "venv", "--without-pip", str(venv)],
        uv_pip("install", venv_python, "--quiet", "--require-hashes", "--no-deps", "-r",
               str(lock)),
        *([str(venv_python), "-c", statement] for statement in IMPORTS),
    ]
    run_steps(steps, f"the V2 client venv {venv}")
    stamp.write_text(digest + "\n")
    return venv_python


def run_steps(steps: list[list[str]], what: str) -> None:
    """Run each build command in turn; ClientVenvError with its output at the first failure."""
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClientVenvError(f"{what} could not be built: `{' '.join(step)}` failed: "
                                  f"{exc}") from exc
        if done.returncode != 0:
            raise ClientVenvError(
                f"{what} could not be built: `{' '.join(step)}` exited {done.returncode}:\n"
                f"{done.stdout[-4000:]}{done.stderr[-4000:]}")

"""Compile requirements/*.txt, the project's lock, from pyproject.toml with `uv pip compile`.

    make lock                       # refresh: keep every pin that still resolves
    make lock UPGRADE=1             # move every package to its newest allowed release
    python scripts/lock.py --check  # exit 1 when a lock would change (stale against pyproject)

Each lock is one installable set: every direct and transitive package at an exact version
with the sha256 of every file PyPI has for it, for Linux on CPython 3.11 (the Dockerfile's
base and the machines'). Install one with ``pip install --require-hashes --no-deps -r FILE``:
nothing is resolved at install time, so every machine and image gets the same packages.

``dev`` is compiled first and every other lock is constrained by it, so that a package shared
by two locks has the same version in both: the service a developer tests is the service the
image runs.

The installable client (clients/python, ``aecluster-client``) has a lock of its own,
clients/python/requirements.txt, compiled from its pyproject.toml and constrained by ``dev``
too: the client the tests install in a venv of its own runs the grpcio, protobuf, httpx and
numpy the server was tested with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = ROOT / "requirements"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"


@dataclass(frozen=True)
class Lock:
    """One lock file: the pyproject.toml extras it installs on top of the core."""

    name: str
    extras: tuple[str, ...]
    purpose: str

    @property
    def path(self) -> Path:
        return LOCK_DIR / f"{self.name}.txt"


# The order matters: `dev` first, the others constrained by it.
LOCKS = (
    Lock("dev", ("dev",), "the developer's and CI's venv (make venv): training, tests, tools"),
    Lock("serve-cpu", (), "the service alone: the Deployment's image and the serve-only test"),
    Lock("train-cpu", ("train",), "training: the training Job's image"),
    Lock("serve-gpu", ("gpu",), "the service with TensorFlow's CUDA libraries"),
    Lock("train-gpu", ("train", "gpu"), "training with TensorFlow's CUDA libraries"),
)


CLIENT_DIR = ROOT / "clients" / "python"
CLIENT_LOCK = CLIENT_DIR / "requirements.txt"
CLIENT_PURPOSE = "the installable client alone (aecluster-client): its test venv"


def client_compile_command(uv: str, out: Path, upgrade: bool) -> list[str]:
    """The `uv pip compile` call that writes the client's lock to ``out``."""
    command = [
        uv, "pip", "compile", str(CLIENT_DIR.relative_to(ROOT) / "pyproject.toml"),
        "--output-file", str(out), "--generate-hashes", "--python-version", PYTHON_VERSION,
        "--python-platform", PLATFORM, "--quiet", "--custom-compile-command", "make lock",
        "--no-emit-package", "aecluster-client",
        "--constraint", str(LOCKS[0].path.relative_to(ROOT)),
    ]
    if upgrade:
        command.append("--upgrade")
    return command


def compile_command(uv: str, lock: Lock, out: Path, upgrade: bool) -> list[str]:
    """The `uv pip compile` call that writes ``lock`` to ``out``."""
    command = [
        uv, "pip", "compile", "pyproject.toml", "--output-file", str(out),
        "--generate-hashes", "--python-version", PYTHON_VERSION,
        "--python-platform", PLATFORM, "--quiet",
        # The header names the command people should run, not this script's internals.
        "--custom-compile-command", "make lock",
        # The project itself is installed from the work tree, never from an index.
        "--no-emit-package", "aecluster",
    ]
    for extra in lock.extras:
        command += ["--extra", extra]
    if lock.name != "dev":
        command += ["--constraint", str(LOCKS[0].path.relative_to(ROOT))]
    if upgrade:
        command.append("--upgrade")
    return command


def find_uv() -> str:
    """uv from this venv (the `dev` extra installs it), else from PATH."""
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.exists() else shutil.which("uv")
    if found is None:
        raise SystemExit("uv not found: run `make venv` (the dev extra installs it)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true",
                        help="move every package to its newest allowed release")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a lock differs from a fresh compile")
    args = parser.parse_args(argv)
    uv = find_uv()
    LOCK_DIR.mkdir(exist_ok=True)
    stale = []
    with tempfile.TemporaryDirectory() as scratch:
        jobs = [(lock.path, lock.purpose, compile_command(uv, lock, Path(scratch) / lock.path.name,
                                                          args.upgrade)) for lock in LOCKS]
        jobs.append((CLIENT_LOCK, CLIENT_PURPOSE, client_compile_command(
            uv, Path(scratch) / "client-requirements.txt", args.upgrade)))
        for path, purpose, command in jobs:
            # Compile into a scratch copy and move it in whole: an interrupted or failed
            # compile never leaves a half-written lock.
            out = Path(command[command.index("--output-file") + 1])
            if path.exists():
                shutil.copyfile(path, out)  # uv keeps the pins it finds there
            print(f"lock: {path.relative_to(ROOT)} ({purpose})", flush=True)
            done = subprocess.run(command, cwd=ROOT,
                                  check=False, env={**os.environ, "UV_NO_PROGRESS": "1"})
            if done.returncode != 0:  # uv has printed why (an unsatisfiable pin, say)
                print(f"lock: {path.name} did not resolve; nothing was written to it",
                      file=sys.stderr)
                return 1
            if args.check:
                if not path.exists() or path.read_text() != out.read_text():
                    stale.append(str(path.relative_to(ROOT)))
            else:
                shutil.move(out, path)
    if stale:
        print(f"stale: {', '.join(stale)}: run `make lock` and commit the locks",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The installable client's own venv (tests/clients/.venv-aecluster-client): its hashed lock,
then the wheel built from clients/python, as a caller would install it.

``python -m venv --without-pip``; ``uv pip install --require-hashes --no-deps -r
clients/python/requirements.txt`` (the client's lock: grpcio, protobuf, httpx, numpy and
theirs, nothing else; uv rather than pip for speed, see tests/clients/venv.py); the wheel of
clients/python, built by the project's venv from a copy of the folder (no build files left
in the work tree), installed with ``--no-deps --no-index``; then ``uv pip check``, which fails
when the client declares a dependency its lock does not hold. A stamp holds the SHA-256 of
the lock and of every file of clients/python, so a current venv is reused and any change
rebuilds it. Like tests/clients/venv.py, a venv that cannot be built is an error, never a
skip.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

from tests.clients.venv import ClientVenvError, run_steps, uv_pip

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "clients" / "python"
LOCK = SOURCE / "requirements.txt"
VENV = Path(__file__).resolve().parent / ".venv-aecluster-client"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info", "dist")


def _digest(source: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc" \
                and not any(part.endswith(".egg-info") or part in {"build", "dist"}
                            for part in path.relative_to(source).parts):
            digest.update(path.relative_to(source).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def site_packages(venv: Path) -> Path:
    """The venv's site-packages folder."""
    found = sorted((venv / "lib").glob("python3*/site-packages"))
    if len(found) != 1:
        raise ClientVenvError(f"{venv}: expected one site-packages, found {found}")
    return found[0]


def ensure_aecluster_client_venv(python: str = sys.executable, *, venv: Path = VENV,
                                 source: Path = SOURCE) -> Path:
    """The client venv's python, building the venv first unless it matches the sources."""
    venv_python = venv / "bin" / "python"
    stamp = venv / ".aecluster-client.sha256"
    digest = _digest(source)
    if venv_python.exists() and stamp.is_file() and stamp.read_text().strip() == digest:
        return venv_python
    shutil.rmtree(venv, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        copy, wheels = Path(scratch) / "src", Path(scratch) / "wheels"
        shutil.copytree(source, copy, ignore=_IGNORED)
        steps = [
            [python, "-m", "venv", "--without-pip", str(venv)],
            uv_pip("install", venv_python, "--quiet", "--require-hashes", "--no-deps", "-r",
                   str(source / "requirements.txt")),
            # Built by the project's setuptools (the dev lock's): no index needed for it.
            [python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--wheel-dir", str(wheels), str(copy)],
            uv_pip("install", venv_python, "--quiet", "--no-deps", "--no-index",
                   "--find-links", str(wheels), "aecluster-client"),
            uv_pip("check", venv_python),
        ]
        run_steps(steps, f"the aecluster-client venv {venv}")
    stamp.write_text(digest + "\n")
    return venv_python

"""The lock (requirements/*.txt) holds what pyproject.toml declares, and pyproject.toml declares
what the code imports: a fresh clone installs exactly what was tested, and nothing the code
needs arrives only by accident (as another package's dependency).

The structural checks read files only. ``test_locks_are_fresh`` recompiles the locks with the
locked uv against the package index, as ``make lock`` does, and compares.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from tests.by_path import load_module
from tests.lockfiles import read_lock

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT_NAME = canonicalize_name(PYPROJECT["project"]["name"])


# scripts/lock.py: the single list of locks and what each holds.
LOCK = load_module(ROOT / "scripts" / "lock.py", "lock_script")
LOCKS = {lock.name: lock for lock in LOCK.LOCKS}


@cache
def _pins(name: str) -> dict[NormalizedName, Version]:
    """Package -> version of one lock, checking each pin carries its sha256 hashes."""
    pins = read_lock(LOCKS[name].path)
    unhashed = [p for p, pin in pins.items()
                if not pin.hashes or not all(h.startswith("sha256:") for h in pin.hashes)]
    assert not unhashed, f"{name}.txt: no sha256 for {unhashed}: pip cannot check them"
    return {canonicalize_name(p): Version(pin.version) for p, pin in pins.items()}


def _environment() -> dict[str, str]:
    """The target of every lock: CPython 3.11 on x86_64 Linux (scripts/lock.py)."""
    env = dict(default_environment())
    env.update(python_version=LOCK.PYTHON_VERSION, python_full_version=f"{LOCK.PYTHON_VERSION}.0",
               sys_platform="linux", platform_system="Linux", platform_machine="x86_64",
               os_name="posix", implementation_name="cpython")
    return env


def _requirements(extras: Iterable[str]) -> list[Requirement]:
    """The core dependencies and those of ``extras``, self-references (aecluster[train])
    expanded, markers evaluated for the locks' target."""
    project = PYPROJECT["project"]
    pending, seen, result = list(extras), set(), [Requirement(r) for r in project["dependencies"]]
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == PROJECT_NAME:
                pending += sorted(requirement.extras)
            else:
                result.append(requirement)
    env = _environment()
    return [r for r in result if r.marker is None or r.marker.evaluate(env)]


def _names(extras: Iterable[str]) -> set[NormalizedName]:
    return {canonicalize_name(r.name) for r in _requirements(extras)}


# ---- the lock holds pyproject.toml --------------------------------------------------------


def test_every_lock_file_is_committed_and_nothing_else_is_there() -> None:
    on_disk = {p.name for p in LOCK.LOCK_DIR.glob("*.txt")}
    assert on_disk == {lock.path.name for lock in LOCKS.values()}
    assert "dev" in LOCKS and LOCK.LOCKS[0].name == "dev"  # the others are constrained by it


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_declared_dependency_is_locked_at_a_version_it_allows(name: str) -> None:
    pins = _pins(name)
    assert pins, f"{name}.txt pins nothing"
    for requirement in _requirements(LOCKS[name].extras):
        package = canonicalize_name(requirement.name)
        assert package in pins, (
            f"{requirement} is declared in pyproject.toml but missing from {name}.txt: "
            "run `make lock`")
        assert requirement.specifier.contains(pins[package], prereleases=True), (
            f"{name}.txt pins {package}=={pins[package]}, outside {requirement}: run `make lock`")


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_the_build_backend_is_locked(name: str) -> None:
    # Installs use --no-build-isolation, so the backend comes from the lock, not the index.
    pins = _pins(name)
    for text in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(text)
        package = canonicalize_name(requirement.name)
        assert package in pins and requirement.specifier.contains(pins[package]), (
            f"{name}.txt lacks the build backend {requirement}")


def test_a_package_has_one_version_across_the_locks() -> None:
    versions: dict[NormalizedName, dict[str, Version]] = {}
    for name in LOCKS:
        for package, version in _pins(name).items():
            versions.setdefault(package, {})[name] = version
    split = {p: v for p, v in versions.items() if len(set(v.values())) > 1}
    assert not split, f"packages locked at different versions: {split}"


def test_the_developer_venv_holds_what_the_images_run() -> None:
    # Every lock is constrained by dev.txt (scripts/lock.py), so the suite tests the service
    # and training at the versions the images install (tests/deploy checks the images' locks).
    for name in ("serve-cpu", "train-cpu"):
        assert _pins(name).items() <= _pins("dev").items(), f"{name}.txt strays from dev.txt"


def test_the_gpu_locks_add_cuda_and_only_cuda() -> None:
    added = set(_pins("serve-gpu")) - set(_pins("serve-cpu"))
    assert added and all(p.startswith("nvidia-") for p in added), sorted(added)
    assert "tensorflow-cpu" not in _pins("dev")  # one TensorFlow, never two


def test_locks_are_fresh() -> None:
    """What `make lock` would write now equals what is committed: pyproject.toml has not
    changed since the lock was made (needs the package index, as `make venv` does)."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "lock.py"), "--check"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- pyproject.toml declares what the code imports -----------------------------------------

# Where code lives, and the extras whose packages it may import (on top of the core).
CODE = {
    "service": (),
    "training": ("train",),
    "scripts": ("dev",),
    "bench": ("dev",),
    "tests": ("dev",),
}
LOCAL = set(CODE)


def _imports(folder: Path) -> dict[str, list[str]]:
    """Absolute imports of third-party modules under ``folder``: module -> files."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        inside = path.relative_to(folder).parts[:-1]
        if "_generated" in path.parts or any(part.startswith(".") for part in inside):
            continue  # generated code; hidden folders (a venv of its own, caches)
        if any((folder.joinpath(*inside[:depth]) / "requirements.in").is_file()
               for depth in range(1, len(inside) + 1)):
            continue  # an environment of its own (bench/serve/mlserver: MLServer's venv)
        siblings = {p.stem for p in path.parent.glob("*.py")}  # scripts run from their folder
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in LOCAL or top in siblings:
                    continue
                found.setdefault(name, []).append(path.relative_to(folder.parent).as_posix())
    return found


@cache
def _module_owners() -> dict[str, set[NormalizedName]]:
    """Dotted module prefix -> the installed distributions whose files lie under it."""
    owners: dict[str, set[NormalizedName]] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            parts = file.parts
            if not parts or parts[0].endswith((".dist-info", ".data")) or parts[0] == "..":
                continue
            parts = (*parts[:-1], parts[-1].split(".")[0])  # the module, without its suffix
            for depth in range(1, min(len(parts), 3) + 1):
                owners.setdefault(".".join(parts[:depth]), set()).add(name)
    return owners


def _owners(module: str) -> set[NormalizedName]:
    """The distributions providing ``module``: for a namespace package (google.*) the ones
    under its longest known prefix."""
    parts = module.split(".")
    for depth in range(min(len(parts), 3), 0, -1):
        owners = _module_owners().get(".".join(parts[:depth]))
        if owners:
            return owners
    return set()


@pytest.mark.parametrize("folder", sorted(CODE))
def test_every_imported_package_is_declared(folder: str) -> None:
    declared = _names(CODE[folder])
    problems = []
    for module, files in sorted(_imports(ROOT / folder).items()):
        owners = _owners(module)
        if not owners:
            problems.append(f"{module} (in {files[0]}) is not installed by any lock")
        elif not owners & declared:
            extras = ", ".join(CODE[folder]) or "none"
            problems.append(f"{module} (in {files[0]}) comes from {sorted(owners)}, which "
                            f"pyproject.toml does not declare for {folder}/ (core + extras: "
                            f"{extras})")
    assert not problems, "\n".join(problems)


# Folders with a venv of their own (requirements.in + hashed requirements.txt) -> the
# packages only that venv installs: code elsewhere must never import them.
OWN_ENVIRONMENTS = {
    "bench/serve/mlserver": ("mlserver",),  # MLServer, the benchmark's peer
    "tests/clients": ("tritonclient", "kserve"),  # the V2 clients: protobuf < 7
}


def test_only_the_listed_folders_are_environments_of_their_own() -> None:
    tracked = subprocess.run(["git", "ls-files", "--", "*requirements.in"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True)
    assert sorted(Path(p).parent.as_posix() for p in tracked.stdout.split()) == sorted(
        OWN_ENVIRONMENTS)
    for top in ("bench", "tests"):
        leaked = [m for m in _imports(ROOT / top)
                  if any(m.split(".")[0] in names for names in OWN_ENVIRONMENTS.values())]
        assert not leaked, f"{top}/ imports packages only a venv of its own installs: {leaked}"


def test_the_import_check_catches_an_undeclared_package(tmp_path: Path) -> None:
    # The check above is only as good as its mapping: a module nobody declares must fail it.
    (tmp_path / "probe.py").write_text("import threadpoolctl\nimport keras.ops\n"
                                       "from google.protobuf import message\nimport os\n")
    modules = _imports(tmp_path)
    assert sorted(modules) == ["google.protobuf", "keras.ops", "threadpoolctl"]
    assert _owners("threadpoolctl") == {"threadpoolctl"}
    assert "protobuf" in _owners("google.protobuf")
    assert "keras" in _owners("keras.ops")
    assert not _owners("threadpoolctl") & _names([])  # a training package, not the core's

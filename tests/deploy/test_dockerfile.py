"""The Dockerfile lints clean, and what it installs and runs matches the committed locks
(requirements/*.txt), pyproject.toml, the service's entry point and settings, and the
Kubernetes manifests. No Docker engine needed: the instructions are parsed, each `pip
install` is read word by word, the lock files it names are read, and the HEALTHCHECK is run
here."""

from __future__ import annotations

import http.server
import json
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from service.settings import Settings
from tests.deploy import manifests
from tests.lockfiles import Pin, read_lock

DOCKERFILE = manifests.ROOT / "Dockerfile"
DOCKERIGNORE = manifests.ROOT / ".dockerignore"
PYPROJECT: dict[str, Any] = tomllib.loads(
    (manifests.ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT: dict[str, Any] = PYPROJECT["project"]
VARIANTS = ("cpu", "gpu")
# The two images: `serve` is the default (last) stage, `train` is built with --target train.
TARGETS = ("serve", "train")
VENV = "/opt/venv"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: str | None  # the `AS` name of the stage it belongs to; None before the first FROM
    line: int


def _instructions() -> list[Instruction]:
    """The Dockerfile's instructions with continuation lines joined and comments dropped
    (Docker drops comment lines inside a continued instruction too)."""
    result: list[Instruction] = []
    stage: str | None = None
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(DOCKERFILE.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        text = " ".join(pending)
        pending = []
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            named = re.search(r"\bAS\s+(\S+)$", args, re.IGNORECASE)
            stage = named[1] if named else None
        result.append(Instruction(keyword, args.strip(), stage, start))
    return result


def _in_stage(stage: str, keyword: str | None = None) -> list[Instruction]:
    return [i for i in _instructions()
            if i.stage == stage and (keyword is None or i.keyword == keyword)]


def _only(stage: str, keyword: str) -> Instruction:
    found = _in_stage(stage, keyword)
    assert len(found) == 1, f"expected one {keyword} in stage {stage}: {found}"
    return found[0]


def _global_args() -> dict[str, str]:
    args = {}
    for i in _instructions():
        if i.keyword == "ARG" and i.stage is None:
            name, _, default = i.args.partition("=")
            args[name] = default
    return args


def _env(instruction: Instruction) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(instruction.args))


def _expand(text: str, variant: str) -> str:
    """``text`` with the VARIANT build argument substituted, as the builder does."""
    return re.sub(r"\$\{VARIANT\}|\$VARIANT\b", variant, text)


def _stages() -> dict[str, str]:
    """{stage: what its FROM names}, in the Dockerfile's order (the last is the default)."""
    return {i.stage: i.args.split()[0] for i in _instructions()
            if i.keyword == "FROM" and i.stage is not None}


def _chain(stage: str, variant: str) -> list[str]:
    """``stage`` and the stages it is built FROM, nearest first (the image at the root is
    not included)."""
    stages = _stages()
    chain = [stage]
    while (parent := _expand(stages[chain[-1]], variant)) in stages:
        chain.append(parent)
    return chain


def _effective(stage: str, keyword: str, variant: str = "cpu") -> Instruction | None:
    """The ``keyword`` instruction in force in ``stage``: its own last one, else its
    parent's, and so on (what ENTRYPOINT, USER, HEALTHCHECK, WORKDIR inherit)."""
    for name in _chain(stage, variant):
        found = _in_stage(name, keyword)
        if found:
            return found[-1]
    return None


def _copy_words(copy: Instruction) -> tuple[dict[str, str], list[str], str]:
    """(--flags, sources, destination) of a COPY."""
    words = copy.args.split()
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1], paths[-1]


def _venv_stage(target: str, variant: str) -> str:
    """The stage whose /opt/venv the ``target`` image copies in."""
    for name in _chain(target, variant):
        for copy in _in_stage(name, "COPY"):
            flags, sources, destination = _copy_words(copy)
            if "from" in flags and sources == [VENV] and destination == VENV:
                return flags["from"]
    raise AssertionError(f"{target} copies no {VENV} from a build stage")


def _build_stages(target: str, variant: str) -> list[str]:
    """The stages that make the ``target`` image's venv, in build order (base first)."""
    return list(reversed(_chain(_venv_stage(target, variant), variant)))


@dataclass(frozen=True)
class PipInstall:
    run: Instruction
    options: list[str]  # every word starting with "-" (but the values of -r)
    locks: list[str]  # the -r files, as written (${VARIANT} unexpanded)
    targets: list[str]  # everything else: what is installed besides the locks


def _pip_installs(stage: str | None = None) -> list[PipInstall]:
    """Every `pip install` of the RUN instructions (of ``stage``, or all), one per command
    of a `&&` chain."""
    found = []
    for run in (i for i in _instructions()
                if i.keyword == "RUN" and (stage is None or i.stage == stage)):
        command: list[str] = []
        for word in [*shlex.split(run.args), "&&"]:
            if word not in ("&&", "||", ";"):
                command.append(word)
                continue
            if command[:2] == ["pip", "install"] or command[:4] == ["python", "-m", "pip",
                                                                    "install"]:
                rest = command[command.index("install") + 1:]
                options, locks, targets = [], [], []
                words = iter(rest)
                for w in words:
                    if w in ("-r", "--requirement"):
                        locks.append(next(words))
                    elif w.startswith("-"):
                        options.append(w)
                    else:
                        targets.append(w)
                found.append(PipInstall(run, options, locks, targets))
            command = []
    return found


def _locks_of(target: str, variant: str) -> list[str]:
    """The lock files installed into the ``target`` image's venv, in order, expanded."""
    return [_expand(lock, variant) for stage in _build_stages(target, variant)
            for pip in _pip_installs(stage) for lock in pip.locks]


def _context_copies(target: str, variant: str) -> set[str]:
    """What the ``target`` image's build copies from the build context (not the locks)."""
    stages = set(_build_stages(target, variant)) | set(_chain(target, variant))
    return {_expand(source, variant).rstrip("/")
            for stage in stages for copy in _in_stage(stage, "COPY")
            for flags, sources, _ in [_copy_words(copy)] if "from" not in flags
            for source in sources if not source.startswith("requirements/")}


def _extra(name: str) -> set[str]:
    """The canonical package names of a pyproject.toml extra."""
    return {canonicalize_name(Requirement(r).name)
            for r in PROJECT["optional-dependencies"][name]}


def _packages() -> set[str]:
    """The top-level packages setuptools installs (the find patterns' roots)."""
    return {p.rstrip("*").rstrip(".") for p in
            PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}


# ---- lint ----------------------------------------------------------------------------------


def test_hadolint_reports_nothing(hadolint: str) -> None:
    result = subprocess.run([hadolint, "--no-color", "--format", "json", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    findings = json.loads(result.stdout or "[]")
    # Every level counts (error, warning, info, style): none may be left unexplained.
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}"
                                     for f in findings)
    assert result.returncode == 0, result.stderr


def test_every_ignored_rule_says_why() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    pragmas = [(n, line) for n, line in enumerate(lines) if "hadolint ignore=" in line]
    for n, line in pragmas:
        rules = line.split("=", 1)[1].split(",")
        reason = lines[n - 1] if n else ""
        for rule in rules:
            # The comment just above names the rule and explains it.
            assert reason.startswith("#") and rule.strip() in "\n".join(lines[max(0, n - 3):n]), (
                f"line {n + 1}: hadolint ignore={rule} without a reason above it")
    assert len(pragmas) <= 1, "keep the ignore list short; each needs a reason"


# ---- base image and stages -------------------------------------------------------------------


def test_base_python_is_the_one_pyproject_requires() -> None:
    image = _global_args()["PYTHON_IMAGE"]
    found = re.fullmatch(r"python:(\d+\.\d+)-slim(-\w+)?", image)
    assert found, f"expected a slim python:X.Y image, got {image}"
    assert f"{found[1]}.0" in SpecifierSet(PROJECT["requires-python"])
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + found[1].replace(".", "")


def test_stages_and_the_variant_switch() -> None:
    # Build and runtime stages share one base: the venv's interpreter links point into it.
    # The train build starts from the serve dependency layer: the train image shares it.
    assert _stages() == {
        "python": "${PYTHON_IMAGE}",
        "serve-deps": "python", "serve-build": "serve-deps", "train-build": "serve-deps",
        "runtime-cpu": "python", "runtime-gpu": "python",
        "runtime": "runtime-${VARIANT}", "train": "runtime", "serve": "runtime",
    }
    assert _global_args()["VARIANT"] == "cpu"
    for variant in VARIANTS:
        for target in TARGETS:
            assert _chain(target, variant)[-1] == "python"
            assert _chain(_venv_stage(target, variant), variant)[-1] == "python"


def test_serve_is_the_default_target() -> None:
    """A plain `docker build .` builds the last stage: it must be the service's image."""
    assert list(_stages())[-1] == "serve"
    last = _instructions()[-1]
    assert (last.stage, last.keyword) == ("serve", "ENTRYPOINT")
    assert json.loads(last.args) == ["python", "-m", "service"]


def test_every_stage_using_variant_declares_it() -> None:
    """A global ARG is empty inside a stage unless the stage (or one it is built FROM)
    declares it again: `requirements/serve-.txt` would be a confusing failure."""
    for stage in _stages():
        for instruction in _in_stage(stage):
            if instruction.keyword in ("FROM", "ARG") or "VARIANT" not in instruction.args:
                continue
            declared = [a for name in _chain(stage, "cpu") for a in _in_stage(name, "ARG")
                        if a.args.split("=")[0] == "VARIANT"
                        and (a.stage != stage or a.line < instruction.line)]
            assert declared, f"line {instruction.line}: VARIANT used in {stage} undeclared"


def test_gpu_runtime_asks_for_the_driver_and_cpu_does_not() -> None:
    assert _env(_only("runtime-gpu", "ENV"))["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert [i.keyword for i in _in_stage("runtime-cpu")] == ["FROM"]


# ---- what is installed ----------------------------------------------------------------------


def test_no_pip_install_resolves_anything() -> None:
    """Every install is a hash-checked lock or the project itself, never a resolve: no
    dependency is looked up (--no-deps) and no build requirement is downloaded
    (--no-build-isolation: the lock's setuptools builds the project)."""
    installs = _pip_installs()
    assert installs, "the Dockerfile installs nothing with pip"
    assert not [r.line for r in _instructions() if r.keyword == "RUN"
                and re.search(r"\b(uv|pipx|poetry|conda)\b|easy_install", r.args)]
    for pip in installs:
        assert "--no-deps" in pip.options, f"line {pip.run.line}: pip install without --no-deps"
        assert "--no-cache-dir" in pip.options, f"line {pip.run.line}"
        if pip.locks:
            assert "--require-hashes" in pip.options and not pip.targets, (
                f"line {pip.run.line}: a lock is installed alone and hash-checked")
        else:
            assert pip.targets == ["."], f"line {pip.run.line}: installs {pip.targets}"
            assert "--no-build-isolation" in pip.options, f"line {pip.run.line}"
            assert "-e" not in pip.options and "--editable" not in pip.options


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_installed_lock_exists_and_is_exact(variant: str) -> None:
    """Each -r file of the Dockerfile exists for the variant and pins every package to one
    version with its hashes (hash-checking mode refuses anything less)."""
    locks = {_expand(lock, variant) for pip in _pip_installs() for lock in pip.locks}
    assert locks == {f"requirements/serve-{variant}.txt", f"requirements/train-{variant}.txt"}
    for lock in sorted(locks):
        assert (manifests.ROOT / lock).is_file(), lock
        pins = read_lock(manifests.ROOT / lock)
        assert pins, lock
        assert all(pin.hashes and all(h.startswith("sha256:") for h in pin.hashes)
                   for pin in pins.values()), lock


def test_an_unknown_variant_has_no_lock() -> None:
    """VARIANT=tpu: the lock COPY finds no file, which fails the build at its first step."""
    copied = [source for copy in _instructions() if copy.keyword == "COPY"
              for flags, sources, _ in [_copy_words(copy)] if "from" not in flags
              for source in sources if "VARIANT" in source]
    assert copied
    for source in copied:
        assert not any(ch in source for ch in "*?["), f"{source}: a glob can match nothing"
        assert all((manifests.ROOT / _expand(source, v)).is_file() for v in VARIANTS)
        assert not (manifests.ROOT / _expand(source, "tpu")).exists()


def test_each_lock_is_copied_alone_before_its_install() -> None:
    """Only the lock goes in before a dependency layer, so a code change cannot invalidate
    it; it is the step just before its install and lands where -r reads it (the WORKDIR)."""
    for stage in _stages():
        chain = _chain(stage, "cpu")
        steps = [i for i in _in_stage(stage) if i.keyword in ("COPY", "RUN")]
        for pip in (p for p in _pip_installs(stage) if p.locks):
            earlier = [c for c in _instructions() if c.keyword == "COPY" and c.stage in chain
                       and (c.stage != stage or c.line < pip.run.line)]
            installed = [lock for name in reversed(chain) for p in _pip_installs(name)
                         if p.run.stage != stage or p.run.line <= pip.run.line
                         for lock in p.locks]
            assert [s for c in earlier for s in _copy_words(c)[1]] == installed, (
                f"line {pip.run.line}: only the locks may be copied before their install")
            previous = steps[steps.index(pip.run) - 1]
            flags, sources, destination = _copy_words(previous)
            assert previous.keyword == "COPY" and not flags and sources == pip.locks
            assert all(PurePosixPath(destination) == PurePosixPath(lock).parent
                       for lock in pip.locks), f"line {previous.line}: -r reads it elsewhere"
            workdir = _effective(stage, "WORKDIR")
            assert workdir is not None and (workdir.stage != stage
                                            or workdir.line < previous.line)


@pytest.mark.parametrize("target", TARGETS)
def test_the_code_goes_in_after_the_dependencies(target: str) -> None:
    """Each venv is built in order: lock, its install (repeated per lock), then the code,
    then the project's install as the build stage's last step."""
    for variant in VARIANTS:
        steps = []
        for stage in _build_stages(target, variant):
            for step in _in_stage(stage):
                pips = [p for p in _pip_installs(stage) if p.run == step]
                if step.keyword == "COPY":
                    sources = _copy_words(step)[1]
                    steps.append("lock" if all(s.startswith("requirements/") for s in sources)
                                 else "code")
                elif any(p.locks for p in pips):
                    steps.append("deps")
                elif any(p.targets == ["."] for p in pips):
                    steps.append("project")
        assert re.fullmatch(r"(lock deps )+(code )+project", " ".join(steps)), steps
        assert _in_stage(_venv_stage(target, variant))[-1].keyword == "RUN"


def test_the_serve_image_has_only_the_service_code() -> None:
    """The serve image copies pyproject.toml, the readme its metadata reads and `service`,
    never `training` (setuptools' find then installs `service` alone); the train image
    copies both packages."""
    both = _packages()
    assert both == {"service", "training"}
    for variant in VARIANTS:
        assert _context_copies("serve", variant) == {"pyproject.toml", PROJECT["readme"],
                                                     "service"}
        assert _context_copies("train", variant) == {"pyproject.toml", PROJECT["readme"],
                                                     *both}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_serve_lock_has_no_training_packages(variant: str) -> None:
    """The serve image installs its own lock alone, and that lock holds none of the `train`
    extra's packages, but for one a service dependency needs itself (keras: TensorFlow's
    own requirement, which uv's `# via` names)."""
    (lock,) = _locks_of("serve", variant)
    assert lock == f"requirements/serve-{variant}.txt"
    pins = read_lock(manifests.ROOT / lock)
    train = _extra("train")
    for name in sorted(train & pins.keys()):
        via = [v for v in pins[name].via if not v.startswith("-")]
        assert via and not any(v.startswith("aecluster") for v in via), (name, via)
        assert any(canonicalize_name(v) in pins for v in via), (name, via)
    assert train - pins.keys(), f"{lock} holds the whole train extra"
    # and the service's own requirements are all there
    core = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    assert core <= pins.keys(), core - pins.keys()


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_train_lock_is_a_superset_of_the_serve_lock(variant: str) -> None:
    """The train venv is the serve venv plus the train lock: the serve lock's packages must
    be in it at the same versions and hashes (pip keeps what is installed; a different pin
    would be a mix of two resolutions), and the train extra must be complete."""
    serve = _locks_of("serve", variant)
    locks = _locks_of("train", variant)
    assert locks[:len(serve)] == serve, "the train image builds on the serve dependency layer"
    assert locks[-1] == f"requirements/train-{variant}.txt"
    train = read_lock(manifests.ROOT / locks[-1])
    for lock in locks[:-1]:
        for name, pin in read_lock(manifests.ROOT / lock).items():
            assert name in train, f"{name} of {lock} missing from {locks[-1]}"
            assert (train[name].version, train[name].hashes) == (pin.version, pin.hashes), name
    missing = _extra("train") - train.keys()
    assert not missing, missing


@pytest.mark.parametrize("target", TARGETS)
def test_gpu_locks_add_cuda_and_cpu_locks_do_not(target: str) -> None:
    """VARIANT picks the lock: CUDA's wheels (the gpu extra) are in the gpu ones only, with
    the same TensorFlow as the cpu ones."""
    cpu, gpu = (read_lock(manifests.ROOT / _locks_of(target, v)[-1]) for v in VARIANTS)
    assert not [n for n in cpu if n.startswith("nvidia-")]
    assert "nvidia-cudnn-cu12" in gpu
    assert cpu["tensorflow"].version == gpu["tensorflow"].version
    assert {n: p.version for n, p in cpu.items()}.items() <= {
        n: p.version for n, p in gpu.items()}.items()


@pytest.mark.parametrize("target", TARGETS)
def test_the_locks_build_the_project(target: str) -> None:
    """--no-build-isolation builds with what the venv has: pyproject's build requirements
    must be in the image's locks, at versions they accept."""
    for variant in VARIANTS:
        pins: dict[str, Pin] = {}
        for lock in _locks_of(target, variant):
            pins |= read_lock(manifests.ROOT / lock)
        for text in PYPROJECT["build-system"]["requires"]:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{text} is not in the {target}-{variant} locks"
            assert requirement.specifier.contains(pins[name].version, prereleases=True), text


def test_gpu_extra_is_the_same_tensorflow_with_cuda() -> None:
    pins = [r for r in PROJECT["dependencies"] if re.match(r"tensorflow\s*==", r)]
    (gpu,) = PROJECT["optional-dependencies"]["gpu"]
    assert len(pins) == 1
    assert gpu == pins[0].replace("tensorflow", "tensorflow[and-cuda]", 1)


def test_every_package_with_code_is_installed() -> None:
    """The image installs the project (not editable): a folder of modules without
    __init__.py, or outside the find patterns, would be missing from it."""
    from setuptools import find_packages

    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(find_packages(str(manifests.ROOT), include=include))
    for top in (p.rstrip("*") for p in include):
        for folder in sorted((manifests.ROOT / top).rglob("*.py")):
            package = ".".join(folder.parent.relative_to(manifests.ROOT).parts)
            assert package in found, f"{folder.parent} has modules but is not a package"


def test_every_data_file_is_package_data() -> None:
    """Non-Python files the code reads must be listed in [tool.setuptools.package-data],
    or the installed image will not have them."""
    from fnmatch import fnmatch

    data = PYPROJECT["tool"]["setuptools"].get("package-data", {})
    for top in (p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"][
            "include"]):
        for path in sorted((manifests.ROOT / top).rglob("*")):
            relative = path.relative_to(manifests.ROOT / top).as_posix()
            if (path.is_dir() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts
                    or relative.endswith(".pyi")):
                continue
            assert any(fnmatch(relative, pattern) for pattern in data.get(top, [])), (
                f"{top}/{relative} is not in [tool.setuptools.package-data] {top}")


# ---- what runs --------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_each_image_copies_only_its_environment(target: str) -> None:
    """The runtime stages get the venv of their own build stage and nothing else (no
    compiler leftovers, no source tree); the shared runtime base copies nothing."""
    assert _in_stage("runtime", "COPY") == []
    copies = [i.args for i in _in_stage(target, "COPY")]
    assert copies == [f"--from={target}-build {VENV} {VENV}"]
    for variant in VARIANTS:
        assert _venv_stage(target, variant) == f"{target}-build"
        runs = [r.args for s in _build_stages(target, variant) for r in _in_stage(s, "RUN")]
        assert runs[0] == f"python -m venv {VENV}"
    env = _env(_only("runtime", "ENV"))
    assert env["PATH"].split(":")[0] == f"{VENV}/bin"  # `python` is the venv's


@pytest.mark.parametrize("target", TARGETS)
def test_runs_as_a_non_root_user(target: str) -> None:
    user = _effective(target, "USER")
    assert user is not None and user.stage == "runtime"  # set once, for both images
    uid, _, gid = user.args.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can check it; the manifests run as it too.
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    deployment = manifests.load_yaml(manifests.K8S / "base" / "deployment.yaml")[0]
    job = manifests.load_yaml(manifests.TRAINING_JOB)[0]
    for workload in (deployment, job):
        context = workload["spec"]["template"]["spec"]["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
    assert re.search(rf"useradd\b.*--uid {uid}\b", _only("runtime", "RUN").args)


def test_entrypoint_and_ports_are_the_services() -> None:
    assert json.loads(_only("serve", "ENTRYPOINT").args) == ["python", "-m", "service"]
    assert (manifests.ROOT / "service" / "__main__.py").is_file()
    assert PYPROJECT["project"]["scripts"]["aecluster-serve"] == "service.cli:main"
    exposed = {int(p) for p in _only("serve", "EXPOSE").args.split()}
    assert exposed == {Settings.model_fields["http_port"].default,
                       Settings.model_fields["grpc_port"].default}


def test_train_target_runs_training() -> None:
    """`--target train` runs `python -m training` (the Job adds `train ...`); it neither
    exposes the service's ports nor probes its /healthz."""
    entrypoint = _effective("train", "ENTRYPOINT")
    assert entrypoint is not None and entrypoint.stage == "train"
    assert json.loads(entrypoint.args) == ["python", "-m", "training"]
    assert (manifests.ROOT / "training" / "__main__.py").is_file()
    assert _effective("train", "HEALTHCHECK") is None
    assert _effective("train", "EXPOSE") is None


def test_entrypoint_starts(tmp_path: Path) -> None:
    """`python -m service --help` works (flags parse; nothing is served)."""
    result = subprocess.run([sys.executable, "-m", "service", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "--model-repo" in result.stdout


def test_model_repository_is_the_mounted_volume() -> None:
    env = _env(_only("runtime", "ENV"))
    assert env["AEC_MODEL_REPO"] == "/models"
    deployment = manifests.load_yaml(manifests.K8S / "base" / "deployment.yaml")[0]
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "models", "mountPath": env["AEC_MODEL_REPO"], "readOnly": True} in mounts
    # The caches Keras and matplotlib write go to /tmp, the writable emptyDir.
    assert env["KERAS_HOME"].startswith("/tmp/") and env["MPLCONFIGDIR"].startswith("/tmp/")


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # the name http.server calls
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no access log on stderr."""


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    """A local HTTP server answering /healthz with ``handler.status``."""
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _healthcheck_command() -> list[str]:
    healthcheck = _only("serve", "HEALTHCHECK").args
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_healthcheck_probes_healthz_on_the_http_port(
    health_server: tuple[int, type[_Health]],
) -> None:
    """Run the HEALTHCHECK command: exit 0 when /healthz answers 200, non-zero otherwise."""
    port, handler = health_server
    command = _healthcheck_command()
    assert "/healthz" in command[-1]
    assert f"'AEC_HTTP_PORT', '{Settings.model_fields['http_port'].default}'" in command[-1]
    env = {"AEC_HTTP_PORT": str(port), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(command, env=env, capture_output=True, timeout=30, check=False)
    assert ok.returncode == 0, ok.stderr
    handler.status = 503
    failing = subprocess.run(command, env=env, capture_output=True, timeout=30, check=False)
    assert failing.returncode != 0
    # With an operations port (TLS on the HTTP port), that plain-HTTP port is the one asked.
    handler.status = 200
    elsewhere = {"AEC_HTTP_PORT": "1", "AEC_OPERATIONS_PORT": str(port), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(command, env=elsewhere, capture_output=True, timeout=30, check=False)
    assert ok.returncode == 0, ok.stderr


# ---- build context -----------------------------------------------------------------------


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, with Docker's matching: `*` and `?` stop at
    `/`, `**` crosses folders, leading and trailing slashes are dropped."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex)))
    return rules


def _in_context(path: str) -> bool:
    """Whether ``path`` (relative, with /) is sent to the builder. The last matching rule
    wins, and a rule matching a folder applies to everything in it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negated, regex in _dockerignore_rules():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return not excluded


@pytest.mark.parametrize("path", [
    "models/digits/1/manifest.json", "models/digits/1/centroids.joblib",
    "data/train.csv", "datasets/fashion/train-images-idx3-ubyte.gz",
    ".venv/bin/python", "venv/lib/python3.11/site.py", "service/.venv/bin/python",
    ".git/HEAD", "tests/conftest.py", "examples/digit-8.png", "runs/1/events",
    "service/__pycache__/cli.cpython-311.pyc", "training/data/__pycache__/x.pyc",
    ".pytest_cache/v/cache/nodeids", ".mypy_cache/3.11/x.json", ".ruff_cache/x",
    "aecluster.egg-info/PKG-INFO", "k8s/base/deployment.yaml", "scripts/lock.py",
])
def test_dockerignore_keeps_out(path: str) -> None:
    assert not _in_context(path)


@pytest.mark.parametrize("path", [
    "pyproject.toml", "README.md", "service/cli.py", "service/py.typed",
    "service/_generated/aecluster/v1/cluster_service_pb2.py",
    # training.data is code (a package), not a data set: it must get in.
    "training/data/__init__.py", "training/models/__init__.py",
    # the locks the images install
    "requirements/serve-cpu.txt", "requirements/serve-gpu.txt",
    "requirements/train-cpu.txt", "requirements/train-gpu.txt",
])
def test_dockerignore_lets_in(path: str) -> None:
    assert _in_context(path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_everything_the_dockerfile_copies_is_in_the_context(variant: str) -> None:
    for copy in (i for i in _instructions() if i.keyword == "COPY"):
        flags, sources, _ = _copy_words(copy)
        if "from" in flags:
            continue
        for source in (_expand(s, variant) for s in sources):
            path = manifests.ROOT / source
            assert path.exists(), source
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()
                                                    and "__pycache__" not in p.parts]
            assert files and all(
                _in_context(f.relative_to(manifests.ROOT).as_posix()) for f in files), source


def test_deploy_doc_builds_the_images_the_overlays_deploy() -> None:
    page = (manifests.ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    header = DOCKERFILE.read_text(encoding="utf-8")
    for overlay in manifests.OVERLAYS:
        kustomization = manifests.load_yaml(
            manifests.K8S / "overlays" / overlay / "kustomization.yaml")[0]
        (image,) = kustomization["images"]
        assert image["newTag"] == f"{PROJECT['version']}-{overlay}"
        line = (f"docker build --build-arg VARIANT={overlay} "
                f"-t {image['newName']}:{image['newTag']} .")
        assert line in page, line
        assert line in header, line
        # The training image of the same variant: the `train` target, named after it.
        train = (f"docker build --build-arg VARIANT={overlay} --target train "
                 f"-t {image['newName']}-train:{image['newTag']} .")
        assert train in page, train
        assert train in header, train
    assert "train" in _stages()

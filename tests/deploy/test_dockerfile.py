"""The Dockerfile lints clean, and what it installs and runs matches pyproject.toml, the
service's entry point and settings, and the Kubernetes manifests. No Docker engine needed:
the instructions are parsed, and the parts that are programs (the requirement list, the
HEALTHCHECK) are run here against the real files."""

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
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet

from service.settings import Settings
from tests.deploy import manifests

DOCKERFILE = manifests.ROOT / "Dockerfile"
DOCKERIGNORE = manifests.ROOT / ".dockerignore"
PYPROJECT: dict[str, Any] = tomllib.loads(
    (manifests.ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT: dict[str, Any] = PYPROJECT["project"]


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


def _requirements_command() -> list[str]:
    """The `python -c CODE VARIANT` that writes requirements.txt in the build stage."""
    for run in _in_stage("build", "RUN"):
        words = shlex.split(run.args)
        if "requirements.txt" in words and words[:2] == ["python", "-c"]:
            return words[:4]
    raise AssertionError("no RUN python -c ... > requirements.txt in the build stage")


def _pyproject_requirements(variant: str) -> list[str]:
    extra = PROJECT["optional-dependencies"]["gpu"] if variant == "gpu" else []
    return [*PROJECT["dependencies"], *extra]


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
    froms = {i.stage: i.args.split()[0] for i in _instructions() if i.keyword == "FROM"}
    # build and both runtimes share one base: the venv's interpreter links point into it.
    assert froms == {"python": "${PYTHON_IMAGE}", "build": "python",
                     "runtime-cpu": "python", "runtime-gpu": "python",
                     "runtime": "runtime-${VARIANT}"}
    assert list(froms)[-1] == "runtime"  # the default target
    assert _global_args()["VARIANT"] == "cpu"


def test_gpu_runtime_asks_for_the_driver_and_cpu_does_not() -> None:
    assert _env(_only("runtime-gpu", "ENV"))["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert [i.keyword for i in _in_stage("runtime-cpu")] == ["FROM"]


# ---- what is installed ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_installed_requirements_are_pyprojects(variant: str) -> None:
    """Run the build stage's own requirement command on the real pyproject.toml."""
    python, flag, code, argument = _requirements_command()
    assert (python, flag, argument) == ("python", "-c", "${VARIANT}")
    result = subprocess.run([sys.executable, flag, code, variant], cwd=manifests.ROOT,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == _pyproject_requirements(variant)


def test_unknown_variant_fails_the_build() -> None:
    _, flag, code, _ = _requirements_command()
    result = subprocess.run([sys.executable, flag, code, "tpu"], cwd=manifests.ROOT,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0 and "KeyError" in result.stderr


def test_gpu_extra_is_the_same_tensorflow_with_cuda() -> None:
    pins = [r for r in PROJECT["dependencies"] if re.match(r"tensorflow\s*==", r)]
    (gpu,) = PROJECT["optional-dependencies"]["gpu"]
    assert len(pins) == 1
    assert gpu == pins[0].replace("tensorflow", "tensorflow[and-cuda]", 1)


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    build = _in_stage("build")
    copies = [i for i in build if i.keyword == "COPY"]
    runs = [i for i in build if i.keyword == "RUN"]
    dependency_run = next(i for i in runs if "-r requirements.txt" in i.args)
    code_run = next(i for i in runs if "--no-deps ." in i.args)
    # Only pyproject.toml before the dependency layer: a code change cannot invalidate it.
    before = [c.args for c in copies if c.line < dependency_run.line]
    assert before == ["pyproject.toml ./"]
    after = {c.args.split()[0] for c in copies if dependency_run.line < c.line < code_run.line}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"][
        "include"]}
    # The packages setuptools installs, and the readme its metadata reads.
    assert after == packages | {PROJECT["readme"]}
    assert "pip install --no-cache-dir --no-deps ." in code_run.args


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


def test_runtime_copies_only_the_environment() -> None:
    copies = [i.args for i in _in_stage("runtime", "COPY")]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    env = _env(_in_stage("runtime", "ENV")[0])
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"  # `python` is the venv's


def test_runs_the_service_as_a_non_root_user() -> None:
    user = _only("runtime", "USER").args
    uid, _, gid = user.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can check it; the manifests run as it too.
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    deployment = manifests.load_yaml(manifests.K8S / "base" / "deployment.yaml")[0]
    context = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
    assert re.search(rf"useradd\b.*--uid {uid}\b", _only("runtime", "RUN").args)
    assert _instructions()[-1].keyword == "ENTRYPOINT"


def test_entrypoint_and_ports_are_the_services() -> None:
    assert json.loads(_only("runtime", "ENTRYPOINT").args) == ["python", "-m", "service"]
    assert (manifests.ROOT / "service" / "__main__.py").is_file()
    assert PYPROJECT["project"]["scripts"]["aecluster-serve"] == "service.cli:main"
    exposed = {int(p) for p in _only("runtime", "EXPOSE").args.split()}
    assert exposed == {Settings.model_fields["http_port"].default,
                       Settings.model_fields["grpc_port"].default}


def test_entrypoint_starts(tmp_path: Path) -> None:
    """`python -m service --help` works (flags parse; nothing is served)."""
    result = subprocess.run([sys.executable, "-m", "service", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "--model-repo" in result.stdout


def test_model_repository_is_the_mounted_volume() -> None:
    env = _env(_in_stage("runtime", "ENV")[0])
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
    healthcheck = _only("runtime", "HEALTHCHECK").args
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
    "aecluster.egg-info/PKG-INFO", "k8s/base/deployment.yaml",
])
def test_dockerignore_keeps_out(path: str) -> None:
    assert not _in_context(path)


@pytest.mark.parametrize("path", [
    "pyproject.toml", "README.md", "service/cli.py", "service/py.typed",
    "service/_generated/aecluster/v1/cluster_service_pb2.py",
    # training.data is code (a package), not a data set: it must get in.
    "training/data/__init__.py", "training/models/__init__.py",
])
def test_dockerignore_lets_in(path: str) -> None:
    assert _in_context(path)


def test_everything_the_dockerfile_copies_is_in_the_context() -> None:
    for copy in (i for i in _instructions() if i.keyword == "COPY"):
        words = copy.args.split()
        if words[0].startswith("--from="):
            continue
        for source in words[:-1]:
            path = manifests.ROOT / source
            assert path.exists(), source
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()
                                                    and "__pycache__" not in p.parts]
            assert files and all(
                _in_context(f.relative_to(manifests.ROOT).as_posix()) for f in files), source


def test_readme_builds_the_images_the_overlays_deploy() -> None:
    readme = (manifests.ROOT / "README.md").read_text(encoding="utf-8")
    header = DOCKERFILE.read_text(encoding="utf-8")
    for overlay in manifests.OVERLAYS:
        kustomization = manifests.load_yaml(
            manifests.K8S / "overlays" / overlay / "kustomization.yaml")[0]
        (image,) = kustomization["images"]
        assert image["newTag"] == f"{PROJECT['version']}-{overlay}"
        line = (f"docker build --build-arg VARIANT={overlay} "
                f"-t {image['newName']}:{image['newTag']} .")
        assert line in readme, line
        assert line in header, line

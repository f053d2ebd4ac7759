"""Helpers for the deployment tests: render kustomizations, pick objects, validate schemas.

Kept free of pytest fixtures (those live in ``conftest.py``) so a test module can call the
functions directly, e.g. to render a kustomization it builds in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu")
TRAINING_JOB = K8S / "training-job.yaml"
# The oldest Kubernetes the manifests claim (native preStop sleep needs 1.30, the kubectl of
# these machines is 1.32) and the newest kubernetes-validate ships schemas for; every object
# must validate against both.
K8S_VERSIONS = ("1.32.0", "latest")

Obj = dict[str, Any]


def tool(name: str) -> str | None:
    """Path of a command-line tool: on PATH, or beside this interpreter (the project venv
    is often used as ``.venv/bin/python`` without being activated)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def kustomize(kubectl: str, directory: Path) -> list[Obj]:
    """Every object ``kubectl kustomize DIRECTORY`` renders, in order."""
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                            text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kustomize_with_components(kubectl: str, overlay: str, components: list[str],
                              directory: Path) -> list[Obj]:
    """Render ``k8s/overlays/OVERLAY`` with ``k8s/components/NAME`` for each of
    ``components``, the way their comments say to add them, from a kustomization written in
    ``directory``."""
    # kustomize refuses absolute paths and only follows relative ones.
    base = os.path.relpath(K8S / "overlays" / overlay, directory)
    listed = "".join(f"  - {os.path.relpath(K8S / 'components' / c, directory)}\n"
                     for c in components)
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {base}\ncomponents:\n{listed}", encoding="utf-8")
    return kustomize(kubectl, directory)


def load_yaml(path: Path) -> list[Obj]:
    """The documents of a plain manifest file."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kinds(objects: list[Obj]) -> list[str]:
    return [obj["kind"] for obj in objects]


def one(objects: list[Obj], kind: str) -> Obj:
    """The single object of ``kind``; fails when there is none or several."""
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)} among {kinds(objects)}"
    return found[0]


def container(workload: Obj, name: str | None = None) -> Obj:
    """The (named, or only) container of a Deployment's or Job's pod template."""
    containers: list[Obj] = workload["spec"]["template"]["spec"]["containers"]
    if name is None:
        assert len(containers) == 1, [c["name"] for c in containers]
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a matchLabels-style selector matches ``labels`` (and is not empty)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def validate(obj: Obj, version: str) -> str:
    """Validate one object against the Kubernetes schemas of ``version`` (strict: unknown
    fields are errors, which catches misspelt keys). Returns the schema version used."""
    import kubernetes_validate

    wanted = kubernetes_validate.latest_version() if version == "latest" else version
    return str(kubernetes_validate.validate(obj, wanted, strict=True))

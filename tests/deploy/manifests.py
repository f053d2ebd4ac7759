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
# Custom resources' schemas, copied from their CRDs (k8s/schemas/README.md says from where).
CRD_SCHEMAS = K8S / "schemas"
# The oldest Kubernetes the manifests claim (native preStop sleep needs 1.30, the kubectl of
# these machines is 1.32) and the newest kubernetes-validate ships schemas for; every object
# must validate against both.
K8S_VERSIONS = ("1.32.0", "latest")
# Labels Prometheus adds to every series scraped through a ServiceMonitor (not in /metrics).
TARGET_LABELS = frozenset({"namespace", "job", "pod", "service", "instance", "endpoint",
                           "container"})

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


def crd_schema_path(obj: Obj) -> Path:
    """Where the copied CRD schema of ``obj``'s apiVersion and kind lives."""
    group, _, version = obj["apiVersion"].rpartition("/")
    return CRD_SCHEMAS / group / f"{obj['kind'].lower()}_{version}.json"


def strict_schema(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as a strict JSON Schema, the conversion kubeconform makes
    (``openapi2jsonschema.py --strict``): an object that lists its properties accepts no
    others unless it says so (``additionalProperties`` or
    ``x-kubernetes-preserve-unknown-fields``), and ``nullable`` admits null."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: (value if key in ("enum", "default", "example", "required")
                 else {name: strict_schema(sub) for name, sub in value.items()}
                 if key == "properties" else strict_schema(value))
           for key, value in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def validate_custom(obj: Obj) -> None:
    """Validate a custom resource against the strict form of its CRD's schema (jsonschema,
    as kubernetes-validate validates the built-in kinds), plus what the API server checks
    before the schema: its apiVersion and kind are the CRD's, and it has a name. Raises
    ``jsonschema.ValidationError`` (the first error, with its path) or ``FileNotFoundError``
    for a kind with no copied schema."""
    import json

    import jsonschema

    path = crd_schema_path(obj)
    schema = strict_schema(json.loads(path.read_text(encoding="utf-8")))
    # The API server serves one apiVersion and kind per schema file, and `name` is required.
    schema["properties"]["apiVersion"] = {"const": obj["apiVersion"]}
    schema["properties"]["kind"] = {"const": obj["kind"]}
    schema["properties"]["metadata"] = {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1,
                                "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind",
                                 "metadata"})
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        raise error

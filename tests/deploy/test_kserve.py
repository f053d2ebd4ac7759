"""k8s/kserve: the ClusterServingRuntime and the example InferenceService validate against
KServe's own CRD schemas (copied into k8s/schemas/, provenance in its README), and agree with
the service: its flags, ports, probes and image, and the repository layout KServe's storage
initializer leaves in /mnt/models."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from service import bundle
from service.cli import load_settings
from service.settings import Settings
from tests.deploy import manifests

KSERVE = manifests.K8S / "kserve"
# KServe's InferenceServiceProtocol constants (pkg/constants/constants.go); the CRD types
# protocolVersions as plain strings, so a misspelt one would pass the schema.
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
# Where KServe's storage initializer puts the model (DefaultModelLocalMountPath).
KSERVE_MODEL_DIR = "/mnt/models"


@pytest.fixture(scope="module")
def kserve(kubectl: str) -> list[manifests.Obj]:
    return manifests.kustomize(kubectl, KSERVE)


def _runtime(objects: list[manifests.Obj]) -> manifests.Obj:
    return manifests.one(objects, "ClusterServingRuntime")


def _isvc(objects: list[manifests.Obj]) -> manifests.Obj:
    return manifests.one(objects, "InferenceService")


def _container(objects: list[manifests.Obj]) -> manifests.Obj:
    containers = _runtime(objects)["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_renders_the_runtime_and_the_inference_service(kserve: list[manifests.Obj]) -> None:
    assert sorted(manifests.kinds(kserve)) == ["ClusterServingRuntime", "InferenceService"]
    # The runtime is cluster-scoped: a namespace on it is a mistake kustomize would make.
    assert "namespace" not in _runtime(kserve)["metadata"]
    assert _isvc(kserve)["metadata"]["namespace"] == "aecluster"


def test_both_validate_against_kserves_schemas(kserve: list[manifests.Obj]) -> None:
    for obj in kserve:
        manifests.validate_custom(obj)


def test_runtime_speaks_v1_and_v2_over_rest_and_grpc(kserve: list[manifests.Obj]) -> None:
    protocols = set(_runtime(kserve)["spec"]["protocolVersions"])
    assert protocols <= KSERVE_PROTOCOLS, protocols - KSERVE_PROTOCOLS
    assert protocols == KSERVE_PROTOCOLS


def test_runtime_args_are_the_service_flags_and_match_its_ports(
    kserve: list[manifests.Obj], monkeypatch: pytest.MonkeyPatch,
) -> None:
    container = _container(kserve)
    assert container["name"] == "kserve-container"  # the name KServe looks for
    assert "command" not in container  # the image's ENTRYPOINT, `python -m service`, runs
    for name in [n for n in Settings.model_fields]:
        monkeypatch.delenv("AEC_" + name.upper(), raising=False)
    for variable in container.get("env", []):
        assert variable["name"].startswith("AEC_")
        monkeypatch.setenv(variable["name"], variable["value"])
    settings = load_settings(container["args"])  # exits on an unknown flag or a bad value
    assert str(settings.model_repo) == KSERVE_MODEL_DIR

    ports = container["ports"]
    # KServe's Service sends its port 80 to the first port; it treats a port as gRPC when
    # its name holds "grpc" or "h2c".
    assert ports[0]["containerPort"] == settings.http_port
    assert not re.search("grpc|h2c", ports[0]["name"])
    [grpc] = [p for p in ports if re.search("grpc|h2c", p["name"])]
    assert grpc["containerPort"] == settings.grpc_port
    annotations = _runtime(kserve)["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(settings.http_port)
    assert annotations["prometheus.kserve.io/path"] == "/metrics"


def test_runtime_probes_use_the_health_endpoints(kserve: list[manifests.Obj]) -> None:
    container = _container(kserve)
    http = container["ports"][0]["containerPort"]
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        assert container[probe]["httpGet"] == {"path": path, "port": http}, probe


def test_runtime_runs_the_images_user_on_a_read_only_root(kserve: list[manifests.Obj]) -> None:
    dockerfile = (manifests.ROOT / "Dockerfile").read_text(encoding="utf-8")
    user, group = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)[-1]
    security = _container(kserve)["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(user), int(group))
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"]
    mounts = {m["mountPath"]: m["name"] for m in _container(kserve)["volumeMounts"]}
    volumes = {v["name"]: v for v in _runtime(kserve)["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_runtime_image_is_the_cpu_overlays(
    kserve: list[manifests.Obj], rendered: dict[str, list[manifests.Obj]],
) -> None:
    overlay = manifests.container(manifests.one(rendered["cpu"], "Deployment"))
    assert _container(kserve)["image"] == overlay["image"]


def test_inference_service_uses_the_runtime_and_object_storage(
    kserve: list[manifests.Obj],
) -> None:
    isvc = _isvc(kserve)
    model = isvc["spec"]["predictor"]["model"]
    formats = {f["name"] for f in _runtime(kserve)["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["runtime"] == _runtime(kserve)["metadata"]["name"]
    assert model["protocolVersion"] in _runtime(kserve)["spec"]["protocolVersions"]
    uri = urlparse(model["storageUri"])
    assert uri.scheme in {"s3", "gs"} and uri.netloc, model["storageUri"]
    # The repository's prefix, `/`-terminated: KServe strips it from every key, and without
    # the slash `PREFIX-old/` would be copied too.
    assert uri.path.endswith("/")
    # Callers ask for /v1/models/<InferenceService name>: it must be a model directory name.
    bundle.validate_model_name(isvc["metadata"]["name"])
    # Two replicas, as the Deployment of k8s/base keeps.
    assert isvc["spec"]["predictor"]["minReplicas"] >= 2


def _storage_initializer(bucket: Path, uri: str, out: Path) -> None:
    """What KServe's storage initializer does with an s3:// storageUri
    (python/storage/kserve_storage/kserve_storage.py, ``_download_s3``): every object under
    the prefix that is not empty, at its key less the prefix. ``bucket`` stands for the
    bucket, one file per object."""
    prefix = urlparse(uri).path.lstrip("/")
    for path in sorted(bucket.rglob("*")):
        key = path.relative_to(bucket).as_posix()
        if not path.is_file() or not key.startswith(prefix) or path.stat().st_size == 0:
            continue
        target = out / key.removeprefix(prefix).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def test_the_storage_initializers_copy_is_a_repository_the_service_loads(
    kserve: list[manifests.Obj], digits_bundle: Path, tmp_path: Path,
) -> None:
    """A bundle uploaded as inferenceservice.yaml's comment says, copied the way KServe
    copies it: /mnt/models/<InferenceService name>/<version>/, complete and intact."""
    isvc = _isvc(kserve)
    name, uri = isvc["metadata"]["name"], isvc["spec"]["predictor"]["model"]["storageUri"]
    bucket = tmp_path / "bucket"
    uploaded = bucket / urlparse(uri).path.lstrip("/") / name / "1"
    shutil.copytree(digits_bundle, uploaded)
    (bucket / (urlparse(uri).path.strip("/") + "-old") / name / "7").mkdir(parents=True)
    (bucket / (urlparse(uri).path.strip("/") + "-old") / name / "7" / "x").write_text("x")

    mnt = tmp_path / "mnt-models"
    _storage_initializer(bucket, uri, mnt)
    assert sorted(p.name for p in mnt.iterdir()) == [name]
    assert bundle.list_versions(mnt / name) == [1]
    version = mnt / name / "1"
    bundle.verify_checksums(version, bundle.read_manifest(version))  # no file lost

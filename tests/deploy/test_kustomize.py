"""Every kustomization renders with ``kubectl kustomize`` and every object it renders (and
the training Job) validates against the Kubernetes schemas, offline.

Custom resources (ServiceMonitor, PrometheusRule, cert-manager's Certificate) have no schema
in kubernetes-validate; ``test_monitoring.py`` and ``test_tls.py`` check their fields instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.deploy import manifests

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed (dev extra): cannot check the schemas",
)

BUILTIN_KINDS = {
    "ServiceAccount", "ConfigMap", "Service", "PersistentVolumeClaim", "Deployment",
    "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy",
}


def _assert_valid(obj: manifests.Obj, version: str, where: str) -> None:
    name = obj["metadata"].get("name") or obj["metadata"].get("generateName")
    try:
        manifests.validate(obj, version)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise AssertionError(f"{where}: {obj['kind']}/{name} is invalid for Kubernetes "
                             f"{exc.version} at {path or '(top)'}: {exc.message}") from None


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_overlay_renders_the_whole_application(
    rendered: dict[str, list[manifests.Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    assert set(manifests.kinds(objects)) == BUILTIN_KINDS
    assert len(objects) == len(BUILTIN_KINDS), manifests.kinds(objects)
    # One namespace for everything, the one the training Job and monitoring use too.
    assert {obj["metadata"].get("namespace") for obj in objects} == {"aecluster"}


@pytest.mark.parametrize("version", manifests.K8S_VERSIONS)
@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_overlay_objects_validate(
    rendered: dict[str, list[manifests.Obj]], overlay: str, version: str
) -> None:
    for obj in rendered[overlay]:
        _assert_valid(obj, version, f"k8s/overlays/{overlay}")


@pytest.mark.parametrize("version", manifests.K8S_VERSIONS)
def test_training_job_validates(training_job: manifests.Obj, version: str) -> None:
    assert training_job["kind"] == "Job"
    _assert_valid(training_job, version, "k8s/training-job.yaml")


def test_monitoring_renders_two_custom_resources_and_the_dashboard(
    monitoring: list[manifests.Obj],
) -> None:
    assert sorted(manifests.kinds(monitoring)) == ["ConfigMap", "PrometheusRule",
                                                   "ServiceMonitor"]
    assert {obj["metadata"]["namespace"] for obj in monitoring} == {"aecluster"}
    for obj in monitoring:
        if obj["kind"] == "ConfigMap":  # the Grafana dashboard: a built-in kind, validated
            for version in manifests.K8S_VERSIONS:
                manifests.validate(obj, version)
            continue
        # Sanity check that these really are outside the built-in schemas (so that
        # test_monitoring.py's own checks are the ones that count).
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            manifests.validate(obj, "latest")


def test_invalid_objects_are_caught() -> None:
    """The validation is strict: a misspelt field fails instead of being ignored."""
    pod_spec = {"containers": [{"name": "a", "image": "a:1",
                                "securityContext": {"readOnlyRootFileSystem": True}}]}
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}}, "spec": pod_spec}}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        manifests.validate(bad, "1.32.0")


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_grpc_probes_component_renders_and_validates(
    kubectl: str, tmp_path: Path, overlay: str
) -> None:
    """k8s/components/grpc-probes, the alternative the Deployment's comment documents,
    applied to each overlay the way its comment says."""
    objects = manifests.kustomize_with_components(kubectl, overlay, ["grpc-probes"], tmp_path)
    deployment = manifests.one(objects, "Deployment")
    for version in manifests.K8S_VERSIONS:
        _assert_valid(deployment, version, f"overlay {overlay} + grpc-probes")
    probe = manifests.container(deployment)["readinessProbe"]
    assert set(probe) >= {"grpc"} and "httpGet" not in probe


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_tls_component_renders_and_validates(
    rendered_tls: dict[str, list[manifests.Obj]], overlay: str
) -> None:
    """k8s/components/tls on each overlay: the same objects plus cert-manager's Certificate,
    every built-in one valid. The Certificate has no schema here (checked below that it
    really has none); test_tls.py checks its kind, apiVersion and fields itself."""
    objects = rendered_tls[overlay]
    assert sorted(manifests.kinds(objects)) == sorted([*BUILTIN_KINDS, "Certificate"])
    assert {obj["metadata"].get("namespace") for obj in objects} == {"aecluster"}
    for obj in objects:
        if obj["kind"] == "Certificate":
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                manifests.validate(obj, "latest")
            continue
        for version in manifests.K8S_VERSIONS:
            _assert_valid(obj, version, f"overlay {overlay} + tls")


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_signed_bundles_component_renders_and_validates(
    kubectl: str, tmp_path: Path, overlay: str
) -> None:
    """k8s/components/signed-bundles: the trusted public keys from a ConfigMap, mounted
    read-only where AEC_TRUSTED_KEYS points, signatures required; applied to each overlay as
    its comment says."""
    from service.settings import Settings
    from tests.keys import make_key_pair

    base = os.path.relpath(manifests.K8S / "overlays" / overlay, tmp_path)
    component = os.path.relpath(manifests.K8S / "components" / "signed-bundles", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {base}\ncomponents:\n  - {component}\n", encoding="utf-8")
    objects = manifests.kustomize(kubectl, tmp_path)
    assert sorted(manifests.kinds(objects)) == sorted(BUILTIN_KINDS)
    for obj in objects:
        for version in manifests.K8S_VERSIONS:
            _assert_valid(obj, version, f"overlay {overlay} + signed-bundles")

    settings = manifests.one(objects, "ConfigMap")["data"]
    assert settings["AEC_REQUIRE_SIGNATURE"] == "true"
    assert settings["AEC_DEVICE"] == ("gpu" if overlay == "gpu" else "cpu")  # merged, not lost
    deployment = manifests.one(objects, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    [mount] = [m for m in manifests.container(deployment)["volumeMounts"]
               if m["mountPath"] == settings["AEC_TRUSTED_KEYS"]]
    assert mount["readOnly"] is True
    source = volumes[mount["name"]]["configMap"]
    assert source["name"] == "aecluster-trusted-keys" and not source.get("optional", False)
    assert source["defaultMode"] & 0o222 == 0  # nobody writes the keys

    # What the pod then runs with: the ConfigMap's settings, a key where the volume mounts it.
    mounted = tmp_path / "mounted-keys"
    make_key_pair(mounted, "training-2026").private.unlink()  # the pod holds public keys only
    parsed = Settings.model_validate({**{k[4:].lower(): v for k, v in settings.items()},
                                      "trusted_keys": str(mounted)})
    assert parsed.signatures_required


# Custom resources with no copied schema in k8s/schemas/: their own tests check their fields
# (test_monitoring.py, test_tls.py).
FIELD_CHECKED_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate"}


def _kustomization_kind(directory: Path) -> str:
    return str(manifests.load_yaml(directory / "kustomization.yaml")[0]["kind"])


KUSTOMIZATIONS = sorted(p.parent.relative_to(manifests.K8S).as_posix()
                        for p in manifests.K8S.rglob("kustomization.yaml")
                        if _kustomization_kind(p.parent) == "Kustomization")
COMPONENTS = sorted(p.parent.name
                    for p in (manifests.K8S / "components").glob("*/kustomization.yaml"))


def _assert_every_object_valid(objects: list[manifests.Obj], where: str) -> None:
    """Built-in kinds against Kubernetes' schemas, custom resources against their CRD's
    copied schema; a custom kind with neither fails, so nothing goes unchecked unnoticed."""
    import jsonschema

    for obj in objects:
        if obj["kind"] in BUILTIN_KINDS:
            for version in manifests.K8S_VERSIONS:
                _assert_valid(obj, version, where)
        elif manifests.crd_schema_path(obj).is_file():
            try:
                manifests.validate_custom(obj)
            except jsonschema.ValidationError as exc:
                path = ".".join(str(p) for p in exc.absolute_path)
                raise AssertionError(
                    f"{where}: {obj['kind']}/{obj['metadata'].get('name')} is invalid against "
                    f"{manifests.crd_schema_path(obj).relative_to(manifests.ROOT)} at "
                    f"{path or '(top)'}: {exc.message}") from None
        else:
            assert obj["kind"] in FIELD_CHECKED_KINDS, (
                f"{where}: {obj['kind']} has no schema in k8s/schemas/ and no test of its own")


def test_every_kustomization_is_listed() -> None:
    assert {"overlays/cpu", "overlays/gpu", "monitoring", "kserve"} <= set(KUSTOMIZATIONS)
    assert {"grpc-probes", "tls", "signed-bundles", "keda"} <= set(COMPONENTS)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_every_kustomization_renders_and_every_object_validates(
    kubectl: str, directory: str
) -> None:
    objects = manifests.kustomize(kubectl, manifests.K8S / directory)
    assert objects, f"k8s/{directory} renders nothing"
    _assert_every_object_valid(objects, f"k8s/{directory}")


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
@pytest.mark.parametrize("component", COMPONENTS)
def test_every_component_renders_on_every_overlay_and_validates(
    kubectl: str, tmp_path: Path, overlay: str, component: str
) -> None:
    objects = manifests.kustomize_with_components(kubectl, overlay, [component], tmp_path)
    _assert_every_object_valid(objects, f"k8s/overlays/{overlay} + components/{component}")


def test_a_broken_custom_resource_is_caught() -> None:
    """The CRD schemas are applied strictly: a misspelt field, a missing required field, a
    field at the wrong level and a wrong type each fail."""
    import jsonschema

    isvc: manifests.Obj = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                            "metadata": {"name": "digits"},
                            "spec": {"predictor": {"model": {
                                "modelFormat": {"name": "aecluster"},
                                "storageUri": "s3://b/p/"}}}}
    manifests.validate_custom(isvc)
    model = dict(isvc["spec"]["predictor"]["model"])
    storage = model.pop("storageUri")
    for broken, match in [({**model, "storageURI": storage}, "storageURI"),
                          ({**model, "modelFormat": {"version": "1"}}, "'name' is a required"),
                          ({**model, "minReplicas": 2}, "minReplicas")]:
        isvc["spec"]["predictor"]["model"] = broken
        with pytest.raises(jsonschema.ValidationError, match=match):
            manifests.validate_custom(isvc)
    with pytest.raises(jsonschema.ValidationError, match="'two' is not of type 'integer'"):
        manifests.validate_custom({**isvc, "spec": {"predictor": {"minReplicas": "two"}}})

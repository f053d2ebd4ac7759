"""k8s/components/keda: a KEDA ScaledObject on the batcher's backlog that replaces the base's
CPU autoscaler. Its schema is KEDA's own (k8s/schemas/keda.sh, provenance in the README);
here: what it scales, from which metric, and that nothing else fights it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import Gauge

from service.metrics import Metrics
from tests.deploy import manifests

# Labels Prometheus adds to the series it scrapes through the ServiceMonitor.
TARGET_LABELS = {"namespace", "job", "pod", "service", "instance", "endpoint", "container"}


@pytest.fixture(scope="module", params=manifests.OVERLAYS)
def with_keda(request: pytest.FixtureRequest, kubectl: str,
              tmp_path_factory: pytest.TempPathFactory) -> list[manifests.Obj]:
    return manifests.kustomize_with_components(
        kubectl, request.param, ["keda"], tmp_path_factory.mktemp(f"keda-{request.param}"))


def test_the_scaled_object_replaces_the_cpu_autoscaler(with_keda: list[manifests.Obj]) -> None:
    kinds = manifests.kinds(with_keda)
    assert "HorizontalPodAutoscaler" not in kinds  # KEDA makes its own; two would fight
    scaled = manifests.one(with_keda, "ScaledObject")
    manifests.validate_custom(scaled)
    assert {obj["metadata"].get("namespace") for obj in with_keda} == {"aecluster"}

    deployment = manifests.one(with_keda, "Deployment")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"])
    # The rollout (maxUnavailable 0) and the PodDisruptionBudget count on two pods.
    assert scaled["spec"]["minReplicaCount"] >= 2
    # The CRD's one CEL rule (x-kubernetes-validations), which the schema check skips.
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"].get("maxReplicaCount", 100)
    pdb = manifests.one(with_keda, "PodDisruptionBudget")
    assert scaled["spec"]["minReplicaCount"] > pdb["spec"].get("minAvailable", 1)


def test_the_trigger_queries_the_queue_depth_the_service_exports(
    with_keda: list[manifests.Obj],
) -> None:
    scaled = manifests.one(with_keda, "ScaledObject")
    [prometheus] = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    query = prometheus["metadata"]["query"]
    found = re.search(r"(aecluster_\w+)\{([^}]*)\}", query)
    assert found and found[1] == "aecluster_queue_depth", query
    gauge = Metrics().queue_depth
    assert isinstance(gauge, Gauge)
    (family,) = gauge.describe()
    assert family.name == found[1]
    labels = set(re.findall(r"(\w+)\s*=", found[2]))
    assert labels <= set(gauge._labelnames) | TARGET_LABELS, labels
    # The Service the ServiceMonitor scrapes carries the name the query selects.
    service = manifests.one(with_keda, "Service")["metadata"]["name"]
    assert f'service="{service}"' in query
    threshold = float(prometheus["metadata"]["threshold"])
    max_queue = int(manifests.one(with_keda, "ConfigMap")["data"]["AEC_MAX_QUEUE"])
    assert 0 < threshold < 0.8 * max_queue  # scales out long before the saturation alert


def test_the_component_says_how_to_add_it() -> None:
    text = (manifests.K8S / "components" / "keda" / "kustomization.yaml").read_text("utf-8")
    assert "- ../../components/keda" in text
    assert Path(manifests.K8S / "components" / "keda" / "scaledobject.yaml").is_file()

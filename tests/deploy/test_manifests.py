"""The rendered overlays keep the promises of the deployment issue, read from the objects
themselves and compared with the service's code (settings, routes), not with copies."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from service.settings import Settings
from tests.deploy import manifests

Rendered = dict[str, list[manifests.Obj]]
SELECTOR = {"app.kubernetes.io/name": "aecluster", "app.kubernetes.io/component": "server"}


def _deployment(rendered: Rendered, overlay: str) -> manifests.Obj:
    return manifests.one(rendered[overlay], "Deployment")


def _pod_spec(rendered: Rendered, overlay: str) -> manifests.Obj:
    spec: manifests.Obj = _deployment(rendered, overlay)["spec"]["template"]["spec"]
    return spec


def _config(rendered: Rendered, overlay: str) -> dict[str, str]:
    data: dict[str, str] = manifests.one(rendered[overlay], "ConfigMap")["data"]
    return data


def _setting(rendered: Rendered, overlay: str, field: str) -> object:
    """A setting as the pods see it: the ConfigMap's value, parsed by Settings, or the
    service's default when the ConfigMap does not set it."""
    raw = _config(rendered, overlay).get("AEC_" + field.upper())
    if raw is None:
        return Settings.model_fields[field].default
    return getattr(Settings.model_validate({field: raw}), field)


def _ports(container: manifests.Obj) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


# ---- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_configmap_keys_are_real_settings_with_valid_values(
    rendered: Rendered, overlay: str
) -> None:
    data = _config(rendered, overlay)
    fields = set(Settings.model_fields)
    unknown = [key for key in data
               if not key.startswith("AEC_") or key[4:].lower() not in fields]
    assert not unknown, f"not settings of service.settings.Settings: {unknown}"
    # Every value parses the way the service will parse it (pydantic, from strings).
    Settings.model_validate({key[4:].lower(): value for key, value in data.items()})


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_pods_take_their_settings_from_the_configmap(rendered: Rendered, overlay: str) -> None:
    configmap = manifests.one(rendered[overlay], "ConfigMap")
    container = manifests.container(_deployment(rendered, overlay))
    refs = [src["configMapRef"]["name"] for src in container["envFrom"]]
    # The generated (hash-suffixed) name: a settings change rolls the pods.
    assert refs == [configmap["metadata"]["name"]]
    assert re.fullmatch(r"aecluster-config-[a-z0-9]{10}", refs[0])
    # No AEC_ variable set beside the ConfigMap, where it would silently win.
    assert not [e["name"] for e in container.get("env", []) if e["name"].startswith("AEC_")]


# ---- ports and probes -------------------------------------------------------------------


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_ports_are_the_service_defaults_everywhere(
    rendered: Rendered, overlay: str, defaults: Settings
) -> None:
    http, grpc = defaults.http_port, defaults.grpc_port
    assert (http, grpc) == (8501, 8500)  # TensorFlow Serving's, as the issue promises
    assert _setting(rendered, overlay, "http_port") == http
    assert _setting(rendered, overlay, "grpc_port") == grpc
    assert _ports(manifests.container(_deployment(rendered, overlay))) == {
        "http": http, "grpc": grpc}

    service = manifests.one(rendered[overlay], "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"http", "grpc"}
    assert (ports["http"]["port"], ports["http"]["targetPort"]) == (http, "http")
    assert (ports["grpc"]["port"], ports["grpc"]["targetPort"]) == (grpc, "grpc")
    assert ports["http"]["appProtocol"] == "http"
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"  # gRPC: HTTP/2 cleartext
    assert service["spec"]["selector"] == SELECTOR


def test_probe_endpoints_answer_as_the_probes_expect(http_get: Callable[[str], int]) -> None:
    """In a pod that has started but holds no model yet: alive (liveness must not restart
    it), not ready (no traffic), metrics served; an unknown path is a 404, so the codes
    above come from the real endpoints."""
    assert http_get("/healthz") == 200
    assert http_get("/readyz") == 503
    assert http_get("/metrics") == 200
    assert http_get("/no-such-probe") == 404


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_probes_point_at_the_health_endpoints(rendered: Rendered, overlay: str) -> None:
    container = manifests.container(_deployment(rendered, overlay))
    ports = _ports(container)
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                "readinessProbe": "/readyz"}
    for probe_name, path in expected.items():
        probe = container[probe_name]
        assert probe["httpGet"]["path"] == path, probe_name
        assert ports[probe["httpGet"]["port"]] == Settings.model_fields["http_port"].default
    # Start-up gets far longer than liveness would allow: importing TensorFlow and warming
    # up models must not count as a hang.
    startup = container["startupProbe"]
    liveness = container["livenessProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert startup["periodSeconds"] * startup["failureThreshold"] > (
        liveness["periodSeconds"] * liveness["failureThreshold"])


def test_documented_grpc_probe_targets_the_health_service() -> None:
    """The gRPC alternative (k8s/components/grpc-probes and the Deployment's comment) uses
    the gRPC port and the overall status, which the server publishes with readiness."""
    component = manifests.load_yaml(manifests.K8S / "components" / "grpc-probes"
                                    / "kustomization.yaml")[0]
    grpc_port = str(Settings.model_fields["grpc_port"].default)
    patch = component["patches"][0]["patch"]
    found = re.search(r"grpc:\s*\n\s*port: (\d+)", patch)
    assert found and found[1] == grpc_port
    # No `service:`: the probe asks for "", the overall status GrpcServer publishes.
    assert "service:" not in patch
    deployment_yaml = (manifests.K8S / "base" / "deployment.yaml").read_text(encoding="utf-8")
    documented = re.search(r"#\s+grpc:\s*\n\s*#\s+port: (\d+)", deployment_yaml)
    assert documented and documented[1] == grpc_port


# ---- shutdown ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_grace_period_covers_the_pause_and_the_drain(rendered: Rendered, overlay: str) -> None:
    spec = _pod_spec(rendered, overlay)
    container = manifests.container(_deployment(rendered, overlay))
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = _setting(rendered, overlay, "drain_seconds")
    assert isinstance(drain, float)
    assert pause >= 5, "endpoint removal needs a few seconds to propagate"
    # The kubelet's clock starts before preStop: pause + drain must fit, with a margin.
    assert spec["terminationGracePeriodSeconds"] >= pause + drain + 5


# ---- rollout and availability -----------------------------------------------------------


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_rollout_never_drops_below_the_wanted_replicas(rendered: Rendered, overlay: str) -> None:
    deployment = _deployment(rendered, overlay)
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"] == SELECTOR
    assert spec["template"]["metadata"]["labels"] == SELECTOR
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_replicas_avoid_sharing_a_node(rendered: Rendered, overlay: str) -> None:
    terms = _pod_spec(rendered, overlay)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
               and manifests.selects(t["podAffinityTerm"]["labelSelector"]["matchLabels"],
                                     SELECTOR)
               for t in terms)


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_pdb_and_hpa_cover_the_deployment(rendered: Rendered, overlay: str) -> None:
    deployment = _deployment(rendered, overlay)
    pdb = manifests.one(rendered[overlay], "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == SELECTOR
    # Lets drains proceed one pod at a time; never blocks every eviction.
    assert pdb["spec"].get("maxUnavailable") == 1 and "minAvailable" not in pdb["spec"]

    hpa = manifests.one(rendered[overlay], "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    # CPU utilisation is measured against requests: the container must have some.
    assert cpu and manifests.container(deployment)["resources"]["requests"]["cpu"]


# ---- resources and GPU ------------------------------------------------------------------


def test_cpu_overlay_has_no_gpu(rendered: Rendered) -> None:
    resources = manifests.container(_deployment(rendered, "cpu"))["resources"]
    for part in ("requests", "limits"):
        assert set(resources[part]) == {"cpu", "memory"}
    assert "nodeSelector" not in _pod_spec(rendered, "cpu")
    assert _setting(rendered, "cpu", "device") == "cpu"


def test_gpu_overlay_requests_a_gpu_on_gpu_nodes(rendered: Rendered) -> None:
    resources = manifests.container(_deployment(rendered, "gpu"))["resources"]
    # Extended resources: limits are what counts, and requests must equal them.
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    spec = _pod_spec(rendered, "gpu")
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        spec["tolerations"])
    assert _setting(rendered, "gpu", "device") == "gpu"


def test_gpu_overlay_batches_more(rendered: Rendered) -> None:
    for field in ("max_batch_size", "max_batch_delay_ms"):
        assert "AEC_" + field.upper() in _config(rendered, "gpu")
    gpu_size = _setting(rendered, "gpu", "max_batch_size")
    cpu_size = _setting(rendered, "cpu", "max_batch_size")
    gpu_delay = _setting(rendered, "gpu", "max_batch_delay_ms")
    cpu_delay = _setting(rendered, "cpu", "max_batch_delay_ms")
    assert isinstance(gpu_size, int) and isinstance(cpu_size, int)
    assert isinstance(gpu_delay, float) and isinstance(cpu_delay, float)
    assert gpu_size > cpu_size
    # The CPU pods run the measured default: a lone request is never held for a batch.
    assert cpu_delay == Settings.model_fields["max_batch_delay_ms"].default == 0.0
    assert 0.0 <= gpu_delay <= 5.0


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_requests_and_limits_are_set(rendered: Rendered, overlay: str) -> None:
    resources = manifests.container(_deployment(rendered, overlay))["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[part]), part


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_image_is_the_overlays_variant(rendered: Rendered, overlay: str) -> None:
    image = manifests.container(_deployment(rendered, overlay))["image"]
    repository, _, tag = image.rpartition(":")
    assert repository == "registry.example.com/aecluster"
    assert tag.endswith("-" + overlay)


# ---- security ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_security_context(rendered: Rendered, overlay: str) -> None:
    spec = _pod_spec(rendered, overlay)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] != 0 and pod["runAsUser"] == 10001  # the image's USER
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    container = manifests.container(_deployment(rendered, overlay))["securityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container.get("runAsNonRoot", True) is True


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_only_tmp_is_writable_and_models_are_read_only(rendered: Rendered, overlay: str) -> None:
    spec = _pod_spec(rendered, overlay)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in manifests.container(_deployment(rendered, overlay))[
        "volumeMounts"]}
    assert set(mounts) == {"/models", "/tmp"}
    # /tmp: an emptyDir, the one writable place under a read-only root filesystem.
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert not mounts["/tmp"].get("readOnly", False)
    # /models: the claim, read-only at both levels, and where the service looks.
    models = mounts["/models"]
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = manifests.one(rendered[overlay], "PersistentVolumeClaim")
    assert claim["claimName"] == pvc["metadata"]["name"]
    # Read by the serving replicas and written by the training Job: shared across nodes.
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert str(_setting(rendered, overlay, "model_repo")) == "/models"


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_no_service_account_token(rendered: Rendered, overlay: str) -> None:
    account = manifests.one(rendered[overlay], "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    spec = _pod_spec(rendered, overlay)
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is False


CLIENT_LABEL = {"aecluster.io/client": "true"}
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
KUBE_SYSTEM = {"kubernetes.io/metadata.name": "kube-system"}


def _rule_ports(rule: manifests.Obj) -> set[tuple[int, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}


def _peers(rule: manifests.Obj, key: str) -> list[dict[str, str]]:
    """The namespaceSelector labels of each peer of a rule (``from`` or ``to``)."""
    peers = rule[key]
    # Only namespace selectors: an ipBlock or a bare podSelector would widen the rule.
    assert all(set(peer) == {"namespaceSelector"} for peer in peers), peers
    return [peer["namespaceSelector"]["matchLabels"] for peer in peers]


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_network_policy_admits_only_labelled_namespaces_and_monitoring(
    rendered: Rendered, overlay: str, defaults: Settings, monitoring: list[manifests.Obj]
) -> None:
    policy = manifests.one(rendered[overlay], "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == SELECTOR
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    # Every rule names its peers and its ports: a rule without `from` admits every source,
    # one without `ports` every port.
    assert all(rule.get("from") and rule.get("ports") for rule in policy["ingress"])
    by_peer = {tuple(sorted(labels.items())): _rule_ports(rule)
               for rule in policy["ingress"] for labels in _peers(rule, "from")}
    http, grpc = (defaults.http_port, "TCP"), (defaults.grpc_port, "TCP")
    assert by_peer == {tuple(CLIENT_LABEL.items()): {http, grpc},
                       tuple(MONITORING.items()): {http}}
    # The port admitted from monitoring is the one the ServiceMonitor scrapes.
    service = manifests.one(rendered[overlay], "Service")
    scraped = manifests.one(monitoring, "ServiceMonitor")["spec"]["endpoints"][0]["port"]
    target = next(p["targetPort"] for p in service["spec"]["ports"] if p["name"] == scraped)
    container_ports = _ports(manifests.container(_deployment(rendered, overlay)))
    assert {(container_ports[target], "TCP")} == by_peer[tuple(MONITORING.items())]


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_network_policy_lets_out_only_dns(rendered: Rendered, overlay: str) -> None:
    (rule,) = manifests.one(rendered[overlay], "NetworkPolicy")["spec"]["egress"]
    assert _peers(rule, "to") == [KUBE_SYSTEM]
    assert _rule_ports(rule) == {(53, "UDP"), (53, "TCP")}

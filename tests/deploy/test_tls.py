"""k8s/components/tls keeps its promises, read from the rendered objects and compared with
the service's code: cert-manager's Certificate (no schema in kubernetes-validate, so its
fields are checked here), the Secrets mounted where the settings point, probes and scraping
on the plain operations port, and the NetworkPolicy admitting that port for Prometheus."""

from __future__ import annotations

import asyncio
import re
from pathlib import PurePosixPath

import pytest

from service.settings import Settings
from tests.deploy import manifests

Rendered = dict[str, list[manifests.Obj]]
COMPONENT = manifests.K8S / "components" / "tls" / "kustomization.yaml"
TOKENS_SECRET = "aecluster-auth-tokens"
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}

# cert-manager.io/v1 Certificate, from its CRD: the fields of spec, and the enums used here.
CERTIFICATE_SPEC_FIELDS = {
    "additionalOutputFormats", "commonName", "dnsNames", "duration", "emailAddresses",
    "encodeUsagesInRequest", "ipAddresses", "isCA", "issuerRef", "keystores", "literalSubject",
    "nameConstraints", "otherNames", "privateKey", "renewBefore", "renewBeforePercentage",
    "revisionHistoryLimit", "secretName", "secretTemplate", "signatureAlgorithm", "subject",
    "uris", "usages",
}
ISSUER_REF_FIELDS = {"name", "kind", "group"}
PRIVATE_KEY_FIELDS = {"algorithm", "encoding", "rotationPolicy", "size"}
KEY_SIZES = {"RSA": {2048, 3072, 4096, 8192}, "ECDSA": {256, 384, 521}}
USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime",
    "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc",
}
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+s)?$")


def _hours(duration: str) -> float:
    assert duration and GO_DURATION.match(duration), duration
    parts = {unit: value for value, unit in re.findall(r"(\d+)([hms])", duration)}
    return (int(parts.get("h", 0)) + int(parts.get("m", 0)) / 60
            + int(parts.get("s", 0)) / 3600)


def _deployment(rendered: Rendered, overlay: str) -> manifests.Obj:
    return manifests.one(rendered[overlay], "Deployment")


def _config(rendered: Rendered, overlay: str) -> dict[str, str]:
    data: dict[str, str] = manifests.one(rendered[overlay], "ConfigMap")["data"]
    return data


def _settings(data: dict[str, str]) -> Settings:
    return Settings.model_validate({key[4:].lower(): value for key, value in data.items()})


def _mount_of_secret(rendered: Rendered, overlay: str, secret: str) -> manifests.Obj:
    """The container's mount of the volume holding Secret ``secret``, with that volume."""
    spec = _deployment(rendered, overlay)["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == secret]
    (mount,) = [m for m in manifests.container(_deployment(rendered, overlay))["volumeMounts"]
                if m["name"] == volume["name"]]
    return {"mount": mount, "volume": volume}


# ---- the Certificate --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_certificate_has_cert_managers_fields(rendered_tls: Rendered, overlay: str) -> None:
    certificate = manifests.one(rendered_tls[overlay], "Certificate")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert set(certificate) == {"apiVersion", "kind", "metadata", "spec"}
    assert certificate["metadata"]["namespace"] == "aecluster"
    spec = certificate["spec"]
    assert set(spec) <= CERTIFICATE_SPEC_FIELDS, set(spec) - CERTIFICATE_SPEC_FIELDS
    # Required by the CRD: secretName and issuerRef.name.
    assert spec["secretName"] and spec["issuerRef"]["name"]
    issuer = spec["issuerRef"]
    assert set(issuer) <= ISSUER_REF_FIELDS
    assert issuer["kind"] in {"Issuer", "ClusterIssuer"}
    assert issuer.get("group", "cert-manager.io") == "cert-manager.io"
    key = spec["privateKey"]
    assert set(key) <= PRIVATE_KEY_FIELDS
    assert key["size"] in KEY_SIZES[key["algorithm"]]
    assert key["rotationPolicy"] == "Always"  # a renewal brings a new key
    assert set(spec["usages"]) <= USAGES and "server auth" in spec["usages"]
    duration, renew = _hours(spec["duration"]), _hours(spec["renewBefore"])
    assert 1 <= renew < duration  # cert-manager's own rules


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_certificate_names_the_service(rendered_tls: Rendered, overlay: str) -> None:
    names = manifests.one(rendered_tls[overlay], "Certificate")["spec"]["dnsNames"]
    service = manifests.one(rendered_tls[overlay], "Service")["metadata"]
    svc, namespace = service["name"], service["namespace"]
    for name in (svc, f"{svc}.{namespace}", f"{svc}.{namespace}.svc",
                 f"{svc}.{namespace}.svc.cluster.local"):
        assert name in names


# ---- settings and mounts ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_settings_point_into_the_mounted_secrets(rendered_tls: Rendered, overlay: str) -> None:
    data = _config(rendered_tls, overlay)
    settings = _settings(data)  # real settings, valid together (certificate with its key)
    certificate = manifests.one(rendered_tls[overlay], "Certificate")
    tls = _mount_of_secret(rendered_tls, overlay, certificate["spec"]["secretName"])
    tokens = _mount_of_secret(rendered_tls, overlay, TOKENS_SECRET)
    # cert-manager's file names, in the mounted directory.
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    assert PurePosixPath(settings.tls_cert_file) == (
        PurePosixPath(tls["mount"]["mountPath"]) / "tls.crt")
    assert PurePosixPath(settings.tls_key_file) == (
        PurePosixPath(tls["mount"]["mountPath"]) / "tls.key")
    assert settings.auth_tokens_file is not None
    assert PurePosixPath(settings.auth_tokens_file).parent == (
        PurePosixPath(tokens["mount"]["mountPath"]))
    for found in (tls, tokens):
        assert found["mount"]["readOnly"] is True
        # subPath mounts are never updated by the kubelet: renewal would need a restart.
        assert "subPath" not in found["mount"]
        assert found["volume"]["secret"]["defaultMode"] == 0o440
        assert not found["volume"]["secret"].get("optional", False)  # fail closed
    # Still only the ConfigMap sets AEC_ variables.
    container = manifests.container(_deployment(rendered_tls, overlay))
    assert not [e["name"] for e in container.get("env", []) if e["name"].startswith("AEC_")]


def test_documented_commands_and_lines_match_the_objects(rendered_tls: Rendered) -> None:
    text = COMPONENT.read_text(encoding="utf-8")
    data = _config(rendered_tls, "cpu")
    tokens = PurePosixPath(data["AEC_AUTH_TOKENS_FILE"]).name
    # The Secret the comment tells the operator to create is the one mounted.
    assert (f"kubectl -n aecluster create secret generic {TOKENS_SECRET} "
            f"--from-file={tokens}=") in text
    # The commented-out mutual TLS line names the CA file cert-manager writes beside the
    # certificate, and is a valid setting with the others.
    found = re.search(r"#\s+- AEC_TLS_CLIENT_CA_FILE=(\S+)", text)
    assert found
    ca = PurePosixPath(found[1])
    assert ca.parent == PurePosixPath(data["AEC_TLS_CERT_FILE"]).parent and ca.name == "ca.crt"
    assert _settings({**data, "AEC_TLS_CLIENT_CA_FILE": str(ca)}).tls_client_ca_file


# ---- probes, scraping, network ----------------------------------------------------------


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_probes_and_scraping_use_the_operations_port(rendered_tls: Rendered,
                                                     overlay: str) -> None:
    settings = _settings(_config(rendered_tls, overlay))
    container = manifests.container(_deployment(rendered_tls, overlay))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.operations_port is not None
    assert ports["operations"] == settings.operations_port
    assert settings.operations_port not in (settings.http_port, settings.grpc_port)
    for name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container[name]["httpGet"]
        assert probe["port"] == "operations", name
        assert probe.get("scheme", "HTTP") == "HTTP", name
    service = manifests.one(rendered_tls[overlay], "Service")["spec"]["ports"]
    by_name = {p["name"]: p for p in service}
    assert by_name["operations"]["targetPort"] == "operations"
    # The API ports carry TLS now: no mesh may take them for cleartext.
    assert by_name["http"]["appProtocol"] == by_name["grpc"]["appProtocol"] == "https"


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_network_policy_admits_the_operations_port_from_monitoring_only(
        rendered_tls: Rendered, overlay: str) -> None:
    settings = _settings(_config(rendered_tls, overlay))
    policy = manifests.one(rendered_tls[overlay], "NetworkPolicy")["spec"]
    for rule in policy["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        from_monitoring = [peer["namespaceSelector"]["matchLabels"]
                           for peer in rule["from"]] == [MONITORING]
        assert (settings.operations_port in ports) == from_monitoring, rule


def test_operations_port_answers_the_probes() -> None:
    """The app behind the operations port, as a pod that holds no model yet: alive, not
    ready, metrics; nothing else is served there."""
    import httpx

    from service.dataplane import DataPlane
    from service.metrics import Metrics
    from service.repository import ModelRepository
    from service.rest.app import create_operations_app

    settings = Settings.model_construct()
    metrics = Metrics()
    plane = DataPlane(ModelRepository(settings, metrics, lambda *a: None),  # type: ignore[arg-type,return-value]
                      settings, metrics)
    app = create_operations_app(plane, metrics)

    async def statuses() -> dict[str, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://pod") as client:
            return {path: (await client.get(path)).status_code
                    for path in ("/healthz", "/readyz", "/metrics", "/v1/models", "/docs")}

    assert asyncio.run(statuses()) == {"/healthz": 200, "/readyz": 503, "/metrics": 200,
                                       "/v1/models": 404, "/docs": 404}

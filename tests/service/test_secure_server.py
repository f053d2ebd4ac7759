"""The whole server (``AppServer``: HTTP, gRPC and the operations port on free loopback
ports) with TLS, mutual TLS and tokens, called by real clients: httpx and grpc's own
``ssl_channel_credentials``, with certificates made for the test (tests/service/certs.py).

Every refusal is checked beside the same call accepted, so a server that accepted
everything, or refused everything, fails.
"""

from __future__ import annotations

import io
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc
from service.server import AppServer
from service.settings import Settings
from tests.loop_thread import LoopThread
from tests.service.bundles import clone_version
from tests.service.certs import CertificateAuthority, Issued, kubelet_secret_dir

TOKEN = "tok-8d2f61c04be97a35"
NEW_TOKEN = "tok-5e0b7a9c13d4f862"
WRONG = "tok-not-on-the-list"
HOST = "127.0.0.1"
# The server follows its files this often here (10 s by default).
POLL = 0.1
WAIT = 15.0


class ServerThread(LoopThread):
    """The real AppServer, run by its own event loop in a thread."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("secure-test-server")
        self.settings = settings

    def _stop(self) -> None:
        self.server.request_stop()

    async def _serve(self) -> None:
        self.server = AppServer(self.settings)
        await self.server.start()
        self._started()
        await self.server.wait_and_shutdown()

    @property
    def https(self) -> str:
        return f"https://{HOST}:{self.server.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.server.grpc_port}"


@dataclass(frozen=True)
class Pki:
    """The test's certificate authorities and certificates, with files where needed."""

    ca: CertificateAuthority
    other_ca: CertificateAuthority  # issues the "wrong" client certificate
    server: Issued
    client: Issued
    wrong_client: Issued
    directory: Path

    def file(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, other = CertificateAuthority("aecluster test CA"), CertificateAuthority("other CA")
    return Pki(ca, other, ca.server(), ca.client("good client"),
               other.client("client of another CA"), tmp_path_factory.mktemp("pki"))


def _repo(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    clone_version(digits_bundle, repo, "digits", 1)
    return repo


def _settings(repo: Path, **values: Any) -> Settings:
    return Settings(model_repo=repo, host=HOST, http_port=0, grpc_port=0, poll_seconds=0,
                    max_batch_size=4, drain_seconds=1, secrets_poll_seconds=POLL,
                    log_json=False, **values)


@pytest.fixture(scope="module")
def mtls(pki: Pki, digits_bundle: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """TLS with client certificates required, tokens required, an operations port."""
    cert, key = pki.server.write(pki.directory, "server")
    settings = _settings(
        _repo(digits_bundle, tmp_path_factory), operations_port=0, tls_cert_file=cert,
        tls_key_file=key, tls_client_ca_file=pki.file("clients-ca.crt", pki.ca.pem),
        auth_tokens_file=pki.file("tokens", f"# test tokens\n{TOKEN}\n".encode()))
    with ServerThread(settings) as server:
        yield server


# ---- clients ----------------------------------------------------------------------------


def _client_context(trust: bytes, client: Issued | None, directory: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=trust.decode("ascii"))
    if client is not None:
        cert, key = client.write(directory, f"client-{abs(hash(client.cert_pem))}")
        context.load_cert_chain(cert, key)
    return context


def _http(server: ServerThread, pki: Pki, client: Issued | None = None,
          trust: bytes | None = None) -> httpx.Client:
    context = _client_context(trust or pki.ca.pem, client, pki.directory)
    return httpx.Client(base_url=server.https, verify=context, timeout=30)


def _channel(server: ServerThread, trust: bytes, client: Issued | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trust,
        private_key=None if client is None else client.key_pem,
        certificate_chain=None if client is None else client.cert_pem)
    return grpc.secure_channel(server.grpc_target, credentials)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _digit_png() -> bytes:
    pixels = np.round(load_digits().images[0] / 16 * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, "PNG")
    return buffer.getvalue()


CLUSTER = pb.ClusterRequest(model="digits", images=[pb.Image(encoded=_digit_png())])


def _cluster(channel: grpc.Channel, metadata: Any = None) -> pb.ClusterResponse:
    answer: pb.ClusterResponse = pb_grpc.ClusterServiceStub(channel).Cluster(
        CLUSTER, metadata=metadata, timeout=30)
    return answer


def _grpc_code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    code: grpc.StatusCode = caught.value.code()  # type: ignore[attr-defined]
    return code


def _presented(port: int, alpn: str) -> bytes:
    """The certificate the server presents to a new connection on ``port`` (DER)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only looking
    context.set_alpn_protocols([alpn])
    with socket.create_connection((HOST, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v
                                              for k, v in labels.items()))


# ---- HTTP -------------------------------------------------------------------------------


def test_http_needs_a_token_over_mutual_tls(mtls: ServerThread, pki: Pki) -> None:
    with _http(mtls, pki, pki.client) as http:
        listed = http.get("/v1/models", headers=_bearer(TOKEN))
        assert listed.status_code == 200 and listed.json()["models"][0]["name"] == "digits"
        answer = http.post("/v1/models/digits:cluster", content=_digit_png(),
                           headers={"x-api-key": TOKEN, "Content-Type": "image/png"})
        assert answer.status_code == 200, answer.text
        assert 0 <= answer.json()["predictions"][0]["cluster_id"] < 10

        for headers, fragment in [({}, "requires a token"),
                                  (_bearer(WRONG), "not accepted"),
                                  ({"x-api-key": WRONG}, "not accepted"),
                                  ({"Authorization": f"Basic {TOKEN}"}, "must be 'Bearer")]:
            refused = http.post("/v1/models/digits:cluster", content=_digit_png(),
                                headers={**headers, "Content-Type": "image/png"})
            assert refused.status_code == 401, headers
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert fragment in refused.json()["error"]
            assert TOKEN not in refused.text and WRONG not in refused.text
            assert refused.headers["x-request-id"]
        # Every other path too: the page, the API description, unknown paths.
        for path in ("/", "/docs", "/openapi.json", "/v1/models/digits", "/no-such-path"):
            assert http.get(path).status_code == 401, path


def test_health_and_metrics_need_no_token(mtls: ServerThread, pki: Pki) -> None:
    with _http(mtls, pki, pki.client) as http:
        http.get("/v1/models")  # one refusal, counted below
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert _metric(metrics.text, "aecluster_requests_total", protocol="http",
                       code="401") >= 1
    # The operations port: plain HTTP, no certificate, no token; nothing but the three.
    plain = f"http://{HOST}:{mtls.server.operations_port}"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(plain + path, timeout=10).status_code == 200, path
    assert httpx.get(plain + "/v1/models", timeout=10).status_code == 404
    assert httpx.get(plain + "/v1/models", headers=_bearer(TOKEN), timeout=10).status_code == 404


def test_http_refuses_plaintext_and_wrong_certificates(mtls: ServerThread, pki: Pki) -> None:
    with _http(mtls, pki, pki.client) as http:  # the control: this one gets in
        assert http.get("/healthz").status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{HOST}:{mtls.server.http_port}/healthz", timeout=10)
    for client in (None, pki.wrong_client):
        with _http(mtls, pki, client) as http, pytest.raises(httpx.TransportError):
            http.get("/healthz")
    # And the client checks the server: a client that trusts another CA refuses it.
    with _http(mtls, pki, pki.client, trust=pki.other_ca.pem) as http, \
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        http.get("/healthz")


# ---- gRPC -------------------------------------------------------------------------------


def test_grpc_needs_a_token_over_mutual_tls(mtls: ServerThread, pki: Pki) -> None:
    with _channel(mtls, pki.ca.pem, pki.client) as channel:
        assert len(_cluster(channel, _metadata(TOKEN)).predictions) == 1
        assert len(_cluster(channel, (("x-api-key", TOKEN),)).predictions) == 1
        for metadata in (None, _metadata(WRONG), (("x-api-key", WRONG),)):
            code = _grpc_code(lambda m=metadata: _cluster(channel, m))  # type: ignore[misc]
            assert code == grpc.StatusCode.UNAUTHENTICATED, metadata
        # TF Serving's API and reflection too; the health service answers anyone.
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "digits"
        assert status(request, metadata=_metadata(TOKEN), timeout=30).model_version_status
        assert _grpc_code(lambda: status(request, timeout=30)) == (
            grpc.StatusCode.UNAUTHENTICATED)
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        assert next(iter(reflect(iter([ask]), metadata=_metadata(TOKEN), timeout=30)))
        assert _grpc_code(lambda: next(iter(reflect(iter([ask]), timeout=30)))) == (
            grpc.StatusCode.UNAUTHENTICATED)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with _http(mtls, pki, pki.client) as http:
        assert _metric(http.get("/metrics").text, "aecluster_requests_total",
                       protocol="grpc", method="cluster", code="UNAUTHENTICATED") >= 3


def test_grpc_refuses_plaintext_and_wrong_certificates(mtls: ServerThread, pki: Pki) -> None:
    with _channel(mtls, pki.ca.pem, pki.client) as channel:  # the control
        assert len(_cluster(channel, _metadata(TOKEN)).predictions) == 1
    with grpc.insecure_channel(mtls.grpc_target) as channel:
        assert _grpc_code(lambda: _cluster(channel, _metadata(TOKEN))) == (
            grpc.StatusCode.UNAVAILABLE)
    for client in (None, pki.wrong_client):
        with _channel(mtls, pki.ca.pem, client) as channel:
            assert _grpc_code(lambda: _cluster(channel, _metadata(TOKEN))) == (
                grpc.StatusCode.UNAVAILABLE), client
    with _channel(mtls, pki.other_ca.pem, pki.client) as channel:
        assert _grpc_code(lambda: _cluster(channel, _metadata(TOKEN))) == (
            grpc.StatusCode.UNAVAILABLE)


# ---- binding ----------------------------------------------------------------------------


def test_every_port_listens_on_the_host_only(mtls: ServerThread) -> None:
    """AEC_HOST=127.0.0.1: the ports answer on 127.0.0.1 and on no other address (Linux
    routes all of 127/8 to the loopback, so a socket bound to every interface would answer
    127.0.0.2 too)."""
    server = mtls.server
    for port in (server.http_port, server.grpc_port, server.operations_port):
        assert port
        with socket.create_connection((HOST, port), timeout=5):
            pass
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()


# ---- following the files ----------------------------------------------------------------


@pytest.fixture
def rotating(pki: Pki, digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory,
             tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    """TLS without client certificates, tokens, and every file in a Secret volume laid
    out as the kubelet does; the test replaces them."""
    secret = tmp_path / "secret"
    kubelet_secret_dir(secret, {"tls.crt": pki.server.cert_pem, "tls.key": pki.server.key_pem,
                                "tokens": f"{TOKEN}\n".encode()})
    settings = _settings(_repo(digits_bundle, tmp_path_factory),
                         tls_cert_file=secret / "tls.crt", tls_key_file=secret / "tls.key",
                         auth_tokens_file=secret / "tokens")
    with ServerThread(settings) as server:
        yield server, secret


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"not within {WAIT:.0f} s: {what}"
        time.sleep(POLL)


def test_a_renewed_certificate_is_presented_without_a_restart(
        rotating: tuple[ServerThread, Path], pki: Pki) -> None:
    server, secret = rotating
    ports = {"http": (server.server.http_port, "http/1.1"),
             "grpc": (server.server.grpc_port, "h2")}
    for port, alpn in ports.values():
        assert _presented(port, alpn) == pki.server.der
    # TLS without client certificates: a client with none gets in (with a token).
    with _http(server, pki) as http:
        assert http.get("/v1/models", headers=_bearer(TOKEN)).status_code == 200

    # Renewed, and by another CA: only the renewed certificate satisfies a client that
    # trusts that CA alone.
    renewed = pki.other_ca.server()
    kubelet_secret_dir(secret, {"tls.crt": renewed.cert_pem, "tls.key": renewed.key_pem,
                                "tokens": f"{TOKEN}\n".encode()})
    for name, (port, alpn) in ports.items():
        _eventually(lambda p=port, a=alpn: _presented(p, a) == renewed.der,  # type: ignore[misc]
                    f"{name} presents the renewed certificate")
    with _http(server, pki, trust=pki.other_ca.pem) as http:
        assert http.get("/v1/models", headers=_bearer(TOKEN)).status_code == 200
    with _http(server, pki) as http, pytest.raises(httpx.ConnectError):
        http.get("/healthz")
    with _channel(server, pki.other_ca.pem) as channel:
        assert len(_cluster(channel, _metadata(TOKEN)).predictions) == 1
    with _channel(server, pki.ca.pem) as channel:
        assert _grpc_code(lambda: _cluster(channel, _metadata(TOKEN))) == (
            grpc.StatusCode.UNAVAILABLE)


def test_a_changed_token_file_is_used_without_a_restart(
        rotating: tuple[ServerThread, Path], pki: Pki) -> None:
    server, secret = rotating
    with _http(server, pki) as http, _channel(server, pki.ca.pem) as channel:
        assert http.get("/v1/models", headers=_bearer(TOKEN)).status_code == 200
        assert http.get("/v1/models", headers=_bearer(NEW_TOKEN)).status_code == 401
        kubelet_secret_dir(secret, {"tls.crt": pki.server.cert_pem,
                                    "tls.key": pki.server.key_pem,
                                    "tokens": f"{NEW_TOKEN}\n".encode()})
        _eventually(lambda: http.get("/v1/models",
                                     headers=_bearer(NEW_TOKEN)).status_code == 200,
                    "the new token is accepted")
        assert http.get("/v1/models", headers=_bearer(TOKEN)).status_code == 401
        assert len(_cluster(channel, _metadata(NEW_TOKEN)).predictions) == 1
        assert _grpc_code(lambda: _cluster(channel, _metadata(TOKEN))) == (
            grpc.StatusCode.UNAUTHENTICATED)


def test_a_new_client_ca_is_trusted_without_a_restart(
        pki: Pki, digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory,
        tmp_path: Path) -> None:
    """Client CA file replaced by another CA: that CA's clients get in on both protocols.
    The old CA's clients are refused by gRPC at once; HTTP still admits them (Python cannot
    take a CA out of a live SSLContext), as docs/security.md says."""
    secret = tmp_path / "secret"
    files = {"tls.crt": pki.server.cert_pem, "tls.key": pki.server.key_pem}
    kubelet_secret_dir(secret, {**files, "ca.crt": pki.ca.pem})
    settings = _settings(_repo(digits_bundle, tmp_path_factory),
                         tls_cert_file=secret / "tls.crt", tls_key_file=secret / "tls.key",
                         tls_client_ca_file=secret / "ca.crt")
    with ServerThread(settings) as server:
        def http_admits(client: Issued) -> bool:
            try:
                with _http(server, pki, client) as http:
                    return http.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        def grpc_admits(client: Issued) -> bool:
            with _channel(server, pki.ca.pem, client) as channel:
                try:
                    return len(_cluster(channel).predictions) == 1
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
                    return False

        assert http_admits(pki.client) and grpc_admits(pki.client)
        assert not http_admits(pki.wrong_client) and not grpc_admits(pki.wrong_client)

        kubelet_secret_dir(secret, {**files, "ca.crt": pki.other_ca.pem})
        _eventually(lambda: http_admits(pki.wrong_client), "HTTP trusts the new CA")
        _eventually(lambda: grpc_admits(pki.wrong_client), "gRPC trusts the new CA")
        assert not grpc_admits(pki.client)
        assert http_admits(pki.client)  # the documented difference

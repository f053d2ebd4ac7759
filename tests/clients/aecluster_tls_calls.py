"""Run in the aecluster-client venv by tests/integration/test_aecluster_client.py: the
client's TLS options against a real server that requires TLS, client certificates and a
token, printing what it saw as one JSON object on stdout.

    python aecluster_tls_calls.py HTTPS_URL GRPC_TARGET CA.pem CLIENT.crt CLIENT.key TOKEN IMAGE

The assertions are the test's; this script only records.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
from aecluster_client import AsyncHttpClient, ClusterError, GrpcClient, HttpClient, RetryEvent

MODEL = "digits"


def _failure(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        call()
    except ClusterError as error:
        return {"code": error.code, "reason": error.reason, "attempts": error.attempts,
                "retryable": error.retryable}
    except (TypeError, ValueError) as error:
        return {"code": type(error).__name__, "reason": str(error)}
    return {"code": None}


def main() -> int:
    https, target, ca, cert, key, token, image_path = sys.argv[1:]
    image = Path(image_path).read_bytes()
    bearer = {"Authorization": f"Bearer {token}"}
    trusted = ssl.create_default_context(cafile=ca)
    trusted.load_cert_chain(cert, key)
    no_client_cert = ssl.create_default_context(cafile=ca)
    retries: list[str] = []

    def on_retry(event: RetryEvent) -> None:
        retries.append(event.error.code)

    seen: dict[str, Any] = {}
    with HttpClient(https, model=MODEL, headers=bearer, tls=trusted) as client:
        seen["http"] = client.cluster(image).cluster_id

    async def asynchronous() -> int:
        async with AsyncHttpClient(https, model=MODEL, headers=bearer, tls=trusted) as client:
            return (await client.cluster(image)).cluster_id

    seen["http_async"] = asyncio.run(asynchronous())
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(), private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes())
    with GrpcClient(target, model=MODEL, metadata=(("authorization", f"Bearer {token}"),),
                    credentials=credentials) as grpc_client:
        seen["grpc"] = grpc_client.cluster(image).cluster_id

    # The system's CAs do not know the test's CA: the server's certificate is refused.
    with HttpClient(https, model=MODEL, headers=bearer, timeout=20,
                    on_retry=on_retry) as client:
        seen["untrusted"] = _failure(lambda: client.cluster(image))
    # The server asks for a client certificate this context does not hold.
    with HttpClient(https, model=MODEL, headers=bearer, timeout=20, tls=no_client_cert,
                    on_retry=on_retry) as client:
        seen["no_client_cert"] = _failure(lambda: client.cluster(image))
    seen["retries"] = retries
    seen["plain_url"] = _failure(lambda: HttpClient(https.replace("https://", "http://"),
                                                    model=MODEL, tls=trusted))
    seen["not_a_context"] = _failure(lambda: HttpClient(https, model=MODEL, tls=ca))  # type: ignore[arg-type]
    seen["with_transport"] = _failure(lambda: HttpClient(
        https, model=MODEL, tls=trusted, transport=httpx.HTTPTransport()))
    sys.stdout.write(json.dumps(seen) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The native API over HTTP (``:cluster``, JSON): :class:`HttpClient` and
:class:`AsyncHttpClient`."""

from __future__ import annotations

import email.utils
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from aecluster_client import _convert, retry
from aecluster_client._api import AsyncAPI, SyncAPI
from aecluster_client._grpc import _abatches, _batches
from aecluster_client.errors import HTTP_TO_GRPC, ClusterError
from aecluster_client.types import ImageInput, Prediction, Reconstruction

DEFAULT_TIMEOUT_S = 30.0
# The server drops work that would be answered after this (504 instead of a late answer).
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
REQUEST_ID_HEADER = "X-Request-Id"
RETRYABLE_STATUSES = frozenset({429, 503})
_SNIPPET_CHARS = 300  # of a non-JSON error page: enough to say what it was


def _retry_after(value: str | None) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP-date (RFC 9110), as seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error(response: httpx.Response) -> ClusterError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        reason = body["error"]
    else:
        reason = " ".join(response.text.split())[:_SNIPPET_CHARS] or response.reason_phrase
    status = response.status_code
    retry_after = _retry_after(response.headers.get("Retry-After"))
    code = HTTP_TO_GRPC.get(status, "UNKNOWN")
    if status == 503 and retry_after is not None:
        code = "RESOURCE_EXHAUSTED"  # the table's "queue full" row
    return ClusterError(code, reason, http_status=status, retry_after=retry_after,
                        retryable=status in RETRYABLE_STATUSES,
                        request_id=response.headers.get(REQUEST_ID_HEADER))


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under an httpx error, if the handshake is what failed."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _transport_error(url: str, exc: httpx.HTTPError) -> ClusterError:
    failure = _tls_failure(exc)
    if failure is not None:
        # An untrusted certificate, or a server that wants a client certificate, refuses
        # every attempt alike: said at once, not retried until the deadline.
        return ClusterError("UNAVAILABLE", f"TLS with {url} failed: {failure}; pass tls= an "
                            "ssl.SSLContext that trusts the server's CA (and holds the client "
                            "certificate when the server asks for one)", retryable=False)
    if isinstance(exc, httpx.ConnectError):
        # Nothing reached the server: as gRPC's UNAVAILABLE, worth another try.
        return ClusterError("UNAVAILABLE", f"cannot connect to {url}: {exc}", retryable=True)
    if isinstance(exc, httpx.TimeoutException):
        return ClusterError("DEADLINE_EXCEEDED", f"no answer from {url} before the deadline")
    return ClusterError("UNKNOWN", f"{url}: {exc!r}")


class _Base:
    def __init__(self, url: str, model: str, version: int | None, timeout: float | None,
                 retry_policy: retry.RetryPolicy | None, headers: Mapping[str, str],
                 on_retry: retry.OnRetry | None, tls: ssl.SSLContext | None = None,
                 transport: object | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if tls is not None:
            if not isinstance(tls, ssl.SSLContext):
                raise TypeError(f"tls must be an ssl.SSLContext, got {type(tls).__name__}")
            if not url.startswith("https://"):
                raise ValueError(f"tls= needs an https:// url, got {url!r}")
            if transport is not None:
                raise ValueError("pass tls= or transport=, not both: a transport brings its "
                                 "own TLS settings")
        self._verify: ssl.SSLContext | bool = tls if tls is not None else True
        self.url = url.rstrip("/")
        self.model = model
        self.version = version
        self.timeout = timeout
        self.retry_policy = retry_policy if retry_policy is not None else retry.RetryPolicy()
        self.headers = dict(headers)
        self.on_retry = on_retry
        # Quoted as one path segment: a name like "../x" reaches the server as a name.
        path = f"{self.url}/v1/models/{quote(model, safe='')}"
        self._cluster_url = (path if version is None else f"{path}/versions/{version}") \
            + ":cluster"

    def _deadline(self, timeout: float | None) -> retry.Deadline:
        return retry.Deadline(self.timeout if timeout is None else timeout)

    def _headers(self, remaining: float | None) -> dict[str, str]:
        if remaining is None:
            return self.headers
        return {**self.headers, TIMEOUT_HEADER: f"{max(1, round(remaining * 1000))}"}


class HttpClient(_Base, SyncAPI):
    """Blocking client of ``POST /v1/models/{model}[/versions/{v}]:cluster``; one
    ``httpx.Client`` (a pool of kept-alive connections) reused by every call. ``timeout`` is
    each call's deadline, retries and waits included, and is sent to the server as
    ``X-Request-Timeout-Ms``; ``headers`` go with every call (``Authorization``, say).
    ``tls``: an ``ssl.SSLContext`` for an https:// url, to trust a private CA or present a
    client certificate (the default trusts the system's CAs)."""

    def __init__(self, url: str, *, model: str, version: int | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT_S,
                 retry_policy: retry.RetryPolicy | None = None,
                 headers: Mapping[str, str] | None = None, on_retry: retry.OnRetry | None = None,
                 transport: httpx.BaseTransport | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__(url, model, version, timeout, retry_policy, headers or {}, on_retry,
                         tls, transport)
        self._http = httpx.Client(transport=transport, verify=self._verify)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def cluster_batch(self, images: Sequence[ImageInput], *,
                      reconstruction: Reconstruction = "none", embedding: bool = False,
                      top_k: int = 0, timeout: float | None = None) -> list[Prediction]:
        """Cluster several images in one request; the answers are in their order."""
        return self._batch(_convert.http_body(images, reconstruction, embedding, top_k),
                           self._deadline(timeout))

    def cluster_stream(self, images: Iterable[ImageInput], *, batch_size: int = 16,
                       reconstruction: Reconstruction = "none", embedding: bool = False,
                       top_k: int = 0, timeout: float | None = None) -> Iterator[Prediction]:
        """Cluster images as they come: HTTP has no stream of requests, so they go in
        requests of ``batch_size`` images, one after another on the kept-alive connection,
        each retried on its own; answers come in order. ``timeout`` covers them all."""
        deadline = self._deadline(timeout)
        for batch in _batches(images, batch_size):
            yield from self._batch(_convert.http_body(batch, reconstruction, embedding, top_k),
                                   deadline)

    def _batch(self, body: dict[str, Any], deadline: retry.Deadline) -> list[Prediction]:
        def attempt(remaining: float | None) -> list[Prediction]:
            try:
                response = self._http.post(self._cluster_url, json=body, timeout=remaining,
                                           headers=self._headers(remaining))
            except httpx.HTTPError as exc:
                raise _transport_error(self._cluster_url, exc) from exc
            if response.is_error:
                raise _error(response)
            return _convert.from_http(response.json())

        return retry.call(attempt, self.retry_policy, deadline, self.on_retry)


class AsyncHttpClient(_Base, AsyncAPI):
    """:class:`HttpClient` for asyncio, on one ``httpx.AsyncClient``; ``async with``
    closes it."""

    def __init__(self, url: str, *, model: str, version: int | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT_S,
                 retry_policy: retry.RetryPolicy | None = None,
                 headers: Mapping[str, str] | None = None, on_retry: retry.OnRetry | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__(url, model, version, timeout, retry_policy, headers or {}, on_retry,
                         tls, transport)
        self._http = httpx.AsyncClient(transport=transport, verify=self._verify)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def cluster_batch(self, images: Sequence[ImageInput], *,
                            reconstruction: Reconstruction = "none", embedding: bool = False,
                            top_k: int = 0, timeout: float | None = None) -> list[Prediction]:
        """Cluster several images in one request; the answers are in their order."""
        return await self._batch(_convert.http_body(images, reconstruction, embedding, top_k),
                                 self._deadline(timeout))

    async def cluster_stream(self, images: Iterable[ImageInput] | AsyncIterable[ImageInput],
                             *, batch_size: int = 16, reconstruction: Reconstruction = "none",
                             embedding: bool = False, top_k: int = 0,
                             timeout: float | None = None) -> AsyncIterator[Prediction]:
        """:meth:`HttpClient.cluster_stream` for asyncio; ``images`` may be async."""
        deadline = self._deadline(timeout)
        async for batch in _abatches(images, batch_size):
            body = _convert.http_body(batch, reconstruction, embedding, top_k)
            for prediction in await self._batch(body, deadline):
                yield prediction

    async def _batch(self, body: dict[str, Any], deadline: retry.Deadline) -> list[Prediction]:
        async def attempt(remaining: float | None) -> list[Prediction]:
            try:
                response = await self._http.post(self._cluster_url, json=body,
                                                 timeout=remaining,
                                                 headers=self._headers(remaining))
            except httpx.HTTPError as exc:
                raise _transport_error(self._cluster_url, exc) from exc
            if response.is_error:
                raise _error(response)
            return _convert.from_http(response.json())

        return await retry.call_async(attempt, self.retry_policy, deadline, self.on_retry)

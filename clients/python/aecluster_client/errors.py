"""The one exception a call raises: the server's status code and reason, and the attempts."""

from __future__ import annotations

# The server's error table (service/errors.py) by HTTP status, as gRPC code names, so a
# caller checks one ``code`` whichever transport it uses. 503 is two rows of the table:
# a full queue (with Retry-After; RESOURCE_EXHAUSTED over gRPC) or not ready / draining.
HTTP_TO_GRPC = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


class ClusterError(Exception):
    """A call failed, for good: ``code`` is the gRPC status name (over HTTP, the error
    table's name for the status), ``reason`` the server's message.

    ``http_status`` is set over HTTP; ``retry_after`` when the server asked to wait
    (``Retry-After`` or ``grpc-retry-pushback-ms``, seconds); ``attempts`` counts the
    calls made, retries included; ``retryable`` says whether the retry policy may try again.
    """

    def __init__(self, code: str, reason: str, *, http_status: int | None = None,
                 retry_after: float | None = None, retryable: bool = False,
                 request_id: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.http_status = http_status
        self.retry_after = retry_after
        self.retryable = retryable
        self.request_id = request_id
        self.attempts = 1
        super().__init__(code, reason)

    def __str__(self) -> str:
        status = f"HTTP {self.http_status} " if self.http_status is not None else ""
        tries = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{status}{self.code}: {self.reason}{tries}"

"""One error hierarchy for every transport.

Each class carries its HTTP status and the *name* of its gRPC status code, so the REST
exception handler and the gRPC interceptor render the same table (the core never imports
grpc or FastAPI; ``grpc.StatusCode[cls.grpc_code]`` turns the name into the enum).

| condition                                              | HTTP | gRPC               |
|--------------------------------------------------------|------|--------------------|
| malformed request, bad image, shape, NaN/inf, empty    | 400  | INVALID_ARGUMENT   |
| missing or unaccepted token (+ WWW-Authenticate)       | 401  | UNAUTHENTICATED    |
| unknown model, version or signature                    | 404  | NOT_FOUND          |
| method not served on a served path (HTTP, + Allow)     | 405  | UNIMPLEMENTED      |
| body or image over the configured limit                | 413  | RESOURCE_EXHAUSTED |
| body in a media type the endpoint does not read (HTTP) | 415  | INVALID_ARGUMENT   |
| queue full (backpressure)                              | 503  | RESOURCE_EXHAUSTED |
| model not ready / server draining                      | 503  | UNAVAILABLE        |
| deadline passed while queued                           | 504  | DEADLINE_EXCEEDED  |
| anything else                                          | 500  | INTERNAL           |
"""

from __future__ import annotations

from http import HTTPStatus

# Longest message a caller is sent. Messages echo what the caller sent (a model name, a
# field): a 10 KB name made the gRPC status trailer pass grpc's 8 KB metadata limit, and the
# caller got RESOURCE_EXHAUSTED instead of NOT_FOUND (issue 39).
MAX_MESSAGE_CHARS = 1000


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    cut = len(message) - MAX_MESSAGE_CHARS
    return f"{message[:MAX_MESSAGE_CHARS]}... ({cut} more characters not shown)"


class ServiceError(Exception):
    """Base class: ``str(error)`` is the message the caller sees (at most about
    ``MAX_MESSAGE_CHARS`` characters: longer ones are cut, saying so)."""

    http_status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    grpc_code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        message = _bounded(message)
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    """The request cannot be understood: bad JSON, undecodable image, wrong shape, NaN..."""

    http_status = HTTPStatus.BAD_REQUEST
    grpc_code = "INVALID_ARGUMENT"


class Unauthenticated(ServiceError):
    """No token, or one that is not accepted, on a server that requires one. Rendered with
    ``WWW-Authenticate: Bearer`` over HTTP; the message never repeats the token."""

    http_status = HTTPStatus.UNAUTHORIZED
    grpc_code = "UNAUTHENTICATED"
    challenge = 'Bearer realm="aecluster"'


class NotFound(ServiceError):
    """No such model, version or signature."""

    http_status = HTTPStatus.NOT_FOUND
    grpc_code = "NOT_FOUND"


class MethodNotAllowed(ServiceError):
    """An HTTP method that the path is not served for; ``allow`` lists the ones it is.

    gRPC methods are named by their path, so there it can only be UNIMPLEMENTED.
    """

    http_status = HTTPStatus.METHOD_NOT_ALLOWED
    grpc_code = "UNIMPLEMENTED"

    def __init__(self, message: str, allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allow = allow


class UnsupportedMediaType(ServiceError):
    """An HTTP body whose Content-Type the endpoint does not read (JSON sent as image/png).

    gRPC messages have no media type; the code is there for the table's sake.
    """

    http_status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    grpc_code = "INVALID_ARGUMENT"


class PayloadTooLarge(ServiceError):
    """A body or a decoded image is over its configured limit."""

    http_status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    grpc_code = "RESOURCE_EXHAUSTED"


class QueueFull(ServiceError):
    """Backpressure: the model's queue is full; retry after ``retry_after`` seconds."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ServiceError):
    """The model is not loaded or ready yet, or the server is draining."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before its images were computed."""

    http_status = HTTPStatus.GATEWAY_TIMEOUT
    grpc_code = "DEADLINE_EXCEEDED"


class InternalError(ServiceError):
    """A bug or an unexpected failure; details go to the log, not to the caller."""

    http_status = HTTPStatus.INTERNAL_SERVER_ERROR
    grpc_code = "INTERNAL"


ERROR_CLASSES: tuple[type[ServiceError], ...] = (
    InvalidInput, Unauthenticated, NotFound, MethodNotAllowed, PayloadTooLarge,
    UnsupportedMediaType, QueueFull, Unavailable, DeadlineExceeded, InternalError,
)

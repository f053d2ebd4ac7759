"""The native API over gRPC: :class:`GrpcClient` (blocking) and :class:`AsyncGrpcClient`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import grpc

from aecluster_client import _convert, retry
from aecluster_client._api import AsyncAPI, SyncAPI
from aecluster_client.errors import ClusterError
from aecluster_client.proto import cluster_service_pb2 as pb
from aecluster_client.proto import cluster_service_pb2_grpc as pb_grpc
from aecluster_client.types import ImageInput, Prediction, Reconstruction

DEFAULT_TIMEOUT_S = 30.0
# The server's pushback trailer on a full queue (gRPC's retry design, A6): milliseconds.
PUSHBACK_KEY = "grpc-retry-pushback-ms"
REQUEST_ID_KEY = "x-request-id"
Metadata = Sequence[tuple[str, str]]


# What grpc.aio reports when the server ends a stream while a request is being written: the
# failed write replaces the status the server sent (grpc/grpc#36066, open in the locked
# grpcio). The server's own INTERNAL errors carry another message.
LOST_STATUS_DETAILS = "Internal error from Core"


def _error(exc: grpc.RpcError, *, stream: bool = False) -> ClusterError:
    """The status of a failed call as a :class:`ClusterError`, retryable per the policy.

    ``stream``: the call was an asyncio stream, where grpc.aio can lose the server's status
    (:data:`LOST_STATUS_DETAILS`). Seen against a full queue, whose RESOURCE_EXHAUSTED it
    hid. A reopened stream resends only what was not answered, so the loss is retried like
    UNAVAILABLE, within the same attempt limit.
    """
    code: grpc.StatusCode = exc.code()
    if stream and code == grpc.StatusCode.INTERNAL and exc.details() == LOST_STATUS_DETAILS:
        return ClusterError("UNAVAILABLE", f"the stream ended and grpc.aio lost the server's "
                            f"status ({LOST_STATUS_DETAILS}, grpc/grpc#36066)", retryable=True)
    pushback = request_id = None
    for key, value in exc.trailing_metadata() or ():
        if key == PUSHBACK_KEY:
            try:
                pushback = int(value) / 1000
            except ValueError:
                pushback = None  # gRPC's rule: a pushback that does not parse means no retry
            if pushback is not None and pushback < 0:
                pushback = None
        elif key == REQUEST_ID_KEY:
            request_id = str(value)
    # RESOURCE_EXHAUSTED without pushback is a size limit (too many images, a message over
    # grpc's limit): the same request would be refused again.
    retryable = code == grpc.StatusCode.UNAVAILABLE or (
        code == grpc.StatusCode.RESOURCE_EXHAUSTED and pushback is not None)
    return ClusterError(code.name, exc.details() or "",
                        retry_after=pushback, retryable=retryable, request_id=request_id)


def _batches(images: Iterable[ImageInput], size: int) -> Iterator[list[ImageInput]]:
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    batch: list[ImageInput] = []
    for image in images:
        batch.append(image)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def _abatches(images: Iterable[ImageInput] | AsyncIterable[ImageInput],
                    size: int) -> AsyncIterator[list[ImageInput]]:
    if not isinstance(images, AsyncIterable):
        for batch in _batches(images, size):
            yield batch
        return
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    pending: list[ImageInput] = []
    async for image in images:
        pending.append(image)
        if len(pending) == size:
            yield pending
            pending = []
    if pending:
        yield pending


class _Base:
    def __init__(self, model: str, version: int | None, timeout: float | None,
                 retry_policy: retry.RetryPolicy | None, metadata: Metadata,
                 on_retry: retry.OnRetry | None) -> None:
        self.model = model
        self.version = version
        self.timeout = timeout
        self.retry_policy = retry_policy if retry_policy is not None else retry.RetryPolicy()
        self.metadata = tuple(metadata)
        self.on_retry = on_retry

    def _request(self, images: Sequence[ImageInput], reconstruction: Reconstruction,
                 embedding: bool, top_k: int) -> pb.ClusterRequest:
        return _convert.grpc_request(images, self.model, self.version, reconstruction,
                                     embedding, top_k)

    def _deadline(self, timeout: float | None) -> retry.Deadline:
        return retry.Deadline(self.timeout if timeout is None else timeout)


class GrpcClient(_Base, SyncAPI):
    """Blocking client of ``aecluster.v1.ClusterService`` on one channel, reused by every
    call. ``timeout`` is each call's deadline, retries and waits included (None: none);
    ``metadata`` is sent with every call (``authorization: Bearer ...``, say).

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, target: str, *, model: str, version: int | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT_S,
                 retry_policy: retry.RetryPolicy | None = None, metadata: Metadata = (),
                 on_retry: retry.OnRetry | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        super().__init__(model, version, timeout, retry_policy, metadata, on_retry)
        self._channel = (grpc.insecure_channel(target) if credentials is None
                         else grpc.secure_channel(target, credentials))
        self._stub = pb_grpc.ClusterServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def cluster_batch(self, images: Sequence[ImageInput], *,
                      reconstruction: Reconstruction = "none", embedding: bool = False,
                      top_k: int = 0, timeout: float | None = None) -> list[Prediction]:
        """Cluster several images in one request; the answers are in their order."""
        request = self._request(images, reconstruction, embedding, top_k)

        def attempt(remaining: float | None) -> list[Prediction]:
            try:
                reply = self._stub.Cluster(request, timeout=remaining, metadata=self.metadata)
            except grpc.RpcError as exc:
                raise _error(exc) from None
            return _convert.from_grpc(reply)

        return retry.call(attempt, self.retry_policy, self._deadline(timeout), self.on_retry)

    def cluster_stream(self, images: Iterable[ImageInput], *, batch_size: int = 1,
                       reconstruction: Reconstruction = "none", embedding: bool = False,
                       top_k: int = 0, timeout: float | None = None) -> Iterator[Prediction]:
        """Cluster images as they come, over one ``ClusterStream``: each request message
        holds ``batch_size`` images; the answers come in order, one per image.

        ``timeout`` covers the whole stream. A retryable failure reopens the stream and
        sends again the requests not yet answered, so no image is lost or answered twice;
        ``max_attempts`` bounds the failures in a row without an answer between them.
        """
        source = (self._request(batch, reconstruction, embedding, top_k)
                  for batch in _batches(images, batch_size))
        pending: deque[pb.ClusterRequest] = deque()  # sent or to resend, not yet answered
        lock = threading.Lock()
        deadline = self._deadline(timeout)
        failures = 0
        while True:
            alive = [True]

            def outgoing(resend: list[pb.ClusterRequest], alive: list[bool] = alive
                         ) -> Iterator[pb.ClusterRequest]:
                yield from resend
                while True:
                    # grpc pulls this on a thread of its own; after a failure the next
                    # stream takes over the source, and this one must not take an item
                    # from it that only this (dead) stream would have sent.
                    with lock:
                        if not alive[0]:
                            return
                        request = next(source, None)
                        if request is None:
                            return
                        pending.append(request)
                    yield request

            call = self._stub.ClusterStream(outgoing(list(pending)),
                                            timeout=deadline.remaining(),
                                            metadata=self.metadata)
            try:
                for reply in call:
                    pending.popleft()
                    failures = 0
                    yield from _convert.from_grpc(reply)
                return
            except grpc.RpcError as exc:
                error = _error(exc)
            except BaseException:  # the caller stopped reading: end the stream
                call.cancel()
                raise
            with lock:
                alive[0] = False
            failures += 1
            time.sleep(retry.next_wait(error, failures, self.retry_policy, deadline,
                                        self.on_retry))


class AsyncGrpcClient(_Base, AsyncAPI):
    """:class:`GrpcClient` for asyncio, on one ``grpc.aio`` channel. Create it inside the
    event loop that uses it; ``async with`` closes it."""

    def __init__(self, target: str, *, model: str, version: int | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT_S,
                 retry_policy: retry.RetryPolicy | None = None, metadata: Metadata = (),
                 on_retry: retry.OnRetry | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        super().__init__(model, version, timeout, retry_policy, metadata, on_retry)
        self._channel = (grpc.aio.insecure_channel(target) if credentials is None
                         else grpc.aio.secure_channel(target, credentials))
        self._stub = pb_grpc.ClusterServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def cluster_batch(self, images: Sequence[ImageInput], *,
                            reconstruction: Reconstruction = "none", embedding: bool = False,
                            top_k: int = 0, timeout: float | None = None) -> list[Prediction]:
        """Cluster several images in one request; the answers are in their order."""
        request = self._request(images, reconstruction, embedding, top_k)

        async def attempt(remaining: float | None) -> list[Prediction]:
            try:
                reply = await self._stub.Cluster(request, timeout=remaining,
                                                 metadata=self.metadata)
            except grpc.RpcError as exc:
                raise _error(exc) from None
            return _convert.from_grpc(reply)

        return await retry.call_async(attempt, self.retry_policy, self._deadline(timeout),
                                      self.on_retry)

    async def cluster_stream(self, images: Iterable[ImageInput] | AsyncIterable[ImageInput],
                             *, batch_size: int = 1, reconstruction: Reconstruction = "none",
                             embedding: bool = False, top_k: int = 0,
                             timeout: float | None = None) -> AsyncIterator[Prediction]:
        """:meth:`GrpcClient.cluster_stream` for asyncio; ``images`` may be async."""
        batches = _abatches(images, batch_size)
        pending: deque[pb.ClusterRequest] = deque()
        # grpc.aio pulls requests on a task of its own. A failed stream's task may still be
        # waiting for the next image when the next stream starts: the lock lets it finish
        # that pull (the request lands in ``pending``) before the next stream reads
        # ``pending``, so that request is sent again, not lost.
        lock = asyncio.Lock()
        deadline = self._deadline(timeout)
        failures = 0
        exhausted = False
        while True:
            alive = [True]

            async def outgoing(alive: list[bool] = alive) -> AsyncIterator[pb.ClusterRequest]:
                nonlocal exhausted
                async with lock:
                    resend = list(pending)
                for request in resend:
                    yield request
                while True:
                    async with lock:
                        if not alive[0] or exhausted:
                            return
                        try:
                            batch = await batches.__anext__()
                        except StopAsyncIteration:
                            exhausted = True
                            return
                        request = self._request(batch, reconstruction, embedding, top_k)
                        pending.append(request)
                    yield request

            call: Any = self._stub.ClusterStream(outgoing(),
                                                 timeout=deadline.remaining(),
                                                 metadata=self.metadata)
            try:
                async for reply in call:
                    pending.popleft()
                    failures = 0
                    for prediction in _convert.from_grpc(reply):
                        yield prediction
                return
            except grpc.RpcError as exc:
                error = _error(exc, stream=True)
            except BaseException:
                call.cancel()
                raise
            async with lock:
                alive[0] = False
            failures += 1
            await asyncio.sleep(retry.next_wait(error, failures, self.retry_policy, deadline,
                                                self.on_retry))

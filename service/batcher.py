"""Dynamic batching: merge concurrent requests of one model version into few model calls.

Each request waits on futures of its own. One worker thread per :class:`Batcher` forms a
batch when ``max_batch_size`` images are waiting or ``max_delay_s`` has passed since the
oldest waiting request (monotonic clock), runs the model, and hands the rows, or the error,
back to the event loop in one callback per batch.

The worker forms the next batch itself, as soon as a model call returns, from what the
event loop queued meanwhile. Measured (issue 38): when an event-loop task formed the
batches, the model waited for the loop to get round to the finished batch's callback,
behind the parsing and answering of the other requests, and stood idle a third of the
time at c = 32; forming them on the worker raised gRPC c = 32 from about 1,750 to 2,100
req/s and lowered c = 1 by 0.1 ms (docs/serving.md).

The queue is bounded in images, not requests: a full queue refuses a request at once with
:class:`~service.errors.QueueFull` instead of letting memory and latency grow.

With tracing on, every request gets a ``queue wait`` span and a ``model`` span of its own,
under its request span, although one model call serves the whole batch: the worker only
stamps the batch's times (no tracer call on that thread), and each caller records its two
spans from them once its rows are back. So each trace holds its request's whole time line
with the model call in it, which a single batch span linked to N traces would give to one
of them only; the ``model`` span says how many images and requests shared the call and a
batch number they have in common.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable

import numpy as np

from service import errors, tracing, types
from service.metrics import Metrics

logger = logging.getLogger(__name__)

RunFn = Callable[[np.ndarray, bool], types.BatchOutput]
ObserveFn = Callable[[types.BatchOutput], None]

# Weight of the newest model-call time in the running average behind Retry-After.
_EMA_WEIGHT = 0.2


@dataclasses.dataclass
class _Stamp:
    """When the worker took a batch and when its call returned (wall-clock ns, the spans'
    time base), written on the worker thread for the callers' spans; only with tracing on."""

    number: int  # counts the batches of this batcher: requests computed together share it
    images: int
    requests: int
    taken_ns: int
    returned_ns: int = 0


@dataclasses.dataclass(eq=False)  # identity equality: deque.remove must find *this* part
class _Part:
    """Up to ``max_batch_size`` consecutive images of one request, queued as a unit."""

    images: np.ndarray
    with_reconstruction: bool
    enqueued: float
    future: asyncio.Future[types.BatchOutput]
    request: list[_Part] = dataclasses.field(default_factory=list)  # all parts, this one too
    queued: bool = True
    stamp: _Stamp | None = None  # the batch it was computed in (tracing on only)

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


class Batcher:
    """One per loaded model version, shared by every protocol.

    ``run(images, with_reconstruction)`` is the model call (``ModelRuntime.run`` behind a
    positional adapter); it runs on this batcher's worker thread, one call at a time
    (TensorFlow already spreads one call over the cores). ``observe``, if given, sees every
    batch's output on that thread after the call (the metrics of what was computed,
    recorded once per batch rather than once per request).

    The queue is shared by the event loop (which adds and withdraws requests) and the
    worker (which takes batches), under one lock; futures are only touched on the loop.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        model: str,
        version: int,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        metrics: Metrics,
        observe: ObserveFn | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self._run = run
        self._observe = observe
        self.model = model
        self.version = version
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        labels = {"model": model, "version": str(version)}
        self._queue_depth = metrics.queue_depth.labels(**labels)
        self._batch_size = metrics.batch_size.labels(**labels)
        self._inference = metrics.inference_duration_seconds.labels(**labels)
        self._lock = threading.Condition()
        # Guarded by _lock: the queue, its image count and the accepting/stopped flags.
        self._queue: collections.deque[_Part] = collections.deque()
        self._queued = 0
        self._accepting = False
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: threading.Thread | None = None
        self._finished: asyncio.Future[None] | None = None  # set when the worker returns
        self._running: list[_Part] = []  # the batch being computed (read on the loop)
        self._call_seconds: float | None = None  # running average of one model call
        self._batches = 0  # batches stamped for tracing (numbers them)

    @property
    def queued_images(self) -> int:
        """Images waiting for a batch (not counting the batch being computed)."""
        return self._queued

    def _name(self) -> str:
        return f"model {self.model} version {self.version}"

    async def start(self) -> None:
        """Start the worker thread; answers are delivered on the running event loop."""
        if self._stopped:
            raise errors.Unavailable(f"{self._name()} was stopped and cannot restart")
        if self._worker is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._finished = self._loop.create_future()
        self._accepting = True
        # A daemon: a model call that never returns must not keep the process alive.
        self._worker = threading.Thread(target=self._work, daemon=True,
                                        name=f"batcher-{self.model}-{self.version}")
        self._worker.start()
        self._queue_depth.set(0)

    async def submit(
        self, images: np.ndarray, *, with_reconstruction: bool, deadline: float | None = None,
    ) -> types.BatchOutput:
        """Compute ``images`` (float32 [n, H, W, C]) in one or more batches; rows in order.

        ``deadline`` is an absolute ``time.monotonic()`` value. Raises QueueFull when the
        queue cannot take n more images, DeadlineExceeded when the deadline passes first
        (images still queued then are never computed), Unavailable when stopping.
        """
        loop = self._loop
        if not self._accepting or loop is None:
            state = "stopping" if self._stopped else "not started"
            raise errors.Unavailable(f"{self._name()} is not accepting requests ({state})")
        n = self._count(images)
        if n > self.max_queue:
            raise errors.PayloadTooLarge(
                f"a request of {n} images can never fit the queue of {self._name()} "
                f"({self.max_queue} images): send at most {self.max_queue} per request"
            )
        if deadline is not None and deadline <= time.monotonic():
            raise errors.DeadlineExceeded(
                f"the deadline passed before the request reached the queue of {self._name()}"
            )
        # Only the loop adds to the queue and the worker only takes from it, so the count
        # read here can only have fallen by the time the parts are added.
        if self._queued + n > self.max_queue:
            retry_after = self._retry_after()
            raise errors.QueueFull(
                f"the queue of {self._name()} is full ({self._queued} of {self.max_queue} "
                f"images waiting, this request adds {n}); retry in {retry_after:.0f} s",
                retry_after=retry_after,
            )
        now = time.monotonic()
        enqueued_ns = tracing.now_ns() if tracing.enabled else 0
        size = self.max_batch_size
        parts = [_Part(images[i:i + size], with_reconstruction, now, loop.create_future())
                 for i in range(0, n, size)]
        for part in parts:
            part.request = parts
        with self._lock:
            self._queue.extend(parts)
            self._queued += n
            self._queue_depth.set(self._queued)
            self._lock.notify()
        try:
            if deadline is None:
                outputs = [await part.future for part in parts]
            else:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    outputs = [await part.future for part in parts]
        except TimeoutError:
            withdrawn = self._withdraw(parts)
            _retrieve(parts)
            where = (f"while it was queued: none of its {n} images were computed"
                     if withdrawn == n else
                     f"while its images were being computed ({withdrawn} of {n} not computed)")
            raise errors.DeadlineExceeded(
                f"the request's deadline passed {where} ({self._name()})"
            ) from None
        except BaseException:
            # An error of one part, or the caller went away: the rest need not be computed.
            self._withdraw(parts)
            _retrieve(parts)
            raise
        finally:
            if enqueued_ns:
                self._trace(parts, enqueued_ns)
        return outputs[0] if len(outputs) == 1 else types.BatchOutput.concat(outputs)

    def _trace(self, parts: list[_Part], enqueued_ns: int) -> None:
        """On the loop, under the request's span: ``queue wait`` and ``model`` of each part
        (a part never taken waited until now; one still computing has no ``model``)."""
        now = tracing.now_ns()
        for part in parts:
            stamp = part.stamp
            taken = now if stamp is None else stamp.taken_ns
            tracing.record("queue wait", enqueued_ns, taken, {"aecluster.images": part.size})
            if stamp is not None and stamp.returned_ns:
                tracing.record("model", taken, stamp.returned_ns, {
                    "aecluster.model": self.model,
                    "aecluster.model_version": self.version,
                    "aecluster.batch.size": stamp.images,
                    "aecluster.batch.requests": stamp.requests,
                    "aecluster.batch.number": stamp.number,
                    "aecluster.images": part.size,
                })

    @staticmethod
    def _count(images: np.ndarray) -> int:
        shape: tuple[int, ...] = tuple(getattr(images, "shape", ()))
        if len(shape) < 1 or shape[0] < 1:
            raise errors.InvalidInput(
                f"a batch needs at least one image as [n, H, W, C], got shape {list(shape)}"
            )
        return int(shape[0])

    def _withdraw(self, parts: list[_Part], error: BaseException | None = None) -> int:
        """On the loop: take a request's still-queued parts out of the queue; return their
        image count.

        Their futures get ``error``, or are cancelled when there is none (the caller is
        gone, nobody awaits them).
        """
        removed = self._unqueue(parts)
        for part in parts:
            if error is not None:
                _fail(part, error)
            elif not part.future.done():
                part.future.cancel()
        return removed

    def _retry_after(self) -> float:
        """Seconds until the queue has drained, by the recent model-call time; at least 1."""
        per_call = self._call_seconds if self._call_seconds is not None else 0.0
        batches = math.ceil(self._queued / self.max_batch_size) + 1  # +1: the one running
        return float(max(1, math.ceil(batches * per_call + self.max_delay_s)))

    # ---- the worker thread -------------------------------------------------------------

    def _work(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            while (batch := self._next_batch()) is not None:
                stamp = self._stamp(batch) if tracing.enabled else None
                flag = any(part.with_reconstruction for part in batch)
                self._batch_size.observe(sum(part.size for part in batch))
                try:
                    output: types.BatchOutput | None = self._call(
                        [part.images for part in batch], flag)
                    failure: BaseException | None = None
                except Exception as exc:
                    output, failure = None, exc
                    self._unqueue_requests(batch)
                if stamp is not None:
                    stamp.returned_ns = tracing.now_ns()
                _post(loop, self._deliver, batch, output, failure)
        except Exception:
            # A bug here would leave every later caller waiting forever: fail loudly instead.
            logger.exception("batcher of %s failed; refusing further requests", self._name())
            with self._lock:
                self._accepting = False
            _post(loop, self._fail_queued, errors.InternalError(
                f"the batcher of {self._name()} failed"))
        finally:
            _post(loop, _set_done, self._finished)

    def _stamp(self, batch: list[_Part]) -> _Stamp:
        """On the worker, tracing on: the batch's taking time, on each of its parts."""
        self._batches += 1
        stamp = _Stamp(self._batches, sum(part.size for part in batch), len(batch),
                       tracing.now_ns())
        for part in batch:
            part.stamp = stamp
        return stamp

    def _unqueue_requests(self, batch: list[_Part]) -> None:
        """After a failed call: take the other parts of the batch's requests out of the
        queue before the next batch is formed (their callers get the error; computing
        them would be wasted). The loop fails their futures in ``_deliver``."""
        self._unqueue([sibling for part in batch for sibling in part.request])

    def _unqueue(self, parts: list[_Part]) -> int:
        """Take those of ``parts`` still queued out of the queue; return their image count.
        Called on the loop and on the worker, hence the lock."""
        removed = 0
        with self._lock:
            for part in parts:
                if part.queued:
                    part.queued = False
                    self._queue.remove(part)
                    removed += part.size
            if removed:
                self._queued -= removed
                self._queue_depth.set(self._queued)
        return removed

    def _next_batch(self) -> list[_Part] | None:
        """Wait until a batch is due and take it; None once stopped with nothing queued."""
        with self._lock:
            while True:
                if not self._queue:
                    if not self._accepting:
                        return None
                    self._lock.wait()
                    continue
                now = time.monotonic()
                flush_at = self._queue[0].enqueued + self.max_delay_s
                if self._queued >= self.max_batch_size or now >= flush_at or not self._accepting:
                    return self._take()
                self._lock.wait(flush_at - now)

    def _take(self) -> list[_Part]:
        """Under the lock: pop whole parts, oldest first, up to max_batch_size images of one
        image shape."""
        batch: list[_Part] = []
        total = 0
        while self._queue:
            part = self._queue[0]
            if batch and (total + part.size > self.max_batch_size
                          or part.images.shape[1:] != batch[0].images.shape[1:]):
                # A different image shape (a malformed request) gets a batch of its own,
                # so its error does not reach well-formed neighbours.
                break
            self._queue.popleft()
            part.queued = False
            batch.append(part)
            total += part.size
        self._queued -= total
        self._queue_depth.set(self._queued)
        self._running = batch
        return batch

    def _call(self, arrays: list[np.ndarray], with_reconstruction: bool) -> types.BatchOutput:
        """Runs on the worker thread: join the parts, call the model, time it."""
        images = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        started = time.perf_counter()
        output = self._run(images, with_reconstruction)
        seconds = time.perf_counter() - started
        self._inference.observe(seconds)
        self._call_seconds = seconds if self._call_seconds is None else (
            (1 - _EMA_WEIGHT) * self._call_seconds + _EMA_WEIGHT * seconds
        )
        rows = len(output.cluster_id)
        if rows != len(images):
            raise errors.InternalError(
                f"the model of {self._name()} returned {rows} rows for {len(images)} images"
            )
        if self._observe is not None:
            # Once per batch, here on the worker thread: the event loop keeps serving. The
            # callers' answers do not depend on it, so a failure here is only logged.
            try:
                self._observe(output)
            except Exception:
                logger.exception("recording the metrics of a batch of %s failed", self._name())
        return output

    def _deliver(self, batch: list[_Part], output: types.BatchOutput | None,
                 failure: BaseException | None) -> None:
        """On the loop: hand each part its rows, or the batch's error."""
        if self._running is batch:
            self._running = []
        n = sum(part.size for part in batch)
        if isinstance(failure, errors.ServiceError):
            logger.warning("batch of %d images on %s refused: %s", n, self._name(), failure)
            for part in batch:
                # The request's other parts would be thrown away: do not compute them.
                self._withdraw(part.request, failure)
            return
        if failure is not None or output is None:
            logger.error("model call of %s failed on a batch of %d images", self._name(), n,
                         exc_info=failure)
            for part in batch:
                error = errors.InternalError(
                    f"the model call of {self._name()} failed; the server log has the details")
                error.__cause__ = failure
                self._withdraw(part.request, error)
            return
        start = 0
        for part in batch:
            if not part.future.done():  # a caller that gave up while it was computed
                rows = output.rows(start, start + part.size)
                if not part.with_reconstruction and rows.reconstruction is not None:
                    rows = rows.without_reconstruction()
                part.future.set_result(rows)
            start += part.size

    def _fail_queued(self, error: errors.ServiceError) -> None:
        """On the loop: fail everything still queued with ``error``."""
        with self._lock:
            parts = list(self._queue)
            self._queue.clear()
            self._queued = 0
            self._queue_depth.set(0)
            for part in parts:
                part.queued = False
        for part in parts:
            _fail(part, error)

    async def stop(self, timeout: float) -> None:
        """Refuse new requests (Unavailable) and finish the queued ones within ``timeout``.

        What is still queued or running when the time is up gets Unavailable.
        """
        with self._lock:
            self._accepting = False
            self._stopped = True
            self._lock.notify()
        finished = self._finished
        if finished is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(finished), timeout)
        except TimeoutError:
            logger.warning("%s did not drain within %.1f s; %d images are refused",
                           self._name(), timeout, self._queued)
            self._fail_queued(errors.Unavailable(
                f"{self._name()} stopped before this request was computed"))
            # The model call still running finishes on its own thread; its callers are
            # answered now and its late rows are dropped.
            for part in self._running:
                _fail(part, errors.Unavailable(
                    f"{self._name()} stopped before this request's batch finished"))


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> None:
    """Run ``callback(*args)`` on ``loop`` from the worker thread. A loop already closed (its
    owner never stopped this batcher) has nobody left to answer: nothing to do then."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        if not loop.is_closed():
            raise


def _set_done(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _fail(part: _Part, error: BaseException) -> None:
    if not part.future.done():
        part.future.set_exception(error)


def _retrieve(parts: list[_Part]) -> None:
    """Mark the errors of a failed request's other parts as seen.

    Only the first failing part is awaited; without this asyncio would log "exception was
    never retrieved" for the siblings that failed with it.
    """
    for part in parts:
        if part.future.done() and not part.future.cancelled():
            part.future.exception()

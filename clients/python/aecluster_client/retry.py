"""The retry policy: which failures are retried, how long to wait, when to give up.

Retried: gRPC UNAVAILABLE, RESOURCE_EXHAUSTED *with* the server's ``grpc-retry-pushback-ms``
(a full queue; without it RESOURCE_EXHAUSTED is a size limit that no retry can meet), HTTP
503 and 429, and a connection that could not be made. Everything else (INVALID_ARGUMENT /
400, NOT_FOUND / 404, DEADLINE_EXCEEDED / 504...) fails at once: the same request would fail
the same way.

The wait before retry ``n`` (1-based) is the server's hint, if any, plus full jitter:
``hint + uniform(0, min(max_backoff, initial_backoff * multiplier ** (n - 1)))``. Never
sooner than the server asked; the jitter spreads the callers that one full queue turned
away together, so they do not all come back at the same instant. No retry starts when the
wait would end past the call's deadline, nor after ``max_attempts`` attempts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aecluster_client.errors import ClusterError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryEvent:
    """Passed to ``on_retry`` before each wait: ``attempt`` failed with ``error``; the next
    attempt starts after ``wait`` seconds."""

    attempt: int
    error: ClusterError
    wait: float


OnRetry = Callable[[RetryEvent], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter. ``max_attempts=1``: none."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and the multiplier >= 1")

    def wait(self, error: ClusterError, attempt: int, remaining: float | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        delay = (error.retry_after or 0.0) + self.rng.uniform(0.0, ceiling)
        if remaining is not None and delay >= remaining:
            return None  # it would wake after the deadline: the caller learns now
        return delay


class Deadline:
    """An overall deadline for one call, every attempt and wait included."""

    def __init__(self, timeout: float | None) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left (never below 0), or None for no deadline."""
        return None if self._end is None else max(0.0, self._end - time.monotonic())


def call(attempt: Callable[[float | None], T], policy: RetryPolicy, deadline: Deadline,
         on_retry: OnRetry | None = None) -> T:
    """Run ``attempt(remaining_seconds)`` until it returns or the policy gives up."""
    number = 0
    while True:
        number += 1
        try:
            return attempt(_left(deadline, number))
        except ClusterError as error:
            time.sleep(next_wait(error, number, policy, deadline, on_retry))


async def call_async(attempt: Callable[[float | None], Awaitable[T]], policy: RetryPolicy,
                     deadline: Deadline, on_retry: OnRetry | None = None) -> T:
    """:func:`call` for coroutines; the waits are ``asyncio.sleep``."""
    number = 0
    while True:
        number += 1
        try:
            return await attempt(_left(deadline, number))
        except ClusterError as error:
            await asyncio.sleep(next_wait(error, number, policy, deadline, on_retry))


def next_wait(error: ClusterError, attempt: int, policy: RetryPolicy, deadline: Deadline,
              on_retry: OnRetry | None) -> float:
    """The wait before the attempt after ``attempt``, which failed with ``error``; tells
    ``on_retry``. Raises ``error`` (its ``attempts`` set) when the policy gives up."""
    error.attempts = attempt
    wait = policy.wait(error, attempt, deadline.remaining())
    if wait is None:
        raise error
    if on_retry is not None:
        on_retry(RetryEvent(attempt, error, wait))
    return wait


def _left(deadline: Deadline, number: int) -> float | None:
    remaining = deadline.remaining()
    if remaining is not None and remaining <= 0:
        raise ClusterError("DEADLINE_EXCEEDED",
                           f"the call's deadline passed before attempt {number}")
    return remaining

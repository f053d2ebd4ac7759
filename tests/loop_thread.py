"""A server under test run by its own asyncio loop in a daemon thread.

Tests that need a real server on a real port (uvicorn, the whole AppServer) share this
lifecycle: start the thread, wait until the server says it is ready, surface any error it
raised while starting, and stop it on exit. Subclasses write ``_serve`` (start, call
``_started``, then serve until stopped) and ``_stop`` (ask the server to stop, from the loop).
"""

from __future__ import annotations

import abc
import asyncio
import threading
from typing import Self

START_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0


class LoopThread(abc.ABC):
    """Context manager: ``with Subclass(...) as server:`` runs the server for the block."""

    def __init__(self, name: str) -> None:
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise TimeoutError(f"the test server did not start in {START_TIMEOUT:.0f} s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop)
        self._thread.join(STOP_TIMEOUT)

    def _started(self) -> None:
        self._ready.set()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self._serve()

    @abc.abstractmethod
    async def _serve(self) -> None:
        """Start the server, call ``self._started()``, then serve until ``_stop``."""

    @abc.abstractmethod
    def _stop(self) -> None:
        """Ask the server to stop (called on the loop's thread)."""

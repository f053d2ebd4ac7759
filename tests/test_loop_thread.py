"""The shared test-server thread: ready, failing at start, and stopped on exit."""

from __future__ import annotations

import asyncio

import pytest

from tests.loop_thread import LoopThread


class _Waiter(LoopThread):
    def __init__(self, fail: bool = False) -> None:
        super().__init__("loop-thread-test")
        self.fail = fail
        self.stopped: asyncio.Event | None = None

    async def _serve(self) -> None:
        if self.fail:
            raise OSError("port already in use")
        self.stopped = asyncio.Event()
        self._started()
        await self.stopped.wait()

    def _stop(self) -> None:
        assert self.stopped is not None
        self.stopped.set()


def test_the_block_runs_while_the_server_serves_and_exit_stops_it() -> None:
    with _Waiter() as server:
        assert server._thread.is_alive()
    assert not server._thread.is_alive()


def test_an_error_while_starting_reaches_the_test() -> None:
    with pytest.raises(OSError, match="port already in use"), _Waiter(fail=True):
        pytest.fail("the block must not run when the server failed to start")

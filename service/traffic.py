"""When the last request of a transport arrived: what a drain waits on before it stops."""

from __future__ import annotations

import time


class Traffic:
    """The arrival time (``time.monotonic()``) of a transport's last request.

    The drain keeps a server listening until its callers have gone quiet; stopping while
    they still send would cut their next requests off (connection reset on HTTP,
    CANCELLED on gRPC) instead of answering them.
    """

    def __init__(self) -> None:
        self.last_request = time.monotonic()

    def seen(self) -> None:
        """A request arrived."""
        self.last_request = time.monotonic()

    def quiet_for(self) -> float:
        """Seconds since the last request."""
        return time.monotonic() - self.last_request

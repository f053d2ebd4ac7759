"""The garbage collector's view of a server whose heap is mostly loaded models.

A loaded TensorFlow model leaves about 420,000 long-lived Python objects on the heap. Each
full (generation 2) collection walks all of them: measured 150 ms on the benchmark's
bundle, during which the event loop answers nothing, so a JSON request (784 floats become
784 Python objects) saw p99 138 ms against a p50 of 3.9 ms (issue 38's benchmark, before).

:func:`settle` collects once and then freezes every surviving object (``gc.freeze``): the
collector never scans them again, while reference counting still frees whatever stops
being used. It runs after every change of the loaded set. A change that unloaded a version
unfreezes first, so that the collector reclaims that version's cycles; one that only loaded
collects and freezes what is not frozen yet. Measured on the benchmark's bundle: adding a
second and third model paused the event loop 200 and 216 ms when every settle walked the
whole heap, 2.2 and 2.4 ms now; a replacement still takes its full walk (226 ms).
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)


def settle(*, reclaim: bool = True) -> float:
    """Collect, then freeze what survives; returns the seconds it took.

    ``reclaim``: unfreeze first and collect the whole heap, which a change that unloaded a
    version needs to get its cycles back. Without it only what is not frozen yet (the new
    version's objects and whatever came since the last settle) is collected and frozen.
    """
    started = time.perf_counter()
    if reclaim:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    seconds = time.perf_counter() - started
    logger.info("heap settled: %d objects frozen out of the collector's scans in %.3f s",
                gc.get_freeze_count(), seconds)
    return seconds

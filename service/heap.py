"""The garbage collector's view of a server whose heap is mostly loaded models.

A loaded TensorFlow model leaves about 420,000 long-lived Python objects on the heap. Each
full (generation 2) collection walks all of them: measured 150 ms on the benchmark's
bundle, during which the event loop answers nothing, so a JSON request (784 floats become
784 Python objects) saw p99 138 ms against a p50 of 3.9 ms (issue 38's benchmark, before).

:func:`settle` collects once and then freezes every surviving object (``gc.freeze``): the
collector never scans them again, while reference counting still frees whatever stops
being used. It runs after every change of the loaded set; unfreezing first lets the
collector reclaim the cycles of a version that was just unloaded.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)


def settle() -> float:
    """Collect the whole heap, then freeze what survives; returns the seconds it took."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    seconds = time.perf_counter() - started
    logger.info("heap settled: %d objects frozen out of the collector's scans in %.3f s",
                gc.get_freeze_count(), seconds)
    return seconds

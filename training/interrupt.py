"""Ctrl-C during a training loop stops after the current step instead of inside it.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread happens
to be, often inside TensorFlow's Python wrappers between two C++ calls; unwinding from
there sometimes killed the process with SIGSEGV instead of the clean "interrupted" exit
(about 1 run in 8 of ``test_ctrl_c_during_training_leaves_no_bundle``). With
:func:`install`, the first Ctrl-C during a fit only sets a flag, and
:class:`StopOnInterrupt` (in a Keras fit) or :func:`check` (in a custom loop run inside
:func:`stoppable`) raises KeyboardInterrupt at the next step boundary. Outside a fit, or on a
second Ctrl-C, the interrupt is raised at once, as usual.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import keras


class _State:
    requested = False  # a Ctrl-C arrived during a fit and waits for the step to end
    fits = 0  # fits running: Keras fits with StopOnInterrupt, custom loops in stoppable()


def install() -> None:
    """Route SIGINT through :func:`_handle` (main thread only; an ignored SIGINT stays so)."""
    if threading.current_thread() is not threading.main_thread():
        return
    # A job started in the background by a shell ignores SIGINT on purpose: keep it that way.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return
    signal.signal(signal.SIGINT, _handle)


def _handle(signum: int, frame: FrameType | None) -> None:
    if _State.fits > 0 and not _State.requested:
        _State.requested = True
        return
    raise KeyboardInterrupt


class StopOnInterrupt(keras.callbacks.Callback):
    """Raise KeyboardInterrupt after the step during which Ctrl-C was pressed.

    Run the fit inside :func:`stoppable`: Keras skips ``on_train_end`` when an exception
    leaves ``fit``, so a count kept by the callback itself stayed raised after a failed fit,
    and a later Ctrl-C outside any fit was swallowed.
    """

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        check()


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """Mark a custom training loop: a first Ctrl-C inside it waits for :func:`check`."""
    _State.fits += 1
    try:
        yield
    finally:
        _State.fits -= 1


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed since the last step; call between steps."""
    if _State.requested:
        _State.requested = False
        raise KeyboardInterrupt

"""Ctrl-C and SIGTERM end a run, always, wherever they land.

Python turns a signal into an exception in whatever code runs next. When that is a weakref
callback or a ``__del__`` (SQLAlchemy, under MLflow, runs such callbacks during garbage
collection), the interpreter cannot propagate it: it prints "Exception ignored ... Traceback"
and carries on, so the user's Ctrl-C is lost and the run goes on as if nothing happened. Here
such a swallowed interrupt is delivered again a moment later, from a helper thread, so that it
surfaces in ordinary code and ends the run through the usual cleanup.

A signal that lands inside a C extension can also come out as some other exception (matplotlib's
renderer turns it into "ValueError: Invalid affine transformation matrix"); once a signal has
been received, whatever ends the run is reported as the interruption it is. Libraries that log
their own clean-up failures with a traceback (SQLAlchemy: "Error closing cursor ... Cannot operate
on a closed database") are quietened from then on: the user asked the run to stop, and the one
line `ecg` prints says what happened.
"""

from __future__ import annotations

import _thread
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

REDELIVERY_DELAY_S = 0.01


@contextmanager
def interrupts_end_the_run() -> Iterator[None]:
    """While active, SIGINT and SIGTERM raise KeyboardInterrupt and are never swallowed."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    previous_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook
    in_hook = False
    received: list[int] = []

    def handler(signum, frame) -> None:
        received.append(signum)
        logging.disable(logging.ERROR)
        if in_hook:  # raising here would be swallowed once more: try again a moment later
            _redeliver_soon()
            return
        raise KeyboardInterrupt(f"signal {signum}")

    def hook(unraisable) -> None:
        nonlocal in_hook
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)
            return
        in_hook = True
        try:
            _redeliver_soon()
        finally:
            in_hook = False

    for signum in previous_handlers:
        signal.signal(signum, handler)
    sys.unraisablehook = hook
    try:
        yield
    except Exception as exc:
        if received:
            raise KeyboardInterrupt(f"signal {received[0]}") from exc
        raise
    finally:
        if received:
            logging.disable(logging.NOTSET)
        sys.unraisablehook = previous_hook
        for signum, previous in previous_handlers.items():
            signal.signal(signum, previous)


def _redeliver_soon() -> None:
    def deliver() -> None:
        time.sleep(REDELIVERY_DELAY_S)
        _thread.interrupt_main(signal.SIGINT)

    threading.Thread(target=deliver, name="ecg-interrupt", daemon=True).start()

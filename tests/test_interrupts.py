"""An interrupt that lands in a garbage-collection callback still ends the run."""

from __future__ import annotations

import logging
import signal
import sys
import time
import weakref

import pytest

from ecg.interrupts import interrupts_end_the_run


class _Thing:
    pass


def _interrupt_during_collection(ref) -> None:
    raise KeyboardInterrupt("as if Ctrl-C landed in a weakref callback")


def _ordinary_work(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_an_interrupt_swallowed_by_a_weakref_callback_is_delivered_again():
    with interrupts_end_the_run():
        with pytest.raises(KeyboardInterrupt):
            thing = _Thing()
            ref = weakref.ref(thing, _interrupt_during_collection)
            del thing  # the callback runs here; Python can only report its exception
            _ordinary_work(5.0)
        assert ref() is None


def test_sigterm_raises_keyboard_interrupt_and_handlers_are_restored():
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook)
    with interrupts_end_the_run(), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGTERM)
        _ordinary_work(5.0)
    after = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook)
    assert after == before


def test_an_interrupt_that_a_c_extension_turns_into_another_error_still_reads_as_one():
    with pytest.raises(KeyboardInterrupt) as raised, interrupts_end_the_run():
        try:
            signal.raise_signal(signal.SIGINT)
            _ordinary_work(5.0)
        except KeyboardInterrupt:
            raise ValueError("Invalid affine transformation matrix") from None
    assert isinstance(raised.value.__cause__, ValueError)


def test_an_error_without_a_signal_stays_that_error():
    with pytest.raises(ValueError), interrupts_end_the_run():
        raise ValueError("a real bug")


def test_after_a_signal_library_clean_up_errors_are_not_printed(caplog):
    noisy = logging.getLogger("sqlalchemy.pool")
    with pytest.raises(KeyboardInterrupt), interrupts_end_the_run():
        try:
            signal.raise_signal(signal.SIGINT)
            _ordinary_work(5.0)
        finally:
            noisy.error("Error closing cursor", exc_info=True)
    assert "Error closing cursor" not in caplog.text
    noisy.error("a real error, later")
    assert "a real error, later" in caplog.text

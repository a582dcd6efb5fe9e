"""Advisory file locks: one writer per pipeline, one per download cache.

``flock`` is released by the operating system when a process dies, so a killed run never leaves a
lock that has to be removed by hand.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ecg.errors import LockedError

log = logging.getLogger("ecg")


@contextmanager
def file_lock(path: Path, what: str, wait: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``path``; if another process holds it, wait or refuse."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            if not wait:
                raise LockedError(
                    f"{what} is already running (pid {holder}, lock file {path}); "
                    "wait for it to finish or stop it first"
                ) from None
            log.info("waiting for %s, held by pid %s (lock file %s)", what, holder, path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)

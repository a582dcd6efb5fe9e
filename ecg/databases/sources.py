"""Where a database's files come from: PhysioNet or a mirror over HTTP, or a local folder.

Both kinds hand files over the same way (into a ``.part`` file next to their place in the cache),
so a local copy is verified exactly like a download.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ecg.config import PHYSIONET_FILES_URL
from ecg.databases.network import HttpClient, RetryPolicy


class Source(Protocol):
    description: str
    is_local: bool

    def read_text(self, name: str) -> str | None:
        """A small text file (RECORDS, SHA256SUMS.txt), or None when the source has none."""

    def fetch(self, name: str, part: Path, on_bytes: Callable[[int], None]) -> bool:
        """Put file ``name`` into ``part``; False when the source does not have it."""

    def list_headers(self) -> list[str] | None:
        """Record names found by listing headers, where the source can be listed."""


class LocalSource:
    """A folder with PhysioNet's layout (``<record>.hea``, ``<record>.dat``, ...)."""

    is_local = True

    def __init__(self, folder: Path):
        self.folder = folder
        self.description = f"local copy {folder}"

    def read_text(self, name: str) -> str | None:
        path = self.folder / name
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None

    def fetch(self, name: str, part: Path, on_bytes: Callable[[int], None]) -> bool:
        path = self.folder / name
        if not path.is_file():
            return False
        part.unlink(missing_ok=True)
        try:
            # A hard link costs no space or time; the file is still verified like a download.
            os.link(path, part)
        except OSError:
            shutil.copyfile(path, part)
        on_bytes(part.stat().st_size)
        return True

    def list_headers(self) -> list[str] | None:
        return sorted(
            p.relative_to(self.folder).with_suffix("").as_posix()
            for p in self.folder.rglob("*.hea")
        )


class HttpSource:
    """PhysioNet (``https://physionet.org/files/<db>/<version>/``) or any server with its layout."""

    is_local = False

    def __init__(self, mirror: str, database: str, version: str, policy: RetryPolicy):
        self.base = f"{mirror.rstrip('/')}/{database}/{version}/"
        is_physionet = mirror.rstrip("/") == PHYSIONET_FILES_URL.rstrip("/")
        self.description = ("PhysioNet " if is_physionet else "mirror ") + self.base
        self.is_physionet = is_physionet
        self.client = HttpClient(policy)

    def read_text(self, name: str) -> str | None:
        return self.client.get_text(self.base + name)

    def fetch(self, name: str, part: Path, on_bytes: Callable[[int], None]) -> bool:
        return self.client.download(self.base + name, part, on_bytes)

    def list_headers(self) -> list[str] | None:
        return None

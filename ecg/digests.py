"""Content digests of files and folders, remembered by (size, mtime) so reruns are cheap.

Freshness must follow content, not timestamps (a restored backup is not stale), yet re-hashing
100 MB of raw records on every ``ecg status`` would cost seconds. Like DVC, we hash once and reuse
the digest while a file's size and modification time are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ecg.atomic import write_text_atomic

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class DigestCache:
    """SHA-256 of files, cached on disk by path, size and mtime_ns."""

    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, list] = {}
        self._dirty = False
        try:
            self._entries = json.loads(path.read_text())
        except (OSError, ValueError):
            self._entries = {}

    def file(self, path: Path) -> str | None:
        """Digest of a file, or None when it does not exist."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        key = str(path.resolve())
        entry = self._entries.get(key)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            return entry[2]
        digest = sha256_file(path)
        self._entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self._dirty = True
        return digest

    def path_digest(self, path: Path) -> str | None:
        """Digest of a file, or of a folder's files with their relative names; None if missing."""
        if path.is_file():
            return self.file(path)
        if not path.is_dir():
            return None
        h = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{file.relative_to(path).as_posix()}\0{self.file(file)}\n".encode())
        return h.hexdigest()

    def save(self) -> None:
        if self._dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            live = {k: v for k, v in self._entries.items() if os.path.exists(k)}
            write_text_atomic(self.path, json.dumps(live))
            self._dirty = False

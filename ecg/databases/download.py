"""The download stage: a database's records in the local cache, every file verified.

Cache layout: ``<data>/raw/<database>/<version>/`` with PhysioNet's own file names, plus
``.ecg-verified.json``, which remembers each file that passed verification (its size, mtime and
SHA-256). A file in the cache that is not listed there is never trusted: it is verified again, and
fetched again if it fails.

Verification, strongest first: PhysioNet's hash pinned in this project (``pins/``); the source's
``SHA256SUMS.txt``; and, for files neither covers, their structure: a header wfdb can read, a signal
file of exactly the size its header implies, an annotation file wfdb can read.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ecg.atomic import write_text_atomic
from ecg.config import DownloadConfig, PipelineConfig
from ecg.databases import wfdb_io
from ecg.databases.catalog import Database, database, parse_sha256sums, pinned_hashes
from ecg.databases.network import RetryPolicy
from ecg.databases.sources import HttpSource, LocalSource, Source
from ecg.digests import sha256_file
from ecg.engine import StageContext
from ecg.errors import EcgError, SourceUnreachable, VerificationError
from ecg.locks import file_lock

log = logging.getLogger("ecg")

MANIFEST = "records.json"
_VERIFIED = ".ecg-verified.json"
_RECORD_LIST = ".ecg-records"
"""The record list of the last full download, so a verified cache can be checked offline."""
_NAME_PART = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


def safe_relpath(name: str, where: str) -> str:
    """A record or file name from a source, refused if it could point outside the cache."""
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or any(part in ("", ".", "..") or not _NAME_PART.match(part) for part in parts)
    ):
        raise EcgError(
            f"{where}: refusing name {name!r}: not a plain relative path inside the database"
        )
    return name


@dataclass
class RecordFiles:
    name: str
    files: dict[str, str] = field(default_factory=dict)
    """Relative path -> SHA-256 of every file of the record in the cache."""
    missing_optional: list[str] = field(default_factory=list)


@dataclass
class DownloadResult:
    cache: Path
    records: list[RecordFiles]
    fetched_files: int = 0
    fetched_bytes: int = 0
    already_verified: int = 0
    verified_by: Counter = field(default_factory=Counter)

    @property
    def files(self) -> list[Path]:
        return [self.cache / rel for rec in self.records for rel in rec.files]


class _VerifiedFiles:
    """The cache's memory of verified files, keyed by relative path."""

    def __init__(self, cache: Path):
        self.path = cache / _VERIFIED
        self.changed = False
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def trusted(self, rel: str, dest: Path, expected: str | None) -> str | None:
        entry = self.entries.get(rel)
        try:
            st = dest.stat()
        except FileNotFoundError:
            return None
        if (
            entry
            and entry["size"] == st.st_size
            and entry["mtime_ns"] == st.st_mtime_ns
            and (expected is None or entry["sha256"] == expected)
        ):
            return entry["sha256"]
        return None

    def add(self, rel: str, dest: Path, sha: str, by: str) -> None:
        st = dest.stat()
        self.entries[rel] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": sha,
            "by": by,
        }
        self.changed = True

    def save(self) -> None:
        if self.changed:
            write_text_atomic(self.path, json.dumps(self.entries, indent=0, sort_keys=True))
            self.changed = False


class _Absent(Exception):
    """The source does not have this file."""


class _Downloader:
    def __init__(self, db: Database, version: str, source: Source, cache: Path):
        self.db = db
        self.source = source
        self.cache = cache
        self.pins = pinned_hashes(db.name, version)
        published = source.read_text("SHA256SUMS.txt")
        self.published = parse_sha256sums(published) if published else {}
        self.verified = _VerifiedFiles(cache)
        self.result = DownloadResult(cache=cache, records=[])
        self.bar: tqdm | None = None

    def expected_hash(self, rel: str) -> tuple[str | None, str]:
        pinned, published = self.pins.get(rel), self.published.get(rel)
        if pinned and published and pinned != published:
            raise VerificationError(
                f"{self.source.description}: SHA256SUMS.txt gives {rel} the hash {published}, "
                f"but PhysioNet's hash pinned in this project is {pinned}"
            )
        if pinned:
            return pinned, "SHA-256 (pinned)"
        if published:
            return published, "SHA-256 (SHA256SUMS.txt)"
        return None, ""

    def record(self, name: str) -> RecordFiles:
        record = RecordFiles(name)
        header_rel = f"{name}.hea"
        record.files[header_rel] = self.file(header_rel, kind="header")
        header = wfdb_io.read_header(self.cache / name)
        folder = PurePosixPath(name).parent
        for signal_file in wfdb_io.signal_files(header):
            safe_relpath(signal_file, f"{self.cache / header_rel}")
            rel = (folder / signal_file).as_posix()
            optional = PurePosixPath(rel).suffix.lstrip(".") in self.db.optional_extensions
            sha = self.file(rel, kind="signal", header=header, optional=optional)
            if sha is None:
                record.missing_optional.append(rel)
            else:
                record.files[rel] = sha
        for extension in self.db.annotators:
            rel = f"{name}.{extension}"
            record.files[rel] = self.file(rel, kind="annotation")
        return record

    def file(self, rel: str, kind: str, header=None, optional: bool = False) -> str | None:
        dest = self.cache / rel
        expected, by = self.expected_hash(rel)
        sha = self.verified.trusted(rel, dest, expected)
        if sha:
            self.result.already_verified += 1
            return sha
        if dest.exists():
            # Present but not vouched for (copied in by hand, or left by a killed run).
            try:
                sha, by = self._verify(dest, rel, kind, header, expected, by)
            except VerificationError as exc:
                log.info("%s: not trusted (%s); fetching it again", rel, exc)
                dest.unlink(missing_ok=True)
            else:
                self.verified.add(rel, dest, sha, by)
                self.result.verified_by[by] += 1
                return sha
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        resumed = part.exists()
        try:
            sha, by = self._fetch(rel, part, dest, kind, header, expected, by)
        except VerificationError:
            if not resumed:
                raise
            # The .part we resumed may not have been a prefix of this file: start over once.
            part.unlink(missing_ok=True)
            sha, by = self._fetch(rel, part, dest, kind, header, expected, by)
        except _Absent:
            if optional:
                return None
            raise EcgError(f"{self.source.description} has no file {rel}") from None
        self.verified.add(rel, dest, sha, by)
        self.result.verified_by[by] += 1
        self.result.fetched_files += 1
        return sha

    def _fetch(self, rel, part, dest, kind, header, expected, by) -> tuple[str, str]:
        """Fetch into ``part``, check it, and only then give it its real name."""
        if not self.source.fetch(rel, part, self._count_bytes):
            raise _Absent(rel)
        if expected:
            self._check_hash(part, rel, expected, by)
        os.replace(part, dest)
        try:
            return self._verify(dest, rel, kind, header, expected, by)
        except VerificationError:
            dest.unlink(missing_ok=True)
            raise

    def _verify(self, path, rel, kind, header, expected, by) -> tuple[str, str]:
        if expected:
            return self._check_hash(path, rel, expected, by), by
        record_path = path.parent / PurePosixPath(rel).stem
        try:
            if kind == "header":
                wfdb_io.read_header(record_path)
                by = "readable header"
            elif kind == "annotation":
                wfdb_io.check_annotation(record_path, path.suffix.lstrip("."))
                by = "readable annotations"
            else:
                expected_size = wfdb_io.expected_size(header, path.name)
                size = path.stat().st_size
                if expected_size is not None and size != expected_size:
                    raise VerificationError(
                        f"{self.cache / rel}: {size} bytes, but its header implies {expected_size}"
                    )
                by = "size from header"
        except VerificationError:
            raise
        except EcgError as exc:
            raise VerificationError(str(exc)) from None
        return sha256_file(path), by

    def _check_hash(self, path: Path, rel: str, expected: str, by: str) -> str:
        actual = sha256_file(path)
        if actual != expected:
            path.unlink(missing_ok=True)
            raise VerificationError(
                f"{rel} from {self.source.description} failed verification: "
                f"SHA-256 {actual}, expected {expected} ({by})"
            )
        return actual

    def _count_bytes(self, n: int) -> None:
        self.result.fetched_bytes += n
        if self.bar is not None:
            self.bar.set_postfix_str(f"{_size(self.result.fetched_bytes)} fetched", refresh=False)


class CachedCopy:
    """The cache standing in for an unreachable source: it vouches only for verified files."""

    is_local = True

    def __init__(self, cache: Path, offline_message: str):
        self.cache = cache
        self.description = f"verified cache {cache}"
        self.offline_message = offline_message

    def read_text(self, name: str) -> str | None:
        path = self.cache / (_RECORD_LIST if name == "RECORDS" else name)
        return path.read_text() if name == "RECORDS" and path.is_file() else None

    def fetch(self, name: str, part: Path, on_bytes) -> bool:
        raise SourceUnreachable(f"{name} is not in the cache, and {self.offline_message}")

    def list_headers(self) -> list[str] | None:
        return None


def record_names(source: Source, subset: tuple[str, ...]) -> list[str]:
    """The records to fetch: the subset asked for, else the source's RECORDS file."""
    if subset:
        return [safe_relpath(name, "records") for name in subset]
    text = source.read_text("RECORDS")
    if text is None:
        names = source.list_headers()
        if not names:
            raise EcgError(f"{source.description} has no RECORDS file and no record headers")
        log.info(
            "%s has no RECORDS file; taking the %d records whose headers it holds",
            source.description,
            len(names),
        )
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    return [safe_relpath(name, f"{source.description} RECORDS") for name in names]


def make_source(config: PipelineConfig) -> Source:
    cfg = config.download
    if cfg.source:
        folder = config.resolve(cfg.source)
        if not folder.is_dir():
            raise EcgError(f"--source {folder}: no such folder")
        return LocalSource(folder)
    policy = RetryPolicy(cfg.connect_timeout_s, cfg.read_timeout_s, cfg.retries, cfg.backoff_s)
    return HttpSource(cfg.mirror, cfg.database, cfg.version, policy)


def fetch_database(cfg: DownloadConfig, source: Source, cache: Path) -> DownloadResult:
    """Bring the records of ``cfg`` into ``cache``, verified; skip what is already verified."""
    db = database(cfg.database)
    # The lock sits beside the cache so that a failed first contact leaves the cache untouched.
    with file_lock(cache.parent / f".{cache.name}.lock", f"a download into {cache}", wait=True):
        try:
            loader = _Downloader(db, cfg.version, source, cache)
            names = record_names(source, cfg.records)
        except SourceUnreachable as exc:
            message = _offline_message(cfg, source, exc)
            if not (cache / _RECORD_LIST).is_file():
                raise SourceUnreachable(message) from None
            # Everything may already be here and verified: check it without the network.
            log.info("%s; checking the verified cache instead", message.split(". ")[0])
            source = CachedCopy(cache, message)
            loader = _Downloader(db, cfg.version, source, cache)
            names = record_names(source, cfg.records)
        if not cfg.records and not isinstance(source, CachedCopy):
            cache.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache / _RECORD_LIST, "".join(f"{n}\n" for n in names))
        loader.bar = tqdm(
            total=len(names), unit="rec", desc=f"{db.name} {cfg.version}", disable=None, leave=False
        )
        try:
            for name in names:
                loader.result.records.append(loader.record(name))
                loader.verified.save()
                loader.bar.update()
        finally:
            loader.verified.save()
            loader.bar.close()
    return loader.result


def _offline_message(cfg: DownloadConfig, source: Source, exc: Exception) -> str:
    where = "PhysioNet" if getattr(source, "is_physionet", False) else "the mirror"
    return (
        f"could not reach {where} ({exc}). Use a local copy with --source DIR "
        f"(a folder holding {cfg.database}'s RECORDS, .hea, .dat files), or another server "
        f"with --mirror URL"
    )


def download_stage(ctx: StageContext) -> None:
    cfg = ctx.config.download
    cache = ctx.config.data_path / "raw" / cfg.database / cfg.version
    source = make_source(ctx.config)
    log.info("download: %s %s from %s", cfg.database, cfg.version, source.description)
    result = fetch_database(cfg, source, cache)
    manifest = {
        "database": cfg.database,
        "version": cfg.version,
        "raw_dir": ctx.config.relative(cache),
        "records": [
            {"name": r.name, "files": r.files, "missing_optional": r.missing_optional}
            for r in result.records
        ],
    }
    (ctx.out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    ctx.external.extend(result.files)
    log.info("download: %s", _summary(result, ctx.config.relative(cache)))


def _summary(result: DownloadResult, where: str) -> str:
    text = (
        f"{len(result.records)} records, {len(result.files)} files in {where}; "
        f"fetched {result.fetched_files} ({_size(result.fetched_bytes)})"
    )
    if result.verified_by:
        text += ", verified " + ", ".join(
            f"{n} by {how}" for how, n in sorted(result.verified_by.items())
        )
    text += f"; {result.already_verified} already verified"
    absent = [p for r in result.records for p in r.missing_optional]
    if absent:
        kinds = ", ".join(sorted({PurePosixPath(p).suffix for p in absent}))
        text += f"; {len(absent)} optional files absent at the source ({kinds})"
    return text


def read_manifest(download_dir: Path, root: Path) -> dict:
    """The download stage's output, with ``raw_dir`` resolved to an absolute path."""
    manifest = json.loads((download_dir / MANIFEST).read_text())
    manifest["raw_dir"] = (root / manifest["raw_dir"]).resolve()
    return manifest


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"

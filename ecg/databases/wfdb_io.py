"""The one module that reads WFDB files (headers, signals, annotations) through wfdb."""

from __future__ import annotations

import math
from pathlib import Path

import wfdb

from ecg.errors import EcgError

# Bytes per sample of each WFDB storage format (format 212 packs two 12-bit samples in 3 bytes).
_BYTES_PER_SAMPLE = {
    "8": 1,
    "80": 1,
    "16": 2,
    "61": 2,
    "160": 2,
    "24": 3,
    "32": 4,
    "212": 1.5,
    "310": 4 / 3,
    "311": 4 / 3,
}


def read_header(record_path: Path) -> wfdb.Record:
    """The header of a record (path without extension); one clear error if it does not parse."""
    try:
        header = wfdb.rdheader(str(record_path))
    except Exception as exc:  # wfdb raises bare ValueError/IndexError/OSError on bad headers
        raise EcgError(f"{record_path}.hea: not a readable WFDB header: {exc}") from None
    if isinstance(header, wfdb.MultiRecord):
        raise EcgError(f"{record_path}.hea: multi-segment records are not supported")
    return header


def signal_files(header: wfdb.Record) -> list[str]:
    """Signal file names a header refers to, in order, each once."""
    names = []
    for name in header.file_name or []:
        if name and name != "~" and name not in names:
            names.append(name)
    return names


def expected_size(header: wfdb.Record, file_name: str) -> int | None:
    """Size in bytes a signal file must have according to its header; None when unknowable."""
    if not header.sig_len:
        return None
    frame_bytes = 0.0
    offset = 0
    for name, fmt, spf, byte_offset in zip(
        header.file_name, header.fmt, header.samps_per_frame, header.byte_offset, strict=True
    ):
        if name != file_name:
            continue
        if fmt not in _BYTES_PER_SAMPLE:
            return None
        frame_bytes += (spf or 1) * _BYTES_PER_SAMPLE[fmt]
        offset = byte_offset or 0
    return offset + math.ceil(header.sig_len * frame_bytes)


def check_annotation(record_path: Path, extension: str) -> None:
    try:
        wfdb.rdann(str(record_path), extension)
    except Exception as exc:
        raise EcgError(
            f"{record_path}.{extension}: not a readable WFDB annotation file: {exc}"
        ) from None

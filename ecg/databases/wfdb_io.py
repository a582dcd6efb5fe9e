"""The one module that reads WFDB files (headers, signals, annotations) through wfdb."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb
from wfdb.io._signal import INVALID_SAMPLE_VALUE

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


def check_signal_files(record_path: Path, header: wfdb.Record, channels: Sequence[int]) -> None:
    """A signal file whose size disagrees with its header is truncated, or the header lies about
    its sample count; either way wfdb would read garbage or fail obscurely. Say which. Only the
    files of the channels read are checked (PTB copies often lack the .xyz file)."""
    for name in {header.file_name[i] for i in channels}:
        path = record_path.parent / name
        if not path.is_file():
            raise EcgError(f"{path}: missing (named by {record_path}.hea)")
        expected = expected_size(header, name)
        actual = path.stat().st_size
        if expected is not None and actual != expected:
            raise EcgError(
                f"{path}: {actual:,} bytes, but {record_path}.hea implies {expected:,} "
                f"({header.sig_len:,} samples): the file is truncated or the header is wrong"
            )


def check_annotation(record_path: Path, extension: str) -> None:
    try:
        wfdb.rdann(str(record_path), extension)
    except Exception as exc:
        raise EcgError(
            f"{record_path}.{extension}: not a readable WFDB annotation file: {exc}"
        ) from None


class MissingLead(EcgError):
    """A record does not have a lead the pipeline asks for."""


@dataclass(frozen=True)
class Signals:
    """A record's chosen leads in physical units (mV), with invalid samples as NaN."""

    name: str
    fs: float
    signal: np.ndarray
    """float32, shape (samples, leads)."""
    lead_names: list[str]
    comments: list[str]


def lead_indices(names: Sequence[str], leads: Sequence[str], where: str) -> list[int]:
    """Channel indices of the named leads; exact names first, then ignoring case (PTB: ``ii``).

    A lead may list alternatives, ``V1|V2|V4|V5``: the first one the record has, and that no
    earlier lead took, is read. MIT-BIH's second lead is V1 in most records and V2, V4 or V5 in a
    few that the inter-patient protocol cannot drop; de Chazal et al. (2004) used it as one "lead
    B" whatever its name.
    """
    names = list(names)
    folded = [n.lower() for n in names]
    indices: list[int] = []
    for lead in leads:
        # alternatives in their order; each by its exact name, then ignoring case
        candidates = (
            i
            for wanted in lead.split("|")
            for pool, key in ((names, wanted), (folded, wanted.lower()))
            for i, name in enumerate(pool)
            if name == key and i not in indices
        )
        found = next(candidates, None)
        if found is None:
            raise MissingLead(f"{where}: no lead {lead} (it has {', '.join(names)})")
        indices.append(found)
    return indices


def read_signals(record_path: Path, leads: Sequence[str]) -> Signals:
    """Read only the named leads. Digital samples are converted here rather than by wfdb's
    ``physical=True``, which is about five times slower on MIT-BIH (measured, FACTS.md)."""
    header = read_header(record_path)
    channels = lead_indices(header.sig_name or [], leads, f"{record_path}.hea")
    check_signal_files(record_path, header, channels)
    try:
        record = wfdb.rdrecord(str(record_path), channels=channels, physical=False)
    except Exception as exc:
        raise EcgError(f"{record_path}: cannot read its signals: {exc}") from None
    digital = record.d_signal
    signal = np.empty(digital.shape, dtype=np.float32)
    for j in range(digital.shape[1]):
        column = digital[:, j]
        gain = record.adc_gain[j] or 200.0  # WFDB: a gain of 0 means the default of 200
        signal[:, j] = (column - record.baseline[j]) / gain
        invalid = INVALID_SAMPLE_VALUE.get(record.fmt[j])
        if invalid is not None:
            signal[column == invalid, j] = np.nan
    return Signals(
        name=record.record_name,
        fs=float(record.fs),
        signal=signal,
        lead_names=[record.sig_name[j] for j in range(len(channels))],
        comments=list(header.comments or []),
    )


def read_annotations(record_path: Path, extension: str) -> tuple[np.ndarray, list[str]]:
    """Reference annotations: sample indices (at the record's rate) and their symbols."""
    samples, symbols, _ = read_annotation_notes(record_path, extension)
    return samples, symbols


def read_annotation_notes(
    record_path: Path, extension: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """Reference annotations with their auxiliary notes (where MIT-BIH names each rhythm)."""
    try:
        ann = wfdb.rdann(str(record_path), extension)
    except Exception as exc:
        raise EcgError(f"{record_path}.{extension}: cannot read annotations: {exc}") from None
    notes = [note or "" for note in (ann.aux_note or [""] * len(ann.sample))]
    return np.asarray(ann.sample, dtype=np.int64), list(ann.symbol), notes


PEAK_SEARCH_S = 0.05
"""How far a detection may move to the QRS complex's largest deflection."""


def detect_r_peaks(x: np.ndarray, fs: float, detector: str) -> np.ndarray:
    """R peaks found by wfdb's own detectors (XQRS, or the faster GQRS) on one lead, each moved
    (``moved_to_r``) to where MIT-BIH's reference annotations lie and so where the beats a
    model learnt from are centred."""
    return moved_to_r(x, found_r_peaks(x, fs, detector), fs)


def found_r_peaks(x: np.ndarray, fs: float, detector: str) -> np.ndarray:
    """The detector's own marks, before ``moved_to_r``."""
    from wfdb import processing

    if detector == "xqrs":
        found = processing.xqrs_detect(x, fs=fs, verbose=False)
    elif detector == "gqrs":
        found = processing.gqrs_detect(x, fs=fs)
    else:
        raise ValueError(f"unknown R-peak detector {detector!r}")
    return np.asarray(found, dtype=np.int64)


def moved_to_r(x: np.ndarray, found: np.ndarray, fs: float) -> np.ndarray:
    """Detections moved to the QRS complex's largest deflection within ``PEAK_SEARCH_S``. GQRS
    marks the QRS onset: on MIT-BIH's MLII at 128 Hz its detections sit a median 5 samples (39
    ms) before the reference beat, and 93 % of them lie within 1.5 samples of it once moved
    (``benchmarks/detectors.py``, 105,078 beats); XQRS's lie on it either way."""
    from wfdb import processing

    if len(found) == 0:
        return found
    # 'compare' takes the record's own polarity: up or down, whichever stands out more
    moved = processing.correct_peaks(
        x, found, round(PEAK_SEARCH_S * fs), round(3 * PEAK_SEARCH_S * fs), "compare"
    )
    return np.unique(np.asarray(moved, dtype=np.int64))

"""The preprocess stage: verified raw records -> labelled, fixed-length pieces on disk.

Per record (in parallel processes): read the chosen leads, repair or drop bad leads, band-pass,
notch, resample, remove baseline, then cut beats around R peaks (with RR features) or sliding
windows, and label them. Outputs, all in the stage folder:

    windows.npy    float32 (pieces, time, leads), memory-mappable
    index.parquet  one row per piece: record, patient, sample (at the record's own rate), label,
                   label_id, and symbol, reference rhythm and RR features for beats,
                   diagnosis for PTB
    records.csv    one row per record: used or dropped and why, beats kept and dropped at edges,
                   lead problems, non-beat and unknown annotation symbols
    meta.json      rate, leads, classes, window length, feature names, counts
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ecg import labels, segment, signal
from ecg.config import PipelineConfig, SegmentConfig, SignalConfig
from ecg.databases import wfdb_io
from ecg.databases.download import read_manifest
from ecg.databases.subjects import patient_of, ptb_diagnosis
from ecg.engine import StageContext
from ecg.errors import EcgError

log = logging.getLogger("ecg")


@dataclass(frozen=True)
class RecordJob:
    database: str
    raw_dir: Path
    name: str
    signal: SignalConfig
    segment: SegmentConfig


@dataclass
class RecordReport:
    record: str
    patient: str
    used: bool = True
    reason: str = ""
    pieces: int = 0
    dropped_at_edges: int = 0
    dropped_at_edges_by_class: dict[str, int] = field(default_factory=dict)
    leads: list[str] = field(default_factory=list)
    """The leads read, by their names in the header (which alternative of ``V1|V2`` was there)."""
    lead_issues: list[str] = field(default_factory=list)
    non_beat_annotations: dict[str, int] = field(default_factory=dict)
    unknown_symbols: dict[str, int] = field(default_factory=dict)
    diagnosis: str | None = None


@dataclass
class RecordResult:
    report: RecordReport
    windows: np.ndarray | None = None
    table: pd.DataFrame | None = None


def filtered(x: np.ndarray, fs: float, cfg: SignalConfig) -> tuple[np.ndarray, float]:
    """The signal chain every record (and every recording given to ``ecg predict``) goes through."""
    low, high = cfg.bandpass_hz
    y, fs = signal.bandpass(x, fs, low, high, cfg.filter_order)
    if cfg.notch_hz:
        y, fs = signal.notch(y, fs, cfg.notch_hz)
    y, fs_new = signal.resample(y, fs, cfg.fs)
    if cfg.baseline == "median":
        y, fs_new = signal.remove_baseline(y, fs_new)
    return y.astype(np.float32, copy=False), fs_new


def process_record(job: RecordJob) -> RecordResult:
    """Everything that happens to one record; runs in a worker process."""
    report = RecordReport(record=job.name, patient=patient_of(job.database, job.name))
    path = job.raw_dir / job.name
    try:
        raw = wfdb_io.read_signals(path, job.signal.leads)
    except wfdb_io.MissingLead as exc:
        return _dropped(report, str(exc).split(": ", 1)[1])
    report.leads = list(raw.lead_names)
    x, issues, usable = signal.check_leads(raw.signal, raw.lead_names, job.signal.max_nan_fraction)
    report.lead_issues = [issue.describe() for issue in issues]
    if len(usable) < len(raw.lead_names):
        bad = [raw.lead_names[i] for i in range(len(raw.lead_names)) if i not in usable]
        return _dropped(report, f"unusable lead {', '.join(bad)}")
    y, fs_new = filtered(x, raw.fs, job.signal)
    seg = job.segment
    if job.database == "ptbdb":
        report.diagnosis = ptb_diagnosis(raw.comments)
        label = labels.ptb_label(report.diagnosis, seg.task)
        if label is None:
            why = (
                "no diagnosis (n/a)"
                if report.diagnosis is None
                else (f"diagnosis '{report.diagnosis}' is not part of task {seg.task}")
            )
            return _dropped(report, why)
    if seg.kind == "windows":
        return _windows(job, report, y, raw.fs, fs_new, label)
    if seg.r_peaks == "reference":
        samples, symbols, notes = wfdb_io.read_annotation_notes(path, "atr")
        classes, non_beat, unknown = labels.aami_labels(symbols)
        report.non_beat_annotations = dict(non_beat)
        report.unknown_symbols = dict(unknown)
        is_beat = classes != ""
        r, classes = samples[is_beat], classes[is_beat]
        rhythms = labels.rhythm_of_beats(samples, symbols, notes, r)
        symbols = np.asarray(symbols, dtype=object)[is_beat]
    else:
        (lead,) = wfdb_io.lead_indices(raw.lead_names, [seg.detector_lead], str(path))
        found = wfdb_io.detect_r_peaks(y[:, lead].astype(np.float64), fs_new, seg.r_peaks)
        r = np.rint(found * (raw.fs / fs_new)).astype(np.int64)
        classes = np.full(len(r), label)
        symbols = np.full(len(r), "", dtype=object)
        rhythms = np.full(len(r), "", dtype=object)
    return _beats(job, report, y, raw.fs, fs_new, r, classes, symbols, rhythms)


def cut_beats(
    y: np.ndarray, fs: float, fs_new: float, r: np.ndarray, seg: SegmentConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Beat windows of a filtered signal (at ``fs_new``) around R peaks given at the record's own
    rate ``fs``, with every beat's RR features. Returns windows, the mask of beats that fit, and
    the RR features of all beats. Shared by preprocess and ``ecg predict``."""
    rr = segment.rr_features(r, fs, seg.rr_local_beats, seg.rr_average_s)
    centers = signal.rescale_samples(r, fs, fs_new)
    before, after = round(seg.pre_s * fs_new), round(seg.post_s * fs_new)
    windows, keep = segment.beat_windows(y, centers, before, after)
    if seg.scale_by_template:
        windows = segment.scaled_by_template(windows)
    if seg.beat_template:
        windows = segment.with_template_difference(
            windows, r[keep] / fs, seg.template_s, seg.template_core
        )
    return windows, keep, rr


def cut_windows(y: np.ndarray, fs_new: float, seg: SegmentConfig):
    """Sliding windows of a filtered signal; starts are at ``fs_new``."""
    length, stride = round(seg.window_s * fs_new), round(seg.stride_s * fs_new)
    return segment.sliding_windows(y, length, stride)


def _beats(job, report, y, fs, fs_new, r, classes, symbols, rhythms) -> RecordResult:
    windows, keep, rr = cut_beats(y, fs, fs_new, r, job.segment)
    report.dropped_at_edges = int((~keep).sum())
    report.dropped_at_edges_by_class = dict(Counter(classes[~keep].tolist()))
    table = pd.DataFrame(
        {
            "sample": r[keep],
            "label": classes[keep],
            "symbol": symbols[keep],
            "rhythm": rhythms[keep],
        }
    )
    for name, values in rr.items():  # every RR feature segment.rr_features made, optional ones too
        table[name] = values[keep].astype(np.float32)
    if report.diagnosis is not None:
        table["diagnosis"] = report.diagnosis
    return _finish(report, windows, table)


def _windows(job, report, y, fs, fs_new, label) -> RecordResult:
    seg = job.segment
    windows, starts = cut_windows(y, fs_new, seg)
    if len(windows) == 0:
        return _dropped(report, f"shorter than one window ({seg.window_s} s)")
    table = pd.DataFrame(
        {
            "sample": signal.rescale_samples(starts, fs_new, fs),
            "label": label,
            "diagnosis": report.diagnosis,
        }
    )
    return _finish(report, windows, table)


def _finish(report: RecordReport, windows: np.ndarray, table: pd.DataFrame) -> RecordResult:
    table.insert(0, "patient", report.patient)
    table.insert(0, "record", report.record)
    report.pieces = len(table)
    return RecordResult(report, windows.astype(np.float32, copy=False), table)


def _dropped(report: RecordReport, reason: str) -> RecordResult:
    report.used = False
    report.reason = reason
    return RecordResult(report)


# --------------------------------------------------------------------------- the stage


def preprocess_stage(ctx: StageContext) -> None:
    config = ctx.config
    manifest = read_manifest(ctx.inputs["download"], config.root)
    jobs = [
        RecordJob(
            config.download.database,
            manifest["raw_dir"],
            rec["name"],
            config.signal,
            config.segment,
        )
        for rec in manifest["records"]
    ]
    results = run_jobs(jobs, config.signal.workers)
    write_outputs(ctx.out, config, results)


def run_jobs(jobs: list[RecordJob], workers: int) -> list[RecordResult]:
    bar = dict(total=len(jobs), unit="rec", desc="preprocess", disable=None, leave=False)
    if workers == 1 or len(jobs) == 1:
        return [process_record(job) for job in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(tqdm(pool.map(process_record, jobs), **bar))


def write_outputs(out: Path, config: PipelineConfig, results: list[RecordResult]) -> None:
    classes = labels.classes_for(config.segment.task)
    used = [r for r in results if r.report.used]
    if not used:
        reasons = "; ".join(f"{r.report.record}: {r.report.reason}" for r in results[:5])
        raise EcgError(f"preprocess: no record could be used ({reasons})")
    total = sum(len(r.table) for r in used)
    shape = (total, *used[0].windows.shape[1:])
    windows = np.lib.format.open_memmap(
        out / "windows.npy", mode="w+", dtype=np.float32, shape=shape
    )
    start = 0
    for result in used:
        windows[start : start + len(result.windows)] = result.windows
        start += len(result.windows)
        result.windows = None
    windows.flush()
    del windows
    index = pd.concat([r.table for r in used], ignore_index=True)
    index["label_id"] = index["label"].map({c: i for i, c in enumerate(classes)}).astype("int8")
    index.to_parquet(out / "index.parquet", index=False)
    reports = pd.DataFrame([_flat_report(r.report) for r in results])
    reports.to_csv(out / "records.csv", index=False)
    meta = {
        "database": config.download.database,
        "task": config.segment.task,
        "kind": config.segment.kind,
        "classes": list(classes),
        "fs": config.signal.fs,
        "leads": list(config.signal.leads),
        "window_samples": int(shape[1]),
        "rr_features": list(segment.RR_FEATURES) if config.segment.kind == "beats" else [],
        "rr_optional": list(segment.RR_OPTIONAL) if config.segment.kind == "beats" else [],
        "pieces": int(total),
        "records_used": len(used),
        "records_dropped": {r.report.record: r.report.reason for r in results if not r.report.used},
        "per_class": {c: int((index["label"] == c).sum()) for c in classes},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    _log_summary(meta, results)


def _flat_report(report: RecordReport) -> dict:
    row = asdict(report)
    for key in ("dropped_at_edges_by_class", "non_beat_annotations", "unknown_symbols"):
        row[key] = " ".join(f"{k}:{v}" for k, v in sorted(row[key].items()))
    row["leads"] = " ".join(row["leads"])
    row["lead_issues"] = "; ".join(row["lead_issues"])
    return row


def _log_summary(meta: dict, results: list[RecordResult]) -> None:
    unit = "beats" if meta["kind"] == "beats" else "windows"
    edge = sum(r.report.dropped_at_edges for r in results)
    counts = ", ".join(f"{c} {n:,}" for c, n in meta["per_class"].items())
    log.info(
        "preprocess: %d records used, %d dropped; %s %s (%s)",
        meta["records_used"],
        len(meta["records_dropped"]),
        f"{meta['pieces']:,}",
        unit,
        counts,
    )
    if edge:
        log.info(
            "preprocess: %d beats dropped at record edges (window reaches past the record)", edge
        )
    for record, reason in meta["records_dropped"].items():
        log.info("preprocess: dropped %s: %s", record, reason)
    unknown = Counter()
    for r in results:
        unknown.update(r.report.unknown_symbols)
        for issue in r.report.lead_issues:
            log.info("preprocess: %s %s", r.report.record, issue)
    if unknown:
        log.warning(
            "preprocess: annotation symbols outside the AAMI table and not known "
            "non-beats were skipped: %s (see records.csv)",
            dict(unknown),
        )


def load_pieces(preprocess_dir: Path) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """The preprocess output: memory-mapped windows, the index table and the metadata."""
    windows = np.load(preprocess_dir / "windows.npy", mmap_mode="r")
    index = pd.read_parquet(preprocess_dir / "index.parquet")
    meta = json.loads((preprocess_dir / "meta.json").read_text())
    return windows, index, meta

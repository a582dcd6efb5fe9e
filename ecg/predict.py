"""`ecg predict`: classify the beats (or windows) of a recording that is not in a database.

The model's own preprocessing travels with its weights (``spec`` in ``model.pt``): the same leads,
filters, rate, window and RR features it was trained with, never typed again by hand. Input may be
a WFDB record, an EDF file (read through wfdb) or a CSV with one column per lead and ``--fs``.
R peaks come from the record's reference annotations (``--annotations atr``) or from wfdb's GQRS
(or XQRS) detector. Each output row carries its sample index at the input's own rate.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ecg.config import PREDICT_DETECTOR, SegmentConfig, SignalConfig, build
from ecg.databases import wfdb_io
from ecg.errors import EcgError, first_line
from ecg.labels import AAMI_EC57
from ecg.preprocess import cut_beats, cut_windows, filtered
from ecg.signal import check_leads, rescale_samples
from ecg.train import load_classifier

log = logging.getLogger("ecg")


@dataclass
class Recording:
    name: str
    signal: np.ndarray
    """float32 (samples, leads) in mV, the model's leads in its order."""
    fs: float
    path: Path


@dataclass
class LoadedModel:
    classifier: torch.nn.Module
    normalizer: torch.nn.Module
    spec: dict

    @property
    def signal(self) -> SignalConfig:
        return build(SignalConfig, self.spec["signal"], "signal")

    @property
    def segment(self) -> SegmentConfig:
        return build(SegmentConfig, self.spec["segment"], "segment")


# ------------------------------------------------------------------------------ models


def load_model(reference: str, tracking_uri: str | None = None) -> LoadedModel:
    """A local ``model.pt``, or an MLflow model URI (``models:/name/version``, ``runs:/id/...``)
    whose run holds the checkpoint. Never unpickled: ``torch.load(weights_only=True)``."""
    path = Path(reference)
    if path.exists():
        return _load_checkpoint(path)
    if reference.startswith(("models:/", "runs:/")):
        return _load_from_mlflow(reference, tracking_uri)
    raise EcgError(
        f"--model {reference}: no such file, and not an MLflow URI "
        "(models:/NAME/VERSION or runs:/RUN_ID/model)"
    )


def _load_checkpoint(path: Path) -> LoadedModel:
    if path.is_dir():
        path = path / "model.pt"
    try:
        classifier, normalizer, spec = load_classifier(path)
    except FileNotFoundError:
        raise EcgError(f"{path}: no such model file") from None
    except Exception as exc:  # torch raises many kinds on foreign or damaged files
        raise EcgError(f"{path}: not an ecg model checkpoint ({first_line(exc, 160)})") from None
    return LoadedModel(classifier, normalizer, spec)


def _load_from_mlflow(uri: str, tracking_uri: str | None) -> LoadedModel:
    from ecg.tracking import Tracker

    tracker = Tracker(tracking_uri, experiment=None) if tracking_uri else None
    if tracker is None:
        raise EcgError(f"--model {uri}: give --tracking-uri (or a pipeline) to resolve it")
    run_id = tracker.run_of_model(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.download(run_id, "checkpoint/model.pt", Path(tmp))
        except Exception as exc:
            raise EcgError(
                f"--model {uri}: run {run_id} has no checkpoint/model.pt ({exc})"
            ) from None
        return _load_checkpoint(path)


# ------------------------------------------------------------------------------ inputs


def read_recording(path: Path, leads: list[str], fs: float | None) -> Recording:
    """A WFDB record (path with or without .hea), an EDF file, or a CSV (one column per lead)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, leads, fs)
    if suffix == ".edf":
        return _read_edf(path, leads, fs)
    record = path.with_suffix("") if suffix in (".hea", ".dat") else path
    if not record.with_suffix(".hea").is_file():
        raise EcgError(
            f"{path}: no such record (looked for {record.with_suffix('.hea')}); "
            "give a WFDB record, an .edf or a .csv file"
        )
    signals = wfdb_io.read_signals(record, leads)
    if fs is not None and abs(fs - signals.fs) > 1e-6:
        raise EcgError(f"--fs {fs:g} contradicts {record}.hea, which says {signals.fs:g} Hz")
    return Recording(record.name, signals.signal, signals.fs, record)


def _read_csv(path: Path, leads: list[str], fs: float | None) -> Recording:
    if fs is None:
        raise EcgError(f"{path}: a CSV has no sampling rate; give it with --fs")
    if fs <= 0:
        raise EcgError(f"--fs {fs:g}: must be a positive rate in Hz")
    if not path.is_file():
        raise EcgError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise EcgError(f"{path}: the file is empty")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise EcgError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    columns = [str(c) for c in table.columns]
    try:
        chosen = [columns[i] for i in wfdb_io.lead_indices(columns, leads, str(path))]
    except wfdb_io.MissingLead:
        if len(columns) < len(leads):
            raise EcgError(
                f"{path}: needs columns for {', '.join(leads)}; it has {', '.join(columns)}"
            ) from None
        chosen = columns[: len(leads)]
        log.warning(
            "%s: no columns named %s; taking the first %d columns (%s) as those leads",
            path,
            ", ".join(leads),
            len(leads),
            ", ".join(chosen),
        )
    for column in chosen:
        numbers = pd.to_numeric(table[column], errors="coerce")
        bad = numbers.isna() & table[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise EcgError(
                f"{path}: column {column}, data row {row + 1}: "
                f"{table[column].iloc[row]!r} is not a number"
            )
        table[column] = numbers
    return Recording(path.stem, table[chosen].to_numpy(dtype=np.float32), float(fs), path)


def _read_edf(path: Path, leads: list[str], fs: float | None) -> Recording:
    import wfdb

    try:
        record = wfdb.io.convert.edf.read_edf(str(path))
    except Exception as exc:
        raise EcgError(f"{path}: not a readable EDF file ({exc})") from None
    names = list(record.sig_name)
    indices = wfdb_io.lead_indices(names, leads, str(path))
    signal = np.asarray(record.p_signal[:, indices], dtype=np.float32)
    return Recording(path.stem, signal, float(record.fs), path)


# ------------------------------------------------------------------------------ prediction


def predict(
    model: LoadedModel,
    recording: Recording,
    annotations: str | None = None,
    detector: str = PREDICT_DETECTOR,
) -> tuple[pd.DataFrame, dict]:
    """Per-beat (or per-window) predictions and a record summary."""
    spec = model.spec
    sig_cfg, seg_cfg = model.signal, model.segment
    where = str(recording.path)
    if len(recording.signal) == 0:
        raise EcgError(f"{where}: the recording holds no samples")
    x, issues, usable = check_leads(recording.signal, list(sig_cfg.leads), sig_cfg.max_nan_fraction)
    if len(usable) < len(sig_cfg.leads):
        problems = "; ".join(i.describe() for i in issues if i.action == "dropped")
        raise EcgError(f"{where}: cannot classify: {problems}")
    for issue in issues:
        log.warning("%s: %s", where, issue.describe())
    minimum = (seg_cfg.pre_s + seg_cfg.post_s) if seg_cfg.kind == "beats" else seg_cfg.window_s
    if len(x) / recording.fs < max(minimum, 1.0):
        raise EcgError(
            f"{where}: {len(x) / recording.fs:.2f} s long, shorter than one window ({minimum:g} s)"
        )
    try:
        y, fs_new = filtered(x, recording.fs, sig_cfg)
    except ValueError as exc:  # a rate too low for the model's band-pass
        raise EcgError(f"{where}: {exc} (sampled at {recording.fs:g} Hz)") from None
    classes = spec["classes"]
    if seg_cfg.kind == "windows":
        windows, starts = cut_windows(y, fs_new, seg_cfg)
        table = pd.DataFrame({"sample": rescale_samples(starts, fs_new, recording.fs)})
        rr = None
    else:
        r, truth = _r_peaks(recording, y, fs_new, annotations, detector)
        windows, keep, rr_all = cut_beats(y, recording.fs, fs_new, r, seg_cfg)
        table = pd.DataFrame({"sample": r[keep]})
        if truth is not None:
            table["reference"] = truth[keep]
        rr = (
            np.stack([rr_all[n][keep] for n in spec["rr_features"]], axis=1)
            if spec["n_rr"]
            else None
        )
        if (~keep).any():
            log.info("%s: %d beats too near the edges to classify", where, int((~keep).sum()))
    proba = _probabilities(model, windows, rr)
    table.insert(1, "time_s", table["sample"] / recording.fs)
    table["class"] = np.asarray(classes, dtype=object)[proba.argmax(axis=1)] if len(proba) else []
    for i, name in enumerate(classes):
        table[f"p_{name}"] = proba[:, i] if len(proba) else []
    return table, _summary(recording, table, classes, seg_cfg.kind)


def _r_peaks(
    recording: Recording, y: np.ndarray, fs_new: float, annotations: str | None, detector: str
) -> tuple[np.ndarray, np.ndarray | None]:
    if annotations:
        if recording.path.suffix.lower() in (".csv", ".edf"):
            raise EcgError(f"--annotations {annotations}: only WFDB records have annotation files")
        samples, symbols = wfdb_io.read_annotations(recording.path, annotations)
        beat = np.array([s in AAMI_EC57 for s in symbols], dtype=bool)
        truth = np.array([AAMI_EC57.get(s, "") for s in symbols], dtype=object)
        return samples[beat], truth[beat]
    found = wfdb_io.detect_r_peaks(y[:, 0].astype(np.float64), fs_new, detector)
    return rescale_samples(found, fs_new, recording.fs), None


@torch.no_grad()
def _probabilities(model: LoadedModel, windows: np.ndarray, rr: np.ndarray | None) -> np.ndarray:
    if len(windows) == 0:
        return np.zeros((0, len(model.spec["classes"])), dtype=np.float32)
    out = []
    for start in range(0, len(windows), 1024):
        x = torch.from_numpy(np.ascontiguousarray(windows[start : start + 1024]))
        r = None if rr is None else torch.from_numpy(rr[start : start + 1024].astype(np.float32))
        x, r = model.normalizer(x, r)
        out.append(torch.softmax(model.classifier(x, r), dim=1).numpy())
    return np.concatenate(out)


def _summary(recording: Recording, table: pd.DataFrame, classes: list[str], kind: str) -> dict:
    duration = len(recording.signal) / recording.fs
    summary = {
        "record": recording.name,
        "duration_s": round(duration, 2),
        "fs": recording.fs,
        "pieces": int(len(table)),
        "counts": {c: int((table["class"] == c).sum()) for c in classes},
    }
    if kind == "beats" and len(table) > 1:
        rr = np.diff(table["sample"].to_numpy()) / recording.fs
        summary["heart_rate_bpm"] = round(float(60.0 / np.median(rr)), 1)
    if kind == "windows" and len(table):
        mean = {c: float(table[f"p_{c}"].mean()) for c in classes}
        summary["record_class"] = max(mean, key=mean.get)
        summary["record_probabilities"] = mean
    if "reference" in table.columns:
        summary["agreement_with_reference"] = round(
            float((table["reference"] == table["class"]).mean()), 4
        )
    return summary

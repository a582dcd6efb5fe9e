"""How wfdb's R-peak detectors find MIT-BIH's reference beats on the signal the model reads.

    python benchmarks/detectors.py mitdb --raw data/raw/mitdb/1.0.0

``ecg predict`` and detector-made pieces (``segment.r_peaks: xqrs | gqrs``) centre each beat on
a detected R peak, where a model trained on MIT-BIH learnt beats centred on the reference
annotations. For every record with the pipeline's lead, on the pipeline's own filtered and
resampled signal: XQRS and GQRS as wfdb returns them ("as found") and as ``detect_r_peaks``
hands them on, moved to the QRS complex's largest deflection (``moved_to_r``: "moved"). Each is
matched to the reference beats (every AAMI beat symbol) within 150 ms, ANSI/AAMI EC57's window,
by wfdb's ``compare_annotations``: sensitivity, positive predictivity, and the median and spread
of the matched beats' offset from the reference in samples. No training, DS2 in it like any
record: nothing here chooses a model."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm
from wfdb import processing

from ecg.config import DETECTORS, find_pipeline, load_config
from ecg.databases import wfdb_io
from ecg.labels import AAMI_EC57
from ecg.preprocess import filtered
from ecg.signal import rescale_samples

WINDOW_S = 0.15
"""EC57's matching window for a detected beat."""


def compared(reference: np.ndarray, found: np.ndarray, fs: float):
    """wfdb's match of detections to reference beats (both sample indices at ``fs``) within
    ``WINDOW_S``."""
    reference, found = (np.asarray(s, dtype=np.int64) for s in (reference, found))
    return processing.compare_annotations(reference, found, round(WINDOW_S * fs))


def scored(reference: np.ndarray, found: np.ndarray, fs: float) -> dict:
    """Matches, misses, extra detections and the matched ones' offsets in samples."""
    comparison = compared(reference, found, fs)
    matched = comparison.test_sample[comparison.matching_sample_nums[comparison.matched_ref_inds]]
    return {
        "tp": len(comparison.matched_ref_inds),
        "fn": len(comparison.unmatched_ref_inds),
        "fp": len(comparison.unmatched_test_inds),
        "offset": (matched - reference[comparison.matched_ref_inds]).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="mitdb")
    parser.add_argument("--raw", type=Path, required=True, help="a folder of MIT-BIH records")
    args = parser.parse_args()
    config = load_config(find_pipeline(args.pipeline))
    names = sorted(path.stem for path in args.raw.glob("*.atr"))
    if not names:
        parser.error(f"{args.raw}: no .atr annotations")
    totals: dict = {}
    skipped = []
    for name in tqdm(names, desc="records", unit="record"):
        path = args.raw / name
        try:
            raw = wfdb_io.read_signals(path, config.signal.leads[:1])
        except wfdb_io.MissingLead:
            skipped.append(name)
            continue
        y, fs = filtered(raw.signal, raw.fs, config.signal)
        x = y[:, 0].astype(np.float64)
        samples, symbols, _ = wfdb_io.read_annotation_notes(path, "atr")
        beats = np.isin(symbols, list(AAMI_EC57))
        reference = rescale_samples(samples[beats], raw.fs, fs)
        for detector in DETECTORS:
            found = wfdb_io.found_r_peaks(x, fs, detector)  # XQRS takes seconds: run once
            for kind, peaks in (("as found", found), ("moved", wfdb_io.moved_to_r(x, found, fs))):
                score = scored(reference, peaks, fs)
                total = totals.setdefault((detector, kind), {"tp": 0, "fn": 0, "fp": 0, "off": []})
                for key in ("tp", "fn", "fp"):
                    total[key] += score[key]
                total["off"] += score["offset"]
    print(
        f"{len(names) - len(skipped)} records of {args.raw} ({', '.join(skipped) or 'none'} "
        f"without {config.signal.leads[0]}), {config.signal.fs:g} Hz, matched within "
        f"{WINDOW_S * 1000:.0f} ms"
    )
    print("detector  peaks      beats   Se %   +P %  offset: median  10th-90th pct  within 1.5")
    for (detector, kind), t in totals.items():
        off = np.asarray(t["off"])
        low, high = np.percentile(off, [10, 90])
        beats = t["tp"] + t["fn"]
        se, pp = 100 * t["tp"] / beats, 100 * t["tp"] / (t["tp"] + t["fp"])
        print(
            f"{detector:<9} {kind:<9} {beats:>7,} {se:6.2f} {pp:6.2f}  {np.median(off):+14.1f}  "
            f"{low:+6.1f} {high:+6.1f}  {np.mean(np.abs(off) <= 1.5):10.3f}"
        )


if __name__ == "__main__":
    main()

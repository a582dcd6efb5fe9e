"""What classifying detected beats instead of the reference beats costs: ``ecg predict`` on DS2.

    ecg run mitdb --source ../shared/data/mitdb
    python benchmarks/detected_beats.py --model data/processed/mitdb/train/fold_0 \
        --raw data/raw/mitdb/1.0.0

A user's recording has no beat annotations, so ``ecg predict`` finds the beats itself. For each
DS2 record, the trained model classifies the reference beats (``--annotations atr``, what the
evaluate stage scores) and the beats each detector finds; a detected beat is matched to a
reference beat within 150 ms (ANSI/AAMI EC57's window, wfdb's ``compare_annotations``). A
reference beat no detection matched counts against its class's sensitivity; a detection that
matches no reference beat counts against the positive predictivity of the class it was called.
Reference beats of a class the model does not learn (Q), and the detections matched to them, are
left out, as the evaluate stage leaves Q out; so are the reference beats too near a record's edge
to classify, as there (a detection near an edge then counts as an extra one). A detector named
``gqrs:as-found`` is GQRS without the move to the largest deflection, as predict had it before.
The model is the finished default, read on DS2 as the evaluate stage reads it: nothing here
chooses a model.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
from detectors import compared
from tqdm import tqdm

from ecg.config import DETECTORS
from ecg.databases import wfdb_io
from ecg.metrics import confusion, from_confusion
from ecg.predict import load_model, predict, read_recording
from ecg.split import DS2

NONE = "none"
"""A reference beat nobody classified, or a detection no reference beat has."""


def paired(reference, detected, fs: float, classes: list[str]) -> tuple[list[str], list[str]]:
    """The (reference, called) class of every beat of one record: matched pairs, then missed
    reference beats (called ``NONE``), then extra detections (reference ``NONE``), without the
    reference beats outside ``classes`` and what was matched to them. ``reference`` and
    ``detected`` are predict's tables; the call on the reference beat is not used here."""
    truth = reference["reference"].to_numpy()
    comparison = compared(reference["sample"].to_numpy(), detected["sample"].to_numpy(), fs)
    called = detected["class"].to_numpy()
    matched = comparison.matching_sample_nums
    found = matched >= 0
    y = [*truth[found], *truth[~found], *[NONE] * len(comparison.unmatched_test_inds)]
    p = [*called[matched[found]], *[NONE] * int((~found).sum())]
    p += list(called[comparison.unmatched_test_inds])
    kept = [i for i, c in enumerate(y) if c in classes or c == NONE]
    return [y[i] for i in kept], [p[i] for i in kept]


@contextlib.contextmanager
def as_found(unmoved: bool):
    """Detections as the detector gives them, not moved to the largest deflection: predict has no
    switch for it (nobody should want it), so the move is swapped out while it runs."""
    moved = wfdb_io.moved_to_r
    if unmoved:
        wfdb_io.moved_to_r = lambda x, found, fs: found
    try:
        yield
    finally:
        wfdb_io.moved_to_r = moved


def detector_spec(text: str) -> str:
    """``NAME`` or ``NAME:as-found``; anything else is refused before a record is read, so that a
    typo in the suffix cannot pass as the moved detector in the table."""
    name, colon, how = text.partition(":")
    if name not in DETECTORS or (colon and how != "as-found"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected one of {', '.join(DETECTORS)}, each also as NAME:as-found"
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model.pt, a training folder or models:/")
    parser.add_argument("--raw", type=Path, required=True, help="a folder of MIT-BIH records")
    parser.add_argument("--records", nargs="+", default=list(DS2))
    parser.add_argument(
        "--detectors",
        nargs="+",
        type=detector_spec,
        default=["gqrs", "gqrs:as-found", "xqrs"],
        help=f"any of {', '.join(DETECTORS)}, each also as NAME:as-found (not moved to R)",
    )
    args = parser.parse_args()
    model = load_model(args.model)
    classes = list(model.spec["classes"])
    labels = [*classes, NONE]
    pairs: dict[str, tuple[list, list]] = {k: ([], []) for k in ["reference", *args.detectors]}
    for name in tqdm(args.records, desc="records", unit="record"):
        recording = read_recording(args.raw / name, list(model.signal.leads), None)
        reference, _ = predict(model, recording, annotations="atr")
        learnt = reference[reference["reference"].isin(classes)]
        pairs["reference"][0].extend(learnt["reference"])
        pairs["reference"][1].extend(learnt["class"])
        for detector in args.detectors:
            found_by, _, how = detector.partition(":")
            with as_found(how == "as-found"):
                detected, _ = predict(model, recording, detector=found_by)
            y, p = paired(reference, detected, recording.fs, classes)
            pairs[detector][0].extend(y)
            pairs[detector][1].extend(p)
    print(f"{len(args.records)} records of {args.raw}, model {args.model}")
    by_class = "  ".join(f"{c} F1" for c in classes)
    width = max(len(kind) for kind in pairs)  # "gqrs:as-found" is wider than "beats"
    print(f"{'beats':<{width}} {'reference':>10}  missed  extra  macro-F1  {by_class}")
    for kind, (y, p) in pairs.items():
        y_id = np.array([labels.index(c) for c in y])
        p_id = np.array([labels.index(c) for c in p])
        metrics = from_confusion(confusion(y_id, p_id, len(labels)), labels)
        f1 = [metrics[f"{c}_f1"] for c in classes]
        missed, extra = int(np.sum(p_id == len(classes))), int(np.sum(y_id == len(classes)))
        print(
            f"{kind:<{width}} {int(np.sum(y_id < len(classes))):>10,} {missed:>7,} {extra:>6,}"
            f"  {np.nanmean(f1):8.3f}  " + "  ".join(f"{v:4.3f}" for v in f1)
        )


if __name__ == "__main__":
    main()

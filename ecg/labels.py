"""Class labels: the AAMI EC57 beat classes for MIT-BIH, and the PTB diagnostic tasks.

AAMI EC57 (ANSI/AAMI EC57:2012) groups MIT-BIH beat annotations into five classes:

    N  normal and bundle-branch-block beats, escapes   N L R e j
    S  supraventricular ectopic beats                   A a J S
    V  ventricular ectopic beats                        V E
    F  fusion of ventricular and normal beats           F
    Q  paced, fusion of paced and normal, unclassified  / f Q

Every other MIT-BIH annotation (rhythm changes ``+``, noise ``~``, artefacts ``|``, comments
``"``, non-conducted P waves ``x``, flutter waves ``!``, ventricular flutter ``[ ]``, ...) marks no
beat and is skipped. A symbol that is in neither list is reported, never guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

AAMI_CLASSES = ("N", "S", "V", "F", "Q")

AAMI_EC57 = {
    "N": "N", "L": "N", "R": "N", "e": "N", "j": "N",
    "A": "S", "a": "S", "J": "S", "S": "S",
    "V": "V", "E": "V",
    "F": "F",
    "/": "Q", "f": "Q", "Q": "Q",
}  # fmt: skip

# Annotation codes of the WFDB standard that mark no beat (wfdb.io.annotation's label table).
NON_BEAT_SYMBOLS = frozenset("+~|x![]\"=p^tu`'s*D@T()")

# PTB Diagnostic ECG Database: the "Reason for admission" of the header.
PTB_HEALTHY = "Healthy control"
PTB_MI = "Myocardial infarction"
PTB_TASKS = {
    "mi_vs_healthy": ("healthy", "MI"),
    "disease_vs_healthy": ("healthy", "disease"),
}


def classes_for(task: str) -> tuple[str, ...]:
    if task == "aami":
        return AAMI_CLASSES
    return PTB_TASKS[task]


def aami_labels(symbols: Sequence[str]) -> tuple[np.ndarray, Counter, Counter]:
    """AAMI class of each annotation, or '' where it is not a beat.

    Returns the classes, the count of non-beat annotations by symbol, and the count of symbols
    that are neither (to be reported: an unknown symbol is never given a class).
    """
    classes = np.array([AAMI_EC57.get(s, "") for s in symbols], dtype="<U1")
    non_beat: Counter = Counter()
    unknown: Counter = Counter()
    for symbol, cls in zip(symbols, classes, strict=True):
        if cls:
            continue
        if symbol in NON_BEAT_SYMBOLS:
            non_beat[symbol] += 1
        else:
            unknown[symbol] += 1
    return classes, non_beat, unknown


# The rhythm names of MIT-BIH's '+' annotations (PhysioNet's MIT-BIH Arrhythmia Database
# directory), for reports.
MITDB_RHYTHMS = {
    "AB": "atrial bigeminy",
    "AFIB": "atrial fibrillation",
    "AFL": "atrial flutter",
    "B": "ventricular bigeminy",
    "BII": "2° heart block",
    "IVR": "idioventricular rhythm",
    "N": "normal sinus rhythm",
    "NOD": "nodal, A-V junctional rhythm",
    "P": "paced rhythm",
    "PREX": "pre-excitation (WPW)",
    "SBR": "sinus bradycardia",
    "SVTA": "supraventricular tachyarrhythmia",
    "T": "ventricular trigeminy",
    "VFL": "ventricular flutter",
    "VT": "ventricular tachycardia",
}


def rhythm_of_beats(
    samples: np.ndarray, symbols: Sequence[str], notes: Sequence[str], beats: np.ndarray
) -> np.ndarray:
    """The reference rhythm in effect at each beat: 'N', 'AFIB', 'AFL', 'B', ... ('' before the
    record's first rhythm annotation, or in a record without any).

    MIT-BIH marks a change of rhythm with a '+' annotation whose note names the new rhythm, e.g.
    '(AFIB'; it holds until the next one. Training can use it (``train.weight_rhythms``); the
    model never sees it.
    """
    change = np.array([s == "+" for s in symbols], dtype=bool)
    if not change.any():
        return np.full(len(beats), "", dtype=object)
    names = np.array(
        [n.strip("\x00 ").removeprefix("(") for n, c in zip(notes, change, strict=True) if c],
        dtype=object,
    )
    position = np.searchsorted(np.asarray(samples)[change], beats, side="right") - 1
    return np.where(position >= 0, names[np.maximum(position, 0)], "").astype(object)


def ptb_label(diagnosis: str | None, task: str) -> str | None:
    """Class of a PTB record under ``task``; None when the record takes no part in it."""
    if diagnosis is None:
        return None
    if task == "mi_vs_healthy":
        return {PTB_HEALTHY: "healthy", PTB_MI: "MI"}.get(diagnosis)
    if task == "disease_vs_healthy":
        return "healthy" if diagnosis == PTB_HEALTHY else "disease"
    raise ValueError(f"unknown PTB task {task!r}")

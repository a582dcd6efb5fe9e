"""Per-class decision offsets: how much to favour a class before taking the arg-max.

A network trained on a few dozen patients can rank the beats of a rare class well and still put
few of them above the other classes' probabilities (on DS2 the default models' S ROC-AUC is about
0.96 while their S sensitivity is 0.2-0.3). Adding an offset to each class's log-probability
moves the decision without retraining. Offsets are chosen on validation patients only; chosen on
the test patients they would be worth nothing.

Measured with ``benchmarks/decision_offsets.py`` (``benchmarks/quality.md``): offsets chosen on
some DS1 patients lower macro-F1 on the others, so the pipeline keeps the plain arg-max and this
module is the measuring tool.

Written here rather than taken from scikit-learn: its ``TunedThresholdClassifierCV`` tunes one
threshold of a binary problem, and a multi-class macro-F1 needs one offset per class, searched
together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ecg.metrics import confusion, from_confusion

GRID = np.round(np.arange(-3.0, 3.0001, 0.1), 1)
"""Offsets tried for each class, in natural-log units: exp(3) is a factor of 20 in odds."""


def decide(proba: np.ndarray, offsets: Sequence[float] | None = None) -> np.ndarray:
    """Class of each row: the arg-max of log-probability plus offset (plain arg-max without)."""
    if offsets is None or not np.any(offsets):
        return proba.argmax(axis=1)
    scores = np.log(np.clip(proba, 1e-12, None)) + np.asarray(offsets, dtype=np.float64)
    return scores.argmax(axis=1)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> float:
    return from_confusion(confusion(y_true, y_pred, len(classes)), classes)["macro_f1"]


def choose_offsets(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    grid: np.ndarray = GRID,
    passes: int = 3,
) -> np.ndarray:
    """Offsets that maximise macro-F1 on (validation) pieces, the first class's fixed at 0.

    Coordinate ascent over ``grid``, one class at a time, a few passes: an exhaustive grid over
    three free classes would be 61^3 evaluations for the same answer in practice. Among equal
    scores the offset nearest 0 wins, so a class the data say nothing about keeps the arg-max.
    """
    offsets = np.zeros(len(classes))
    best = macro_f1(y_true, decide(proba, offsets), classes)
    by_size = grid[np.argsort(np.abs(grid), kind="stable")]
    for _ in range(passes):
        changed = False
        for c in range(1, len(classes)):
            for value in by_size:
                trial = offsets.copy()
                trial[c] = value
                score = macro_f1(y_true, decide(proba, trial), classes)
                if score > best + 1e-12:
                    best, offsets, changed = score, trial, True
        if not changed:
            break
    return offsets


def without_s_where_irregular(
    proba: np.ndarray, irregularity: np.ndarray, classes: Sequence[str], gate: float
) -> np.ndarray:
    """``proba`` with S ruled out for the rows whose RR context is at least ``gate`` irregular,
    the other classes renormalised.

    In atrial fibrillation there is no sinus rhythm for an atrial beat to come early against, and
    MIT-BIH's annotators call its supraventricular beats N (DS1: 2,948 N and 16 S beats in
    fibrillation). A network trained on DS1's two fibrillation patients cannot learn that for a
    third (``benchmarks/quality.md``, rounds 23, 25 and 27), so here it is a rule. A gate of 0 or
    a class list without S leaves ``proba`` as it is.
    """
    if not gate or "S" not in classes:
        return proba
    out = np.array(proba, dtype=np.float64)
    irregular = np.asarray(irregularity) >= gate
    out[irregular, list(classes).index("S")] = 0.0
    total = out[irregular].sum(axis=1, keepdims=True)
    out[irregular] /= np.clip(total, 1e-300, None)
    return out.astype(np.asarray(proba).dtype)

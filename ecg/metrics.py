"""Classification metrics from confusion matrices, with confidence intervals by record.

Beats of one record are not independent: resampling beats would give intervals far too narrow.
Intervals here come from resampling whole records (patients) with replacement, as the unit that
was actually sampled. Each record's confusion matrix is computed once; a bootstrap replicate is a
sum of them, so a thousand replicates cost milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_auc_score


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def from_confusion(cm: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Accuracy; per class precision (+P), recall (Se), specificity, F1; macro and weighted.

    A class with no true and no predicted pieces has undefined metrics: NaN, never 0 or 1, so
    that a report can say n/a rather than invent a number. Macro averages skip NaN.
    """
    cm = cm.astype(np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    true = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(true > 0, tp / true, np.nan)
        negatives = total - true
        specificity = np.where(negatives > 0, (negatives - (predicted - tp)) / negatives, np.nan)
        f1 = np.where((true + predicted) > 0, 2 * tp / (true + predicted), np.nan)
    out = {"accuracy": float(tp.sum() / total) if total else float("nan")}
    for i, name in enumerate(classes):
        out[f"{name}_precision"] = float(precision[i])
        out[f"{name}_recall"] = float(recall[i])
        out[f"{name}_specificity"] = float(specificity[i])
        out[f"{name}_f1"] = float(f1[i])
        out[f"{name}_support"] = float(true[i])
    present = true > 0
    for key, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        usable = present & ~np.isnan(values)
        out[f"macro_{key}"] = (
            float(np.mean(np.nan_to_num(values[present]))) if present.any() else float("nan")
        )
        weights = true[usable]
        out[f"weighted_{key}"] = (
            float(np.average(values[usable], weights=weights)) if weights.sum() else float("nan")
        )
    return out


def breakdown(predictions: pd.DataFrame, by: str, classes: Sequence[str]) -> dict[str, dict]:
    """For each value of column ``by`` (a record, a patient, a rhythm): its size, accuracy,
    true classes and confusions ('N->S': count, most frequent first). One bad record or one
    rhythm cannot hide in a pooled number; metrics.json and the report both read it from here."""
    groups = {}
    for name, part in predictions.groupby(by, sort=True):
        wrong = part[part["true"] != part["predicted"]]
        pairs = (wrong["true"] + "->" + wrong["predicted"]).value_counts()
        groups[str(name)] = {
            "n": int(len(part)),
            "accuracy": float((part["true"] == part["predicted"]).mean()),
            "true_counts": {c: int((part["true"] == c).sum()) for c in classes},
            "confusions": {k: int(v) for k, v in pairs.items()},
        }
    return groups


def roc_auc_per_class(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict:
    """One-vs-rest ROC-AUC per class; NaN where a class has no positive or no negative piece."""
    out = {}
    for i, name in enumerate(classes):
        positive = y_true == i
        if positive.all() or not positive.any():
            out[f"{name}_roc_auc"] = float("nan")
        else:
            out[f"{name}_roc_auc"] = float(roc_auc_score(positive, proba[:, i]))
    return out


def bootstrap_by_group(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: np.ndarray,
    classes: Sequence[str],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every confusion-derived metric, resampling groups (records)."""
    if resamples == 0:
        return {}
    per_group = _per_group(y_true, y_pred, groups, len(classes))
    draws = _draws(len(per_group), resamples, seed)
    samples: dict[str, list[float]] = {}
    for draw in draws:
        for key, value in from_confusion(per_group[draw].sum(axis=0), classes).items():
            samples.setdefault(key, []).append(value)
    return {
        key: _percentile_interval(values, confidence)
        for key, values in samples.items()
        if not key.endswith("_support")
    }


def paired_difference(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    groups: np.ndarray,
    classes: Sequence[str],
    key: str = "macro_f1",
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``key`` of b minus ``key`` of a on the same pieces, with a percentile interval from
    resampling groups (patients): both decisions see the same draws, so what the patients have
    in common cancels and the interval is that of the difference, not of either score."""
    n = len(classes)
    a, b = (_per_group(y_true, pred, groups, n) for pred in (pred_a, pred_b))

    def diff(rows) -> float:
        return (
            from_confusion(b[rows].sum(axis=0), classes)[key]
            - from_confusion(a[rows].sum(axis=0), classes)[key]
        )

    point = diff(np.arange(len(a)))
    low, high = _percentile_interval([diff(d) for d in _draws(len(a), resamples, seed)], confidence)
    return point, low, high


def _per_group(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """One confusion matrix per group (in sorted group order): a replicate is a sum of them."""
    names, inverse = np.unique(groups, return_inverse=True)
    per_group = np.zeros((len(names), n, n), dtype=np.int64)
    np.add.at(per_group, (inverse, y_true, y_pred), 1)
    return per_group


def _percentile_interval(values, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of the replicates that are defined (a metric is NaN
    in a replicate that drew no piece of its class); NaN, NaN if none is."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if len(arr) == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return float(np.quantile(arr, alpha)), float(np.quantile(arr, 1 - alpha))


def _draws(n_groups: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_groups, size=(resamples, n_groups))

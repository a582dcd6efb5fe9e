"""Metrics from confusion matrices, and intervals by record."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ecg.metrics import (
    bootstrap_by_group,
    breakdown,
    confusion,
    from_confusion,
    roc_auc_per_class,
)

CLASSES = ["N", "S", "V"]


def test_metrics_match_a_hand_counted_confusion_matrix():
    # true N: 8 right, 2 called S; true S: 3 right, 1 called N; true V: 5 right
    cm = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 5]])
    m = from_confusion(cm, CLASSES)
    assert m["accuracy"] == pytest.approx(16 / 19)
    assert m["S_recall"] == pytest.approx(3 / 4)
    assert m["S_precision"] == pytest.approx(3 / 5)
    assert m["S_f1"] == pytest.approx(2 * 3 / (4 + 5))
    assert m["S_specificity"] == pytest.approx((15 - 2) / 15)
    assert m["N_support"] == 10
    assert m["macro_f1"] == pytest.approx(np.mean([16 / 19, 6 / 9, 1.0]))
    assert m["weighted_recall"] == pytest.approx(16 / 19)


def test_a_class_absent_from_the_test_set_is_nan_not_a_number_made_up():
    cm = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 0]])
    m = from_confusion(cm, CLASSES)
    assert math.isnan(m["V_recall"]) and math.isnan(m["V_precision"])
    assert m["macro_f1"] == 1.0  # averaged over the classes that occur


def test_a_class_never_predicted_has_undefined_precision_but_counts_zero_in_macro():
    cm = np.array([[5, 0, 0], [0, 5, 0], [3, 0, 0]])
    m = from_confusion(cm, CLASSES)
    assert math.isnan(m["V_precision"])
    assert m["V_recall"] == 0.0
    assert m["macro_precision"] == pytest.approx((5 / 8 + 1 + 0) / 3)


def test_intervals_resample_records_not_beats():
    # record a: 100 beats all right; record b: 100 beats all wrong
    y_true = np.zeros(200, dtype=int)
    y_pred = np.r_[np.zeros(100, dtype=int), np.ones(100, dtype=int)]
    groups = np.r_[["a"] * 100, ["b"] * 100]
    ci = bootstrap_by_group(y_true, y_pred, groups, ["N", "S"], resamples=500, seed=1)
    low, high = ci["accuracy"]
    # by beats the interval would be about 0.43-0.57; two records give 0, 0.5 or 1
    assert low == 0.0 and high == 1.0
    same = bootstrap_by_group(y_true, y_pred, groups, ["N", "S"], resamples=500, seed=1)
    assert same["accuracy"] == ci["accuracy"] and same["N_f1"] == ci["N_f1"]


def test_roc_auc_per_class():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    auc = roc_auc_per_class(y, proba, ["N", "S"])
    assert auc == {"N_roc_auc": 1.0, "S_roc_auc": 1.0}
    assert math.isnan(roc_auc_per_class(np.zeros(4, int), proba, ["N", "S"])["S_roc_auc"])


def test_confusion_keeps_every_class_in_order():
    assert confusion(np.array([0, 0]), np.array([0, 0]), 3).shape == (3, 3)


def test_breakdown_counts_each_groups_truth_and_confusions_most_frequent_first():
    p = pd.DataFrame(
        {
            "record": ["b", "b", "b", "b", "a"],
            "true": ["N", "N", "N", "S", "S"],
            "predicted": ["S", "S", "V", "S", "N"],
        }
    )
    groups = breakdown(p, "record", ["N", "S", "V"])
    assert list(groups) == ["a", "b"]
    assert groups["b"] == {
        "n": 4,
        "accuracy": 0.25,
        "true_counts": {"N": 3, "S": 1, "V": 0},
        "confusions": {"N->S": 2, "N->V": 1},
    }
    assert list(groups["b"]["confusions"].values()) == [2, 1]
    assert groups["a"]["confusions"] == {"S->N": 1}


def test_a_paired_difference_resamples_patients_together():
    from ecg.metrics import bootstrap_by_group, from_confusion, paired_difference

    rng = np.random.default_rng(0)
    classes = ["N", "S"]
    patients = np.repeat(np.arange(20), 100)
    y = (rng.random(2000) < 0.3).astype(int)
    # how hard a patient is varies a lot; b gets right a few more of every patient's beats
    hard = np.repeat(rng.random(20) * 0.6, 100)
    a = np.where(rng.random(2000) < hard, 1 - y, y)
    b = np.where(rng.random(2000) < 0.1, y, a)
    point, low, high = paired_difference(y, a, b, patients, classes)
    expected = (
        from_confusion(confusion(y, b, 2), classes)["macro_f1"]
        - from_confusion(confusion(y, a, 2), classes)["macro_f1"]
    )
    assert point == pytest.approx(expected) and 0 < low < point < high
    a_low, a_high = bootstrap_by_group(y, a, patients, classes)["macro_f1"]
    assert high - low < (a_high - a_low) / 3  # the patients' spread cancels in the difference
    assert paired_difference(y, a, a, patients, classes) == (0.0, 0.0, 0.0)

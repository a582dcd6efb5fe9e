"""Per-class decision offsets chosen on validation pieces."""

from __future__ import annotations

import numpy as np
import pytest

from ecg.decision import choose_offsets, decide, macro_f1, without_s_where_irregular

CLASSES = ["N", "S"]


def _under_called_s(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """S beats that rank above N beats but whose S probability stays below one half."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.int64)
    p_s = np.where(y == 1, rng.uniform(0.2, 0.45, n), rng.uniform(0.0, 0.15, n))
    return y, np.column_stack([1 - p_s, p_s])


def test_no_offsets_is_the_plain_arg_max():
    proba = np.array([[0.6, 0.4], [0.3, 0.7]])
    assert decide(proba).tolist() == [0, 1]
    assert decide(proba, [0.0, 0.0]).tolist() == [0, 1]


def test_an_offset_moves_the_decision_by_its_odds():
    proba = np.array([[0.6, 0.4]])
    # log(0.4) + 0.5 > log(0.6) since 0.4 * e^0.5 = 0.66
    assert decide(proba, [0.0, 0.5]).tolist() == [1]
    assert decide(proba, [0.0, 0.3]).tolist() == [0]


def test_offsets_recover_a_class_the_arg_max_misses():
    y, proba = _under_called_s()
    assert macro_f1(y, decide(proba), CLASSES) < 0.5
    offsets = choose_offsets(y, proba, CLASSES)
    assert offsets[0] == 0.0
    assert offsets[1] > 0
    assert macro_f1(y, decide(proba, offsets), CLASSES) == pytest.approx(1.0)


def test_offsets_never_score_below_the_arg_max_on_the_pieces_that_chose_them():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    proba = rng.dirichlet(np.ones(3), 300)
    offsets = choose_offsets(y, proba, ["N", "S", "V"])
    assert macro_f1(y, decide(proba, offsets), ["N", "S", "V"]) >= macro_f1(
        y, decide(proba), ["N", "S", "V"]
    )


def test_a_perfect_arg_max_keeps_every_offset_at_zero():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
    assert choose_offsets(y, proba, CLASSES).tolist() == [0.0, 0.0]


def test_an_irregular_rhythm_rules_out_s_and_keeps_the_other_classes_odds():
    proba = np.array([[0.3, 0.6, 0.1, 0.0], [0.3, 0.6, 0.1, 0.0], [0.2, 0.2, 0.5, 0.1]])
    irregularity = np.array([0.05, 0.1, 0.3])
    out = without_s_where_irregular(proba, irregularity, ["N", "S", "V", "F"], 0.1)
    np.testing.assert_allclose(out[0], proba[0])  # regular: left alone
    np.testing.assert_allclose(out[1], [0.75, 0.0, 0.25, 0.0])  # at the gate: N, no longer S
    np.testing.assert_allclose(out[2], [0.25, 0.0, 0.625, 0.125])
    assert decide(out).tolist() == [1, 0, 2]


def test_no_gate_or_no_s_class_leaves_the_probabilities_alone():
    proba = np.array([[0.4, 0.6]])
    assert without_s_where_irregular(proba, np.array([0.5]), ["N", "S"], 0.0) is proba
    assert without_s_where_irregular(proba, np.array([0.5]), ["MI", "HC"], 0.1) is proba

"""Beats, windows and RR features."""

from __future__ import annotations

import numpy as np
import pytest

from ecg.segment import (
    beat_windows,
    rr_features,
    scaled_by_template,
    sliding_windows,
    with_template_difference,
)


def test_beat_windows_cut_around_the_centre_and_drop_edge_beats():
    x = np.arange(100, dtype=np.float32)[:, None]
    windows, keep = beat_windows(x, np.array([2, 10, 50, 97]), before=3, after=4)
    assert keep.tolist() == [False, True, True, False]
    assert windows.shape == (2, 7, 1)
    assert windows[0, :, 0].tolist() == [7, 8, 9, 10, 11, 12, 13]
    assert windows[1, 3, 0] == 50


def test_scaling_by_the_template_makes_a_patients_size_irrelevant():
    rng = np.random.default_rng(0)
    t = np.linspace(-1, 1, 40)
    beat = np.exp(-(t**2) / 0.01)  # a QRS-like spike spanning 1
    beats = beat[None, :, None] * rng.uniform(0.9, 1.1, (25, 1, 1))
    beats[3] *= 2.5  # one beat far taller than the patient's others (an ectopic beat)
    lead_two = np.zeros_like(beats)  # a flat lead
    windows = np.concatenate([beats, lead_two], axis=2)
    small, large = scaled_by_template(0.3 * windows), scaled_by_template(4.0 * windows)
    np.testing.assert_allclose(small, large)  # same patient, other gain: same input
    template = np.median(small, axis=0)
    assert np.ptp(template[:, 0]) == pytest.approx(1.0)
    # the tall beat stays 2.5 times the patient's typical size (give or take its 10 %)
    assert 2.2 < np.ptp(small[3, :, 0]) < 2.8
    assert (small[:, :, 1] == 0).all()  # the flat lead is left alone, not divided by zero
    assert scaled_by_template(windows[:0]).shape == (0, 40, 2)
    # scaled first, the template difference is the scaled beat minus the scaled median beat
    both = with_template_difference(small)
    np.testing.assert_allclose(both[:, :, 2], small[:, :, 0] - template[None, :, 0])


def test_a_local_template_follows_the_shapes_drift_and_keeps_an_odd_beats_difference():
    # one beat a second for 20 minutes; the normal beat's height drifts from 1 to 2 (posture,
    # electrode contact) and one beat, at 10 minutes, is three times as tall as its neighbours
    t = np.linspace(-1, 1, 31)
    shape = np.exp(-(t**2) / 0.01)  # peak 1 at t = 0
    times = np.arange(1200.0)
    height = 1 + times / 1200
    height[600] *= 3
    windows = (height[:, None] * shape[None, :])[:, :, None]
    whole = with_template_difference(windows)
    local = with_template_difference(windows, times, span_s=300)
    assert local.shape == whole.shape == (1200, 31, 2)
    np.testing.assert_array_equal(local[:, :, 0], windows[:, :, 0])  # the beat itself unchanged
    size = np.abs(local[:, :, 1]).max(axis=1)
    # against the whole record's median beat (height 1.5) the first and last minutes' normal
    # beats differ by 0.5; against the beats of their own five minutes by 0.07 or less
    assert np.abs(whole[[0, 1199], :, 1]).max(axis=1) == pytest.approx([0.5, 0.5], abs=0.01)
    assert np.delete(size, 600).max() < 0.07
    # the tall beat keeps its difference: twice its neighbours' height
    assert size[600] == pytest.approx(2 * height[599], abs=0.01)
    # a span longer than the record is the whole record's median beat
    np.testing.assert_allclose(with_template_difference(windows, times, span_s=1e6), whole)
    with pytest.raises(ValueError, match="one time per window"):
        with_template_difference(windows, times[:-1], span_s=300)


def test_a_local_template_from_the_nearest_beats_keeps_out_a_run_of_ectopic_beats():
    # one beat a second for 20 minutes of N beats whose height drifts from 1 to 1.5, with a
    # ten-minute run (minutes 5 to 15) in which three beats of five are ectopic: wide, inverted
    t = np.linspace(-1, 1, 31)
    normal, ectopic = np.exp(-(t**2) / 0.01), -0.8 * np.exp(-(t**2) / 0.1)
    times = np.arange(1200.0)
    height = 1 + 0.5 * times / 1200
    odd = (times >= 300) & (times < 900) & (times % 5 < 3)
    windows = np.where(odd[:, None], ectopic[None, :], height[:, None] * normal[None, :])[..., None]
    local = with_template_difference(windows, times, span_s=300)
    core = with_template_difference(windows, times, span_s=300, core=0.5)
    np.testing.assert_array_equal(core[:, :, 0], windows[:, :, 0])
    mid = 600  # an ectopic beat in the middle of the run
    # all beats' median: the ectopic beats are the majority there, so the template is one of them
    # and the ectopic beat's own difference vanishes
    assert np.abs(local[mid, :, 1]).max() < 0.01
    # the nearer half's median is the run's N beats: the ectopic beat keeps its whole difference
    n_here = height[mid] * normal
    np.testing.assert_allclose(core[mid, :, 1], ectopic - n_here, atol=0.02)
    # and the N beats keep following the drift, in the run and outside it, where the plain local
    # median makes the run's N beats look as odd as the ectopic ones
    assert np.abs(core[~odd, :, 1]).max() < 0.05
    assert np.abs(local[~odd & (times >= 450) & (times < 750), :, 1]).max(axis=1).min() > 1
    # a core of 1 is the plain local median; a fraction outside (0, 1] is refused
    np.testing.assert_array_equal(with_template_difference(windows, times, 300, core=1.0), local)
    with pytest.raises(ValueError, match="a fraction in"):
        with_template_difference(windows, times, span_s=300, core=0)


def test_sliding_windows_drop_the_short_tail():
    x = np.arange(10, dtype=np.float32)[:, None]
    windows, starts = sliding_windows(x, length=4, stride=3)
    assert starts.tolist() == [0, 3, 6]
    assert windows[:, 0, 0].tolist() == [0, 3, 6]
    empty, none = sliding_windows(x, length=11, stride=1)
    assert empty.shape == (0, 11, 1) and len(none) == 0


def test_rr_features_of_a_premature_beat():
    fs = 100.0
    # a regular 1 s rhythm with the fifth beat 0.4 s early
    r = (np.array([0, 1, 2, 3, 3.6, 5, 6, 7]) * fs).astype(int)
    f = rr_features(r, fs, local_beats=3, average_s=100)
    assert f["pre_rr"][4] == pytest.approx(0.6)
    assert f["post_rr"][4] == pytest.approx(1.4)
    assert f["pre_rr"][0] == f["post_rr"][0] == pytest.approx(1.0)  # borrowed
    assert f["local_rr"][3] == pytest.approx(1.0)
    assert f["local_rr"][4] == pytest.approx((1 + 1 + 0.6) / 3)
    assert f["average_rr"][4] == pytest.approx(1.0)
    assert f["pre_over_average"][4] == pytest.approx(0.6)
    assert f["pre_over_local"][4] < 0.7 < f["pre_over_local"][3]


def test_rr_irregularity_ignores_an_ectopic_beat_and_follows_an_irregular_rhythm():
    fs = 100.0
    rng = np.random.default_rng(0)
    regular = np.full(60, 0.8)
    regular[30] = 0.5  # one premature beat, then its compensatory pause
    regular[31] = 1.1
    irregular = rng.uniform(0.5, 1.1, 60)  # atrial fibrillation's irregularly irregular RR
    for rr, low, high in ((regular, 0.0, 1e-9), (irregular, 0.1, 1.0)):
        r = (np.concatenate([[0.0], np.cumsum(rr)]) * fs).round().astype(int)
        f = rr_features(r, fs, local_beats=10)["rr_irregularity"]
        assert low <= f[31] <= high  # the premature beat itself, or any beat of the AF stretch
        assert (f >= 0).all()


def test_rr_context_gives_the_intervals_around_a_beat_and_borrows_at_the_ends():
    fs = 100.0
    rr = np.array([1.0, 1.0, 1.0, 0.6, 1.4, 1.0, 1.0, 1.0])  # the fifth beat 0.4 s early
    r = (np.concatenate([[0.0], np.cumsum(rr)]) * fs).round().astype(int)
    f = rr_features(r, fs, local_beats=3, average_s=100)
    assert f["pre_over_average"][4] == pytest.approx(0.6)
    assert f["post_over_average"][4] == pytest.approx(1.4)
    # the beat after the premature one sees the short interval two back, the long one just before
    assert f["pre2_over_average"][5] == pytest.approx(0.6)
    assert f["pre_over_average"][5] == pytest.approx(1.4)
    # the beat two before it sees the short interval two ahead and the long one three ahead
    assert f["post2_over_average"][2] == pytest.approx(0.6)
    assert f["post3_over_average"][2] == pytest.approx(1.4)
    assert f["pre4_over_average"][7] == pytest.approx(0.6)
    # the first beat's earlier intervals and the last beat's later ones borrow the nearest
    assert f["pre4_over_average"][0] == pytest.approx(1.0)
    assert f["post4_over_average"][8] == pytest.approx(1.0)
    assert f["post2_over_average"][7] == pytest.approx(1.0)


def test_rr_features_of_a_single_beat_are_nan():
    assert np.isnan(rr_features(np.array([5]), 100.0)["pre_rr"]).all()

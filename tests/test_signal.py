"""Filters and resampling measured on sines and on real beats."""

from __future__ import annotations

import numpy as np
import pytest

from ecg import signal
from ecg.databases import wfdb_io

FS = 360.0


def _sine(freq, seconds=20.0, fs=FS):
    t = np.arange(int(seconds * fs)) / fs
    return np.sin(2 * np.pi * freq * t)[:, None].astype(np.float32)


def _gain_db(x, y):
    core = slice(len(x) // 4, 3 * len(x) // 4)  # away from filter edge effects
    return 20 * np.log10(np.std(y[core]) / np.std(x[core]))


def test_bandpass_keeps_10_hz():
    x = _sine(10)
    y, fs = signal.bandpass(x, FS, 0.5, 40.0, order=2)
    assert fs == FS
    assert abs(_gain_db(x, y)) < 0.1


def test_bandpass_removes_drift_and_mains_hum():
    assert _gain_db(_sine(0.1), signal.bandpass(_sine(0.1), FS, 0.5, 40.0)[0]) < -20
    assert _gain_db(_sine(60), signal.bandpass(_sine(60), FS, 0.5, 40.0)[0]) < -10


def test_notch_removes_mains_and_keeps_10_hz():
    hum = _sine(60)
    assert _gain_db(hum, signal.notch(hum, FS, 60.0)[0]) < -30
    assert abs(_gain_db(_sine(10), signal.notch(_sine(10), FS, 60.0)[0])) < 0.1


def test_bandpass_moves_no_r_peak(fixtures):
    """Zero phase: on real beats the filtered maximum stays within one sample of the raw one."""
    raw = wfdb_io.read_signals(fixtures / "mitdb" / "100", ["MLII"])
    samples, symbols = wfdb_io.read_annotations(fixtures / "mitdb" / "100", "atr")
    y, _ = signal.bandpass(raw.signal, raw.fs)
    moved = []
    for r, s in zip(samples, symbols, strict=True):
        if s != "N" or r < 40 or r + 40 > len(y):
            continue
        window = slice(r - 18, r + 18)  # +-50 ms around the reference
        moved.append(abs(int(np.argmax(raw.signal[window, 0])) - int(np.argmax(y[window, 0]))))
    assert len(moved) > 100
    assert max(moved) <= 1


def test_resampling_keeps_each_annotated_r_peak_at_its_beat_maximum(fixtures):
    """After 360 -> 128 Hz and rounding the annotation, the R peak is where it was: the beat's
    maximum sits at the same offset from the annotation, to within one sample at 128 Hz."""
    raw = wfdb_io.read_signals(fixtures / "mitdb" / "100", ["MLII"])
    samples, symbols = wfdb_io.read_annotations(fixtures / "mitdb" / "100", "atr")
    x, _ = signal.bandpass(raw.signal, raw.fs)
    y, fs = signal.resample(x, raw.fs, 128.0)
    assert fs == 128.0
    assert len(y) == round(len(x) * 128 / 360)
    centres = signal.rescale_samples(samples, raw.fs, fs)
    errors = []
    for r, c, s in zip(samples, centres, symbols, strict=True):
        if s != "N" or r < 72 or r + 72 > len(x):
            continue
        peak_before = (int(np.argmax(x[r - 36 : r + 36, 0])) - 36) * fs / raw.fs
        peak_after = int(np.argmax(y[c - 13 : c + 13, 0])) - 13
        errors.append(abs(peak_after - peak_before))
    assert len(errors) > 100
    assert max(errors) <= 1.0


def test_rescale_rounds_rather_than_truncates():
    np.testing.assert_array_equal(
        signal.rescale_samples([0, 1, 2, 359, 360], 360, 128), [0, 0, 1, 128, 128]
    )
    np.testing.assert_array_equal(signal.rescale_samples([3], 360, 128), [1])  # 1.07
    np.testing.assert_array_equal(signal.rescale_samples([5], 360, 128), [2])  # 1.78, not 1


def test_median_baseline_removes_a_slow_step():
    x = _sine(10) * 0.1
    x[len(x) // 2 :] += 2.0
    y, _ = signal.remove_baseline(x, FS)
    assert abs(float(np.median(y[: len(y) // 2 - 500]))) < 0.05
    assert abs(float(np.median(y[len(y) // 2 + 500 :]))) < 0.05


def test_band_above_nyquist_is_refused():
    with pytest.raises(ValueError, match="Nyquist"):
        signal.bandpass(_sine(10), 60.0, 0.5, 40.0)


def test_short_nan_gaps_are_repaired_and_reported():
    x = _sine(5, seconds=10)
    x[100:110, 0] = np.nan
    y, issues, usable = signal.check_leads(x, ["MLII"])
    assert usable == [0] and not np.isnan(y).any()
    assert [i.describe() for i in issues] == ["MLII: nan (0.3% of samples), repaired"]
    assert np.isnan(x[100, 0])  # the input is not modified


def test_mostly_nan_and_flat_leads_are_dropped_and_reported():
    x = np.hstack([_sine(5, 10), _sine(5, 10), np.zeros((3600, 1), np.float32)])
    x[: len(x) // 2, 1] = np.nan
    _, issues, usable = signal.check_leads(x, ["MLII", "V1", "V5"])
    assert usable == [0]
    assert [(i.lead, i.problem, i.action) for i in issues] == [
        ("V1", "nan", "dropped"),
        ("V5", "flat", "dropped"),
    ]


def test_clipped_lead_is_flagged_and_kept():
    x = np.clip(_sine(5, 10) * 2, -1, 1)
    _, issues, usable = signal.check_leads(x, ["MLII"])
    assert usable == [0]
    assert issues[0].problem == "clipped" and issues[0].action == "kept"

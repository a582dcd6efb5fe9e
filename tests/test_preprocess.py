"""The dataset stages end to end on the committed fixtures."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import wfdb

from ecg.cli import main
from ecg.config import DETECTORS
from ecg.labels import AAMI_EC57
from ecg.preprocess import load_pieces

from conftest import write_pipeline

SMOKE = """
download: {{database: mitdb, version: fixtures, source: {source}}}
signal: {{leads: [MLII], fs: 128, workers: 1}}
segment: {{task: aami, rr_average_s: 60}}
split: {{protocol: dechazal, val_fraction: 0.34}}
"""

PTB = """
download: {{database: ptbdb, version: fixtures, source: {source}}}
signal: {{leads: [i, ii, iii, avr, avl, avf, v1, v2, v3, v4, v5, v6], fs: 100, workers: 2}}
segment: {{task: mi_vs_healthy, kind: windows, window_s: 2.56, stride_s: 1.28}}
split: {{protocol: kfold, folds: 2, val_fraction: 0.5}}
"""


def test_mitdb_beats_match_the_reference_annotations(tmp_path, fixtures, capsys):
    write_pipeline(tmp_path, "smoke", SMOKE.format(source=fixtures / "mitdb"))
    assert (
        main(["run", "--config", str(tmp_path / "pipelines" / "smoke.yaml"), "--until", "split"])
        == 0
    )
    out = tmp_path / "data" / "processed" / "smoke"
    windows, index, meta = load_pieces(out / "preprocess")
    assert windows.dtype == np.float32 and isinstance(windows, np.memmap)
    assert windows.shape == (len(index), 32 + 58, 1)
    assert meta["classes"] == ["N", "S", "V", "F", "Q"]

    records = pd.read_csv(out / "preprocess" / "records.csv", dtype={"record": str})
    expected_total = 0
    for record in (fixtures / "mitdb" / "RECORDS").read_text().split():
        ann = wfdb.rdann(str(fixtures / "mitdb" / record), "atr")
        beats = [
            (s, AAMI_EC57[y]) for s, y in zip(ann.sample, ann.symbol, strict=True) if y in AAMI_EC57
        ]
        mine = index[index["record"] == record]
        dropped = int(records.set_index("record").loc[record, "dropped_at_edges"])
        assert len(mine) + dropped == len(beats)
        kept = {s: c for s, c in beats}
        assert all(kept[s] == c for s, c in zip(mine["sample"], mine["label"], strict=True))
        expected_total += len(beats)
    assert len(index) + int(records["dropped_at_edges"].sum()) == expected_total
    # 201's excerpt starts without a rhythm annotation, then holds a run of supraventricular
    # tachyarrhythmia (from sample 41,386) and a return to sinus rhythm (41,986)
    mine = index[index["record"] == "201"]
    rhythm = mine["rhythm"].to_numpy()
    assert (rhythm[mine["sample"] < 41386] == "").all()
    assert (rhythm[(mine["sample"] >= 41386) & (mine["sample"] < 41986)] == "SVTA").sum() == 3
    assert (rhythm[mine["sample"] >= 41986] == "N").all()

    split = pd.read_parquet(out / "split" / "split.parquet")
    sides = dict(zip(index["record"], split["split_0"], strict=True))
    assert sides["232"] == "test" and sides["208"] in ("train", "val")
    printed = capsys.readouterr().err
    assert "split (dechazal): patients, and beats per class" in printed
    assert "known leak" in printed


def test_ptb_windows_keep_record_patient_and_diagnosis(tmp_path, fixtures, capsys):
    write_pipeline(tmp_path, "ptb", PTB.format(source=fixtures / "ptbdb"))
    assert (
        main(["run", "--config", str(tmp_path / "pipelines" / "ptb.yaml"), "--until", "split"]) == 0
    )
    out = tmp_path / "data" / "processed" / "ptb"
    windows, index, meta = load_pieces(out / "preprocess")
    assert windows.shape[1:] == (256, 12)
    # 10 s at 100 Hz, 2.56 s windows every 1.28 s: 6 windows per record
    assert index.groupby("record").size().tolist() == [6, 6, 6, 6]
    assert index["sample"].tolist()[:3] == [0, 1280, 2560]  # at the record's own 1000 Hz
    by_patient = index.groupby("patient")["label"].first().to_dict()
    assert by_patient == {
        "patient001": "MI",
        "patient002": "MI",
        "patient104": "healthy",
        "patient105": "healthy",
    }
    folds = json.loads((out / "split" / "meta.json").read_text())["patients"]
    assert sorted(folds["split_0"]["test"] + folds["split_1"]["test"]) == sorted(by_patient)
    assert "healthy patients" in capsys.readouterr().err


def test_a_record_without_the_asked_lead_is_dropped_and_reported(tmp_path, fixtures, capsys):
    config = SMOKE.format(source=fixtures / "mitdb").replace("[MLII]", "[MLII, V1]")
    write_pipeline(tmp_path, "two", config)
    assert (
        main(["run", "--config", str(tmp_path / "pipelines" / "two.yaml"), "--until", "preprocess"])
        == 0
    )
    records = pd.read_csv(
        tmp_path / "data" / "processed" / "two" / "preprocess" / "records.csv",
        dtype={"record": str},
    ).set_index("record")
    # 100 has MLII and V5; 201 and 233 have MLII and V1
    assert not records.loc["100", "used"]
    assert records.loc["100", "reason"].startswith("no lead V1")
    assert records.loc["201", "used"] and records.loc["233", "used"]
    assert "dropped 100: no lead V1" in capsys.readouterr().err


def test_a_lead_with_alternatives_reads_the_first_the_record_has(tmp_path, fixtures):
    config = SMOKE.format(source=fixtures / "mitdb").replace("[MLII]", '[MLII, "V1|V5"]')
    write_pipeline(tmp_path, "two", config)
    assert (
        main(["run", "--config", str(tmp_path / "pipelines" / "two.yaml"), "--until", "preprocess"])
        == 0
    )
    out = tmp_path / "data" / "processed" / "two" / "preprocess"
    records = pd.read_csv(out / "records.csv", dtype={"record": str}).set_index("record")
    assert records["used"].all()
    assert records.loc["100", "leads"] == "MLII V5"
    assert records.loc["201", "leads"] == "MLII V1"
    assert np.load(out / "windows.npy", mmap_mode="r").shape[2] == 2


def test_lead_alternatives_take_the_first_present_and_never_one_channel_twice():
    from ecg.databases.wfdb_io import MissingLead, lead_indices

    assert lead_indices(["V5", "MLII"], ["MLII", "V1|V2|V5"], "114.hea") == [1, 0]
    assert lead_indices(["MLII", "V1", "V5"], ["MLII", "V1|V5"], "x") == [0, 1]
    assert lead_indices(["ii", "v1"], ["II", "V2|v1"], "ptb") == [0, 1]
    assert lead_indices(["MLII", "V1"], ["MLII|V1", "MLII|V1"], "x") == [0, 1]
    with pytest.raises(MissingLead, match=re.escape("no lead V2|V4 (it has MLII, V1)")):
        lead_indices(["MLII", "V1"], ["MLII", "V2|V4"], "100.hea")


def test_cut_beats_takes_a_local_template_over_seconds_of_the_kept_beats():
    # at 360 Hz, resampled to 128 Hz: 400 beats 0.8 s apart whose height drifts from 1 to 3, the
    # first beat too close to the start to fit its window
    from ecg.config import SegmentConfig
    from ecg.preprocess import cut_beats
    from ecg.segment import with_template_difference

    fs, fs_new = 360.0, 128.0
    r = (np.arange(400) * 0.8 * fs + 20).astype(np.int64)
    y = np.zeros((int((r[-1] + fs) * fs_new / fs), 1), dtype=np.float32)
    y[np.rint(r * fs_new / fs).astype(int), 0] = np.linspace(1, 3, len(r))  # one-sample beats
    seg = SegmentConfig(beat_template=True, template_s=60.0)
    windows, keep, _ = cut_beats(y, fs, fs_new, r, seg)
    assert not keep[0] and keep[1:].all()
    plain, _, _ = cut_beats(y, fs, fs_new, r, SegmentConfig())
    expected = with_template_difference(plain, r[keep] / fs, 60.0)
    np.testing.assert_allclose(windows, expected)
    # +-30 s is 75 beats either side: a mid-record beat's template is its neighbours' height
    mid = 200
    assert abs(windows[mid - 1, :, 1]).max() < 0.02
    whole, _, _ = cut_beats(y, fs, fs_new, r, SegmentConfig(beat_template=True))
    assert abs(whole[0, :, 1]).max() > 0.9


@pytest.mark.parametrize("detector", DETECTORS)  # every name a config may give
def test_detected_r_peaks_lie_where_the_reference_beats_do(fixtures, detector):
    """A model learns beats centred where MIT-BIH's annotations put R; GQRS marks the QRS onset,
    about 5 samples earlier at 128 Hz, so its beats would reach the model shifted by 39 ms."""
    from ecg.config import SignalConfig
    from ecg.databases import wfdb_io
    from ecg.preprocess import filtered

    for record in ("100", "209"):
        path = fixtures / "mitdb" / record
        raw = wfdb_io.read_signals(path, ["MLII"])
        y, fs = filtered(raw.signal, raw.fs, SignalConfig(leads=["MLII"], fs=128))
        found = wfdb_io.detect_r_peaks(y[:, 0].astype(np.float64), fs, detector)
        ann = wfdb.rdann(str(path), "atr")
        reference = ann.sample[np.isin(ann.symbol, list(AAMI_EC57))] * fs / raw.fs
        nearest = reference[np.abs(reference[None, :] - found[:, None]).argmin(axis=1)]
        off = found - nearest
        assert len(found) == pytest.approx(len(reference), abs=2)
        assert np.mean(np.abs(off) <= 1.5) > 0.95, np.median(off)

"""The AAMI EC57 table and the PTB tasks."""

from __future__ import annotations

import numpy as np
import wfdb

from ecg.databases.subjects import patient_of, ptb_diagnosis
from ecg.labels import AAMI_EC57, aami_labels, ptb_label, rhythm_of_beats

# Every beat annotation code that occurs in the 48 MIT-BIH records (PhysioNet's mitdb directory).
MITDB_BEAT_SYMBOLS = ["N", "L", "R", "e", "j", "A", "a", "J", "S", "V", "E", "F", "/", "f", "Q"]


def test_aami_table_maps_every_mitdb_beat_symbol():
    assert set(MITDB_BEAT_SYMBOLS) == set(AAMI_EC57)
    assert {s for s, c in AAMI_EC57.items() if c == "S"} == {"A", "a", "J", "S"}
    assert {s for s, c in AAMI_EC57.items() if c == "V"} == {"V", "E"}
    assert {s for s, c in AAMI_EC57.items() if c == "Q"} == {"/", "f", "Q"}


def test_non_beats_are_skipped_and_unknown_symbols_reported_not_guessed():
    classes, non_beat, unknown = aami_labels(["N", "+", "A", "~", "B", "V", "?", "|"])
    assert classes.tolist() == ["N", "", "S", "", "", "V", "", ""]
    assert non_beat == {"+": 1, "~": 1, "|": 1}
    assert unknown == {"B": 1, "?": 1}


def test_fixture_annotations_have_no_unknown_symbols(fixtures):
    for record in (fixtures / "mitdb" / "RECORDS").read_text().split():
        symbols = wfdb.rdann(str(fixtures / "mitdb" / record), "atr").symbol
        assert aami_labels(symbols)[2] == {}, record


def test_ptb_header_gives_diagnosis_and_patient(fixtures):
    expected = {
        "patient001/s0010_re": "Myocardial infarction",
        "patient002/s0015lre": "Myocardial infarction",
        "patient104/s0306lre": "Healthy control",
        "patient105/s0303lre": "Healthy control",
    }
    for record, diagnosis in expected.items():
        header = wfdb.rdheader(str(fixtures / "ptbdb" / record))
        assert ptb_diagnosis(header.comments) == diagnosis
        assert patient_of("ptbdb", record) == record.split("/")[0]


def test_ptb_na_diagnosis_takes_no_part():
    assert ptb_diagnosis(["age: 60", "Reason for admission: n/a"]) is None
    assert ptb_diagnosis(["age: 60"]) is None


def test_ptb_tasks():
    assert ptb_label("Myocardial infarction", "mi_vs_healthy") == "MI"
    assert ptb_label("Healthy control", "mi_vs_healthy") == "healthy"
    assert ptb_label("Cardiomyopathy", "mi_vs_healthy") is None
    assert ptb_label("Cardiomyopathy", "disease_vs_healthy") == "disease"
    assert ptb_label(None, "disease_vs_healthy") is None


def test_records_201_and_202_are_one_patient():
    assert patient_of("mitdb", "201") == patient_of("mitdb", "202")
    assert patient_of("mitdb", "100") != patient_of("mitdb", "101")


def test_each_beat_takes_the_rhythm_of_the_last_change_before_it():
    samples = np.array([0, 5, 10, 20, 30, 40])
    symbols = ["+", "N", "+", "A", "N", "+"]
    notes = ["(N\x00", "", "(AFIB", "", "", "(AFL"]
    beats = np.array([5, 10, 20, 30, 45])
    assert rhythm_of_beats(samples, symbols, notes, beats).tolist() == [
        "N", "AFIB", "AFIB", "AFIB", "AFL",
    ]  # fmt: skip
    late = rhythm_of_beats(samples[2:], symbols[2:], notes[2:], np.array([3, 15]))
    assert late.tolist() == ["", "AFIB"]  # before the record's first rhythm annotation
    assert rhythm_of_beats(samples[1:2], ["N"], [""], np.array([5])).tolist() == [""]

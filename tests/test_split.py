"""Patient-wise splits: no patient on two sides, ever."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecg.config import SplitConfig
from ecg.databases.subjects import MITDB_PACED, patient_of
from ecg.split import DS1, DS2, LeakError, assert_patient_disjoint, build_split


def _mitdb_index(beats_per_record=40, seed=0):
    rng = np.random.default_rng(seed)
    records = [r for r in (*DS1, *DS2, *MITDB_PACED)]
    rows = []
    for record in records:
        labels = rng.choice(5, size=beats_per_record, p=[0.8, 0.05, 0.1, 0.04, 0.01])
        rows += [(record, patient_of("mitdb", record), int(k)) for k in labels]
    return pd.DataFrame(rows, columns=["record", "patient", "label_id"])


def _ptb_index(patients=30, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        label = int(p % 3 == 0)
        rows += [(f"patient{p:03d}/s{p:04d}", f"patient{p:03d}", label)] * int(rng.integers(5, 50))
    return pd.DataFrame(rows, columns=["record", "patient", "label_id"])


def _sides(index, split, column="split_0"):
    return {s: set(index["patient"][split[column] == s]) for s in ("train", "val", "test")}


def test_dechazal_lists_match_the_protocol():
    assert len(DS1) == len(DS2) == 22
    assert not set(DS1) & set(DS2)
    assert not set(MITDB_PACED) & (set(DS1) | set(DS2))


def test_dechazal_trains_on_ds1_tests_on_ds2_and_excludes_paced_records():
    index = _mitdb_index()
    split = build_split(index, SplitConfig(protocol="dechazal"))
    side = dict(zip(index["record"], split["split_0"], strict=True))
    assert {side[r] for r in DS2} == {"test"}
    assert {side[r] for r in DS1} == {"train", "val"}
    assert {side[r] for r in MITDB_PACED} == {"excluded"}


def test_records_201_and_202_share_a_group_and_strict_drops_202():
    index = _mitdb_index()
    split = build_split(index, SplitConfig(protocol="dechazal"))
    sides = _sides(index, split)
    assert patient_of("mitdb", "202") in sides["test"]
    assert patient_of("mitdb", "201") in sides["train"] | sides["val"]
    strict = build_split(index, SplitConfig(protocol="dechazal-strict"))
    side = dict(zip(index["record"], strict["split_0"], strict=True))
    assert side["202"] == "excluded"
    sides = _sides(index, strict)
    assert not (sides["train"] | sides["val"]) & sides["test"]


def test_the_known_201_202_leak_is_only_allowed_under_the_published_protocol():
    index = _mitdb_index()
    split = build_split(index, SplitConfig(protocol="dechazal"))
    with pytest.raises(LeakError, match=r"patient\(s\) 201 in both"):
        assert_patient_disjoint(index, split, "dechazal-strict")


@pytest.mark.parametrize("seed", range(25))
def test_validation_patients_come_from_ds1_and_never_meet_another_side(seed):
    index = _mitdb_index(seed=seed)
    for protocol in ("dechazal", "dechazal-strict"):
        split = build_split(index, SplitConfig(protocol=protocol, seed=seed))
        sides = _sides(index, split)
        assert sides["val"] and sides["val"] <= {patient_of("mitdb", r) for r in DS1}
        assert not sides["train"] & sides["val"]


@pytest.mark.parametrize("seed", range(25))
def test_kfold_never_shares_a_patient_and_tests_each_patient_once(seed):
    index = _ptb_index(seed=seed)
    split = build_split(index, SplitConfig(protocol="kfold", folds=5, seed=seed))
    tested = []
    for column in split.columns:
        sides = _sides(index, split, column)
        assert not sides["train"] & sides["val"]
        assert not sides["train"] & sides["test"]
        assert not sides["val"] & sides["test"]
        tested += sorted(sides["test"])
    assert sorted(tested) == sorted(index["patient"].unique())


@pytest.mark.parametrize("protocol", ["dechazal", "kfold"])
def test_no_validation_fraction_puts_every_training_patient_in_training(protocol):
    index = _mitdb_index() if protocol == "dechazal" else _ptb_index()
    split = build_split(index, SplitConfig(protocol=protocol, val_fraction=0))
    for column in split.columns:
        sides = _sides(index, split, column)
        assert not sides["val"] and sides["train"] and sides["test"]
    if protocol == "dechazal":
        assert _sides(index, split)["train"] == {patient_of("mitdb", r) for r in DS1}


def test_a_leak_is_caught_when_a_split_is_loaded():
    index = pd.DataFrame(
        {"record": ["a", "b", "c"], "patient": ["p1", "p1", "p2"], "label_id": [0, 0, 1]}
    )
    bad = pd.DataFrame({"split_0": ["train", "test", "test"]})
    with pytest.raises(LeakError, match=r"p1 in both train and test"):
        assert_patient_disjoint(index, bad, "kfold")


def test_too_few_patients_for_the_folds_is_a_clear_error():
    index = _ptb_index(patients=3)
    with pytest.raises(Exception, match="5 folds need at least 5 patients"):
        build_split(index, SplitConfig(protocol="kfold", folds=5))


def test_excluded_records_take_no_part_on_any_side():
    index = _mitdb_index()
    split = build_split(index, SplitConfig(protocol="dechazal", exclude_records=("118", "119")))
    side = dict(zip(index["record"], split["split_0"], strict=True))
    assert side["118"] == side["119"] == "excluded"
    assert side["101"] in ("train", "val") and side["100"] == "test"

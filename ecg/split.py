"""Patient-wise splits, and the assertion that no patient is on two sides.

Random beat-level splits put beats of one patient in training and test and report 98-99 %
accuracy that means nothing; here every split is by patient, and disjointness is asserted whenever
a split is built or loaded.

- ``dechazal``: the inter-patient protocol of de Chazal, O'Dwyer and Reilly (2004): DS1 trains,
  DS2 tests, the four paced records are excluded. It has one known flaw: records 201 (DS1) and
  202 (DS2) come from the same patient. The split keeps the published protocol, says so, and lets
  that one patient through the assertion.
- ``dechazal-strict``: the same without record 202, so no patient is on both sides.
- ``kfold``: stratified k-fold grouped by patient (PTB); each patient is tested in one fold.

Validation patients (for early stopping and model selection) always come from the training side;
with ``val_fraction: 0`` there are none and every training patient trains.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ecg.config import SplitConfig
from ecg.databases.subjects import patient_of
from ecg.engine import StageContext
from ecg.errors import EcgError
from ecg.preprocess import load_pieces

log = logging.getLogger("ecg")

DS1 = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122", "124",
       "201", "203", "205", "207", "208", "209", "215", "220", "223", "230")  # fmt: skip
DS2 = ("100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210", "212",
       "213", "214", "219", "221", "222", "228", "231", "232", "233", "234")  # fmt: skip
KNOWN_LEAK = {"dechazal": frozenset({patient_of("mitdb", "202")})}
"""Patients a protocol is known to put on both sides: 201/202 under the published protocol."""

SIDES = ("train", "val", "test")


class LeakError(EcgError):
    """A patient appears on two sides of a split."""


def validation_patients(
    labels: np.ndarray, patients: np.ndarray, val_fraction: float, seed: int
) -> set[str]:
    """Hold out about ``val_fraction`` of the patients, stratified by class where possible;
    none when it is 0."""
    if val_fraction == 0:
        return set()
    unique = np.unique(patients)
    n_splits = max(2, round(1 / val_fraction))
    if len(unique) < n_splits:
        n_splits = len(unique)
    if n_splits < 2:
        raise EcgError(f"only {len(unique)} training patient(s): none left for validation")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Rare classes (8 Q beats in DS1) cannot reach every fold: "where possible" is expected.
        warnings.filterwarnings("ignore", message="The least populated class")
        candidates = [
            val_rows for _, val_rows in splitter.split(np.zeros(len(labels)), labels, patients)
        ]
    # Of the folds, keep the one whose validation side takes each class closest to its share:
    # in MIT-BIH DS1 one record (208) holds 90 % of the F beats, and a validation side that
    # takes it leaves training almost without F.
    totals = np.bincount(labels)
    present = totals > 0

    def mismatch(val_rows: np.ndarray) -> float:
        taken = np.bincount(labels[val_rows], minlength=len(totals))[present] / totals[present]
        return float(np.abs(taken - 1 / n_splits).sum())

    # StratifiedGroupKFold barely depends on its seed (its greedy assignment only shuffles
    # ties), so the seed chooses among the folds instead: seed 0 the best-matching one, seed 1
    # the next best, and so on. Several seeds then give several honest validation sides.
    ranked = sorted(candidates, key=mismatch)
    return set(patients[ranked[seed % len(ranked)]])


def dechazal_split(index: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    test_records = set(DS2) - ({"202"} if cfg.protocol == "dechazal-strict" else set())
    side = np.full(len(index), "excluded", dtype=object)
    records = index["record"].to_numpy()
    train = np.isin(records, DS1)
    side[train] = "train"
    side[np.isin(records, list(test_records))] = "test"
    patients = index["patient"].to_numpy()
    val = validation_patients(
        index["label_id"].to_numpy()[train], patients[train], cfg.val_fraction, cfg.seed
    )
    side[train & np.isin(patients, list(val))] = "val"
    return pd.DataFrame({"split_0": side})


def kfold_split(index: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    labels = index["label_id"].to_numpy()
    patients = index["patient"].to_numpy()
    n_patients = len(np.unique(patients))
    if n_patients < cfg.folds:
        raise EcgError(
            f"split: {cfg.folds} folds need at least {cfg.folds} patients; "
            f"the data has {n_patients}"
        )
    splitter = StratifiedGroupKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
    columns = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        folds = list(splitter.split(labels, labels, patients))
    for fold, (train_rows, test_rows) in enumerate(folds):
        side = np.full(len(index), "train", dtype=object)
        side[test_rows] = "test"
        val = validation_patients(
            labels[train_rows], patients[train_rows], cfg.val_fraction, cfg.seed
        )
        side[np.isin(patients, list(val)) & (side == "train")] = "val"
        columns[f"split_{fold}"] = side
    return pd.DataFrame(columns)


def build_split(index: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """The split of every piece; records in ``exclude_records`` take no part on any side."""
    kept = ~index["record"].isin(cfg.exclude_records).to_numpy()
    part = index[kept].reset_index(drop=True)
    inner = kfold_split(part, cfg) if cfg.protocol == "kfold" else dechazal_split(part, cfg)
    split = pd.DataFrame({c: np.full(len(index), "excluded", dtype=object) for c in inner})
    for column in inner:
        split.loc[kept, column] = inner[column].to_numpy()
    assert_patient_disjoint(index, split, cfg.protocol)
    return split


def assert_patient_disjoint(index: pd.DataFrame, split: pd.DataFrame, protocol: str) -> None:
    """Raise LeakError if a patient is on two sides of any fold (bar a protocol's known leak)."""
    allowed = KNOWN_LEAK.get(protocol, frozenset())
    patients = index["patient"].to_numpy()
    for column in split.columns:
        side = split[column].to_numpy()
        members = {s: set(patients[side == s]) for s in SIDES}
        for i, a in enumerate(SIDES):
            for b in SIDES[i + 1 :]:
                shared = (members[a] & members[b]) - allowed
                if shared:
                    raise LeakError(
                        f"split {column} ({protocol}): patient(s) {', '.join(sorted(shared))} "
                        f"in both {a} and {b}"
                    )


def split_summary(
    index: pd.DataFrame, split: pd.DataFrame, classes: list[str], records: pd.DataFrame
) -> pd.DataFrame:
    """Per fold and side: patients, records, pieces per class, and what was dropped at edges.

    Where every patient has one class (PTB), the patients of each class are counted too.
    """
    one_class_each = bool((index.groupby("patient")["label"].nunique() == 1).all())
    edge = records.set_index("record")["dropped_at_edges"]
    rows = []
    for fold, column in enumerate(split.columns):
        for side in (*SIDES, "excluded"):
            part = index[split[column].to_numpy() == side]
            if side == "excluded" and part.empty:
                continue
            counts = part["label"].value_counts()
            row = {"fold": fold, "split": side, "patients": part["patient"].nunique()}
            if one_class_each:
                by_class = part.groupby("label")["patient"].nunique()
                row.update({f"{c} patients": int(by_class.get(c, 0)) for c in classes})
            row.update({"records": part["record"].nunique(), "total": len(part)})
            row.update({c: int(counts.get(c, 0)) for c in classes})
            row["edge dropped"] = int(edge.reindex(part["record"].unique()).fillna(0).sum())
            rows.append(row)
    return pd.DataFrame(rows)


def split_stage(ctx: StageContext) -> None:
    _, index, meta = load_pieces(ctx.inputs["preprocess"])
    cfg = ctx.config.split
    split = build_split(index, cfg)
    split.to_parquet(ctx.out / "split.parquet", index=False)
    records = pd.read_csv(ctx.inputs["preprocess"] / "records.csv", dtype={"record": str})
    summary = split_summary(index, split, meta["classes"], records)
    summary.to_csv(ctx.out / "summary.csv", index=False)
    folds = {
        column: {side: sorted(set(index["patient"][split[column] == side])) for side in SIDES}
        for column in split.columns
    }
    (ctx.out / "meta.json").write_text(
        json.dumps(
            {"protocol": cfg.protocol, "folds": len(split.columns), "patients": folds}, indent=1
        )
    )
    unit = "beats" if meta["kind"] == "beats" else "windows"
    log.info(
        "split (%s): patients, and %s per class\n%s",
        cfg.protocol,
        unit,
        summary.to_string(
            index=False, formatters={c: "{:,}".format for c in ["total", *meta["classes"]]}
        ),
    )
    if cfg.protocol == "dechazal":
        log.warning(
            "split: records 201 (DS1) and 202 (DS2) are the same patient, a known leak "
            "of the published de Chazal protocol; dechazal-strict removes 202"
        )


def load_split(split_dir: Path, index: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """The split stage's output, checked again for patient leaks before anyone trains on it."""
    split = pd.read_parquet(split_dir / "split.parquet")
    if len(split) != len(index):
        raise EcgError(
            f"{split_dir / 'split.parquet'}: {len(split)} rows for {len(index)} "
            "pieces; rerun the split stage"
        )
    assert_patient_disjoint(index, split, protocol)
    return split

"""Pooling PTB windows to records and patients, and intervals across folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecg.evaluate import across_folds, pooled

CLASSES = ["healthy", "MI"]


def _windows():
    # patient A (MI): two records; patient B (healthy): one record
    rows = [
        ("A/r1", "A", 1, 1, 0.2, 0.8), ("A/r1", "A", 1, 0, 0.6, 0.4), ("A/r1", "A", 1, 1, 0.3, 0.7),
        ("A/r2", "A", 1, 0, 0.85, 0.15),
        ("B/r1", "B", 0, 0, 0.7, 0.3), ("B/r1", "B", 0, 1, 0.45, 0.55),
    ]  # fmt: skip
    table = pd.DataFrame(
        rows, columns=["record", "patient", "true_id", "predicted_id", "p_healthy", "p_MI"]
    )
    table["fold"] = 0
    return table


def test_mean_pooling_averages_window_probabilities():
    records = pooled(_windows(), "record", CLASSES, "mean").set_index("record")
    assert records.loc["A/r1", "p_MI"] == pytest.approx((0.8 + 0.4 + 0.7) / 3)
    assert records.loc["A/r1", "predicted"] == "MI"
    assert records.loc["A/r2", "predicted"] == "healthy"
    patients = pooled(_windows(), "patient", CLASSES, "mean").set_index("patient")
    assert patients.loc["A", "p_MI"] == pytest.approx((0.8 + 0.4 + 0.7 + 0.15) / 4)
    assert patients.loc["A", "predicted"] == "MI"  # although its record r2 alone says healthy
    assert patients.loc["A", "true"] == "MI" and patients.loc["B", "true"] == "healthy"


def test_majority_pooling_counts_votes_and_breaks_ties_by_probability():
    records = pooled(_windows(), "record", CLASSES, "majority").set_index("record")
    assert records.loc["A/r1", "p_MI"] == pytest.approx(2 / 3)
    # B/r1: one vote each; the mean probability (0.575 healthy) breaks the tie
    assert records.loc["B/r1", "predicted"] == "healthy"


def test_across_fold_intervals_are_t_intervals_clipped_to_proportions():
    folds = [{"accuracy": a} for a in (0.9, 0.8, 1.0, 0.7, 0.95)]
    mean, low, high = across_folds(folds, 0.95)["accuracy"]
    assert mean == pytest.approx(0.87)
    half = 2.776 * np.std([0.9, 0.8, 1.0, 0.7, 0.95], ddof=1) / np.sqrt(5)
    assert low == pytest.approx(0.87 - half, abs=1e-3)
    assert high == 1.0  # 0.87 + 0.15 would pass 1


def test_the_evaluate_stage_rules_out_s_where_the_rhythm_is_irregular(tmp_path):
    import json

    from test_train import _smoke_pipeline

    from ecg.cli import main
    from ecg.preprocess import load_pieces

    config = _smoke_pipeline(tmp_path)
    assert main(["run", "--config", str(config)]) == 0
    (path,) = (tmp_path / "reports" / "smoke").glob("*/predictions.csv")
    before = pd.read_csv(path)
    assert main(["run", "--config", str(config), "--set", "evaluate.fibrillation_gate=0.1"]) == 0
    after = pd.read_csv(path)  # the same run: only evaluate and report ran again
    _, index, _ = load_pieces(tmp_path / "data" / "processed" / "smoke" / "preprocess")
    keys = index.assign(record=index["record"].astype(str)).set_index(["record", "sample"])
    rows = pd.MultiIndex.from_arrays([before["record"].astype(str), before["sample"]])
    irregular = (keys.loc[rows, "rr_irregularity"] >= 0.1).to_numpy()
    assert irregular.any() and (~irregular).any()
    columns = [c for c in before.columns if c.startswith("p_")]
    assert (after.loc[irregular, "p_S"] == 0).all()
    assert (after.loc[irregular, "predicted"] != "S").all()
    np.testing.assert_allclose(after.loc[~irregular, columns], before.loc[~irregular, columns])
    others = [c for c in columns if c != "p_S"]
    np.testing.assert_allclose(
        after.loc[irregular, others].to_numpy(),
        before.loc[irregular, others].to_numpy()
        / before.loc[irregular, others].sum(axis=1).to_numpy()[:, None],
        atol=2e-4,  # predictions.csv keeps five decimals
    )
    metrics = json.loads((path.parent / "metrics.json").read_text())
    assert metrics["fibrillation_gate"] == {"from": 0.1, "beats": int(irregular.sum())}
    report = (path.parent / "report.md").read_text()
    assert f"{int(irregular.sum()):,} test beats whose RR intervals were irregular" in report


def test_an_evaluation_with_other_settings_says_so_in_the_run_it_writes_into(tmp_path, caplog):
    """A run's params are written when its model is trained; evaluating again inside it with
    another evaluate setting must not leave the params speaking for the new metrics."""
    import json
    import logging

    from test_train import _smoke_pipeline

    from ecg.cli import main
    from ecg.report.collect import collect
    from ecg.report.runs import runs_table
    from ecg.tracking import Tracker

    config = _smoke_pipeline(tmp_path)
    assert main(["run", "--config", str(config)]) == 0
    gate = ["--set", "evaluate.fibrillation_gate=0.1"]
    with caplog.at_level(logging.WARNING, logger="ecg"):
        assert main(["run", "--config", str(config), *gate]) == 0
    assert "trained with other evaluate settings (evaluate.fibrillation_gate: 0.0 -> 0.1)" in (
        caplog.text
    )
    tracker = Tracker(f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}", "smoke")
    (run_id,) = tracker.search()["run_id"]
    logged = tracker.run(run_id).data
    assert logged.params["evaluate.fibrillation_gate"] == "0.0"  # from training, unchangeable
    assert logged.tags["evaluate.fibrillation_gate"] == "0.1"
    metrics = json.loads(next((tmp_path / "reports").rglob("metrics.json")).read_text())
    assert metrics["settings"]["evaluate.fibrillation_gate"] == 0.1
    assert collect(tracker, run_id).params["evaluate.fibrillation_gate"] == "0.1"

    assert main(["run", "--config", str(config), "--force", "train"]) == 0  # a second run
    table = runs_table(tracker)
    assert table["evaluate.fibrillation_gate"].tolist() == ["0.0", "0.1"]  # newest first

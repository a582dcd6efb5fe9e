"""The benchmark scripts' own guards (they are scripts in benchmarks/, imported from there)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from test_train import _smoke_pipeline

from ecg.cli import main
from ecg.config import load_config
from ecg.errors import ConfigError
from ecg.pipeline import engine_for
from ecg.preprocess import load_pieces

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
refit_lever = importlib.import_module("refit_lever")


def test_an_arm_that_changes_the_pieces_needs_its_own_fresh_pieces_matched_to_the_default(tmp_path):
    """The guard once compared the preprocess folder, which a segment setting does not change,
    so such an arm would have trained on the default's pieces without a word."""
    import numpy as np

    path = _smoke_pipeline(tmp_path)
    scaled = ["segment.scale_by_template=true"]
    own = [*scaled, f"data_dir={tmp_path / 'scaled'}"]
    for overrides in ([], own):
        sets = [arg for o in overrides for arg in ("--set", o)]
        assert main(["run", "--config", str(path), "--until", "preprocess", *sets]) == 0
    default = engine_for(load_config(path))
    _, index, _ = load_pieces(default.out_dir("preprocess"))
    folder = default.out_dir("preprocess")

    def rows(overrides, of=index):
        return refit_lever._arm_rows(engine_for(load_config(path, overrides)), folder, of)

    same, size = rows(own)
    np.testing.assert_array_equal(same, np.arange(len(index)))
    assert size == len(index)
    with pytest.raises(ValueError, match="data directory of its own"):
        rows(scaled)
    with pytest.raises(ValueError, match="not up to date"):
        rows([*own, "segment.pre_s=0.3"])
    # a beat the arm lacks is -1; one only the arm has is left out of the map
    lacking = index.iloc[1:].copy()
    lacking.loc[lacking.index[0], "sample"] = -5
    mapped, size = rows(own, lacking)
    assert mapped[0] == -1 and size == len(index)
    np.testing.assert_array_equal(mapped[1:], np.arange(2, len(index)))
    relabelled = index.copy()
    relabelled.loc[relabelled.index[3], "label"] = "Q" if index["label"].iloc[3] != "Q" else "N"
    with pytest.raises(ValueError, match="other labels"):
        rows(own, relabelled)
    with pytest.raises(ValueError, match="another order"):
        rows(own, index.iloc[::-1])


def test_an_arm_that_keeps_fewer_beats_is_scored_with_every_arm_on_the_beats_all_keep(
    tmp_path, monkeypatch, capsys
):
    """A longer window drops the beats whose window runs past a record's end, so its pieces are
    not the default's; both arms must train and be scored on the beats both have."""
    import numpy as np

    path = _smoke_pipeline(tmp_path)
    longer = ["segment.post_s=3.0", f"data_dir={tmp_path / 'longer'}"]
    for overrides in ([], longer):
        sets = [arg for o in overrides for arg in ("--set", o)]
        assert main(["run", "--config", str(path), "--until", "preprocess", *sets]) == 0
    default = engine_for(load_config(path))
    _, index, _ = load_pieces(default.out_dir("preprocess"))
    _, theirs, _ = load_pieces(engine_for(load_config(path, longer)).out_dir("preprocess"))
    assert 0 < len(theirs) < len(index)  # the arm lacks a few of the default's beats
    keys = ["record", "sample"]
    kept = index[keys].merge(theirs[keys], how="left", indicator=True)["_merge"] == "both"
    scored = []

    def probabilities(config, data, validated, device):
        test = data.index.loc[data.sides["test"].rows, keys].to_numpy().tolist()
        scored.append(test)
        train = data.index.loc[data.sides["train"].rows, keys].to_numpy().tolist()
        scored.append(train)
        rng = np.random.default_rng(len(scored))
        return rng.dirichlet(np.ones(len(data.classes)), size=len(data.sides["test"]))

    monkeypatch.setattr(refit_lever, "probabilities", probabilities)
    argv = [str(path), "--outer", "0", "--folds", "2", "--refit-steps", "1", "--no-cache"]
    monkeypatch.setattr(sys, "argv", ["refit_lever.py", *argv, "--lever", *longer])
    refit_lever.main()
    default_test, default_train, lever_test, lever_train = scored
    assert default_test == lever_test and default_train == lever_train  # the same beats, in order
    shared = {tuple(beat) for beat in index.loc[kept.to_numpy(), keys].to_numpy().tolist()}
    assert {tuple(beat) for beat in default_test + default_train} <= shared
    assert len(shared) < len(index)
    out = capsys.readouterr().out
    assert f"(every arm scored on the {kept.sum():,} of the default's {len(index):,} beats" in out
    assert "pooled over the held-out sides" in out


def test_arms_that_differ_only_in_the_evaluate_stage_share_one_training(
    tmp_path, monkeypatch, capsys
):
    """``evaluate.adapt_priors`` decides from the same probabilities as the default; training it
    again would double a round's cost for the same model."""
    path = _smoke_pipeline(tmp_path)
    assert main(["run", "--config", str(path), "--until", "preprocess"]) == 0
    trained = _stand_in(monkeypatch)  # each training's learning rate
    arms = ["--lever", "evaluate.adapt_priors=record", "--lever", "train.lr=0.001"]
    argv = [str(path), "--outer", "0", "--folds", "2", "--refit-steps", "1", *arms]
    monkeypatch.setattr(sys, "argv", ["refit_lever.py", *argv])
    refit_lever.main()
    assert trained == [0.003, 0.001]  # the default and the other learning rate; not lever 1
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("mean: default") and "lever 1" in out[2]
    assert out[1].startswith("  F1 by class (N S V F): default ")  # per arm, for a diagnosis
    assert "; lever 1 " in out[1] and "; lever 2 " in out[1]
    assert out[3].startswith("pooled over the held-out sides (") and "lever 2 0." in out[3]
    assert out[4].startswith("  lever 1 - default ") and "(95 % CI by patient)" in out[4]

    # The same round again: every training comes from the cache, so the numbers are the first
    # run's (the stand-in above would give new ones) and nothing is trained.
    refit_lever.main()
    assert trained == [0.003, 0.001]
    assert capsys.readouterr().out.splitlines() == out
    monkeypatch.setattr(sys, "argv", ["refit_lever.py", *argv, "--no-cache"])
    refit_lever.main()
    assert trained == [0.003, 0.001, 0.003, 0.001]
    assert capsys.readouterr().out.splitlines() != out
    # another step count is another training
    steps = [str(path), "--outer", "0", "--folds", "2", "--refit-steps", "2", *arms]
    monkeypatch.setattr(sys, "argv", ["refit_lever.py", *steps])
    refit_lever.main()
    assert trained == [0.003, 0.001, 0.003, 0.001, 0.003, 0.001]


def test_carried_pieces_keep_the_training_side_and_every_row_number(tmp_path, monkeypatch, capsys):
    """What a GPU machine is sent: the windows outside the side zeroed, the tables whole."""
    import tarfile

    import numpy as np

    carry = importlib.import_module("carry_pieces")
    path = _smoke_pipeline(tmp_path)
    assert main(["run", "--config", str(path), "--until", "preprocess"]) == 0
    config = load_config(path)
    windows, rows, _ = carry.kept_rows(config, 5)
    assert rows.any() and not rows.all()  # the smoke fixtures hold DS1 and DS2 records
    sha = carry.pack(config, 5, tmp_path / "pieces.tar.xz")
    assert not (tmp_path / "pieces.tar.xz.partial").exists()
    there = tmp_path / "there"
    with tarfile.open(tmp_path / "pieces.tar.xz") as tar:
        tar.extractall(there, filter="data")
    moved = load_config(path, [f"data_dir={there}"])
    carried, carried_rows, folder = carry.kept_rows(moved, 5)
    np.testing.assert_array_equal(carried_rows, rows)
    np.testing.assert_array_equal(carried[rows], windows[rows])
    assert not carried[~rows].any()
    assert carry.digest(carried, carried_rows) == sha
    args = ["carry_pieces.py", str(path), "--set", f"data_dir={there}", "--check"]
    monkeypatch.setattr(sys, "argv", [*args, sha])
    assert carry.main() == 0
    monkeypatch.setattr(sys, "argv", [*args, "0" * 64])
    assert carry.main() == 1
    assert "not 000" in capsys.readouterr().err


def test_a_round_over_several_seeds_trains_each_arm_per_seed_and_scores_their_mean(
    tmp_path, monkeypatch, capsys
):
    """One draw of a recipe moves the mean by more than the rounds' margin; several are averaged."""
    import json

    import numpy as np

    path = _smoke_pipeline(tmp_path)
    assert main(["run", "--config", str(path), "--until", "preprocess"]) == 0
    trained = _stand_in(
        monkeypatch, record=lambda config, data: (config.train.lr, config.train.seed)
    )
    out = tmp_path / "rows.jsonl"
    argv = [str(path), "--outer", "0", "--folds", "2", "--refit-steps", "1", "--no-cache"]
    argv += ["--lever", "train.lr=0.001", "--seeds", "0", "5", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["refit_lever.py", *argv])
    refit_lever.main()
    assert trained == [(0.003, 0), (0.003, 5), (0.001, 0), (0.001, 5)]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    for name in ("default", "lever"):
        by_seed = row[f"{name} by seed"]  # to four places
        assert len(by_seed) == 2 and row[name] == pytest.approx(np.mean(by_seed), abs=1e-4)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("  by seed (0 5): default ") and "; lever " in lines[2]

    # the pooled interval pairs each seed's decisions on the same beats: twice one seed's
    monkeypatch.setattr(sys, "argv", ["refit_lever.py", *argv[:-5], "--seeds", "0"])
    refit_lever.main()
    one = capsys.readouterr().out.splitlines()
    assert not any("by seed" in line for line in one)
    assert _pooled_beats(lines) == 2 * _pooled_beats(one)


def _pooled_beats(lines: list[str]) -> int:
    """The beat count a round's printed pooled line gives (every seed's decisions counted)."""
    pooled = next(line for line in lines if line.startswith("pooled over the held-out"))
    return int(pooled.split("(")[1].split(" beats")[0].replace(",", ""))


def test_each_split_left_out_shows_a_gain_that_one_side_makes():
    """A loss made on one side alone must show as no loss once that side is left out."""
    rows = [
        {"outer": 0, "default": 0.5, "lever": 0.5},
        {"outer": 1, "default": 0.6, "lever": 0.6},
        {"outer": 4, "default": 0.7, "lever": 0.4},
    ]
    gains = refit_lever._left_out_gains(rows, ["lever"])
    (line,) = refit_lever._each_split_left_out(rows, gains)
    assert line == "  lever - default, each split left out: 0 -0.1500, 1 -0.1500, 4 +0.0000"
    assert refit_lever._left_out_gains(rows[:1], ["lever"]) == {}


def _stand_in(monkeypatch, fail_on_call: int | None = None, module=refit_lever, record=None):
    """Random held-out probabilities instead of ``module``'s trainings; each call's
    ``record(config, data)`` (by default the learning rate) is kept in the list returned, and the
    ``fail_on_call``-th call raises."""
    import numpy as np

    calls = []

    def probabilities(config, data, validated, device):
        calls.append(record(config, data) if record else config.train.lr)
        if len(calls) == fail_on_call:
            raise RuntimeError("out of memory (a stand-in)")
        rng = np.random.default_rng(len(calls))
        return rng.dirichlet(np.ones(len(data.classes)), size=len(data.sides["test"]))

    monkeypatch.setattr(module, "probabilities", probabilities)
    return calls


def _lever_runs(path):
    from ecg.tracking import Tracker

    config = load_config(path)
    tracker = Tracker(config.tracking_uri, config.experiment + "-levers")
    return tracker, tracker.client.search_runs([tracker.experiment_id])


def test_a_round_is_one_mlflow_run_with_each_split_its_summary_and_its_printout(
    tmp_path, monkeypatch, capsys
):
    """What a round printed is what MLflow holds: the numbers as metrics, the lines whole."""
    path = _smoke_pipeline(tmp_path)
    assert main(["run", "--config", str(path), "--until", "preprocess"]) == 0
    _stand_in(monkeypatch)
    argv = [str(path), "--outer", "0", "1", "--folds", "2", "--refit-steps", "1", "2"]
    monkeypatch.setattr(sys, "argv", ["refit_lever.py", *argv, "--lever", "train.lr=0.001"])
    refit_lever.main()
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    tracker, (run,) = _lever_runs(path)
    assert run.info.status == "FINISHED" and run.info.run_id in printed.err
    assert run.data.params["arm.lever"] == "train.lr=0.001"
    assert run.data.params["refit_steps"] == "[1, 2]"
    scored = str(_pooled_beats(lines))
    assert run.data.params["scored_beats"] == scored  # the held-out sides' beats, not DS2's
    assert run.data.tags["kind"] == "nested lever round"
    history = tracker.client.get_metric_history(run.info.run_id, "default.macro_f1")
    for line, metric in zip(lines[0:4:2], sorted(history, key=lambda m: m.step), strict=True):
        assert line.startswith(f"outer {metric.step} ") and f"default {metric.value:.4f}" in line
    metrics = run.data.metrics
    mean = next(line for line in lines if line.startswith("mean: "))
    assert f"lever - default {metrics['lever.gain']:+.4f}" in mean
    assert f"lever {metrics['lever.mean_macro_f1']:.4f}" in mean
    low, point, high = (metrics[f"lever.pooled_gain{end}"] for end in ("_low", "", "_high"))
    assert low <= point <= high
    assert f"{point:+.4f} [{low:+.4f}, {high:+.4f}]" in printed.out
    left_out = tracker.client.get_metric_history(run.info.run_id, "lever.gain_left_out")
    assert sorted(m.step for m in left_out) == [0, 1]
    kept = tracker.download(run.info.run_id, "round.txt", tmp_path)
    assert kept.read_text() == printed.out

    monkeypatch.setattr(sys, "argv", ["refit_lever.py", *argv, "--lever", "x=1"])
    with pytest.raises(ConfigError, match="x: unknown key"):  # stopped before a run is made
        refit_lever.main()
    monkeypatch.setattr(
        sys, "argv", ["refit_lever.py", *argv, "--lever", "train.lr=0.01", "--no-mlflow"]
    )
    refit_lever.main()
    assert len(_lever_runs(path)[1]) == 1


def test_a_round_stopped_by_an_error_is_a_failed_run_that_keeps_what_it_had(
    tmp_path, monkeypatch, capsys
):
    """Half a round must never read as a finished one, and its finished splits are not lost."""
    path = _smoke_pipeline(tmp_path)
    assert main(["run", "--config", str(path), "--until", "preprocess"]) == 0
    _stand_in(monkeypatch, fail_on_call=3)  # the default and the lever of split 0, then fails
    argv = [str(path), "--outer", "0", "1", "--folds", "2", "--refit-steps", "1", "1"]
    monkeypatch.setattr(sys, "argv", ["refit_lever.py", *argv, "--lever", "train.lr=0.001"])
    with pytest.raises(RuntimeError, match="out of memory"):
        refit_lever.main()
    tracker, (run,) = _lever_runs(path)
    assert run.info.status == "FAILED"
    assert "out of memory" in run.data.tags["error"]
    assert [
        m.step for m in tracker.client.get_metric_history(run.info.run_id, "lever.macro_f1")
    ] == [0]
    assert "lever.gain" not in run.data.metrics
    kept = tracker.download(run.info.run_id, "round.txt", tmp_path).read_text()
    assert kept.startswith("outer 0 ") and "outer 1 " not in kept


def test_the_patient_curve_trains_each_share_on_drawn_patients_and_sums_up_split_files(
    tmp_path, monkeypatch, capsys
):
    """A share below one trains on fewer of the split's training patients, each draw its own and
    with its own seed; the whole share on all of them. Files of separate processes sum up alike,
    and a split given twice is refused rather than counted twice."""
    import json

    patient_curve = importlib.import_module("patient_curve")
    path = _smoke_pipeline(tmp_path)
    assert main(["run", "--config", str(path), "--until", "preprocess"]) == 0

    def seed_patients_beats(config, data):
        patients = data.index.loc[data.sides["train"].rows, "patient"].unique()
        return config.train.seed, frozenset(patients), len(data.sides["train"])

    trained = _stand_in(monkeypatch, module=patient_curve, record=seed_patients_beats)
    out = tmp_path / "rows.jsonl"
    argv = [str(path), "--outer", "0", "--folds", "2", "--refit-steps", "1"]
    argv += ["--shares", "0.5", "1", "--draws", "2", "--first-seed", "7", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["patient_curve.py", *argv])
    patient_curve.main()
    assert [seed for seed, _, _ in trained] == [7, 8, 7, 8]
    (half, other_half), (whole, again) = trained[:2], trained[2:]
    assert whole[1] == again[1] and half[1] < whole[1] and other_half[1] < whole[1]
    assert len(half[1]) == max(2, round(len(whole[1]) / 2)) and half[1] != other_half[1]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["patients"] == len(whole[1])
    assert [len(d["patients"]) for d in row["shares"]["0.5"]] == [len(half[1])] * 2
    printed = capsys.readouterr().out

    # a second process's split: the summary of both files means over both splits
    moved = dict(row, outer=1)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(moved) + "\n")
    monkeypatch.setattr(sys, "argv", ["patient_curve.py", "--summary", str(out), str(other)])
    patient_curve.main()
    both = capsys.readouterr().out.splitlines()
    assert both[0].startswith("mean over outer splits 0 1 (shares of the patients, each the mean")
    assert both[2:] == printed.splitlines()[-2:]  # the same split twice: the same means
    # a side without F beats, never called F, has no F1 (NaN): left out of F's mean, not 0
    undefined = json.loads(json.dumps(moved))
    for draws in undefined["shares"].values():
        for draw in draws:
            draw["f1"]["F"] = float("nan")
    other.write_text(json.dumps(undefined) + "\n")
    monkeypatch.setattr(sys, "argv", ["patient_curve.py", "--summary", str(out), str(other)])
    patient_curve.main()
    assert capsys.readouterr().out.splitlines()[2:] == both[2:]
    monkeypatch.setattr(sys, "argv", ["patient_curve.py", "--summary", str(out), str(out)])
    with pytest.raises(SystemExit):
        patient_curve.main()
    assert "outer split(s) [0] in more than one line" in capsys.readouterr().err

    # shares of beats: every patient kept, about half of the beats
    trained.clear()
    beats = tmp_path / "beats.jsonl"
    argv = [*argv[:7], "--of", "beats", "--shares", "0.5", "--draws", "1", "--out", str(beats)]
    monkeypatch.setattr(sys, "argv", ["patient_curve.py", *argv])
    patient_curve.main()
    ((_, patients, count),) = trained
    assert patients == whole[1] and 0.4 < count / whole[2] < 0.6
    monkeypatch.setattr(sys, "argv", ["patient_curve.py", "--summary", str(beats), str(other)])
    with pytest.raises(SystemExit):
        patient_curve.main()
    assert "shares of patients and of beats together" in capsys.readouterr().err


PTB_BEATS = """
download: {{database: ptbdb, version: fixtures, source: {source}}}
signal: {{leads: [ii], fs: 128, workers: 1}}
segment: {{task: mi_vs_healthy, kind: beats, r_peaks: gqrs, rr_average_s: {average}}}
split: {{protocol: kfold, folds: 2, val_fraction: 0.5}}
model: {{use_rr: false}}
"""


def test_lent_patients_train_every_split_and_are_never_held_out(tmp_path, monkeypatch, capsys):
    """Another database's healthy controls join each training side as N beats; the held-out
    sides, and so the scores, stay the default's own beats."""

    from conftest import write_pipeline

    path = _smoke_pipeline(tmp_path)
    assert main(["run", "--config", str(path), "--until", "preprocess"]) == 0
    fixtures = Path(__file__).resolve().parent / "fixtures" / "ptbdb"
    lent = {}
    for average in (60, 300):  # the smoke pipeline's RR average, and another
        text = PTB_BEATS.format(source=fixtures, average=average)
        ptb = write_pipeline(tmp_path / f"ptb{average}", "ptb", text)
        assert main(["run", "--config", str(ptb), "--until", "preprocess"]) == 0
        lent[average] = engine_for(load_config(ptb)).out_dir("preprocess")
    _, theirs, _ = load_pieces(lent[60])
    assert set(theirs["label"]) == {"healthy", "MI"}
    trained = _stand_in(
        monkeypatch,
        record=lambda config, data: {
            side: data.index.loc[data.sides[side].rows, ["patient", "label"]]
            for side in ("train", "test")
        },
    )
    argv = [str(path), "--outer", "0", "--folds", "2", "--refit-steps", "1", "--no-cache"]
    lend_args = ["--lend", str(lent[60]), "--lend-as", "healthy=N"]
    monkeypatch.setattr(sys, "argv", ["refit_lever.py", *argv, *lend_args])
    refit_lever.main()
    default, with_lent = trained
    assert default["test"].equals(with_lent["test"])  # the same held-out beats, in order
    extra = with_lent["train"].iloc[len(default["train"]) :]
    assert with_lent["train"].iloc[: len(default["train"])].equals(default["train"])
    assert set(extra["patient"]) == {"patient104", "patient105"}  # the controls, not the MI
    assert (extra["label"] == "N").all()
    assert len(extra) == (theirs["label"] == "healthy").sum()
    out = capsys.readouterr().out
    assert f"(lent: lend {len(extra)} pieces of 2 patients from {lent[60]} as healthy=N" in out
    assert "lent - default" in out

    for wrong, problem in (
        (["--lend", str(lent[300]), "--lend-as", "healthy=N"], "segment.rr_average_s is 300.0"),
        (["--lend", str(lent[60]), "--lend-as", "control=N"], "no label control"),
        (["--lend", str(lent[60]), "--lend-as", "healthy=X"], "the default has no class X"),
        (["--lend", str(lent[60])], "--lend and --lend-as go together"),
        (["--lend", str(lent[60]), "--lend-as", "healthy"], "LABEL=CLASS pairs, not healthy"),
        ([], "nothing to compare"),
    ):
        monkeypatch.setattr(sys, "argv", ["refit_lever.py", *argv, *wrong])
        with pytest.raises(SystemExit):
            refit_lever.main()
        assert problem in capsys.readouterr().err
    assert len(trained) == 2  # none of them trained


def test_detections_are_matched_to_reference_beats_within_150_ms_with_their_offsets():
    import numpy as np

    detectors = importlib.import_module("detectors")
    score = detectors.scored(np.array([100, 200, 300]), np.array([98, 205, 500]), 128.0)
    # 500 lies 200 samples from 300, past its 19-sample (150 ms) window: a miss and an extra
    assert (score["tp"], score["fn"], score["fp"]) == (2, 1, 1)
    assert score["offset"] == [-2, 5]


def test_detected_beats_pair_matches_misses_and_extras_with_the_reference_class():
    import pandas as pd

    detected_beats = importlib.import_module("detected_beats")
    reference = pd.DataFrame({"sample": [100, 200, 300, 400], "reference": ["N", "S", "V", "Q"]})
    detected = pd.DataFrame({"sample": [101, 290, 402, 700], "class": ["N", "N", "V", "S"]})
    y, p = detected_beats.paired(reference, detected, 128.0, ["N", "S", "V", "F"])
    # 101 and 290 match 100 and 300; 200 is missed; 402 matched Q and leaves with it; 700 is extra
    assert list(zip(y, p, strict=True)) == [("N", "N"), ("V", "N"), ("S", "none"), ("none", "S")]


@pytest.mark.parametrize("wrong", ["gqr", "gqrs:asfound", "xqrs:", "reference"])
def test_detected_beats_refuses_a_detector_it_does_not_know_before_reading_a_record(
    monkeypatch, capsys, wrong
):
    """A mistyped suffix once ran as the moved detector under the mistyped name."""
    detected_beats = importlib.import_module("detected_beats")
    monkeypatch.setattr(detected_beats, "load_model", lambda path: pytest.fail("read a model"))
    argv = ["detected_beats.py", "--model", "m.pt", "--raw", ".", "--detectors", "xqrs", wrong]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        detected_beats.main()
    assert repr(wrong) in capsys.readouterr().err

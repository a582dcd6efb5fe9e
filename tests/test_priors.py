"""Each record's class priors from its own beats (Saerens et al. 2002), and the prior a model
was trained under."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ecg.config import TrainConfig
from ecg.dataset import Side
from ecg.priors import adapt, adapt_by_group, reweight
from ecg.train import training_prior

MEANS = np.array([0.0, 1.5, 3.0, 4.5])


def _calibrated(prior, n, seed):
    """Labels drawn with ``prior`` and the exact posteriors of a model trained under an even
    prior: four unit Gaussians on a line, so the truth is known."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(prior), size=n, p=prior)
    likelihood = np.exp(-0.5 * (rng.normal(MEANS[y], 1.0)[:, None] - MEANS) ** 2)
    return y, likelihood / likelihood.sum(axis=1, keepdims=True)


def test_em_finds_a_recordings_prior_and_its_decisions_improve():
    truth = np.array([0.9, 0.05, 0.04, 0.01])
    y, proba = _calibrated(truth, 5000, seed=0)
    adapted, prior = adapt(proba, np.full(4, 0.25))
    np.testing.assert_allclose(prior, np.bincount(y, minlength=4) / len(y), atol=0.02)
    np.testing.assert_allclose(adapted.sum(axis=1), 1.0)
    assert (adapted.argmax(axis=1) == y).mean() > (proba.argmax(axis=1) == y).mean() + 0.1


def test_a_recording_with_the_training_prior_is_left_nearly_as_it_was():
    _, proba = _calibrated(np.full(4, 0.25), 20000, seed=1)
    adapted, prior = adapt(proba, np.full(4, 0.25))
    np.testing.assert_allclose(prior, 0.25, atol=0.02)
    assert (adapted.argmax(axis=1) != proba.argmax(axis=1)).mean() < 0.02


def test_reweighting_is_bayes_rule_with_the_prior_swapped():
    proba = np.array([[0.5, 0.5], [0.8, 0.2]])
    out = reweight(proba, np.array([0.9, 0.1]), np.array([0.5, 0.5]))
    np.testing.assert_allclose(out[0], [0.9, 0.1])
    np.testing.assert_allclose(out[1], [0.72 / 0.74, 0.02 / 0.74])


def test_each_record_gets_its_own_prior_and_keeps_its_rows_in_place():
    y_a, p_a = _calibrated(np.array([0.97, 0.01, 0.01, 0.01]), 3000, seed=2)
    y_b, p_b = _calibrated(np.array([0.2, 0.78, 0.01, 0.01]), 3000, seed=3)
    proba = np.empty((6000, 4))
    proba[0::2], proba[1::2] = p_a, p_b  # interleaved, as beats of two records never are
    groups = np.array(["a", "b"] * 3000)
    adapted, priors = adapt_by_group(proba, groups, np.full(4, 0.25))
    assert priors["a"][0] > 0.9 and priors["b"][1] > 0.7
    np.testing.assert_allclose(adapted[0::2], adapt(p_a, np.full(4, 0.25))[0])
    np.testing.assert_allclose(adapted[1::2], adapt(p_b, np.full(4, 0.25))[0])


def test_shrinkage_keeps_a_class_the_recording_lacks_from_vanishing():
    """Plain EM drives a class the probabilities do not hold up to 0; mixed with the training
    prior at weight s, its estimate stays at s times its training prior or above, and the
    estimate is the MAP fixed point: (1 - s) * mean re-weighted probability + s * training
    prior."""
    even = np.full(4, 0.25)
    _, proba = _calibrated(np.array([0.95, 0.0, 0.05, 0.0]), 3000, seed=4)
    _, plain = adapt(proba, even)
    shrunk_proba, shrunk = adapt(proba, even, shrinkage=0.5)
    assert plain[1] < 0.03 and plain[3] < 0.03
    assert shrunk[1] >= 0.125 and shrunk[3] >= 0.125
    assert shrunk[0] < plain[0]
    fixed = 0.5 * reweight(proba, shrunk, even).mean(axis=0) + 0.5 * even
    np.testing.assert_allclose(shrunk, fixed, atol=1e-5)
    np.testing.assert_allclose(shrunk_proba, reweight(proba, shrunk, even))


def test_an_empty_recording_keeps_the_training_prior():
    adapted, prior = adapt(np.zeros((0, 3)), np.array([0.5, 0.3, 0.2]))
    assert adapted.shape == (0, 3)
    np.testing.assert_allclose(prior, [0.5, 0.3, 0.2])


def _side(counts):
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return Side(torch.zeros(len(y), 2, 1), None, y, np.arange(len(y)))


@pytest.mark.parametrize(
    ("weights", "sampler", "expected"),
    [
        ("inverse", "shuffle", [0.25, 0.25, 0.25, 0.25]),
        ("none", "shuffle", [0.8, 0.1, 0.08, 0.02]),
        ("none", "balanced", [0.25, 0.25, 0.25, 0.25]),
    ],
)
def test_the_training_prior_is_the_class_shares_times_their_weights(weights, sampler, expected):
    side = _side([400, 50, 40, 10])
    cfg = TrainConfig(class_weights=weights, sampler=sampler)
    np.testing.assert_allclose(training_prior(side.y, None, ["N", "S", "V", "F"], cfg), expected)


def test_sqrt_weights_give_a_prior_between_the_counts_and_even():
    side = _side([400, 100])
    prior = training_prior(side.y, None, ["N", "S"], TrainConfig(class_weights="sqrt_inverse"))
    np.testing.assert_allclose(prior, [2 / 3, 1 / 3])  # 400 / sqrt(400) : 100 / sqrt(100)


def test_n_beats_weighted_as_a_group_of_their_own_still_count_as_n():
    side = _side([300, 100])
    groups = side.y.clone()
    groups[:100] = 2  # a hundred of the N beats in fibrillation
    prior = training_prior(side.y, groups, ["N", "S"], TrainConfig(class_weights="inverse"))
    np.testing.assert_allclose(prior, [2 / 3, 1 / 3])  # three even groups, two of them N


def test_the_evaluate_stage_scores_each_record_under_its_own_priors(tmp_path):
    from test_train import _smoke_pipeline

    from ecg.cli import main
    from ecg.priors import reweight

    config = _smoke_pipeline(tmp_path)
    assert main(["run", "--config", str(config)]) == 0
    reports = tmp_path / "reports" / "smoke"
    (plain,) = reports.glob("*/predictions.csv")
    before = pd.read_csv(plain)
    assert main(["run", "--config", str(config), "--set", "evaluate.adapt_priors=record"]) == 0
    after = pd.read_csv(plain)  # the same run: only evaluate and report ran again
    metrics = json.loads((plain.parent / "metrics.json").read_text())
    estimated = metrics["record_priors"]["estimated"]
    assert set(estimated) == set(before["record"].astype(str))
    payload = torch.load(
        tmp_path / "data" / "processed" / "smoke" / "train" / "fold_0" / "model.pt",
        weights_only=True,
    )
    trained_under = np.asarray(payload["spec"]["train_prior"])
    columns = [c for c in before.columns if c.startswith("p_")]
    for record, prior in estimated.items():
        rows = before["record"].astype(str) == record
        expected = reweight(before.loc[rows, columns].to_numpy(), np.asarray(prior), trained_under)
        np.testing.assert_allclose(after.loc[rows, columns].to_numpy(), expected, atol=2e-3)
        assert sum(prior) == pytest.approx(1.0, abs=1e-3)
    assert (after["predicted"] != before["predicted"]).any()
    report = (plain.parent / "report.md").read_text()
    assert "## Each record's estimated class priors" in report
    record, prior = next(iter(sorted(estimated.items())))
    share = (before.loc[before["record"].astype(str) == record, "true"] == "N").mean()
    assert f"| {record} | {100 * prior[0]:.1f} ({100 * share:.1f}) |" in report
    assert "falls to zero" in report

    shrink = ["--set", "evaluate.adapt_priors=record", "--set", "evaluate.prior_shrinkage=0.5"]
    assert main(["run", "--config", str(config), *shrink]) == 0
    metrics = json.loads((plain.parent / "metrics.json").read_text())
    assert metrics["record_priors"]["shrinkage"] == 0.5
    for prior in metrics["record_priors"]["estimated"].values():
        assert np.all(np.asarray(prior) >= 0.5 * trained_under - 1e-3)
    assert "at weight 0.5 (evaluate.prior_shrinkage)" in (plain.parent / "report.md").read_text()

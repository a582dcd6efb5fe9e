"""The patient adversary: the reversal, its schedule, who it sees, and what fit keeps."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_train import CFG, _fit, _model, on_two_gloo_ranks, toy_side

from ecg.adversary import (
    IGNORED,
    PatientAdversary,
    WithAdversary,
    adversary_loss,
    patient_targets,
    reversal_factor,
    reverse_gradient,
)
from ecg.errors import EcgError


def test_the_reversal_passes_the_input_and_turns_the_gradient_scaled():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = reverse_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.25, -0.5, -0.75]))


def test_the_schedule_starts_at_zero_and_rises_to_the_weight():
    assert reversal_factor(0.0, 1.0) == 0.0
    values = [reversal_factor(p, 2.0) for p in np.linspace(0, 1, 11)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(2.0 * (2 / (1 + math.exp(-10)) - 1))
    assert reversal_factor(0.5, 1.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert reversal_factor(1.5, 1.0) == reversal_factor(1.0, 1.0)


def test_only_n_beats_have_a_patient_to_guess():
    patients = np.array(["208", "101", "208", "119", "101"])
    y = torch.tensor([0, 0, 3, 0, 1])  # N N F N S
    targets, n = patient_targets(patients, y, n_class=0)
    assert n == 3
    assert targets.tolist() == [2, 0, IGNORED, 1, IGNORED]


def test_a_batch_without_n_beats_adds_nothing_rather_than_nan():
    guesses = torch.randn(4, 3, requires_grad=True)
    loss = adversary_loss(guesses, torch.full((4,), IGNORED))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(guesses.grad) == 0
    some = adversary_loss(guesses, torch.tensor([0, IGNORED, 2, IGNORED]))
    expected = torch.nn.functional.cross_entropy(guesses[[0, 2]], torch.tensor([0, 2]))
    assert some.item() == pytest.approx(expected.item())


def test_the_lstm_gets_the_class_gradient_minus_factor_times_the_adversary_gradient():
    torch.manual_seed(0)
    side = toy_side(32, 0)
    model = _model()
    both = WithAdversary(model, PatientAdversary(16, 8, 4))
    patient = torch.randint(0, 4, (32,))
    factor = 0.3

    def lstm_grad(loss):
        both.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.lstm.parameters()])

    logits, guesses = both(side.x, side.rr, factor)
    class_loss = torch.nn.functional.cross_entropy(logits, side.y)
    together = lstm_grad(class_loss + adversary_loss(guesses, patient))
    alone = lstm_grad(torch.nn.functional.cross_entropy(model(side.x, side.rr), side.y))
    plain = both.adversary.head(model.pooled(side.x))  # the same head without the reversal
    adversary_alone = lstm_grad(adversary_loss(plain, patient))
    assert torch.allclose(together, alone - factor * adversary_alone, atol=1e-6)
    assert not torch.allclose(together, alone, atol=1e-6)


def _fit_with_adversary(tmp_path=None, cfg=None, resume=False, patients=True, on_epoch=None):
    """The toy task, no validation side, classes N and S, four made-up patients; the checkpoint
    in ``tmp_path`` (none without)."""
    model, _, state = _fit(
        tmp_path,
        cfg or dataclasses.replace(CFG, patient_adversary=1.0),
        resume,
        validated=False,
        classes=("N", "S"),
        on_epoch=on_epoch,
        patients=np.arange(512) % 4 if patients else None,
    )
    return model, state


def test_fit_trains_the_adversary_beside_the_model_and_keeps_the_model_alone(tmp_path):
    cfg = dataclasses.replace(CFG, patient_adversary=1.0, average_epochs=2)
    model, state = _fit_with_adversary(tmp_path, cfg)
    assert state.epoch == CFG.epochs
    losses = [e["adversary_loss"] for e in state.history]
    assert all(0 < loss < 2 * math.log(4) for loss in losses)
    assert not any(key.startswith("adversary") for key in model.state_dict())
    assert set(state.best_weights) == set(model.state_dict())
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    assert any(key.startswith("adversary.") for key in checkpoint["model"])
    without, plain = _fit_with_adversary(cfg=dataclasses.replace(cfg, patient_adversary=0.0))
    assert all("adversary_loss" not in e for e in plain.history)
    pairs = zip(model.parameters(), without.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)


def test_a_resumed_run_with_an_adversary_continues_where_it_stopped(tmp_path):
    """Killed after its second epoch (the checkpoint is written before ``on_epoch``), then
    resumed: the same losses and weights as a run that was never stopped, so the adversary's
    head, its optimiser state and the schedule's step all came back."""

    def killed(entry):
        if entry.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit_with_adversary(tmp_path, on_epoch=killed)
    model, resumed = _fit_with_adversary(tmp_path, resume=True)
    straight_model, straight = _fit_with_adversary()
    keys = ["train_loss", "adversary_loss"]
    assert [e[k] for e in resumed.history for k in keys] == pytest.approx(
        [e[k] for e in straight.history for k in keys]
    )
    for a, b in zip(model.parameters(), straight_model.parameters(), strict=True):
        assert torch.allclose(a, b)


def test_an_adversary_without_the_pieces_patients_is_refused():
    with pytest.raises(EcgError, match="patient_adversary: training needs each training piece"):
        _fit_with_adversary(patients=False)


def _two_epochs_with_an_adversary() -> tuple[np.ndarray, float]:
    cfg = dataclasses.replace(CFG, epochs=2, patient_adversary=1.0)
    model, state = _fit_with_adversary(cfg=cfg)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return flat.numpy(), state.history[-1]["adversary_loss"]


def test_under_distributed_data_parallel_the_ranks_train_one_model_and_one_adversary():
    (w0, loss0), (w1, loss1) = on_two_gloo_ranks(_two_epochs_with_an_adversary)
    np.testing.assert_allclose(w0, w1)  # the classifier's and the head's gradients were averaged
    assert loss0 > 0 and loss1 > 0

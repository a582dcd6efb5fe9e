"""The BiLSTM and its fit loop: learns, checkpoints, resumes, repeats itself, runs under DDP."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import socket
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ecg.augment import FUSION_MIX, fusion_beats
from ecg.config import AugmentConfig, TrainConfig
from ecg.dataset import FoldData, Side
from ecg.errors import EcgError
from ecg.losses import FocalLoss, make_loss
from ecg.model import BiLSTMClassifier, PackagedClassifier, pack
from ecg.pipeline import STAGES
from ecg.train import (
    class_weights,
    draw_patients,
    draw_weights,
    epoch_order,
    fit,
    fit_normalizer,
    fold_prior,
    predict_proba,
    running_mean,
    seed_everything,
    training_precision,
    training_prior,
    weight_groups,
    with_fusion_beats,
)

CFG = TrainConfig(epochs=4, batch_size=64, lr=0.01, patience=10, threads=0)


def toy_side(n: int, seed: int) -> Side:
    """Real-shaped beats (90 samples, 1 lead, 128 Hz) of two classes: an upright QRS-like bump
    with a normal RR, or an inverted, wider one that comes early."""
    rng = np.random.default_rng(seed)
    t = np.arange(90) / 128.0
    y = rng.integers(0, 2, n)
    width = np.where(y == 0, 0.012, 0.03)[:, None]
    sign = np.where(y == 0, 1.0, -1.0)[:, None]
    x = sign * np.exp(-((t[None, :] - 0.25) ** 2) / (2 * width**2))
    x = x + 0.05 * rng.standard_normal(x.shape)
    rr = np.stack([np.where(y == 0, 0.8, 0.5) + 0.05 * rng.standard_normal(n), np.ones(n)], axis=1)
    return Side(
        torch.tensor(x[:, :, None], dtype=torch.float32),
        torch.tensor(rr, dtype=torch.float32),
        torch.tensor(y),
        np.arange(n),
    )


def _model(n_rr=2):
    return BiLSTMClassifier(n_leads=1, n_classes=2, n_rr=n_rr, hidden=8, layers=1, dropout=0.0)


def _fit(tmp_path=None, cfg=CFG, resume=False, seed=0, validated=True, classes=("a", "b"), **more):
    """The toy task fitted; ``more`` goes to ``fit`` as it is."""
    seed_everything(seed)
    train, val = toy_side(512, 1), toy_side(256, 2)
    model = _model()
    normalizer = fit_normalizer(train, per_window=False)
    checkpoint = None if tmp_path is None else tmp_path / "last.pt"
    state = fit(
        model,
        normalizer,
        train,
        val if validated else None,
        list(classes),
        cfg,
        torch.device("cpu"),
        checkpoint=checkpoint,
        resume=resume,
        progress=False,
        **more,
    )
    return model, normalizer, state


def _smoke_pipeline(tmp_path):
    """The smoke pipeline in a project at ``tmp_path``, reading the committed fixtures."""
    from pathlib import Path

    from conftest import write_pipeline

    repo = Path(__file__).resolve().parent.parent
    text = (
        (repo / "pipelines" / "smoke.yaml")
        .read_text()
        .replace("source: tests/fixtures/mitdb", f"source: {repo / 'tests' / 'fixtures' / 'mitdb'}")
    )
    return write_pipeline(tmp_path, "smoke", text)


def test_bilstm_learns_a_separable_task_in_seconds():
    _, _, state = _fit()
    assert state.best_f1 > 0.95


@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
def test_every_pooling_gives_class_logits(pooling):
    model = BiLSTMClassifier(2, 5, n_rr=3, hidden=8, layers=2, pooling=pooling)
    assert model(torch.zeros(7, 90, 2), torch.zeros(7, 3)).shape == (7, 5)


def test_same_config_and_data_on_cpu_give_the_same_metrics():
    _, _, first = _fit()
    _, _, second = _fit()
    keys = ["train_loss", "val_loss", "val_macro_f1"]
    assert [[e[k] for k in keys] for e in first.history] == [
        [e[k] for k in keys] for e in second.history
    ]


def test_resume_continues_from_the_saved_epoch(tmp_path):
    short = dataclasses.replace(CFG, epochs=2)
    _, _, interrupted = _fit(tmp_path, short)
    assert interrupted.epoch == 2
    model, _, resumed = _fit(tmp_path, CFG, resume=True)
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == interrupted.history
    _, _, straight = _fit(None, CFG)
    assert [e["val_macro_f1"] for e in resumed.history] == pytest.approx(
        [e["val_macro_f1"] for e in straight.history]
    )


def test_without_validation_every_epoch_trains_at_one_rate_and_the_last_is_kept(tmp_path):
    """No validation side: patience and learning-rate decay have nothing to look at, so all
    epochs run at the configured rate and the model leaves fit() with its last weights."""
    cfg = dataclasses.replace(CFG, epochs=3, patience=1, lr_patience=0)
    seed_everything(0)
    train, test = toy_side(512, 1), toy_side(256, 2)
    model = _model()
    normalizer = fit_normalizer(train, per_window=False)
    state = fit(
        model,
        normalizer,
        train,
        None,
        ["a", "b"],
        cfg,
        torch.device("cpu"),
        checkpoint=tmp_path / "last.pt",
        progress=False,
    )
    assert [e["epoch"] for e in state.history] == [1, 2, 3]
    assert {e["lr"] for e in state.history} == {cfg.lr}
    assert all(np.isnan(e["val_macro_f1"]) for e in state.history)
    assert state.best_epoch == 3
    last = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, last[name])
    proba = predict_proba(model, normalizer, test, torch.device("cpu"))
    assert (proba.argmax(axis=1) == test.y.numpy()).mean() > 0.95


def test_cosine_schedule_falls_to_zero_by_batch_and_resumes_where_it_stopped(tmp_path):
    """512 training beats in batches of 64 are 8 steps an epoch; after epoch e of 4 the rate is
    lr * (1 + cos(pi * e / 4)) / 2, with or without validation patients (no plateau cut), and a
    run stopped after its second epoch resumes on the same curve."""
    cfg = dataclasses.replace(CFG, lr_schedule="cosine", lr_patience=0)
    expected = [cfg.lr * (1 + math.cos(math.pi * e / 4)) / 2 for e in (1, 2, 3, 4)]
    for validated in (True, False):
        _, _, state = _fit(None, cfg, validated=validated)
        assert [e["lr"] for e in state.history] == pytest.approx(expected, abs=1e-12)

    class Stop(Exception):
        pass

    def stop_after_two(entry):
        if entry.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        _fit(tmp_path, cfg, on_epoch=stop_after_two)
    _, _, resumed = _fit(tmp_path, cfg, resume=True)
    _, _, straight = _fit(None, cfg)
    assert [e["lr"] for e in resumed.history] == pytest.approx(expected, abs=1e-12)
    assert [e["val_macro_f1"] for e in resumed.history] == pytest.approx(
        [e["val_macro_f1"] for e in straight.history]
    )


def test_checkpoint_is_loaded_without_unpickling(tmp_path):
    _fit(tmp_path, dataclasses.replace(CFG, epochs=1))
    payload = torch.load(tmp_path / "last.pt", weights_only=True)
    assert payload["state"]["epoch"] == 1
    model = _model()
    model.load_state_dict(payload["model"])


def test_packaged_model_gives_probabilities_from_one_tensor():
    model, normalizer, _ = _fit()
    side = toy_side(16, 3)
    packaged = PackagedClassifier(model, normalizer, n_leads=1, n_rr=2).eval()
    with torch.no_grad():
        proba = packaged(pack(side.x, side.rr))
        direct = torch.softmax(model(*normalizer(side.x, side.rr)), dim=1)
    assert proba.shape == (16, 2)
    torch.testing.assert_close(proba, direct)
    assert (proba.argmax(1) == side.y).float().mean() > 0.9


def _gloo_rank(rank: int, port: int, results, train) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        results[rank] = train()
    finally:
        dist.destroy_process_group()


def on_two_gloo_ranks(train) -> tuple:
    """``train()`` (a module-level function, so the processes can find it) run by two gloo
    processes as one DistributedDataParallel job; what each returned, by rank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gloo_rank, args=(port, results, train), nprocs=2, join=True)
        return results[0], results[1]


def _two_epochs() -> tuple[np.ndarray, float]:
    model, _, state = _fit(cfg=dataclasses.replace(CFG, epochs=2))
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy(), state.best_f1


def test_distributed_data_parallel_runs_with_two_gloo_processes():
    (w0, f0), (w1, f1) = on_two_gloo_ranks(_two_epochs)
    np.testing.assert_allclose(w0, w1)  # gradients were averaged: both ranks hold one model
    assert f0 == f1 and f0 > 0.8


@pytest.mark.parametrize("downsample", [1, 2, 4])
def test_strided_front_end_shortens_the_sequence_and_keeps_the_output(downsample):
    model = BiLSTMClassifier(12, 2, hidden=8, layers=1, pooling="mean", downsample=downsample)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert len(convs) == {1: 0, 2: 1, 4: 2}[downsample]
    assert model(torch.zeros(3, 256, 12)).shape == (3, 2)


def test_simulated_fibrillation_gives_irregular_rr_features_through_the_real_code():
    from ecg.augment import fibrillation_rr
    from ecg.config import SegmentConfig

    names = ["pre_over_local", "pre_over_average", "rr_irregularity", "pre2_over_average"]
    pool = fibrillation_rr(names, 0.2, SegmentConfig(), seed=0)
    assert pool.shape[1] == 4 and len(pool) > 3000 and np.isfinite(pool).all()
    assert np.mean(pool[:, 1]) == pytest.approx(1.0, abs=0.02)  # early and late in equal measure
    assert np.std(pool[:, 1]) == pytest.approx(0.2, abs=0.02)
    assert np.median(pool[:, 2]) == pytest.approx(0.19, abs=0.03)  # 201 and 203: 0.21, 0.29
    sinus = fibrillation_rr(names, 0.02, SegmentConfig(), seed=0)
    assert np.median(sinus[:, 2]) < 0.05  # a regular rhythm reads as one
    with pytest.raises(EcgError, match="has pre_rr, in seconds"):
        fibrillation_rr(["pre_rr", "pre_over_local"], 0.2, SegmentConfig(), seed=0)


def test_only_n_beats_take_a_fibrillation_context_and_reproducibly():
    from ecg.augment import with_fibrillation_rr

    rr = torch.zeros(1000, 2)
    n_beats = torch.arange(1000) % 2 == 0
    pool = torch.tensor([[0.7, 0.3], [1.3, 0.2]])
    out, chosen = with_fibrillation_rr(rr, n_beats, pool, 0.5, torch.Generator().manual_seed(0))
    changed = (out != 0).any(dim=1)
    assert torch.equal(changed, chosen)
    assert not changed[~n_beats].any()
    assert 0.4 < changed[n_beats].float().mean() < 0.6
    assert (out[changed][:, None, :] == pool[None]).all(dim=2).any(dim=1).all()  # pool rows
    again, _ = with_fibrillation_rr(rr, n_beats, pool, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and (rr == 0).all()


def test_training_with_a_fibrillation_context_learns_and_differs(tmp_path):
    from ecg.config import load_config
    from ecg.dataset import FoldData
    from ecg.train import train_members

    train = toy_side(480, 1)
    index = pd.DataFrame({"patient": np.repeat([f"p{i}" for i in range(8)], 60)})
    data = FoldData(["N", "S"], ["pre_over_local", "rr_irregularity"], {"train": train}, index,
                    {}, {})  # fmt: skip
    overrides = ["train.epochs=4", "train.batch_size=32", "train.classes=[]", "model.hidden=8"]
    path = _smoke_pipeline(tmp_path)
    plain, _, _ = train_members(load_config(path, overrides), data, None, torch.device("cpu"),
                                progress=False)  # fmt: skip
    context = load_config(path, [*overrides, "augment.af_context=0.3"])
    model, normalizer, _ = train_members(context, data, None, torch.device("cpu"), progress=False)
    p = predict_proba(model, normalizer, toy_side(256, 2), torch.device("cpu"))
    assert (p.argmax(axis=1) == toy_side(256, 2).y.numpy()).mean() > 0.9
    assert any(
        not torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters(), strict=True)
    )
    waveform = load_config(path, [*overrides, "augment.af_context=0.3", "augment.af_waveform=true"])
    without_p, _, _ = train_members(waveform, data, None, torch.device("cpu"), progress=False)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(model.parameters(), without_p.parameters(), strict=True)
    )
    wrong = FoldData(["a", "b"], data.rr_names, data.sides, index, {}, {})
    with pytest.raises(EcgError, match="af_context: acts on N beats"):
        train_members(context, wrong, None, torch.device("cpu"), progress=False)


def test_a_beat_without_its_p_wave_keeps_its_qrs_and_its_typical_beat_loses_it_too():
    from ecg.augment import P_WAVE_END_S, without_p_wave

    fs, pre_s = 128.0, 0.25
    t = np.arange(90) / fs - pre_s  # seconds from R
    p_wave = 0.12 * np.exp(-((t + 0.16) ** 2) / (2 * 0.02**2))
    qrs = np.exp(-(t**2) / (2 * 0.012**2))
    beat = torch.tensor(p_wave + qrs + 0.02 * t, dtype=torch.float32)
    # two leads' worth: the beat and beat minus its record's typical beat (here: itself)
    x = torch.stack([beat, torch.zeros(90)], dim=1)[None].repeat(6, 1, 1)
    chosen = torch.tensor([True, False, True, True, False, True])
    y = without_p_wave(x, chosen, fs, pre_s, torch.Generator().manual_seed(0), paired=True)
    cut = round((pre_s - P_WAVE_END_S) * fs)
    assert torch.equal(y[~chosen], x[~chosen])
    assert torch.equal(y[:, cut:], x[:, cut:])  # the PR segment's end, the QRS and after
    line = beat[0] + (beat[cut] - beat[0]) * torch.arange(cut) / cut
    assert (y[chosen, :cut, 0] - line).abs().max() <= 0.05 + 1e-6  # fibrillatory waves only
    assert (x[chosen, :cut, 0] - line).abs().max() > 0.1  # where the P wave was
    # the typical beat lost its P wave the same way, so beat minus typical is the waves alone
    torch.testing.assert_close(y[chosen, :cut, 1], y[chosen, :cut, 0] - line.expand(4, -1))
    again = without_p_wave(x, chosen, fs, pre_s, torch.Generator().manual_seed(0), paired=True)
    assert torch.equal(y, again)
    assert not torch.equal(y[0], y[2])  # each beat its own waves


def test_augmentation_perturbs_training_beats_reproducibly():
    from ecg.augment import augment
    from ecg.config import AugmentConfig

    x = toy_side(32, 5).x
    cfg = AugmentConfig(noise_mv=0.1, baseline_mv=0.2, scale=0.2, shift_s=0.05)
    a = augment(x, cfg, 128.0, torch.Generator().manual_seed(1))
    b = augment(x, cfg, 128.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and not torch.allclose(a, x)
    assert augment(x, AugmentConfig(), 128.0, torch.Generator()) is x
    paired = torch.cat([x, x - x.median(dim=0).values], dim=2)
    noisy = augment(paired, AugmentConfig(noise_mv=0.1), 128.0, torch.Generator(), paired=True)
    torch.testing.assert_close(noisy[..., 0] - paired[..., 0], noisy[..., 1] - paired[..., 1])


def test_template_dropout_passes_some_beats_off_as_their_records_typical_beat():
    from ecg.augment import augment
    from ecg.config import AugmentConfig

    x = toy_side(2000, 5).x
    paired = torch.cat([x, x - x.median(dim=0).values + 0.5], dim=2)
    out = augment(
        paired, AugmentConfig(template_dropout=0.3), 128.0, torch.Generator().manual_seed(0), True
    )
    torch.testing.assert_close(out[..., 0], paired[..., 0])
    zeroed = (out[..., 1] == 0).all(dim=1)
    assert 0.25 < zeroed.float().mean() < 0.35
    torch.testing.assert_close(out[~zeroed, :, 1], paired[~zeroed, :, 1])


def test_template_scaling_takes_each_beat_against_its_typical_beat_grown_or_shrunk():
    from ecg.augment import augment
    from ecg.config import AugmentConfig

    x = toy_side(2000, 5).x
    template = x.median(dim=0).values
    paired = torch.cat([x, x - template], dim=2)
    cfg = AugmentConfig(template_scale=0.2)
    out = augment(paired, cfg, 128.0, torch.Generator().manual_seed(0), True)
    torch.testing.assert_close(out[..., 0], paired[..., 0])  # the beat itself untouched
    # each beat's difference is beat - s * template, one s per beat, within [0.8, 1.2]
    peak = template[:, 0].abs().argmax()
    s = (out[:, peak, 0] - out[:, peak, 1]) / template[peak, 0]
    torch.testing.assert_close(out[..., 1], x[..., 0] - s[:, None] * template[None, :, 0])
    assert 0.8 <= s.min() < 0.82 and 1.18 < s.max() <= 1.2
    again = augment(paired, cfg, 128.0, torch.Generator().manual_seed(0), True)
    assert torch.equal(out, again)
    # without a template channel there is nothing to scale
    assert torch.equal(augment(x, cfg, 128.0, torch.Generator().manual_seed(0)), x)


def test_band_limited_noise_keeps_only_its_band():
    from ecg.augment import band_limited

    fs, length = 128.0, 128
    white = torch.randn(64, length, 1, generator=torch.Generator().manual_seed(0))
    shaped = band_limited(white, fs, (0.5, 10.0))
    power = (torch.fft.rfft(shaped, dim=1).abs() ** 2).mean(dim=(0, 2))
    frequencies = torch.fft.rfftfreq(length, d=1 / fs)
    inside = (frequencies >= 0.5) & (frequencies <= 10.0)
    assert power[~inside].sum() < 1e-6 * power[inside].sum()
    torch.testing.assert_close(shaped.std(dim=1), torch.ones(64, 1))


def test_augmented_training_still_learns():
    from ecg.config import AugmentConfig

    seed_everything(0)
    train, val = toy_side(512, 1), toy_side(256, 2)
    model = _model()
    state = fit(
        model,
        fit_normalizer(train, False),
        train,
        val,
        ["a", "b"],
        CFG,
        torch.device("cpu"),
        progress=False,
        augmentation=AugmentConfig(noise_mv=0.05, scale=0.1, shift_s=0.02),
    )
    assert state.best_f1 > 0.9


@pytest.mark.slow
def test_torchrun_trains_the_smoke_pipeline_with_two_gloo_processes(tmp_path):
    import subprocess
    import sys

    from ecg.tracking import Tracker

    config = _smoke_pipeline(tmp_path)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ecg",
        "train",
        "--config",
        str(config),
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]
    assert (tmp_path / "data" / "processed" / "smoke" / "train" / "fold_0" / "model.pt").is_file()
    assert not list((tmp_path / "data" / "processed" / "smoke").glob(".train.*"))
    runs = Tracker(f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}", "smoke").search()
    assert list(runs["tags.processes"]) == ["2"]  # one run, logged by rank 0 alone


def test_an_ensemble_averages_its_members_probabilities():
    from ecg.model import Ensemble, build_model

    settings = {"hidden": 8, "layers": 1, "dropout": 0.0, "pooling": "last", "ensemble": 3}
    model = build_model(1, 4, 2, settings)
    assert isinstance(model, Ensemble) and len(model.members) == 3
    x, rr = torch.randn(5, 90, 1), torch.randn(5, 2)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x, rr), 1) for m in model.members]).mean(0)
        torch.testing.assert_close(torch.softmax(model(x, rr), 1), mean)


def test_the_train_stage_ships_an_ensemble_that_loads_back(tmp_path):
    from ecg.cli import main
    from ecg.model import Ensemble
    from ecg.train import load_classifier

    config = _smoke_pipeline(tmp_path)
    assert (
        main(
            [
                "run",
                "--config",
                str(config),
                "--set",
                "model.ensemble=2",
                "--set",
                "train.epochs=1",
            ]
        )
        == 0
    )
    model, _, spec = load_classifier(
        tmp_path / "data" / "processed" / "smoke" / "train" / "fold_0" / "model.pt"
    )
    assert isinstance(model, Ensemble) and spec["model"]["ensemble"] == 2
    report = next((tmp_path / "reports" / "smoke").glob("*/report.md")).read_text()
    assert "member 1: 1 epochs run" in report and "member 2: 1 epochs run" in report
    assert "ensemble of these members" in report


def test_the_train_stage_without_validation_patients_trains_on_all_of_them(tmp_path):
    import json

    from ecg.cli import main
    from ecg.train import load_classifier

    config = _smoke_pipeline(tmp_path)
    overrides = ["--set", "split.val_fraction=0", "--set", "train.epochs=2"]
    overrides += ["--set", "augment.fusion_share=1"]  # the report counts what was made
    assert main(["run", "--config", str(config), *overrides]) == 0
    processed = tmp_path / "data" / "processed" / "smoke"
    meta = json.loads((processed / "split" / "meta.json").read_text())["patients"]["split_0"]
    assert meta["val"] == [] and meta["train"]
    _, _, spec = load_classifier(processed / "train" / "fold_0" / "model.pt")
    payload = torch.load(processed / "train" / "fold_0" / "model.pt", weights_only=True)
    assert payload["best_epoch"] == 2
    report = next((tmp_path / "reports" / "smoke").glob("*/report.md")).read_text()
    assert "2 epochs run, the last kept" in report
    assert "No patients were held out for validation" in report
    made = r"synthetic fusion \(F\) beats as real ones \([\d,]+ beside the table's"
    assert re.search(made, report)  # the count the train stage logged


def test_draw_patients_takes_whole_patients_by_the_seed():
    patients = np.repeat(np.array(["100", "101", "103", "105", "106", "108"]), [5, 3, 4, 2, 6, 1])
    keep = draw_patients(patients, 0.5, seed=7)
    assert len(set(patients[keep])) == 3
    assert not set(patients[keep]) & set(patients[~keep])  # a patient is all in or all out
    np.testing.assert_array_equal(keep, draw_patients(patients, 0.5, seed=7))
    draws = {tuple(sorted(set(patients[draw_patients(patients, 0.5, s)]))) for s in range(10)}
    assert len(draws) > 1
    assert draw_patients(patients, 0.01, seed=0).any()  # at least one patient


# Two classes over three patients: class 0 mostly p1's, class 1 all p2's and p3's, 8 to 2.
_Y = torch.tensor([0] * 10 + [0] * 2 + [1] * 8 + [1] * 2)
_PATIENTS = np.array(["p1"] * 10 + ["p2"] * 2 + ["p2"] * 8 + ["p3"] * 2)


def _mass(weights, y, patients):
    """Total draw weight by (class, patient), as a share of all of it."""
    frame = pd.DataFrame({"y": y.numpy(), "patient": patients, "w": weights.numpy()})
    return (frame.groupby(["y", "patient"])["w"].sum() / frame["w"].sum()).to_dict()


def test_patient_balance_evens_patients_within_a_class_and_keeps_the_class_shares():
    even = draw_weights(_Y, _PATIENTS, dataclasses.replace(CFG, patient_balance=1.0))
    mass = _mass(even, _Y, _PATIENTS)
    assert mass[(0, "p1")] == pytest.approx(mass[(0, "p2")]) == pytest.approx(12 / 22 / 2)
    assert mass[(1, "p2")] == pytest.approx(mass[(1, "p3")]) == pytest.approx(10 / 22 / 2)
    half = _mass(
        draw_weights(_Y, _PATIENTS, dataclasses.replace(CFG, patient_balance=0.5)), _Y, _PATIENTS
    )
    assert half[(0, "p1")] / half[(0, "p2")] == pytest.approx((10 / 2) ** 0.5)
    assert half[(0, "p1")] + half[(0, "p2")] == pytest.approx(12 / 22)
    plain = draw_weights(_Y, _PATIENTS, CFG)  # 0: every piece alike, as a shuffle draws them
    np.testing.assert_allclose(plain.numpy(), plain[0].item())
    balanced = draw_weights(_Y, None, dataclasses.replace(CFG, sampler="balanced"))
    assert _mass(balanced, _Y, _PATIENTS)[(0, "p1")] == pytest.approx(0.5 * 10 / 12)


def test_a_patient_balanced_epoch_draws_a_small_patients_pieces_more_often():
    cfg = dataclasses.replace(CFG, patient_balance=1.0, samples_per_epoch=22_000)
    side = Side(torch.zeros(len(_Y), 3, 1), None, _Y, np.arange(len(_Y)))
    order = epoch_order(side, cfg, torch.Generator().manual_seed(0), _PATIENTS)
    drawn = np.bincount(order.numpy(), minlength=len(_Y))
    assert drawn[20:].mean() / drawn[12:20].mean() == pytest.approx(4, rel=0.1)  # 8 to 2 pieces
    assert drawn[:12].sum() / len(order) == pytest.approx(12 / 22, abs=0.01)
    with pytest.raises(EcgError, match="train.patient_balance: training needs each"):
        epoch_order(side, cfg, torch.Generator(), None)
    with pytest.raises(ValueError, match=r"patient_balance: an exponent in \[0, 1\]"):
        TrainConfig(patient_balance=1.5)


def test_bagged_members_each_train_on_their_own_patients(tmp_path, caplog):
    from ecg.config import load_config
    from ecg.dataset import FoldData
    from ecg.train import train_members

    train = toy_side(480, 1)
    patients = np.repeat([f"p{i}" for i in range(8)], 60)
    index = pd.DataFrame({"patient": patients})
    data = FoldData(["a", "b"], ["r1", "r2"], {"train": train}, index, {}, {})
    overrides = ["model.ensemble=2", "train.epochs=1", "train.classes=[]", "model.hidden=8"]
    config = load_config(_smoke_pipeline(tmp_path), overrides)
    bagged = load_config(_smoke_pipeline(tmp_path), [*overrides, "model.ensemble_patients=0.5"])
    with caplog.at_level("INFO", logger="ecg"):
        model, _, _ = train_members(bagged, data, None, torch.device("cpu"), progress=False)
    lines = [r.getMessage() for r in caplog.records if "trains on" in r.getMessage()]
    assert len(lines) == 2 and all("trains on 4 of 8 patients" in line for line in lines)
    assert lines[0] != lines[1]  # each member its own draw
    full, _, _ = train_members(config, data, None, torch.device("cpu"), progress=False)
    first = [p for p in model.members[0].parameters()]
    assert any(
        not torch.equal(a, b) for a, b in zip(first, full.members[0].parameters(), strict=True)
    )


def test_focal_loss_with_gamma_zero_is_the_weighted_cross_entropy():
    logits = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    target = torch.arange(32) % 4
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    focal = FocalLoss(0.0, weight)(logits, target)
    assert torch.allclose(focal, torch.nn.CrossEntropyLoss(weight=weight)(logits, target))


def test_focal_loss_discounts_beats_already_classified_well():
    target = torch.tensor([0, 0])
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])  # confident and right; undecided
    per_beat = [FocalLoss(2.0)(logits[i : i + 1], target[i : i + 1]) for i in range(2)]
    ce = [torch.nn.CrossEntropyLoss()(logits[i : i + 1], target[i : i + 1]) for i in range(2)]
    assert per_beat[0] / ce[0] < 0.001  # (1 - 0.98)^2
    assert per_beat[1] / ce[1] > 0.2  # (1 - 0.5)^2 = 0.25


def test_focal_training_still_learns():
    _, _, state = _fit(cfg=dataclasses.replace(CFG, loss="focal"))
    assert state.best_f1 > 0.95


def test_smoothed_cross_entropy_is_lowest_short_of_certainty():
    target = torch.tensor([0])
    likely, certain = (
        torch.tensor([[math.log(odds), 0.0]]) for odds in (9.0, 999.0)
    )  # p 0.9, 0.999
    plain, smoothed = (
        make_loss("cross_entropy", 2.0, None),
        make_loss("cross_entropy", 2.0, None, label_smoothing=0.2),
    )
    assert plain(certain, target) < plain(likely, target)
    assert smoothed(likely, target) < smoothed(certain, target)  # 0.2 over two classes: 0.9 best


def test_smoothing_takes_each_beats_own_class_weight():
    logits = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    target = torch.arange(32) % 4
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    per_beat = torch.nn.functional.cross_entropy(
        logits, target, reduction="none", label_smoothing=0.1
    )
    expected = (weight[target] * per_beat).sum() / weight[target].sum()
    torch.testing.assert_close(make_loss("cross_entropy", 0.0, weight, label_smoothing=0.1)(
        logits, target), expected)  # fmt: skip
    focal = make_loss("focal", 2.0, weight, label_smoothing=0.1)(logits, target)
    assert focal < expected  # the focal factor still discounts


def test_smoothing_under_inverse_class_weights_still_calls_an_n_beat_n():
    """torch's weighted smoothing would not: the rare classes' large weights pull every beat."""
    weight = torch.tensor([1.0, 48.6, 12.1, 110.7])  # 1/n over DS1's N, S, V, F counts
    loss = make_loss("cross_entropy", 0.0, weight, label_smoothing=0.1)
    logits = torch.zeros(1, 4, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=1.0)
    for _ in range(500):
        optimizer.zero_grad()
        loss(logits, torch.tensor([0])).backward()
        optimizer.step()
    p = torch.softmax(logits, dim=1)[0]
    assert p.argmax() == 0
    assert p[0].item() == pytest.approx(0.925, abs=0.01)  # 1 - 0.1 + 0.1 / 4


def test_label_smoothing_still_learns_but_is_less_sure_of_itself():
    val = toy_side(256, 2)
    sure = {}
    for smoothing in (0.0, 0.2):
        cfg = dataclasses.replace(CFG, epochs=8, class_weights="none", label_smoothing=smoothing)
        seed_everything(0)
        train = toy_side(512, 1)
        model, normalizer = _model(), fit_normalizer(train, per_window=False)
        fit(model, normalizer, train, None, ["a", "b"], cfg, torch.device("cpu"), progress=False)
        p = predict_proba(model, normalizer, val, torch.device("cpu"))
        assert (p.argmax(axis=1) == val.y.numpy()).mean() > 0.95
        sure[smoothing] = float(np.percentile(p.max(axis=1), 99))
    assert sure[0.2] < 0.98 < sure[0.0]


def test_every_training_setting_that_shapes_the_model_is_a_param_of_the_train_stage():
    """A setting missing here would let a changed model pass as fresh (train.loss once did)."""
    (train,) = [stage for stage in STAGES if stage.name == "train"]
    speed_only = {"device", "threads"}
    for field in dataclasses.fields(TrainConfig):
        if field.name not in speed_only:
            assert f"train.{field.name}" in train.params, field.name


def test_class_weights_are_inverse_counts_to_a_power():
    y = torch.tensor([0] * 90 + [1] * 10)
    inverse = class_weights(y, 2, "inverse")
    assert inverse[1] / inverse[0] == pytest.approx(9.0)
    assert class_weights(y, 2, "sqrt_inverse")[1] / class_weights(y, 2, "sqrt_inverse")[0] == (
        pytest.approx(3.0)
    )
    power = class_weights(y, 2, "power", 0.75)
    assert power[1] / power[0] == pytest.approx(9.0**0.75)
    assert class_weights(y, 2, "none") is None


def test_a_weight_cap_holds_the_rarest_class_to_the_ceiling_and_leaves_the_rest():
    y = torch.tensor([0] * 1000 + [1] * 20 + [2] * 100 + [3] * 5)  # N, S, V, F: 1, 50, 10, 200
    capped = class_weights(y, 4, "inverse", cap=50)
    np.testing.assert_allclose((capped / capped[0]).numpy(), [1, 50, 10, 50], rtol=1e-5)
    assert capped.mean() == pytest.approx(1.0)
    uncapped = class_weights(y, 4, "inverse")
    assert uncapped[3] / uncapped[0] == pytest.approx(200.0)
    side = Side(torch.zeros(len(y), 2, 1), None, y, np.arange(len(y)))
    cfg = TrainConfig(class_weights="inverse", weight_cap=50)
    prior = training_prior(side.y, None, ["N", "S", "V", "F"], cfg)
    np.testing.assert_allclose(prior, [1000, 1000, 1000, 250] / np.float64(3250))


def test_grouped_focal_loss_with_gamma_zero_weights_each_piece_by_its_group():
    logits = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 0, 0, 0, 1, 1])
    weight = torch.tensor([1.0, 4.0, 10.0])  # class 0, class 1, class 0 in a rhythm
    assert torch.allclose(
        FocalLoss(0.0, weight)(logits, target, target),
        torch.nn.CrossEntropyLoss(weight=weight[:2])(logits, target),
    )
    group = torch.tensor([0, 0, 2, 2, 1, 1])
    per_piece = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    w = weight[group]
    assert torch.allclose(
        FocalLoss(0.0, weight)(logits, target, group), (w * per_piece).sum() / w.sum()
    )


def test_n_beats_in_a_weighted_rhythm_form_a_group_of_their_own(caplog):
    side = Side(torch.zeros(6, 90, 1), None, torch.tensor([0, 0, 0, 1, 1, 0]), np.arange(6) + 10)
    index = pd.DataFrame(
        {"rhythm": ["N", "AFIB", "AFL", "AFIB", "N", "B"]}, index=np.arange(6) + 10
    )
    groups = weight_groups(side, index, ["N", "S"], ("AFIB", "AFL"))
    assert groups.tolist() == [0, 2, 2, 1, 1, 0]  # an S beat in AFIB stays S
    weights = class_weights(groups, 3, "inverse")
    assert weights[2] / weights[0] == pytest.approx(1.0)  # two N beats in either group
    assert weight_groups(side, index, ["N", "S"], ()) is None
    with caplog.at_level("WARNING", logger="ecg"):
        weight_groups(side, index, ["N", "S"], ("VT",))
    assert "no training N beat is in VT" in caplog.text and "AFIB, AFL, B, N" in caplog.text
    caplog.clear()
    data = FoldData(["N", "S"], [], {"train": side}, index, {}, {})
    config = SimpleNamespace(
        train=dataclasses.replace(CFG, weight_rhythms=("VT",)), augment=AugmentConfig()
    )
    with caplog.at_level("WARNING", logger="ecg"):
        fold_prior(config, data)  # the prior of the training just warned about: no second warning
    assert caplog.text == ""
    with pytest.raises(EcgError, match="no reference rhythms"):
        weight_groups(side, index.drop(columns="rhythm"), ["N", "S"], ("AFIB",))
    with pytest.raises(EcgError, match="N is not among"):
        weight_groups(side, index, ["S", "V"], ("AFIB",))


def test_weight_groups_that_are_the_classes_train_exactly_as_class_weights_do():
    cfg = dataclasses.replace(CFG, class_weights="inverse")
    histories = []
    for grouped in (False, True):
        seed_everything(0)
        train, val = toy_side(512, 1), toy_side(256, 2)
        model, normalizer = _model(), fit_normalizer(train, per_window=False)
        groups = train.y.clone() if grouped else None
        state = fit(
            model, normalizer, train, val, ["a", "b"], cfg, torch.device("cpu"), progress=False,
            groups=groups,
        )  # fmt: skip
        histories.append([h["train_loss"] for h in state.history])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)
    seed_everything(0)
    train, val = toy_side(512, 1), toy_side(256, 2)
    groups = train.y.clone()
    groups[:128][train.y[:128] == 0] = 2  # a quarter of the pieces' class-0 beats as a third group
    model, normalizer = _model(), fit_normalizer(train, per_window=False)
    state = fit(
        model, normalizer, train, val, ["a", "b"], cfg, torch.device("cpu"), progress=False,
        groups=groups,
    )  # fmt: skip
    assert state.best_f1 > 0.9


def test_bf16_training_still_learns_and_keeps_fp32_weights():
    _, _, fp32 = _fit()
    model, _, state = _fit(cfg=dataclasses.replace(CFG, precision="bf16"))
    assert state.best_f1 > 0.95
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert [h["train_loss"] for h in state.history] != [h["train_loss"] for h in fp32.history]


def _fit_without_validation(cfg):
    seed_everything(0)
    train = toy_side(512, 1)
    model = _model()
    fit(model, fit_normalizer(train, per_window=False), train, None, ["a", "b"], cfg,
        torch.device("cpu"), progress=False)  # fmt: skip
    return model.state_dict()


def test_bf16_on_a_gpu_without_it_is_refused_with_the_gpus_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100-SXM2-16GB")
    with pytest.raises(EcgError, match="bf16: Tesla V100-SXM2-16GB has no bfloat16"):
        training_precision("bf16", torch.device("cuda"))
    assert training_precision("fp32", torch.device("cuda")) is not None  # nothing to check


def test_averaged_epochs_keep_the_mean_of_the_last_epochs_weights():
    cfg = dataclasses.replace(CFG, epochs=3)
    second = _fit_without_validation(dataclasses.replace(cfg, epochs=2))
    third = _fit_without_validation(cfg)
    averaged = _fit_without_validation(dataclasses.replace(cfg, average_epochs=2))
    for name, value in averaged.items():
        torch.testing.assert_close(value, (second[name] + third[name]) / 2)
        assert not torch.equal(value, third[name])


def test_running_mean_of_state_dicts():
    a = {"w": torch.tensor([1.0, 2.0]), "count": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "count": torch.tensor(4)}
    c = {"w": torch.tensor([5.0, 1.0]), "count": torch.tensor(5)}
    mean = running_mean(None, a, 0)
    mean = running_mean(mean, b, 1)
    mean = running_mean(mean, c, 2)
    torch.testing.assert_close(mean["w"], torch.tensor([3.0, 3.0]))
    assert mean["count"].item() == 5  # an integer takes the latest value


def test_averaged_epochs_do_nothing_when_validation_picks_the_epoch():
    plain, _, _ = _fit()
    averaged, _, _ = _fit(cfg=dataclasses.replace(CFG, average_epochs=2))
    for name, value in averaged.state_dict().items():
        assert torch.equal(value, plain.state_dict()[name])


def _fusion_side():
    """Patient a: 20 N beats (all 0 mV), 12 V beats (all 1 mV), 3 F; patient b: 30 N beats,
    5 V beats (too few to lend); RR features say which beat a row is."""
    y = np.array([0] * 20 + [2] * 12 + [3] * 3 + [0] * 30 + [2] * 5)
    patients = np.array(["a"] * 35 + ["b"] * 35)
    x = torch.from_numpy(np.where(y == 2, 1.0, 0.0)[:, None, None] * np.ones((1, 90, 2)))
    rr = torch.arange(len(y), dtype=torch.float32)[:, None].repeat(1, 3)
    return Side(x.float(), rr, torch.from_numpy(y), np.arange(len(y)) + 100), patients


def test_made_fusion_beats_lie_between_one_patients_n_and_v_beats_and_come_on_time():
    side, patients = _fusion_side()
    x, rr, owners = fusion_beats(side.x, side.rr, side.y, patients, 0, 2, 7, seed=0)
    assert x.shape == (7, 90, 2) and rr.shape == (7, 3)
    assert set(owners) == {"a"}  # b has 5 V beats, fewer than the floor
    level = x[:, 0, 0].numpy()  # the V beat's share, 1 - a
    assert np.all((level >= 1 - FUSION_MIX[1]) & (level <= 1 - FUSION_MIX[0]))
    assert torch.equal(x, x[:, :1, :1].expand_as(x))  # both channels, every sample alike
    rows = rr[:, 0].long().numpy()
    assert np.all(side.y.numpy()[rows] == 0) and np.all(patients[rows] == "a")  # an N beat's RR
    again = fusion_beats(side.x, side.rr, side.y, patients, 0, 2, 7, seed=0)
    assert torch.equal(x, again[0])
    none = fusion_beats(side.x, side.rr, side.y, patients, 0, 1, 7, seed=0)  # no class-1 beats
    assert len(none[0]) == 0 and len(none[2]) == 0


def test_a_training_side_gains_fusion_beats_as_f_with_no_index_row():
    side, patients = _fusion_side()
    groups = side.y.clone()
    classes = ["N", "S", "V", "F"]
    more, more_groups, more_patients = with_fusion_beats(side, groups, patients, classes, 2.0, 0)
    assert len(more) == len(side) + 6  # twice the 3 real F beats
    assert more.y[len(side) :].tolist() == [3] * 6 and more_groups[len(side) :].tolist() == [3] * 6
    assert more.rows[len(side) :].tolist() == [-1] * 6
    assert list(more_patients[len(side) :]) == ["a"] * 6
    assert torch.equal(more.x[: len(side)], side.x)
    with pytest.raises(EcgError, match="fusion_share: mixes N and V beats into F beats, and F"):
        with_fusion_beats(side, None, patients, ["N", "S", "V"], 1.0, 0)


def test_each_member_counts_the_fusion_beats_it_was_given(tmp_path):
    from ecg.config import load_config
    from ecg.dataset import FoldData
    from ecg.train import train_members

    side, patients = _fusion_side()  # 3 F beats; only patient a can lend
    index = pd.DataFrame({"patient": patients}, index=side.rows)
    data = FoldData(["N", "S", "V", "F"], ["r1", "r2", "r3"], {"train": side}, index, {}, {})
    overrides = ["train.epochs=1", "train.classes=[]", "model.hidden=8", "model.ensemble=2"]
    config = load_config(_smoke_pipeline(tmp_path), [*overrides, "augment.fusion_share=2"])
    _, _, states = train_members(config, data, None, torch.device("cpu"), progress=False)
    assert [s.fusion_beats for s in states] == [6, 6]
    # without a patient who has the V beats to lend, nothing is made, whatever the share
    no_v = Side(side.x, side.rr, torch.where(side.y == 2, 0, side.y), side.rows)
    lonely = FoldData(data.classes, data.rr_names, {"train": no_v}, index, {}, {})
    _, _, states = train_members(config, lonely, None, torch.device("cpu"), progress=False)
    assert [s.fusion_beats for s in states] == [0, 0]
    plain = load_config(_smoke_pipeline(tmp_path), overrides)
    _, _, states = train_members(plain, data, None, torch.device("cpu"), progress=False)
    assert [s.fusion_beats for s in states] == [0, 0]


def test_the_training_prior_counts_the_fusion_beats_training_makes():
    side, patients = _fusion_side()  # N 50, V 17, F 3; patient a lends
    index = pd.DataFrame({"patient": patients, "rhythm": ""}, index=side.rows)
    data = FoldData(["N", "S", "V", "F"], [], {"train": side}, index, {}, {})
    sqrt = dataclasses.replace(CFG, class_weights="sqrt_inverse")
    plain = fold_prior(SimpleNamespace(train=sqrt, augment=AugmentConfig()), data)
    made = fold_prior(SimpleNamespace(train=sqrt, augment=AugmentConfig(fusion_share=2.0)), data)
    y = side.y.numpy()
    np.testing.assert_allclose(plain, training_prior(side.y, None, data.classes, sqrt))
    with_made = torch.from_numpy(np.concatenate([y, [3] * 6]))  # twice the 3 real F beats
    np.testing.assert_allclose(made, training_prior(with_made, None, data.classes, sqrt))
    assert made[3] > plain[3]
    inverse = dataclasses.replace(CFG, class_weights="inverse")
    even = fold_prior(SimpleNamespace(train=inverse, augment=AugmentConfig(fusion_share=2.0)), data)
    np.testing.assert_allclose(even[[0, 2, 3]], [1 / 3] * 3)  # no S beats: N, V, F even

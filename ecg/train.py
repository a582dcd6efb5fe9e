"""The fit loop: plain PyTorch, readable top to bottom.

Early stopping and learning-rate decay look only at the validation patients (drawn from the
training side); the test side is never loaded here. Without validation patients
(``split.val_fraction: 0``) every training patient trains, for the fixed ``train.epochs`` at a
constant learning rate, and the last weights are kept: the step count is then chosen beforehand,
on DS1's pooled validation curves (``benchmarks/refit_steps.py``).

A checkpoint is written after every epoch, so a killed run continues from its last completed
epoch with ``--resume``. Under ``torchrun`` the same loop runs as DistributedDataParallel: each
process takes its share of every epoch's batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ecg import __version__
from ecg.adversary import (
    PatientAdversary,
    WithAdversary,
    adversary_loss,
    patient_targets,
    reversal_factor,
)
from ecg.augment import (
    augment,
    fibrillation_rr,
    fusion_beats,
    fusion_lenders,
    with_fibrillation_rr,
    without_p_wave,
)
from ecg.config import AugmentConfig, PipelineConfig, TrainConfig, flatten, to_dict
from ecg.dataset import FoldData, Side, load_fold
from ecg.digests import sha256_file
from ecg.engine import StageContext
from ecg.errors import EcgError
from ecg.losses import make_loss
from ecg.metrics import confusion, from_confusion
from ecg.model import (
    BiLSTMClassifier,
    Ensemble,
    Normalizer,
    PackagedClassifier,
    build_model,
    pack,
)
from ecg.provenance import device_description, git_commit
from ecg.tracking import Tracker

log = logging.getLogger("ecg")


# ----------------------------------------------------------------------------- devices, seeds


def select_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise EcgError("--device cuda: no CUDA device is available to torch here")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    rank = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device("cuda", rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ----------------------------------------------------------------------------- normalisation


def fit_normalizer(train: Side, per_window: bool) -> Normalizer:
    x = train.x
    x_mean = x.mean(dim=(0, 1))
    x_std = x.std(dim=(0, 1)).clamp_min(1e-3)
    if train.rr is not None:
        rr_mean, rr_std = train.rr.mean(dim=0), train.rr.std(dim=0).clamp_min(1e-3)
    else:
        rr_mean, rr_std = torch.zeros(0), torch.ones(0)
    return Normalizer(x_mean, x_std, rr_mean, rr_std, per_window)


def class_weights(
    y: torch.Tensor, n_classes: int, how: str, power: float = 1.0, cap: float = 0.0
) -> torch.Tensor | None:
    """(total / count) ** exponent per class, at most ``cap`` times the most frequent class's
    (0: no ceiling), normalised to mean 1."""
    if how == "none":
        return None
    counts = torch.bincount(y, minlength=n_classes).double().clamp_min(1)
    exponent = {"inverse": 1.0, "sqrt_inverse": 0.5, "power": power}[how]
    weights = (counts.sum() / counts) ** exponent
    if cap:
        weights = weights.clamp_max(cap * weights.min())
    return (weights / weights.mean()).float()


def training_prior(
    y: torch.Tensor, groups: torch.Tensor | None, classes: list[str], cfg: TrainConfig
) -> np.ndarray:
    """The class prior the training loss implies: each class's share of the (sampled) training
    pieces times its weight. Under 1/n weights it is even across classes, whatever the counts;
    ``evaluate.adapt_priors`` needs it, as the prior the model's probabilities were made under.
    """
    n_classes = len(classes)
    labels = y if groups is None else groups
    class_of = torch.arange(n_classes)
    if groups is not None:  # the extra group (``weight_groups``) holds N beats
        class_of = torch.cat([class_of, torch.tensor([classes.index("N")])])
    mass = torch.bincount(labels, minlength=len(class_of)).double()
    if cfg.sampler == "balanced":
        # every class is drawn equally often; the groups of one class in their own proportion
        per_class = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, class_of, mass)
        mass = mass / per_class[class_of].clamp_min(1)
    weights = loss_weights(y, groups, n_classes, cfg)
    if weights is not None:
        mass = mass * weights.double()
    prior = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, class_of, mass)
    return (prior / prior.sum()).numpy()


def kept_weights(cfg: TrainConfig) -> str:
    """What a run without validation patients keeps, in words."""
    if cfg.average_epochs > 1:
        return f"the mean of the last {cfg.average_epochs} epochs' weights kept"
    return "the last kept"


def running_mean(
    mean: dict[str, torch.Tensor] | None, current: dict[str, torch.Tensor], n: int
) -> dict[str, torch.Tensor]:
    """The mean of ``n`` state dicts (``mean``) updated with one more, on the CPU.

    Written here rather than with ``torch.optim.swa_utils.AveragedModel`` because the mean has to
    live in ``FitState`` (it is checkpointed with it, so ``--resume`` continues it) and be a plain
    state dict. Integer entries (BatchNorm's batch counter) take the current value.
    """
    current = {k: v.detach().cpu() for k, v in current.items()}
    if mean is None or n == 0:
        return {k: v.clone() for k, v in current.items()}
    return {
        k: mean[k] + (v - mean[k]) / (n + 1) if v.is_floating_point() else v.clone()
        for k, v in current.items()
    }


def training_precision(precision: str, device: torch.device):
    """The context a training forward pass runs in: nothing for fp32, bf16 autocast for bf16.

    fp32 is the default everywhere: under bf16 autocast these small LSTMs trained 19-34 % slower
    on an H200, where kernel launches set the pace, but about 1.5 times faster on this project's
    CPU (AMD EPYC with avx512_bf16); ``benchmarks/train_speed.py --set train.precision=bf16``
    measures a machine."""
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise EcgError(
                f"train.precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 "
                "(it needs compute capability 8.0 or later); set train.precision: fp32"
            )
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def weight_groups(
    train: Side,
    index: pd.DataFrame,
    classes: list[str],
    rhythms: tuple[str, ...],
    warn: bool = True,
) -> torch.Tensor | None:
    """Each training piece's class index, except N beats in one of ``rhythms``, which form one
    more group (index ``len(classes)``) for the class weights; None without ``rhythms``.
    ``warn``: say so when no N beat is in them (once per training, not again for its prior)."""
    if not rhythms:
        return None
    if "rhythm" not in index.columns:
        raise EcgError(
            "train.weight_rhythms: the dataset has no reference rhythms "
            "(they come from MIT-BIH style .atr annotations, segment.r_peaks: reference)"
        )
    if "N" not in classes:
        raise EcgError(f"train.weight_rhythms: acts on N beats, and N is not among {classes}")
    in_rhythm = torch.from_numpy(index.loc[train.rows, "rhythm"].isin(rhythms).to_numpy(copy=True))
    groups = train.y.clone()
    groups[in_rhythm & (train.y == classes.index("N"))] = len(classes)
    if warn and not (groups == len(classes)).any():
        present = sorted(set(index.loc[train.rows, "rhythm"]) - {""})
        log.warning(
            "train.weight_rhythms: no training N beat is in %s (the training beats' rhythms: %s); "
            "the class weights are as without it",
            "/".join(rhythms),
            ", ".join(present) or "none annotated",
        )
    return groups


def draw_patients(patients: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Mask of the pieces of ``round(share * n)`` patients (at least one) drawn without
    replacement from the ``n`` in ``patients`` (one entry per piece)."""
    unique = np.unique(patients)
    n = max(1, round(share * len(unique)))
    drawn = np.random.default_rng(seed).choice(unique, size=n, replace=False)
    return np.isin(patients, drawn)


# ----------------------------------------------------------------------------- the loop


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_precision: float
    val_macro_recall: float
    val_macro_f1: float
    lr: float
    epoch_seconds: float
    train_beats_per_s: float
    adversary_loss: float = float("nan")
    """The patient adversary's cross-entropy on the epoch's N beats (``train.patient_adversary``;
    NaN, and left out of the history, without one): near log(patients) when the head does not
    find the patient, lower when it does."""


@dataclass
class FitState:
    """Everything a resumed run needs; saved after every epoch."""

    epoch: int = 0
    best_f1: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    best_weights: dict | None = None
    """The weights fit() returns with: the best validation epoch's, or without validation
    patients the running mean of the last ``train.average_epochs`` epochs' (None: the last)."""
    fusion_beats: int = 0
    """Synthetic F beats this member's training side held (``augment.fusion_share``), as made,
    not as asked for: none when no training patient had N and V beats to lend. Set by
    ``train_members`` for the report to count."""


def pieces_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    """One place for an epoch's length, which ``build_scheduler`` must know before the first
    epoch is drawn: ``samples_per_epoch`` pieces, or one pass over the training side when 0."""
    return cfg.samples_per_epoch or n_train


def epoch_order(
    train: Side,
    cfg: TrainConfig,
    generator: torch.Generator,
    patients: np.ndarray | None = None,
) -> torch.Tensor:
    """Indices of the pieces to visit this epoch: a shuffle, or a draw by ``draw_weights``."""
    n = pieces_per_epoch(cfg, len(train))
    if cfg.sampler == "shuffle" and not cfg.patient_balance:
        order = torch.randperm(len(train), generator=generator)
        if n > len(train):
            extra = torch.randint(len(train), (n - len(train),), generator=generator)
            order = torch.cat([order, extra])
        return order[:n]
    weights = draw_weights(train.y, patients, cfg)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def draw_weights(y: torch.Tensor, patients: np.ndarray | None, cfg: TrainConfig) -> torch.Tensor:
    """Each piece's chance of being drawn. A class gets its own share of the draws (under
    ``sampler: balanced`` an equal one), so class weights mean what they meant; within the class
    a patient's share goes as ``n ** (1 - patient_balance)``, ``n`` its pieces of that class.
    Why: 383 of DS1's 944 S beats are one patient's (209), and a model that learns S as 209's S
    beats meets other patients' S beats as strangers."""
    counts = torch.bincount(y).double()
    weights = torch.ones(len(y), dtype=torch.float64)
    if cfg.patient_balance:
        if patients is None or len(patients) != len(y):
            raise EcgError(
                "train.patient_balance: training needs each training piece's patient "
                f"({0 if patients is None else len(patients)} given for {len(y)} pieces)"
            )
        _, patient = np.unique(patients, return_inverse=True)
        cell = torch.from_numpy(patient.astype(np.int64)) * len(counts) + y
        weights = torch.bincount(cell).double()[cell] ** -cfg.patient_balance
    class_mass = torch.ones_like(counts) if cfg.sampler == "balanced" else counts
    in_class = torch.zeros_like(counts).index_add_(0, y, weights).clamp_min(1e-12)
    return (class_mass / in_class)[y] * weights


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    normalizer: Normalizer,
    side: Side,
    device: torch.device,
    batch_size: int = 1024,
) -> np.ndarray:
    """Class probabilities of every piece of a side, in order."""
    model.eval()
    chunks = []
    for start in range(0, len(side), batch_size):
        x = side.x[start : start + batch_size].to(device, non_blocking=True)
        rr = None if side.rr is None else side.rr[start : start + batch_size].to(device)
        x, rr = normalizer(x, rr)
        chunks.append(torch.softmax(model(x, rr), dim=1).cpu())
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)


def fit(
    model: BiLSTMClassifier,
    normalizer: Normalizer,
    train: Side,
    val: Side | None,
    classes: list[str],
    cfg: TrainConfig,
    device: torch.device,
    checkpoint: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochLog], None] | None = None,
    progress: bool = True,
    augmentation: AugmentConfig | None = None,
    fs: float = 128.0,
    paired: bool = False,
    groups: torch.Tensor | None = None,
    rr_pool: torch.Tensor | None = None,
    pre_s: float = 0.25,
    patients: np.ndarray | None = None,
) -> FitState:
    """Train ``model`` and return the state holding the weights of its best validation epoch;
    with no ``val``, train all ``cfg.epochs`` at a constant learning rate and keep the last.
    ``groups`` (from ``weight_groups``) weight the loss by group instead of by class;
    ``rr_pool`` (from ``fibrillation_rr``) gives some N beats a fibrillation context;
    ``pre_s``, the window's start before R, says where their P wave is (``augment.af_waveform``);
    ``patients``, each training piece's patient, is what ``train.patient_adversary`` hides."""
    rank, world = distributed()
    trained, targets_all = with_adversary(model, train, classes, cfg, patients)
    trained.to(device)
    normalizer.to(device)
    net: nn.Module = trained
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = training_loss(train.y, groups, len(classes), cfg, device)
    optimizer = build_optimizer(trained, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train), rank, world)
    state = FitState()
    generator = torch.Generator().manual_seed(cfg.seed)
    if resume and checkpoint is not None and checkpoint.exists():
        state = _load_checkpoint(checkpoint, trained, optimizer, scheduler, generator)
        log.info("train: resuming after epoch %d from %s", state.epoch, checkpoint)
    on_device = device.type == "cuda"
    x_all, y_all = train.x, train.y
    rr_all, groups_all = train.rr, groups
    fibrillation = rr_pool is not None and augmentation is not None
    if fibrillation:
        rr_pool, n_class = rr_pool.to(device), classes.index("N")
    if on_device:  # the whole side fits in device memory: one copy, no per-batch transfers
        x_all, y_all = x_all.to(device), y_all.to(device)
        rr_all = None if rr_all is None else rr_all.to(device)
        groups_all = None if groups_all is None else groups_all.to(device)
        targets_all = None if targets_all is None else targets_all.to(device)
    while state.epoch < cfg.epochs and (val is None or state.bad_epochs < cfg.patience):
        epoch = state.epoch + 1
        started = time.perf_counter()
        net.train()
        order = epoch_order(train, cfg, generator, patients)[rank::world]
        if on_device:
            order = order.to(device)
        batches = range(0, len(order), cfg.batch_size)
        steps_before = (epoch - 1) * len(batches)
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=None if (progress and rank == 0) else True,
        )
        total_loss, seen, adversary_total = 0.0, 0, 0.0
        for step, start in enumerate(bar, start=steps_before):
            idx = order[start : start + cfg.batch_size]
            x = x_all[idx].to(device, non_blocking=True)
            y = y_all[idx].to(device, non_blocking=True)
            rr = None if rr_all is None else rr_all[idx].to(device, non_blocking=True)
            group = None if groups_all is None else groups_all[idx].to(device, non_blocking=True)
            if augmentation is not None:
                x = augment(x, augmentation, fs, generator, paired)
            if fibrillation and rr is not None:
                share = augmentation.af_context
                rr, chosen = with_fibrillation_rr(rr, y == n_class, rr_pool, share, generator)
                if augmentation.af_waveform:
                    x = without_p_wave(x, chosen, fs, pre_s, generator, paired)
            target, factor = None, 0.0
            if targets_all is not None:
                target = targets_all[idx].to(device, non_blocking=True)
                factor = reversal_factor(step / (cfg.epochs * len(batches)), cfg.patient_adversary)
            loss, adversary = training_step(
                net, normalizer, loss_fn, optimizer, cfg, device, x, y, rr, group, target, factor
            )
            if cfg.lr_schedule == "cosine":
                scheduler.step()
            total_loss += loss.item() * len(idx)
            if adversary is not None:
                adversary_total += adversary.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
        bar.close()
        train_seconds = time.perf_counter() - started
        scores = validation_scores(model, normalizer, val, classes, device)
        entry = EpochLog(
            epoch=epoch,
            train_loss=total_loss / max(seen, 1),
            **scores,
            lr=optimizer.param_groups[0]["lr"],
            epoch_seconds=time.perf_counter() - started,
            train_beats_per_s=seen * world / max(train_seconds, 1e-9),
            adversary_loss=adversary_total / max(seen, 1) if targets_all is not None else math.nan,
        )
        state.epoch = epoch
        # adversary_loss only where there is an adversary: the history of a run without one
        # stays as it was (and NaN, unequal to itself, would not survive a checkpoint's compare)
        state.history.append(
            {
                k: v
                for k, v in vars(entry).items()
                if k != "adversary_loss" or targets_all is not None
            }
        )
        if val is None:  # nothing to select on: the last epoch is the one kept
            state.best_f1, state.best_epoch = float("nan"), epoch
            averaged = epoch - (cfg.epochs - cfg.average_epochs) - 1  # epochs in the mean so far
            if cfg.average_epochs > 1 and averaged >= 0:
                state.best_weights = running_mean(state.best_weights, model.state_dict(), averaged)
        else:
            f1 = 0.0 if math.isnan(entry.val_macro_f1) else entry.val_macro_f1
            if cfg.lr_schedule == "constant":
                scheduler.step(f1)
            if f1 > state.best_f1:
                state.best_f1, state.best_epoch, state.bad_epochs = f1, epoch, 0
                state.best_weights = {
                    k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                }
            else:
                state.bad_epochs += 1
        if rank == 0:
            validated = (
                ""
                if val is None
                else f", val loss {entry.val_loss:.4f}, val macro-F1 {entry.val_macro_f1:.4f}"
                + ("  best" if state.best_epoch == epoch else "")
            )
            log.info(
                "epoch %d: train loss %.4f%s (%.0f s, %.0f beats/s)",
                epoch,
                entry.train_loss,
                validated,
                entry.epoch_seconds,
                entry.train_beats_per_s,
            )
            if checkpoint is not None:
                _save_checkpoint(checkpoint, trained, optimizer, scheduler, generator, state)
            if on_epoch:
                on_epoch(entry)
    if val is not None and state.bad_epochs >= cfg.patience and rank == 0:
        log.info(
            "train: stopped early after epoch %d; kept epoch %d (val macro-F1 %.4f)",
            state.epoch,
            state.best_epoch,
            state.best_f1,
        )
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    return state


def validation_scores(
    model: nn.Module,
    normalizer: Normalizer,
    val: Side | None,
    classes: list[str],
    device: torch.device,
) -> dict[str, float]:
    """The ``val_*`` fields of an epoch's log; NaN where there are no validation pieces."""
    names = ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1")
    if val is None or len(val) == 0:
        return {f"val_{name}": float("nan") for name in names}
    proba = predict_proba(model, normalizer, val, device)
    scores = from_confusion(confusion(val.y.numpy(), proba.argmax(axis=1), len(classes)), classes)
    scores["loss"] = float(
        nn.functional.nll_loss(torch.log(torch.from_numpy(proba).clamp_min(1e-12)), val.y).item()
    )
    return {f"val_{name}": scores[name] for name in names}


def training_loss(
    y: torch.Tensor, groups: torch.Tensor | None, n_classes: int, cfg: TrainConfig, device
) -> nn.Module:
    """The loss ``cfg`` asks for, weighted by the training side's class (or group) counts."""
    weights = loss_weights(y, groups, n_classes, cfg)
    return make_loss(
        cfg.loss,
        cfg.focal_gamma,
        None if weights is None else weights.to(device),
        grouped=groups is not None,
        label_smoothing=cfg.label_smoothing,
    )


def loss_weights(
    y: torch.Tensor, groups: torch.Tensor | None, n_classes: int, cfg: TrainConfig
) -> torch.Tensor | None:
    """The weight of each class (or, with ``groups``, each group) in the training loss; the
    training prior (``training_prior``) is read off the same weights, so the two cannot drift."""
    return class_weights(
        y if groups is None else groups,
        n_classes + (groups is not None),
        cfg.class_weights,
        cfg.class_weight_power,
        cfg.weight_cap,
    )


def training_step(
    net: nn.Module,
    normalizer: Normalizer,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    device: torch.device,
    x: torch.Tensor,
    y: torch.Tensor,
    rr: torch.Tensor | None,
    group: torch.Tensor | None = None,
    patient: torch.Tensor | None = None,
    factor: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimiser step on one (augmented) batch; returns its class loss and, with a patient
    adversary (``net`` a ``WithAdversary``, ``patient`` its targets), the adversary's loss.
    Shared with ``benchmarks/train_speed.py`` so that the benchmark times the step training
    takes."""
    x, rr = normalizer(x, rr)
    adversary = None
    with training_precision(cfg.precision, device):
        if patient is None:
            logits = net(x, rr).float()
        else:
            logits, guesses = net(x, rr, factor)
            logits = logits.float()
    loss = loss_fn(logits, y) if group is None else loss_fn(logits, y, group)
    total = loss
    if patient is not None:
        adversary = adversary_loss(guesses, patient)
        total = loss + adversary
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if cfg.clip_grad_norm:
        nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad_norm)
    optimizer.step()
    return loss, adversary


def with_adversary(
    model: BiLSTMClassifier,
    train: Side,
    classes: list[str],
    cfg: TrainConfig,
    patients: np.ndarray | None,
) -> tuple[nn.Module, torch.Tensor | None]:
    """What ``fit`` trains: ``model``, or with ``train.patient_adversary`` the model and a patient
    head as one ``WithAdversary`` (the head is dropped after training); and the head's targets,
    each training piece's patient (``patient_targets``; None without a head)."""
    if not cfg.patient_adversary:
        return model, None
    if patients is None or len(patients) != len(train):
        raise EcgError(
            "train.patient_adversary: training needs each training piece's patient "
            f"({0 if patients is None else len(patients)} given for {len(train)} pieces)"
        )
    if "N" not in classes:
        raise EcgError(f"train.patient_adversary: acts on N beats, and N is not among {classes}")
    targets, n_patients = patient_targets(patients, train.y, classes.index("N"))
    if n_patients < 2:
        raise EcgError(
            f"train.patient_adversary: the training side holds {n_patients} patient; "
            "there is nothing to hide"
        )
    hidden = model.lstm.hidden_size
    return WithAdversary(model, PatientAdversary(2 * hidden, hidden, n_patients)), targets


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, n_train: int, rank: int, world: int
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The cosine schedule is stepped after every batch, so it needs the run's batch count up
    front: an epoch's pieces, this rank's share of them (as ``fit`` slices the order), in
    batches, times the epochs."""
    if cfg.lr_schedule == "cosine":
        share = len(range(pieces_per_epoch(cfg, n_train))[rank::world])
        batches = math.ceil(share / cfg.batch_size)
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(cfg.epochs * batches, 1)
        )
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience
    )


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


# ----------------------------------------------------------------------------- checkpoints


def _save_checkpoint(path, model, optimizer, scheduler, generator, state: FitState) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "state": {k: v for k, v in vars(state).items() if k != "best_weights"},
        "best_weights": state.best_weights,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path, model, optimizer, scheduler, generator) -> FitState:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    return FitState(**payload["state"], best_weights=payload["best_weights"])


# ----------------------------------------------------------------------------- the stage


def train_stage(ctx: StageContext) -> None:
    """One model per fold (one for de Chazal), each logged to MLflow with its history."""
    config = ctx.config
    cfg = config.train
    device = select_device(ctx.options.get("device") or cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world = distributed()
    split_meta = json.loads((ctx.inputs["split"] / "meta.json").read_text())
    folds = split_meta["folds"]
    uri = ctx.options.get("tracking_uri") or config.tracking_uri
    tracker = Tracker(uri, config.experiment) if rank == 0 else None
    tags = {
        "pipeline": config.name,
        "git_commit": git_commit(config.root),
        "ecg_version": __version__,
        "torch_version": torch.__version__,
        "device": device_description(device),
        "processes": str(world),
        "split_protocol": split_meta["protocol"],
        "raw_data_digest": sha256_file(ctx.inputs["download"] / "records.json"),
        "dataset_digest": sha256_file(ctx.inputs["preprocess"] / "index.parquet"),
    }
    parent = tracker.start(f"{config.name}", tags) if tracker else ""
    try:
        if tracker:
            tracker.log_params(parent, flatten(to_dict(config)))
            # What the report's data section needs, kept with the run so any past run renders.
            for stage, name, target in (
                ("split", "summary.csv", "split_summary.csv"),
                ("split", "meta.json", "split_meta.json"),
                ("preprocess", "records.csv", "records.csv"),
                ("preprocess", "meta.json", "preprocess_meta.json"),
            ):
                tracker.log_artifact_as(parent, ctx.inputs[stage] / name, f"data/{target}")
        fold_runs, model_uris = [], []
        for fold in range(folds):
            run_id = parent
            if tracker and folds > 1:
                run_id = tracker.start(
                    f"{config.name} fold {fold}", {**tags, "fold": str(fold)}, parent=parent
                )
            uri_of_model = _train_fold(ctx, fold, folds, device, tracker, run_id, parent)
            fold_runs.append(run_id)
            model_uris.append(uri_of_model)
            if tracker and folds > 1:
                tracker.finish(run_id)
        if tracker:
            tracker.finish(parent)
    except BaseException as exc:
        if tracker:
            tracker.fail(parent, exc)
        raise
    (ctx.out / "run.json").write_text(
        json.dumps(
            {
                "run_id": parent,
                "fold_runs": fold_runs,
                "model_uris": model_uris,
                "tracking_uri": uri,
                "experiment": config.experiment,
                "folds": folds,
                "device": tags["device"],
            },
            indent=1,
        )
    )


def _train_fold(ctx, fold, folds, device, tracker, run_id, parent) -> str:
    config = ctx.config
    cfg, mcfg = config.train, config.model
    data = load_fold(
        ctx.inputs["preprocess"],
        ctx.inputs["split"],
        config.split.protocol,
        fold,
        classes=cfg.classes,
        rr_names=mcfg.rr_features if mcfg.use_rr else None,
        sides=("train", "val"),
    )
    train, val = data.sides["train"], data.sides["val"]
    validated = config.split.val_fraction > 0
    if len(train) == 0 or (validated and len(val) == 0):
        raise EcgError(
            f"fold {fold}: {len(train)} training and {len(val)} validation pieces; "
            "both sides need some"
        )
    n_rr = len(data.rr_names)
    where = f" (fold {fold + 1}/{folds})" if folds > 1 else ""
    log.info(
        "train%s: %s training and %s, classes %s, on %s",
        where,
        f"{len(train):,}",
        f"{len(val):,} validation pieces"
        if validated
        else f"no validation pieces ({cfg.epochs} epochs at a constant rate, {kept_weights(cfg)})",
        "/".join(data.classes),
        device,
    )
    if tracker:
        summary = data.index.loc[train.rows, ["record", "patient", "label"]]
        tracker.log_dataset(
            run_id,
            summary.reset_index(drop=True),
            f"{config.name}-train",
            config.relative(ctx.inputs["preprocess"]),
            "training",
        )

    def on_epoch(member: int, entry: EpochLog) -> None:
        if tracker:
            prefix = f"member_{member}_" if member else ""
            values = {
                f"{prefix}{k}": v
                for k, v in vars(entry).items()
                if k != "epoch" and not (isinstance(v, float) and math.isnan(v))
            }
            tracker.log_metrics(run_id, values, step=entry.epoch)

    model, normalizer, states = train_members(
        config,
        data,
        val if validated else None,
        device,
        fold=fold,
        scratch=ctx.scratch / f"fold_{fold}",
        resume=bool(ctx.options.get("resume")),
        on_epoch=on_epoch,
        where=where,
    )
    state = states[0]
    if len(states) > 1 and validated:
        scores = validation_scores(model, normalizer, val, data.classes, torch.device("cpu"))
        state = dataclasses.replace(state, best_f1=scores["val_macro_f1"])
        log.info(
            "train%s: ensemble of %d, validation macro-F1 %.4f (members: %s)",
            where,
            len(states),
            state.best_f1,
            ", ".join(f"{s.best_f1:.4f}" for s in states),
        )
    out = ctx.out / f"fold_{fold}"
    out.mkdir()
    spec = model_spec(config, data, n_rr)
    torch.save(
        {
            "spec": spec,
            "classifier": model.state_dict(),
            "normalizer": normalizer.state_dict(),
            "best_epoch": state.best_epoch,
            "best_val_macro_f1": state.best_f1,
        },
        out / "model.pt",
    )
    pd.DataFrame(state.history).to_csv(out / "history.csv", index=False)
    # The curves a report draws, as (file, artifact name): one per ensemble member, so the
    # report shows how alike (or not) the members trained, and one per fold of a cross-validation.
    fold_name = [f"fold_{fold}"] if folds > 1 else []
    curves = []
    if len(states) > 1:
        for member, member_state in enumerate(states, start=1):
            path = out / f"history_member_{member}.csv"
            pd.DataFrame(member_state.history).to_csv(path, index=False)
            curves.append((path, "_".join([*fold_name, f"member_{member}"])))
    elif folds > 1:
        curves.append((out / "history.csv", fold_name[0]))
    if not tracker:
        return ""
    kept = {"best_epoch": state.best_epoch}
    if validated:
        kept["best_val_macro_f1"] = state.best_f1
    if config.augment.fusion_share:  # members on their own patients (ensemble_patients): the mean
        kept["fusion_beats"] = statistics.fmean(s.fusion_beats for s in states)
    tracker.log_metrics(run_id, kept)
    packaged = PackagedClassifier(model, normalizer, data.n_leads, n_rr).eval()
    example = pack(train.x[:4], None if train.rr is None else train.rr[:4]).numpy()
    started = time.perf_counter()
    model_uri = tracker.log_model(
        run_id, packaged, example, config.registered_model if folds == 1 else None, _requirements()
    )
    log.info(
        "train%s: model logged to MLflow in %.1f s (%s)",
        where,
        time.perf_counter() - started,
        model_uri,
    )
    tracker.log_artifact(run_id, out / "history.csv")
    # The checkpoint itself, so `ecg predict --model models:/...` can rebuild the model and its
    # preprocessing from tensors alone, without unpickling anything.
    tracker.log_artifact(run_id, out / "model.pt", "checkpoint")
    for path, name in curves:
        tracker.log_artifact_as(parent if folds > 1 else run_id, path, f"history/{name}.csv")
    return model_uri


def train_members(
    config: PipelineConfig,
    data: FoldData,
    val: Side | None,
    device: torch.device,
    *,
    fold: int = 0,
    scratch: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[int, EpochLog], None] | None = None,
    progress: bool = True,
    where: str = "",
) -> tuple[nn.Module, Normalizer, list[FitState]]:
    """The model of one fold, on the CPU: ``model.ensemble`` members trained on
    ``data.sides["train"]`` with seeds 1000 apart, behind one input normaliser.

    The stage and the benchmarks that compare training recipes both train through here, so a
    benchmark measures exactly what the pipeline would ship.
    """
    cfg, mcfg = config.train, config.model
    train = data.sides["train"]
    single = {**to_dict(mcfg), "ensemble": 1}
    normalizer = fit_normalizer(train, mcfg.input_norm == "window")
    groups = weight_groups(train, data.index, data.classes, cfg.weight_rhythms)
    if groups is not None:
        log.info(
            "train%s: %s N beats in %s weighted as a class of their own",
            where,
            f"{int((groups == len(data.classes)).sum()):,}",
            "/".join(cfg.weight_rhythms),
        )
    rr_pool = None
    if config.augment.af_context:
        if "N" not in data.classes:
            raise EcgError(
                f"augment.af_context: acts on N beats, and N is not among {data.classes}"
            )
        rr_pool = torch.from_numpy(
            fibrillation_rr(data.rr_names, config.augment.af_cv, config.segment, cfg.seed + fold)
        )
    augmentation = config.augment if config.augment.active or rr_pool is not None else None
    members, states = [], []
    train_patients = data.index.loc[train.rows, "patient"].to_numpy()
    for member in range(mcfg.ensemble):
        if mcfg.ensemble > 1:
            log.info("train%s: ensemble member %d of %d", where, member + 1, mcfg.ensemble)
        seed_everything(cfg.seed + fold + 1000 * member)
        model = build_model(data.n_leads, len(data.classes), len(data.rr_names), single)
        member_cfg = dataclasses.replace(cfg, seed=cfg.seed + 1000 * member)
        side, member_groups, patients = train, groups, train_patients
        if mcfg.ensemble_patients < 1:
            keep = draw_patients(patients, mcfg.ensemble_patients, cfg.seed + fold + 1000 * member)
            side, patients = train.take(keep), patients[keep]
            member_groups = None if groups is None else groups[torch.from_numpy(keep)]
            log.info(
                "train%s: member %d trains on %d of %d patients (not %s)",
                where,
                member + 1,
                len(np.unique(patients)),
                len(np.unique(train_patients)),
                " ".join(sorted(set(train_patients) - set(patients))),
            )
        made = 0
        if config.augment.fusion_share:
            real = len(side)
            side, member_groups, patients = with_fusion_beats(
                side,
                member_groups,
                patients,
                data.classes,
                config.augment.fusion_share,
                cfg.seed + fold + 1000 * member,
                where,
            )
            made = len(side) - real
        checkpoint = None
        if scratch is not None:
            checkpoint = scratch / (f"member_{member}" if member else "") / "last.pt"
        states.append(
            fit(
                model,
                normalizer,
                side,
                val,
                data.classes,
                member_cfg,
                device,
                checkpoint=checkpoint,
                resume=resume,
                on_epoch=None if on_epoch is None else functools.partial(on_epoch, member),
                progress=progress,
                augmentation=augmentation,
                fs=config.signal.fs,
                paired=config.segment.beat_template,
                groups=member_groups,
                rr_pool=rr_pool,
                pre_s=config.segment.pre_s,
                patients=patients,
            )
        )
        states[-1].fusion_beats = made
        members.append(model.cpu())
    normalizer.cpu()
    return (Ensemble(members) if len(members) > 1 else members[0]), normalizer, states


def with_fusion_beats(
    side: Side,
    groups: torch.Tensor | None,
    patients: np.ndarray,
    classes: list[str],
    share: float,
    seed: int,
    where: str = "",
) -> tuple[Side, torch.Tensor | None, np.ndarray]:
    """``side`` with ``share`` times its F beats more, made from its patients' own N and V beats
    (``ecg.augment.fusion_beats``), and ``groups`` and ``patients`` to match. A made piece has row
    -1: it is in no index. Under 1/n class weights F weighs as much in all as before, spread over
    real and made beats."""
    missing = sorted({"N", "V", "F"} - set(classes))
    if missing:
        raise EcgError(
            f"augment.fusion_share: mixes N and V beats into F beats, and {'/'.join(missing)} "
            f"is not among {classes}"
        )
    f = classes.index("F")
    count = fusion_count(side.y, patients, classes, share)
    x, rr, owners = fusion_beats(
        side.x, side.rr, side.y, patients, classes.index("N"), classes.index("V"), count, seed
    )
    log.info(
        "train%s: %s fusion beats made from the N and V beats of %d patients",
        where,
        f"{len(x):,}",
        len(np.unique(owners)),
    )
    if len(x) == 0:
        return side, groups, patients
    made = torch.full((len(x),), f, dtype=side.y.dtype)
    side = Side(
        torch.cat([side.x, x]),
        None if side.rr is None else torch.cat([side.rr, rr]),
        torch.cat([side.y, made]),
        np.concatenate([side.rows, np.full(len(x), -1, dtype=side.rows.dtype)]),
    )
    groups = None if groups is None else torch.cat([groups, made])
    return side, groups, np.concatenate([patients, owners])


def fusion_count(y: torch.Tensor, patients: np.ndarray, classes: list[str], share: float) -> int:
    """How many fusion beats ``with_fusion_beats`` makes for a side: ``share`` times its F beats,
    none when no patient has the N and V beats to lend."""
    n, v, f = (classes.index(c) for c in ("N", "V", "F"))
    if not fusion_lenders(patients, y.numpy(), n, v):
        return 0
    return round(share * int((y == f).sum()))


def fold_prior(config: PipelineConfig, data: FoldData) -> np.ndarray:
    """``training_prior`` of a fold's training side under the configuration's weights, the F
    beats training makes (``augment.fusion_share``) counted with the real ones."""
    train = data.sides["train"]
    rhythms = config.train.weight_rhythms
    groups = weight_groups(train, data.index, data.classes, rhythms, warn=False)
    y, share, made = train.y, config.augment.fusion_share, 0
    if share and {"N", "V", "F"} <= set(data.classes):
        patients = data.index.loc[train.rows, "patient"].to_numpy()
        made = fusion_count(y, patients, data.classes, share)
    if made:
        f = torch.full((made,), data.classes.index("F"), dtype=y.dtype)
        y = torch.cat([y, f])
        groups = None if groups is None else torch.cat([groups, f])
    return training_prior(y, groups, data.classes, config.train)


def model_spec(config, data, n_rr: int) -> dict:
    """Everything needed to rebuild the model and prepare its input, stored beside the weights."""
    return {
        "n_leads": data.n_leads,
        "n_classes": len(data.classes),
        "n_rr": n_rr,
        "classes": list(data.classes),
        "rr_features": list(data.rr_names),
        "model": to_dict(config.model),
        "signal": to_dict(config.signal),
        "segment": to_dict(config.segment),
        "window_samples": int(data.meta["window_samples"]),
        "train_prior": fold_prior(config, data).tolist(),
        "database": config.download.database,
    }


def load_classifier(path: Path) -> tuple[nn.Module, Normalizer, dict]:
    """Rebuild a trained model from ``model.pt`` (never unpickled: ``weights_only=True``)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    spec = payload["spec"]
    m = spec["model"]
    model = build_model(spec["n_leads"], spec["n_classes"], spec["n_rr"], m)
    model.load_state_dict(payload["classifier"])
    n_rr = spec["n_rr"]
    normalizer = Normalizer(
        torch.zeros(spec["n_leads"]),
        torch.ones(spec["n_leads"]),
        torch.zeros(n_rr),
        torch.ones(n_rr),
        m["input_norm"] == "window",
    )
    normalizer.load_state_dict(payload["normalizer"])
    return model.eval(), normalizer.eval(), spec


def _requirements() -> list[str]:
    """Pinned from what is installed; torch's local label (+cpu) is dropped so the pin also
    matches a CUDA build of the same release."""
    pins = [f"torch=={torch.__version__.split('+')[0]}"]
    for package in ("numpy", "mlflow"):
        pins.append(f"{package}=={version(package)}")
    return pins

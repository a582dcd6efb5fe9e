"""Random perturbations of training beats: what a recording adds that a clean database lacks.

Applied to training batches only, in mV before normalisation, with the fit loop's own generator so
that a run repeats itself. When the input holds a beat-minus-template channel for each lead, both
channels of a lead get the same perturbation, as they would from a noisy recording; template
scaling (the typical beat's size drifting) and then template dropout act on the second channel
first, so a beat passed off as typical still carries the noise.
"""

from __future__ import annotations

import numpy as np
import torch

from ecg import segment
from ecg.config import AugmentConfig, SegmentConfig
from ecg.errors import EcgError


def augment(
    x: torch.Tensor, cfg: AugmentConfig, fs: float, generator: torch.Generator, paired: bool = False
) -> torch.Tensor:
    """x: (batch, time, channels) in mV -> a perturbed copy."""
    if not cfg.active:
        return x
    batch, length, channels = x.shape
    leads = channels // 2 if paired else channels

    def draw(*shape):
        return torch.rand(*shape, generator=generator).to(x.device)

    y = x.clone()
    if cfg.template_scale and paired:
        # beat - s * template, the template being beat - difference
        s = 1 + cfg.template_scale * (2 * draw(batch, 1, 1) - 1)
        y[..., leads:] = (1 - s) * x[..., :leads] + s * x[..., leads:]
    if cfg.template_dropout and paired:
        typical = draw(batch) < cfg.template_dropout
        y[typical, :, leads:] = 0.0
    if cfg.scale:
        y = y * (1 + cfg.scale * (2 * draw(batch, 1, 1) - 1))
    extra = torch.zeros(batch, length, leads, device=x.device)
    if cfg.noise_mv:
        sigma = cfg.noise_mv * draw(batch, 1, 1)
        noise = torch.randn(batch, length, leads, generator=generator).to(x.device)
        if cfg.noise_band_hz is not None:
            noise = band_limited(noise, fs, cfg.noise_band_hz)
        extra += sigma * noise
    if cfg.baseline_mv:
        t = torch.linspace(-1, 1, length, device=x.device)[None, :, None]
        offset = cfg.baseline_mv * (2 * draw(batch, 1, leads) - 1)
        slope = cfg.baseline_mv * (2 * draw(batch, 1, leads) - 1)
        extra += offset + slope * t
    y[..., :leads] += extra
    if paired:
        y[..., leads:] += extra
    if cfg.shift_s:
        most = max(1, round(cfg.shift_s * fs))
        shifts = torch.randint(-most, most + 1, (batch,), generator=generator)
        index = (torch.arange(length)[None, :] - shifts[:, None]) % length
        y = torch.gather(y, 1, index.to(x.device)[:, :, None].expand(-1, -1, channels))
    return y


def band_limited(noise: torch.Tensor, fs: float, band_hz: tuple[float, ...]) -> torch.Tensor:
    """White noise (batch, time, channels) -> the same noise with only the band kept, rescaled to
    unit standard deviation so that ``noise_mv`` means the same thing for any band.

    An FFT mask rather than a scipy filter: it runs on the batch where it lies (GPU included),
    and a window of a second has no edge for a filter's transient to spoil.
    """
    length = noise.shape[1]
    spectrum = torch.fft.rfft(noise, dim=1)
    frequencies = torch.fft.rfftfreq(length, d=1 / fs, device=noise.device)
    keep = (frequencies >= band_hz[0]) & (frequencies <= band_hz[1])
    if not bool(keep.any()):
        return torch.zeros_like(noise)
    shaped = torch.fft.irfft(spectrum * keep[None, :, None], n=length, dim=1)
    return shaped / shaped.std(dim=1, keepdim=True).clamp_min(1e-8)


def fibrillation_rr(
    names: list[str], cv: float, seg: SegmentConfig, seed: int, beats: int = 5000
) -> np.ndarray:
    """RR features (columns ``names``) of beats in a simulated stretch of atrial fibrillation.

    The intervals are independent draws around 1 s with coefficient of variation ``cv``, kept
    within 0.3-3 s; the features come from ``segment.rr_features`` itself, so they mean what the
    real ones mean. Beats within reach of the stretch's ends (where features borrow) are dropped.
    """
    if not names:
        raise EcgError("augment.af_context: the model takes no RR features to give a context to")
    timed = [name for name in names if name in segment.RR_IN_SECONDS]  # no rate to give them
    if timed:
        raise EcgError(
            f"augment.af_context: model.rr_features has {', '.join(timed)}, in seconds, which a "
            "simulated rhythm cannot give; name ratios only (e.g. pre_over_local, rr_irregularity)"
        )
    rng = np.random.default_rng(seed)
    intervals = np.clip(rng.normal(1.0, cv, beats), 0.3, 3.0)
    fs = 1000.0
    r = np.round(np.concatenate([[0.0], np.cumsum(intervals)]) * fs).astype(np.int64)
    features = segment.rr_features(r, fs, seg.rr_local_beats, seg.rr_average_s)
    reach = int(np.ceil(seg.rr_average_s / 2 / 0.3)) + 2 * seg.rr_local_beats + 1
    if len(r) <= 2 * reach:
        raise EcgError(f"augment.af_context: {beats} simulated beats are too few for the features")
    return np.stack([features[name][reach:-reach] for name in names], axis=1).astype(np.float32)


def with_fibrillation_rr(
    rr: torch.Tensor,
    eligible: torch.Tensor,
    pool: torch.Tensor,
    share: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of ``rr`` in which about ``share`` of the ``eligible`` rows (N beats) take a random
    row of ``pool`` (from ``fibrillation_rr``), and the mask of those rows."""
    chosen = eligible & (torch.rand(len(rr), generator=generator) < share).to(rr.device)
    picks = torch.randint(len(pool), (int(chosen.sum()),), generator=generator)
    out = rr.clone()
    out[chosen] = pool[picks].to(rr.device)
    return out, chosen


P_WAVE_END_S = 0.08
"""Before its R peak, where an N beat's P wave has ended: in MIT-BIH at 128 Hz the mean N beat in
sinus rhythm of DS1's records 101, 112, 115 and 122 is back at its baseline 0.094-0.125 s before
R, so from 0.08 s on the PR segment runs into the QRS (``benchmarks/quality.md``, the correction
after the twenty-sixth round: 100 and 222, named here first, are DS2 records)."""

F_WAVE_HZ = (5.0, 9.0)
F_WAVE_MV = 0.05
"""Fibrillatory waves: 300-540 a minute, up to 0.05 mV, small beside a P wave (0.10-0.24 mV in the
records above), as in the limb leads."""


def without_p_wave(
    x: torch.Tensor,
    chosen: torch.Tensor,
    fs: float,
    pre_s: float,
    generator: torch.Generator,
    paired: bool = False,
) -> torch.Tensor:
    """A copy of ``x`` (batch, time, channels, mV) in which the ``chosen`` beats have no P wave:
    from the window's start to ``P_WAVE_END_S`` before R the signal is a straight line between
    its two ends plus fibrillatory waves of a random rate, size and phase, faded in and out.

    With a beat-minus-template channel, the record's typical beat loses its P wave too (its line
    between the same two points): the beat then looks like a beat of a patient in fibrillation,
    whose typical beat has none, not like a beat whose P wave went missing.
    """
    cut = round((pre_s - P_WAVE_END_S) * fs)
    n = int(chosen.sum())
    if cut < 2 or n == 0:
        return x
    channels = x.shape[2]
    leads = channels // 2 if paired else channels

    def draw():
        return torch.rand(n, 1, 1, generator=generator).to(x.device)

    ramp = (torch.arange(cut, device=x.device, dtype=x.dtype) / cut)[None, :, None]

    def line(signal: torch.Tensor) -> torch.Tensor:
        return signal[:, :1] + (signal[:, cut : cut + 1] - signal[:, :1]) * ramp

    beats = x[chosen, : cut + 1, :leads]
    rate = F_WAVE_HZ[0] + (F_WAVE_HZ[1] - F_WAVE_HZ[0]) * draw()
    size, phase = F_WAVE_MV * draw(), 2 * torch.pi * draw()
    t = ramp * cut / fs
    waves = size * torch.sin(2 * torch.pi * rate * t + phase) * torch.sin(torch.pi * ramp)
    y = x.clone()
    new = line(beats) + waves
    y[chosen, :cut, :leads] = new
    if paired:
        typical = beats - x[chosen, : cut + 1, leads:]
        y[chosen, :cut, leads:] = new - line(typical)
    return y


FUSION_MIX = (0.3, 0.7)
"""The share of the N beat in a synthetic fusion beat, drawn uniformly: neither end, which AAMI
would label N or V."""
FUSION_FLOOR = 10
"""N and V beats a training patient needs to lend both to synthetic fusion beats."""


def fusion_lenders(patients: np.ndarray, labels: np.ndarray, n_class: int, v_class: int) -> list:
    """The patients with ``FUSION_FLOOR`` N and V beats or more, who lend to fusion beats."""
    patients = np.asarray(patients)
    return [
        p
        for p in np.unique(patients)
        if min(
            np.sum((patients == p) & (labels == n_class)),
            np.sum((patients == p) & (labels == v_class)),
        )
        >= FUSION_FLOOR
    ]


def fusion_beats(
    x: torch.Tensor,
    rr: torch.Tensor | None,
    y: torch.Tensor,
    patients: np.ndarray,
    n_class: int,
    v_class: int,
    count: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
    """``count`` synthetic fusion beats: windows, RR features (or None) and patients.

    A fusion beat is one ventricular depolarisation that starts both from the normal conduction
    and from a ventricular focus, so its shape lies between the patient's own N and V beats, and
    it comes on time (the sinus impulse has to arrive for the two to meet). Each is a random N and
    V beat of one patient, both centred on their R peak, mixed ``a * N + (1 - a) * V`` with ``a``
    in ``FUSION_MIX``; a beat-minus-template channel mixes to exactly the mixed beat minus the
    same mix of the two beats' templates (one template when it is the record's). Its RR
    features are the N beat's. Patients with ``FUSION_FLOOR`` N and V beats or more share
    ``count`` as evenly as it divides; none: nothing is made.
    """
    patients = np.asarray(patients)
    labels = y.numpy()
    lenders = fusion_lenders(patients, labels, n_class, v_class)
    empty = (x[:0], None if rr is None else rr[:0], patients[:0])
    if not lenders or count <= 0:
        return empty
    rng = np.random.default_rng(seed)
    shares = np.full(len(lenders), count // len(lenders))
    shares[: count % len(lenders)] += 1
    n_rows, v_rows, owners = [], [], []
    for patient, k in zip(lenders, shares, strict=True):
        own = patients == patient
        n_rows.append(rng.choice(np.flatnonzero(own & (labels == n_class)), k))
        v_rows.append(rng.choice(np.flatnonzero(own & (labels == v_class)), k))
        owners.append(np.full(k, patient, dtype=patients.dtype))
    n_at = torch.from_numpy(np.concatenate(n_rows))
    v_at = torch.from_numpy(np.concatenate(v_rows))
    a = torch.from_numpy(rng.uniform(*FUSION_MIX, size=len(n_at))).to(x.dtype)[:, None, None]
    mixed = a * x[n_at] + (1 - a) * x[v_at]
    return mixed, None if rr is None else rr[n_at].clone(), np.concatenate(owners)

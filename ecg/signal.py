"""Signal processing as pure functions: ``(x, fs) -> (y, fs_new)``, time along axis 0.

No I/O and no state, so each can be tested on a sine. Filters are zero-phase (forward and
backward) because a phase shift would move R peaks away from their reference annotations, and
every later number depends on those positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import ndimage
from scipy import signal as sps


def bandpass(
    x: np.ndarray, fs: float, low_hz: float = 0.5, high_hz: float = 40.0, order: int = 2
) -> tuple[np.ndarray, float]:
    """Zero-phase Butterworth band-pass; run forward and back, so its effective order doubles."""
    if not 0 < low_hz < high_hz < fs / 2:
        raise ValueError(f"band {low_hz}-{high_hz} Hz does not fit below Nyquist ({fs / 2} Hz)")
    sos = sps.butter(order, [low_hz, high_hz], btype="bandpass", fs=fs, output="sos")
    return sps.sosfiltfilt(sos, x, axis=0).astype(x.dtype, copy=False), fs


def notch(x: np.ndarray, fs: float, freq_hz: float = 60.0, quality: float = 30.0):
    """Zero-phase notch at the mains frequency (50 Hz in Europe, 60 Hz in the Americas)."""
    if not 0 < freq_hz < fs / 2:
        raise ValueError(f"notch at {freq_hz} Hz is not below Nyquist ({fs / 2} Hz)")
    b, a = sps.iirnotch(freq_hz, quality, fs=fs)
    return sps.filtfilt(b, a, x, axis=0).astype(x.dtype, copy=False), fs


def remove_baseline(x: np.ndarray, fs: float, windows_s: tuple[float, float] = (0.2, 0.6)):
    """Subtract the baseline estimated by two median filters (200 ms then 600 ms).

    The classic estimate of de Chazal et al. (2004): the first median removes QRS complexes and P
    waves, the second T waves, leaving the wander. It follows steps that a 0.5 Hz high-pass lets
    through; it is costlier, so run it after downsampling.
    """
    baseline = x
    for seconds in windows_s:
        size = max(1, int(round(seconds * fs)) | 1)  # odd, so the filter is centred
        baseline = ndimage.median_filter(
            baseline, size=(size,) + (1,) * (x.ndim - 1), mode="nearest"
        )
    return (x - baseline).astype(x.dtype, copy=False), fs


def resample(x: np.ndarray, fs: float, fs_new: float) -> tuple[np.ndarray, float]:
    """Anti-aliased polyphase resampling (``scipy.signal.resample_poly``) to ``fs_new``."""
    ratio = Fraction(fs_new / fs).limit_denominator(1000)
    if ratio == 1:
        return x, fs
    y = sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=0)
    return y.astype(x.dtype, copy=False), fs * ratio.numerator / ratio.denominator


def rescale_samples(samples: np.ndarray, fs: float, fs_new: float) -> np.ndarray:
    """Sample indices at ``fs`` -> indices at ``fs_new``, rounded (truncation would bias them
    up to one sample early)."""
    return np.rint(np.asarray(samples, dtype=np.float64) * (fs_new / fs)).astype(np.int64)


# ------------------------------------------------------------------------------ lead quality


@dataclass(frozen=True)
class LeadIssue:
    lead: str
    problem: str
    """``nan``, ``flat`` or ``clipped``."""
    fraction: float
    """Share of the lead's samples affected."""
    action: str
    """``repaired``, ``dropped`` or ``kept``: what was done about it."""

    def describe(self) -> str:
        return f"{self.lead}: {self.problem} ({self.fraction:.1%} of samples), {self.action}"


def check_leads(
    x: np.ndarray,
    lead_names: list[str],
    max_nan_fraction: float = 0.05,
    clip_fraction: float = 0.005,
) -> tuple[np.ndarray, list[LeadIssue], list[int]]:
    """Repair short NaN gaps, drop leads that are mostly NaN or flat, flag clipped leads.

    Returns the repaired signal, what was found, and the indices of the leads that remain usable.
    Nothing is changed silently: every repair and every drop is in the returned issues.
    """
    y = x.copy()
    issues: list[LeadIssue] = []
    usable = []
    n = len(x)
    for i, name in enumerate(lead_names):
        lead = y[:, i]
        missing = np.isnan(lead)
        nan_fraction = float(missing.mean()) if n else 1.0
        if nan_fraction > max_nan_fraction or nan_fraction == 1.0:
            issues.append(LeadIssue(name, "nan", nan_fraction, "dropped"))
            continue
        if nan_fraction > 0:
            good = np.flatnonzero(~missing)
            lead[missing] = np.interp(np.flatnonzero(missing), good, lead[good])
            issues.append(LeadIssue(name, "nan", nan_fraction, "repaired"))
        if n == 0 or float(np.ptp(lead)) == 0.0:
            issues.append(LeadIssue(name, "flat", 1.0, "dropped"))
            continue
        at_rails = _clipped_fraction(lead)
        if at_rails > clip_fraction:
            issues.append(LeadIssue(name, "clipped", at_rails, "kept"))
        usable.append(i)
    return y, issues, usable


def _clipped_fraction(lead: np.ndarray, min_run: int = 4) -> float:
    """Share of samples in flat runs of ``min_run`` or more at the lead's minimum or maximum:
    the signature of an amplifier or converter at its limit (a sine touching its peak is not)."""
    at_rail = (lead == lead.min()) | (lead == lead.max())
    if not at_rail.any():
        return 0.0
    edges = np.diff(np.concatenate([[0], at_rail.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = stops - starts
    return float(lengths[lengths >= min_run].sum() / len(lead))

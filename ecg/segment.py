"""Cut signals into fixed-length pieces: windows around beats, or sliding windows.

Fixed lengths let batches go to the BiLSTM without padding or packing (measured on CPU: packed
variable-length sequences cost far more than they save). A beat whose window would reach past
either end of its record is dropped and counted, never padded.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import median_filter

RR_IN_SECONDS = ("pre_rr", "post_rr", "local_rr", "average_rr")
"""The RR features with a unit; the others are ratios, free of the patient's heart rate."""
RR_FEATURES = (
    *RR_IN_SECONDS,
    "pre_over_local", "post_over_local", "pre_over_average", "post_over_average",
    "local_over_average",
)  # fmt: skip
# Stored beside RR_FEATURES but used only where a model names it: an empty
# ``model.rr_features`` means RR_FEATURES, so adding here leaves older configurations as they were.
RR_CONTEXT_BEATS = 4
"""RR intervals on either side of a beat that ``preK_over_average`` and ``postK_over_average``
cover (K = 2 .. RR_CONTEXT_BEATS; K = 1 are ``pre_over_average`` and ``post_over_average``)."""
RR_OPTIONAL = (
    "rr_irregularity",
    *(f"pre{k}_over_average" for k in range(2, RR_CONTEXT_BEATS + 1)),
    *(f"post{k}_over_average" for k in range(2, RR_CONTEXT_BEATS + 1)),
)


def beat_windows(
    x: np.ndarray, centers: np.ndarray, before: int, after: int
) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``x[c - before : c + after]`` around each centre, shape (beats, time, leads).

    Returns the windows of the beats that fit, and the boolean mask of those beats.
    """
    centers = np.asarray(centers, dtype=np.int64)
    keep = (centers - before >= 0) & (centers + after <= len(x))
    offsets = np.arange(-before, after)
    index = centers[keep, None] + offsets[None, :]
    return x[index], keep


def scaled_by_template(windows: np.ndarray) -> np.ndarray:
    """(beats, time, leads): each lead over the peak-to-peak amplitude of the record's median beat.

    A patient's QRS can be several times taller or smaller than another's (electrode placement,
    body build, the recorder's gain) with nothing wrong with either; over this patient's typical
    beat, a beat's size says how it compares with the patient's own beats, the way the RR ratios
    do for timing. The median needs no labels. A flat lead (span 0) is left as it is.
    """
    if len(windows) == 0:
        return windows
    template = np.median(windows, axis=0)
    span = template.max(axis=0) - template.min(axis=0)
    return windows / np.where(span > 0, span, 1.0)


def with_template_difference(
    windows: np.ndarray,
    times_s: np.ndarray | None = None,
    span_s: float = 0.0,
    core: float = 1.0,
) -> np.ndarray:
    """(beats, time, leads) -> (beats, time, 2 x leads): each lead, then the lead minus a median
    beat (the patient's typical morphology).

    ``span_s`` 0: the record's median beat. Otherwise each beat's own template, the median of the
    beats whose times (``times_s``, ascending, one per window) lie within +-``span_s`` / 2 of its
    own (fewer near the record's ends): a beat's shape drifts within a recording (posture,
    electrode contact, heart rate, intermittent conduction), and against the beats of the same few
    minutes an N beat differs little. An ectopic beat keeps its difference only where its kind
    is rare: where ectopic beats are frequent the local median moves towards them, which is why
    it is not the default (thirty-first round of ``benchmarks/quality.md``).

    ``core`` below 1 (with a span): only that fraction of the span's beats, those nearest (root
    mean square) to the record's median beat, make the local median. Frequent ectopic beats are
    the far ones and stay out of it; drifting N beats are still the nearest of their own
    stretch (thirty-fifth round).
    """
    if len(windows) == 0:
        return np.concatenate([windows, windows], axis=2)
    if span_s <= 0:
        template = np.median(windows, axis=0, keepdims=True)
        return np.concatenate([windows, windows - template], axis=2)
    if times_s is None or len(times_s) != len(windows):
        raise ValueError("a local template needs one time per window (times_s)")
    if not 0 < core <= 1:
        raise ValueError(f"core: a fraction in (0, 1], not {core}")
    times_s = np.asarray(times_s, dtype=np.float64)
    starts = np.searchsorted(times_s, times_s - span_s / 2, side="left")
    ends = np.searchsorted(times_s, times_s + span_s / 2, side="right")
    distance = None
    if core < 1:
        record = np.median(windows, axis=0, keepdims=True)
        distance = np.sqrt(np.mean((windows - record) ** 2, axis=(1, 2)))
    # scipy's median filters take a fixed number of samples; this one takes whole beats over a
    # fixed time, so a varying number of them: one median per beat.
    template = np.empty_like(windows)
    for j, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        near = windows[lo:hi]
        if distance is not None:
            count = max(1, math.ceil(core * (hi - lo)))
            near = near[np.argpartition(distance[lo:hi], count - 1)[:count]]
        template[j] = np.median(near, axis=0)
    return np.concatenate([windows, windows - template], axis=2)


def sliding_windows(x: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``length`` samples every ``stride`` samples; a short tail is dropped.

    Returns the windows (windows, time, leads) and their start samples.
    """
    if len(x) < length:
        return np.empty((0, length, x.shape[1]), dtype=x.dtype), np.empty(0, dtype=np.int64)
    starts = np.arange(0, len(x) - length + 1, stride, dtype=np.int64)
    index = starts[:, None] + np.arange(length)[None, :]
    return x[index], starts


def rr_features(
    r_samples: np.ndarray, fs: float, local_beats: int = 10, average_s: float = 300.0
) -> dict[str, np.ndarray]:
    """RR-interval features of each beat, in seconds and as ratios.

    Across patients an S beat looks normal; what gives it away is that it comes early for *this*
    patient's rhythm. So besides the previous and next RR (``pre_rr``, ``post_rr``) we keep the
    mean of the last ``local_beats`` RR intervals (``local_rr``) and the mean RR over a window of
    ``average_s`` seconds centred on the beat (``average_rr``, as de Chazal et al. 2004 do over
    +-5 min), and the ratios that normalise a beat's timing by the patient's own rhythm.

    ``rr_irregularity`` (optional, see RR_OPTIONAL) tells an irregular rhythm from a regular one
    with ectopic beats: in atrial fibrillation most beats come "early" by the ratios above, and
    only their context says that early is this rhythm's normal. It is the median absolute
    difference between successive RR intervals over the ``2 * local_beats + 1`` beats centred on
    the beat, divided by ``local_rr``. The median ignores an isolated premature beat (it makes two
    large differences among twenty-one) and follows a rhythm that is irregular throughout.

    The context features (optional) keep the pattern that one number of irregularity averages
    away: ``preK_over_average`` is the RR interval K beats back (``pre2`` ends at the previous
    beat) and ``postK_over_average`` the one K beats ahead, each over the beat's ``average_rr``.
    A premature beat in a regular rhythm is short-long between neighbours near 1; in atrial
    fibrillation the neighbours are as irregular as the beat. Beats near either end of the record
    borrow the nearest interval that exists.

    The first beat has no previous RR and the last no next RR: each borrows the other.
    """
    r = np.asarray(r_samples, dtype=np.float64) / fs
    n = len(r)
    if n < 2:
        nan = np.full(n, np.nan)
        return {name: nan.copy() for name in (*RR_FEATURES, *RR_OPTIONAL)}
    rr = np.diff(r)
    pre = np.concatenate([[rr[0]], rr])
    post = np.concatenate([rr, [rr[-1]]])
    cumulative = np.concatenate([[0.0], np.cumsum(pre)])
    first = np.maximum(np.arange(n) - local_beats + 1, 0)
    local = (cumulative[np.arange(n) + 1] - cumulative[first]) / (np.arange(n) + 1 - first)
    half = average_s / 2
    lo = np.searchsorted(r, r - half, side="left")
    hi = np.searchsorted(r, r + half, side="right")
    average = (cumulative[hi] - cumulative[lo]) / np.maximum(hi - lo, 1)
    successive = np.abs(np.diff(pre, prepend=pre[0]))
    typical_change = median_filter(successive, size=2 * local_beats + 1, mode="nearest")
    beat, ks = np.arange(n), range(2, RR_CONTEXT_BEATS + 1)
    context = {  # in RR_OPTIONAL's order: every pre, then every post
        **{f"pre{k}_over_average": pre[np.maximum(beat - k + 1, 0)] / average for k in ks},
        **{f"post{k}_over_average": post[np.minimum(beat + k - 1, n - 1)] / average for k in ks},
    }
    return {
        "pre_rr": pre,
        "post_rr": post,
        "local_rr": local,
        "average_rr": average,
        "pre_over_local": pre / local,
        "post_over_local": post / local,
        "pre_over_average": pre / average,
        "post_over_average": post / average,
        "local_over_average": local / average,
        "rr_irregularity": typical_change / local,
        **context,
    }

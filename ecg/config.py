"""Pipeline YAML -> typed, frozen dataclasses.

The YAML is parsed once, at the edge, into these dataclasses and passed down; nothing deeper reads
files or environment variables. Every error names the file, the dotted key and what was expected,
because a typo in a config should cost a user seconds, not a rerun of a 15-minute pipeline.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from ecg.errors import ConfigError

PHYSIONET_FILES_URL = "https://physionet.org/files/"
"""PhysioNet's file index, the same base URL wfdb uses (``wfdb.io.download.PN_INDEX_URL``)."""


def _check(condition: bool, key: str, expected: str) -> None:
    if not condition:
        raise _Invalid(key, expected)


class _Invalid(ValueError):
    def __init__(self, key: str, expected: str):
        super().__init__(f"{key}: {expected}")
        self.key = key
        self.expected = expected


@dataclass(frozen=True)
class DownloadConfig:
    """Where raw records come from and which of them a pipeline needs."""

    database: Literal["mitdb", "ptbdb"]
    version: str = "1.0.0"
    records: tuple[str, ...] = ()
    """Record subset (names as in the database's RECORDS file); empty means all."""
    source: str | None = None
    """A local folder with the database's files; when set, nothing is fetched from the network."""
    mirror: str = PHYSIONET_FILES_URL
    """Base URL of a server with PhysioNet's layout: ``<mirror>/<database>/<version>/<file>``."""
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        _check(bool(self.version.strip()), "version", "a non-empty version such as '1.0.0'")
        _check(self.connect_timeout_s > 0, "connect_timeout_s", "a positive number of seconds")
        _check(self.read_timeout_s > 0, "read_timeout_s", "a positive number of seconds")
        _check(self.retries >= 0, "retries", "zero or more retries")
        _check(self.backoff_s >= 0, "backoff_s", "zero or more seconds")
        _check(
            self.mirror.startswith(("http://", "https://")),
            "mirror",
            "an http:// or https:// URL",
        )


@dataclass(frozen=True)
class SignalConfig:
    """Filtering and resampling, applied to each record before it is cut into pieces."""

    leads: tuple[str, ...] = ("MLII",)
    """Lead names as in the headers (MIT-BIH: MLII, V1; PTB: i ii iii avr avl avf v1-v6); a
    lead may list alternatives, ``V1|V2|V4|V5``, the first a record has being read."""
    fs: float = 128.0
    """Target sampling rate in Hz; a beat at 128 Hz is about 90 samples."""
    bandpass_hz: tuple[float, ...] = (0.5, 40.0)
    filter_order: int = 2
    """Butterworth order; run forward and backward, the effective order is twice this."""
    notch_hz: float | None = None
    """Mains frequency to remove (50 or 60), or nothing."""
    baseline: Literal["none", "median"] = "none"
    """Extra baseline-wander removal after the band-pass (two median filters)."""
    max_nan_fraction: float = 0.05
    """A lead with more missing samples than this is dropped; fewer are interpolated."""
    workers: int = 2
    """Processes reading and filtering records in parallel."""

    def __post_init__(self) -> None:
        _check(len(self.leads) >= 1, "leads", "at least one lead name")
        _check(
            all(all(part.strip() for part in lead.split("|")) for lead in self.leads),
            "leads",
            "lead names, alternatives separated by | (V1|V2), none empty",
        )
        _check(self.fs > 0, "fs", "a positive sampling rate in Hz")
        _check(
            len(self.bandpass_hz) == 2 and 0 < self.bandpass_hz[0] < self.bandpass_hz[1],
            "bandpass_hz",
            "[low, high] with 0 < low < high",
        )
        _check(
            self.bandpass_hz[1] < self.fs / 2,
            "bandpass_hz",
            f"a high edge below half the target rate ({self.fs / 2:g} Hz), or the "
            "downsampled signal aliases",
        )
        _check(1 <= self.filter_order <= 8, "filter_order", "an order between 1 and 8")
        _check(
            self.notch_hz is None or self.notch_hz > 0,
            "notch_hz",
            "a mains frequency in Hz (50 or 60) or null",
        )
        _check(0 <= self.max_nan_fraction < 1, "max_nan_fraction", "a fraction in [0, 1)")
        _check(self.workers >= 1, "workers", "one or more processes")


RPeaks = Literal["reference", "xqrs", "gqrs"]
"""Where beats are centred: the reference annotations, or one of wfdb's detectors by name."""

DETECTORS: tuple[str, ...] = tuple(name for name in get_args(RPeaks) if name != "reference")
"""wfdb's R-peak detectors (``ecg.databases.wfdb_io.found_r_peaks``), named once here for the
config, ``ecg predict --detector`` and the benchmarks."""

PREDICT_DETECTOR = "gqrs"
"""The detector ``ecg predict`` uses when a recording has no beat annotations: on MIT-BIH it misses
and adds fewer beats than XQRS (``benchmarks/detectors.py``)."""


@dataclass(frozen=True)
class SegmentConfig:
    """How records become labelled pieces: beats around R peaks, or sliding windows."""

    task: Literal["aami", "mi_vs_healthy", "disease_vs_healthy"] = "aami"
    kind: Literal["beats", "windows"] = "beats"
    pre_s: float = 0.25
    """Beats: seconds kept before the R peak."""
    post_s: float = 0.45
    """Beats: seconds kept after the R peak."""
    r_peaks: RPeaks = "reference"
    """Beats: reference annotations (MIT-BIH .atr) or R peaks found by a wfdb detector."""
    detector_lead: str = "ii"
    """Lead the R-peak detector runs on."""
    rr_local_beats: int = 10
    rr_average_s: float = 300.0
    beat_template: bool = False
    """Beats: add, for each lead, the beat minus the record's median beat. Across patients what
    marks an ectopic beat is how it differs from this patient's usual beat (as the RR ratios do
    for timing); the median needs no labels."""
    template_s: float = 0.0
    """Beats, with ``beat_template``: 0 takes the record's median beat; otherwise each beat's
    template is the median of the beats within +-``template_s`` / 2 of it, so that the shape's
    drift within a recording is not taken for an ectopic beat. 300 lost 0.008 macro-F1 nested in
    DS1: fewer N beats called F, but where ectopic beats are frequent the local median moves
    towards them (``benchmarks/quality.md``, thirty-first round)."""
    template_core: float = 1.0
    """With ``template_s``: the fraction of the span's beats, those nearest to the record's
    median beat, whose median is the local template; below 1, frequent ectopic beats (the far
    ones) no longer pull it towards themselves. 0.5 with ``template_s`` 300 gained 0.0087
    macro-F1 nested in DS1 on one draw, and -0.0006 as the mean of three training seeds, so it
    stays off (``benchmarks/quality.md``, thirty-fifth and thirty-ninth rounds)."""
    scale_by_template: bool = False
    """Beats: divide each lead by the peak-to-peak amplitude of the record's median beat (before
    ``beat_template`` is taken), so that every patient's typical beat spans 1 whatever its size in
    mV. ``augment`` amplitudes (``noise_mv``, ``baseline_mv``) are then in those units. It lost
    0.049 macro-F1 nested in DS1 (``benchmarks/quality.md``, twenty-first round)."""
    window_s: float = 2.56
    """Windows: length in seconds."""
    stride_s: float = 2.56
    """Windows: step between window starts in seconds."""

    def __post_init__(self) -> None:
        _check(self.pre_s >= 0 and self.post_s > 0, "post_s", "pre_s >= 0 and post_s > 0")
        _check(self.rr_local_beats >= 1, "rr_local_beats", "one or more beats")
        _check(self.rr_average_s > 0, "rr_average_s", "a positive number of seconds")
        _check(self.template_s >= 0, "template_s", "0 (the whole record) or a positive span")
        _check(
            not self.template_s or self.beat_template,
            "template_s",
            "0 unless beat_template is true (there is no template to take locally)",
        )
        _check(0 < self.template_core <= 1, "template_core", "a fraction in (0, 1]")
        _check(
            self.template_core == 1 or self.template_s,
            "template_core",
            "1 unless template_s is set (the whole record's median beat takes every beat)",
        )
        _check(self.window_s > 0, "window_s", "a positive number of seconds")
        _check(self.stride_s > 0, "stride_s", "a positive number of seconds")
        _check(
            self.task != "aami" or (self.kind == "beats" and self.r_peaks == "reference"),
            "task",
            "aami labels come from reference beat annotations: kind beats, r_peaks reference",
        )


@dataclass(frozen=True)
class SplitConfig:
    """Which patients train, validate and test. Always by patient, never by beat or record."""

    protocol: Literal["dechazal", "dechazal-strict", "kfold"] = "dechazal"
    """dechazal: DS1 train / DS2 test (de Chazal 2004); dechazal-strict: without record 202,
    the same subject as 201 in DS1; kfold: stratified k-fold grouped by patient."""
    folds: int = 5
    val_fraction: float = 0.2
    """Share of the training patients held out for validation (early stopping, model selection).
    0: none; every training patient trains, for a fixed ``train.epochs`` at a constant learning
    rate, the last weights kept (choose that count on validation curves beforehand)."""
    exclude_records: tuple[str, ...] = ()
    """Records kept out of every side (e.g. 118 and 119 for the noise stress test, which reuses
    them)."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.folds >= 2, "folds", "two or more folds")
        _check(0 <= self.val_fraction < 1, "val_fraction", "a fraction in [0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    """The bidirectional LSTM many-to-one classifier."""

    hidden: int = 32
    layers: int = 2
    dropout: float = 0.2
    pooling: Literal["last", "mean", "attention"] = "last"
    """How the sequence of LSTM states becomes one vector: the final states of both directions,
    their mean over time, or an attention-weighted sum."""
    use_rr: bool = True
    """Join the RR-interval features to the pooled state before the classifier head."""
    rr_features: tuple[str, ...] = ()
    """Which RR features (names from the preprocess stage); empty means all."""
    ensemble: int = 1
    """Members trained from different random initialisations; their probabilities are averaged."""
    ensemble_patients: float = 1.0
    """Share of the training patients each member trains on, drawn anew for each member (bagging
    by patient); 1: all of them. Members trained on the same patients learn them the same way
    (five members scored what three did, ``benchmarks/quality.md``, seventh round); members that
    each miss a few patients can disagree where one patient is unlike the others. 0.8 was level
    with 1 nested in DS1 (``benchmarks/quality.md``, twenty-second round)."""
    downsample: Literal[1, 2, 4, 8] = 1
    """Shorten the sequence by this factor with strided convolutions before the LSTM."""
    input_norm: Literal["global", "window"] = "global"
    """global: standardise with the training set's mean and std; window: each window by its own."""

    def __post_init__(self) -> None:
        _check(self.hidden >= 1, "hidden", "a positive number of units")
        _check(self.layers >= 1, "layers", "one or more layers")
        _check(0 <= self.dropout < 1, "dropout", "a fraction in [0, 1)")
        _check(1 <= self.ensemble <= 20, "ensemble", "between 1 and 20 members")
        _check(0 < self.ensemble_patients <= 1, "ensemble_patients", "a share in (0, 1]")
        _check(
            self.ensemble_patients == 1 or self.ensemble > 1,
            "ensemble_patients",
            "an ensemble (model.ensemble 2 or more) to draw members' patients for",
        )


@dataclass(frozen=True)
class TrainConfig:
    """The fit loop. Model selection only ever looks at validation patients."""

    classes: tuple[str, ...] = ()
    """Classes to learn and evaluate; pieces of others are set aside (and counted). Empty: all."""
    epochs: int = 15
    batch_size: int = 256
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 0.003
    weight_decay: float = 0.0
    momentum: float = 0.9
    """SGD only."""
    class_weights: Literal["none", "inverse", "sqrt_inverse", "power"] = "sqrt_inverse"
    """Loss weights from the training class counts: (total / count) to the power 1 (inverse),
    0.5 (sqrt_inverse) or ``class_weight_power`` (power)."""
    class_weight_power: float = 0.75
    """The exponent with ``class_weights: power``; ignored otherwise."""
    weight_cap: float = 0.0
    """No class's loss weight above this many times the most frequent class's (0: no ceiling).
    Under 1/n weights DS1's F, in effect one patient's beats, weighs about 110 times N and the
    network calls new patients' N beats F. 50 (F held to S's level) was level with the default
    nested in DS1 (+0.0002): fewer beats called F, true and false alike (``benchmarks/quality.md``,
    twenty-eighth round)."""
    patient_adversary: float = 0.0
    """The weight of a patient adversary on N beats (``ecg/adversary.py``; Ganin and Lempitsky
    2015): a head learns which training patient an N beat came from and its gradient reaches the
    LSTM reversed, so N beats come to look alike whoever the patient. 0: none. 1 is their
    weight."""
    average_epochs: int = 1
    """Without validation patients: keep the mean of the weights after each of the last
    ``average_epochs`` epochs instead of the last epoch's (stochastic weight averaging, Izmailov
    et al. 2018, apt under the constant rate, ``lr_schedule: constant``). 1: the last epoch's
    weights. With validation patients it does nothing: early stopping keeps the best epoch."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16: the training forward passes under bfloat16 autocast (weights, loss and evaluation
    stay fp32). Faster on CPUs with bf16 units, slower on others and on an H200
    (``benchmarks/train_speed.py``); it changes the trained model, so it is a param."""
    weight_rhythms: tuple[str, ...] = ()
    """Reference rhythms (MIT-BIH names without the '(': AFIB, AFL, ...) whose N beats count as a
    class of their own when ``class_weights`` are computed. In atrial fibrillation most N beats
    come early, as S beats do, and they are few among the training patients' N beats; weighted
    as ordinary N beats they are outweighed by the S weight. Training only: the model never sees
    the rhythm, and the ``balanced`` sampler still draws by class."""
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    """focal: cross-entropy scaled by (1 - p)^focal_gamma, so well-classified beats count less."""
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    """Train against targets that give this share of the probability to all classes equally
    (Szegedy et al. 2016), so the model is never pushed towards certainty; a patient unlike the
    training patients should not be called with the confidence of one like them. Each beat's
    smoothed loss takes its class weight (``ecg/losses.py`` says why not torch's). 0.1 was level
    with 0 nested in DS1 (``benchmarks/quality.md``, twenty-first round)."""
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    """balanced: draw every class equally often (with replacement)."""
    patient_balance: float = 0.0
    """Within each class, draw patients more evenly (with replacement): a patient's share of the
    class's draws goes as ``n ** (1 - patient_balance)``, ``n`` its pieces of that class; 0: as
    many as it holds (a plain shuffle), 1: every patient with the class equally. Each class keeps
    its share, so class weights act as before (``ecg.train.draw_weights``). Nested in DS1, 0.5
    was +0.005 and 1 +0.003, both with the gain on the side that holds 208 out and level or behind
    on the other four (``benchmarks/quality.md``, seventieth and seventy-first rounds)."""
    samples_per_epoch: int = 0
    """Pieces drawn per epoch; 0 means as many as the training set holds."""
    clip_grad_norm: float = 1.0
    patience: int = 5
    """Early stopping: epochs without a better validation macro-F1 (none without validation
    patients, ``split.val_fraction: 0``: then every epoch runs and the last is kept)."""
    lr_patience: int = 2
    """Epochs without a better validation macro-F1 before the learning rate is multiplied by
    ``lr_factor``; without validation patients, or under ``lr_schedule: cosine``, nothing cuts it
    on a plateau."""
    lr_factor: float = 0.5
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """constant: the rate stays at ``lr`` (cut by ``lr_factor`` on validation plateaus, when there
    are validation patients). cosine: it falls from ``lr`` to zero along half a cosine over the
    run's ``epochs``, batch by batch (Loshchilov and Hutter 2017, without restarts), and no
    plateau cuts it; early stopping on validation patients still ends a run early. The weight
    average (``average_epochs``) then averages weights taken at ever smaller steps. Nested in DS1
    it was 0.018 behind the constant rate (0.020 without the average), nearly all of it F where
    208 is held out (``benchmarks/quality.md``, sixty-fourth round)."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when there is a GPU, else CPU (not a param: it changes speed, not the model)."""
    threads: int = 0
    """CPU threads for torch; 0 keeps torch's default."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", "one or more epochs")
        _check(self.batch_size >= 1, "batch_size", "a positive batch size")
        _check(self.lr > 0, "lr", "a positive learning rate")
        _check(self.samples_per_epoch >= 0, "samples_per_epoch", "zero or more")
        _check(self.patience >= 1, "patience", "one or more epochs")
        _check(self.focal_gamma >= 0, "focal_gamma", "zero (plain cross-entropy) or more")
        _check(0 <= self.label_smoothing < 1, "label_smoothing", "a share in [0, 1)")
        _check(self.class_weight_power > 0, "class_weight_power", "a positive exponent")
        _check(
            self.weight_cap == 0 or self.weight_cap >= 1,
            "weight_cap",
            "0 (no ceiling) or at least 1 (times the most frequent class's weight)",
        )
        _check(self.patient_adversary >= 0, "patient_adversary", "0 (none) or a positive weight")
        _check(
            0 <= self.patient_balance <= 1,
            "patient_balance",
            "an exponent in [0, 1]: 0 draws patients as they come, 1 evenly within each class",
        )
        _check(
            1 <= self.average_epochs <= self.epochs,
            "average_epochs",
            "between 1 (the last epoch) and train.epochs",
        )
        _check(
            not self.weight_rhythms or self.class_weights != "none",
            "weight_rhythms",
            "class weights to act on (class_weights is none)",
        )
        _check(0 < self.lr_factor < 1, "lr_factor", "a factor in (0, 1)")
        _check(self.clip_grad_norm >= 0, "clip_grad_norm", "zero (off) or a positive norm")


@dataclass(frozen=True)
class AugmentConfig:
    """Random perturbations of training beats (never of validation or test beats).

    Noise, baseline wander, scaling and shifts are off by default: on clean DS1 patients each
    cost macro-F1, alone and all together (nested, three seeds: ``benchmarks/quality.md``, rounds
    46 and 49-51). The README's noise stress says what they buy on noisy recordings."""

    noise_mv: float = 0.0
    """Noise with a standard deviation drawn per beat from [0, noise_mv] mV."""
    noise_band_hz: tuple[float, ...] | None = None
    """Unset: white noise. [low, high]: the noise keeps only that band, as electrode-motion noise
    does (most of its power below about 10 Hz, where it mimics wide QRS and T waves)."""
    baseline_mv: float = 0.0
    """A random offset and slope, each up to this many mV: baseline wander within a window."""
    scale: float = 0.0
    """Amplitude multiplied by a factor drawn from [1 - scale, 1 + scale]."""
    shift_s: float = 0.0
    """A circular time shift of up to this many seconds either way."""
    template_dropout: float = 0.0
    """Share of training beats whose beat-minus-template channels are set to zero, as if each were
    its record's typical beat (needs ``segment.beat_template``). Every DS1 record's typical beat
    is N, so without it "like the record's median beat" means N, which fails for a patient whose
    most common beat is not."""
    template_scale: float = 0.0
    """Each training beat's beat-minus-template channel taken against its record's typical beat
    times a factor drawn from [1 - template_scale, 1 + template_scale] (needs
    ``segment.beat_template``): a patient's typical beat drifts in size within a recording, and
    an N beat against a drifted template is still N. 0.2 was level with 0 nested in DS1
    (+0.0008), and the N beats called F stayed: their drift is of shape, not size
    (``benchmarks/quality.md``, thirty-third round)."""
    af_context: float = 0.0
    """Share of training N beats (drawn per batch) whose RR features are replaced by those of a
    beat in simulated atrial fibrillation: RR intervals drawn independently around their mean
    with a coefficient of variation ``af_cv``, through the same code as the real features. In
    fibrillation most N beats come early; DS1 has two such patients, so a model learns from
    them alone that an early beat in an irregular rhythm can be N. Ratio features only (the
    simulated rhythm has no rate of its own); useful with ``rr_irregularity`` among them. 0.1
    with it lost 0.017 nested in DS1 (``benchmarks/quality.md``, twenty-third round)."""
    af_cv: float = 0.2
    """Coefficient of variation of the simulated fibrillation's RR intervals (DS1's 201 and 203:
    ``rr_irregularity`` 0.21 and 0.29; independent intervals with CV 0.2 give about 0.19)."""
    af_waveform: bool = False
    """The beats given a fibrillation context (``af_context``) also lose their P wave, replaced by
    small fibrillatory waves (``ecg.augment.without_p_wave``): in fibrillation there is none, and
    an early beat with a P wave is what an S beat is. Needs ``af_context``. With the twenty-third
    round's settings it was level with the default nested in DS1 (-0.0015) and 0.015 ahead of the
    same context with the P wave kept (``benchmarks/quality.md``, twenty-fifth round)."""

    fusion_share: float = 0.0
    """Synthetic fusion (F) beats added to each member's training side, as a multiple of its real
    F beats (``ecg.augment.fusion_beats``): a random N and V beat of one training patient mixed,
    with the N beat's RR features. DS1's F beats are in effect one patient's (208), so without
    them the network learns what 208 looks like, not what fusion is. 0: none. 1 is the default
    for MIT-BIH: +0.018 nested in DS1, all of it from the held-out side that holds 208, where F's
    F1 rose from 0.00 to 0.45 (``benchmarks/quality.md``, thirtieth round)."""

    def __post_init__(self) -> None:
        _check(self.fusion_share >= 0, "fusion_share", "0 (none) or a positive multiple")
        _check(0 <= self.af_context < 1, "af_context", "a share in [0, 1)")
        _check(0 < self.af_cv < 1, "af_cv", "a coefficient of variation in (0, 1)")
        _check(
            not self.af_waveform or self.af_context > 0,
            "af_waveform",
            "false unless af_context gives some beats a fibrillation context to match",
        )
        for key in (
            "noise_mv", "baseline_mv", "scale", "shift_s", "template_dropout", "template_scale"
        ):  # fmt: skip
            _check(getattr(self, key) >= 0, key, "zero (off) or a positive amount")
        _check(self.scale < 1, "scale", "a fraction below 1")
        _check(self.template_scale < 1, "template_scale", "a fraction below 1")
        _check(self.template_dropout < 1, "template_dropout", "a share below 1")
        if self.noise_band_hz is not None:
            _check(
                len(self.noise_band_hz) == 2 and 0 <= self.noise_band_hz[0] < self.noise_band_hz[1],
                "noise_band_hz",
                "[low, high] in Hz with 0 <= low < high, or null for white noise",
            )

    @property
    def active(self) -> bool:
        return any(
            (
                self.noise_mv,
                self.baseline_mv,
                self.scale,
                self.shift_s,
                self.template_dropout,
                self.template_scale,
            )
        )


@dataclass(frozen=True)
class EvaluateConfig:
    """Test metrics, with confidence intervals from resampling records (patients), not beats."""

    bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    pool: Literal["mean", "majority"] = "mean"
    """PTB: how window predictions become one per record and per patient."""
    adapt_priors: Literal["none", "record"] = "none"
    """``record``: each test record's class priors estimated from its own beats, without labels,
    and its probabilities re-weighted to them before the arg-max (``ecg.priors``, Saerens et al.
    2002). Off by default: nested in DS1 it lost 0.108 macro-F1, because EM drives S's prior to
    zero in patients with a few percent of S beats and calls all of them N
    (``benchmarks/quality.md``, twenty-fourth round)."""
    prior_shrinkage: float = 0.0
    """With ``adapt_priors: record``, the weight of the training prior in each EM step's estimate
    (0: plain EM); no class's estimated prior falls below this times its training prior
    (``ecg.priors.adapt``). Nested in DS1, 0.5 was level with the default (-0.005; S no longer
    vanishes, but N's raised prior takes new patients' marginal S beats: ``benchmarks/quality.md``,
    twenty-sixth round)."""
    fibrillation_gate: float = 0.0
    """A beat whose ``rr_irregularity`` (``ecg.segment.rr_features``) is at least this cannot be
    called S: in atrial fibrillation there is no atrial premature beat to find
    (``ecg.decision.without_s_where_irregular``). 0: off. Nested in DS1, 0.1 lost 0.009: it
    removed nearly all false S beats in fibrillation, and the true S beats of a patient whose
    frequent atrial ectopy makes the rhythm irregular too (``benchmarks/quality.md``,
    twenty-seventh round)."""

    def __post_init__(self) -> None:
        _check(self.bootstrap >= 0, "bootstrap", "zero (no intervals) or more resamples")
        _check(0 < self.confidence < 1, "confidence", "a level in (0, 1), such as 0.95")
        _check(0 <= self.prior_shrinkage < 1, "prior_shrinkage", "a weight in [0, 1)")
        _check(
            self.fibrillation_gate >= 0,
            "fibrillation_gate",
            "0 (off) or the rr_irregularity from which S is ruled out, such as 0.1",
        )
        _check(
            self.prior_shrinkage == 0 or self.adapt_priors == "record",
            "prior_shrinkage",
            "0 unless adapt_priors is record (it shrinks the priors that option estimates)",
        )


@dataclass(frozen=True)
class ReportConfig:
    """The report rendered at the end of every run."""

    formats: tuple[Literal["html", "md"], ...] = ("html", "md")

    def __post_init__(self) -> None:
        _check(len(self.formats) >= 1, "formats", "html and/or md")


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs are recorded. The default is a SQLite store inside the project's data folder."""

    uri: str | None = None
    """An MLflow tracking URI; null means sqlite:///<data_dir>/mlflow.db."""
    experiment: str | None = None
    """null means the pipeline's name."""
    registered_model: str | None = None
    """Model registry name; null means ecg-<pipeline>."""


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline: a name, where its data lives, and one section per stage."""

    name: str
    download: DownloadConfig
    signal: SignalConfig = field(default_factory=SignalConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    description: str = ""
    data_dir: str = "data"
    """Relative paths are resolved against the project root (the parent of ``pipelines/``)."""
    root: Path = field(default=Path("."), metadata={"from_yaml": False})

    def __post_init__(self) -> None:
        mitdb = self.download.database == "mitdb"
        _check(
            (self.segment.task == "aami") == mitdb,
            "segment.task",
            "aami for mitdb; mi_vs_healthy or disease_vs_healthy for ptbdb",
        )
        _check(
            mitdb or self.split.protocol == "kfold",
            "split.protocol",
            "kfold: the de Chazal protocols are defined on MIT-BIH records",
        )
        _check(
            not self.augment.template_dropout or self.segment.beat_template,
            "augment.template_dropout",
            "0 unless segment.beat_template is true (there is no template channel to drop)",
        )
        _check(
            not self.augment.template_scale or self.segment.beat_template,
            "augment.template_scale",
            "0 unless segment.beat_template is true (there is no template channel to scale)",
        )

    @property
    def data_path(self) -> Path:
        return (self.root / self.data_dir).resolve()

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the project root unless absolute."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.root / p).resolve()

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.data_path / 'mlflow.db'}"

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def registered_model(self) -> str:
        return self.tracking.registered_model or f"ecg-{self.name}"

    def relative(self, path: Path) -> str:
        """How a path is shown and stored: relative to the project root when it is inside it."""
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())


# --------------------------------------------------------------------------- loading


def find_pipeline(name_or_path: str, search_from: Path | None = None) -> Path:
    """A pipeline is named (``mitdb`` -> ``pipelines/mitdb.yaml``) or given as a path to a YAML."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: no such pipeline file")
        return candidate.resolve()
    start = (search_from or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        for suffix in (".yaml", ".yml"):
            path = folder / "pipelines" / f"{name_or_path}{suffix}"
            if path.is_file():
                return path
    raise ConfigError(
        f"no pipeline named '{name_or_path}': looked for pipelines/{name_or_path}.yaml in "
        f"{start} and its parents; give a path with --config FILE"
    )


def project_root(config_path: Path) -> Path:
    """Paths in a pipeline are relative to the project, not to where the command was started."""
    config_path = config_path.resolve()
    if config_path.parent.name == "pipelines":
        return config_path.parent.parent
    return config_path.parent


def load_config(path: Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read a pipeline YAML, apply ``section.key=value`` overrides, and build the typed config."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    raw.setdefault("name", path.stem)
    for override in overrides:
        apply_override(raw, override, path)
    try:
        config = build(PipelineConfig, raw, "")
    except _Invalid as exc:
        raise ConfigError(f"{path}: {exc.key}: {exc.expected}") from None
    return dataclasses.replace(config, root=project_root(path))


def apply_override(raw: dict, override: str, path: Path) -> None:
    """``--set section.key=value``, the value read as YAML: ``128`` is an int, ``[a, b]`` a list."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {override}: expected section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{path}: --set {key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def to_dict(config: Any) -> Any:
    """The config as plain YAML-able data (the inverse of ``build``), for stamps and MLflow."""
    if dataclasses.is_dataclass(config):
        return {
            f.name: to_dict(getattr(config, f.name))
            for f in dataclasses.fields(config)
            if f.metadata.get("from_yaml", True)
        }
    if isinstance(config, tuple):
        return [to_dict(v) for v in config]
    return config


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: how params are named in stamps and in MLflow."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# --------------------------------------------------------------------------- typed building


def build(cls: type, data: Any, key: str) -> Any:
    """Build dataclass ``cls`` from YAML data, checking keys and types against its annotations."""
    where = key or "top level"
    if not isinstance(data, Mapping):
        raise _Invalid(where, f"expected a section (a mapping), got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("from_yaml", True)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        name = f"{key}.{unknown[0]}" if key else str(unknown[0])
        raise _Invalid(name, f"unknown key (expected one of: {', '.join(fields)})")
    hints = get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        dotted = f"{key}.{name}" if key else name
        if name in data:
            values[name] = _coerce(hints[name], data[name], dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _Invalid(dotted, "missing required key")
    try:
        return cls(**values)
    except _Invalid as exc:
        raise _Invalid(f"{key}.{exc.key}" if key else exc.key, exc.expected) from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except _Invalid as exc:
                errors.append(exc.expected)
        raise _Invalid(key, " or ".join(errors))
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise _Invalid(key, f"expected one of {allowed}, got {value!r}")
        return value
    if origin is tuple:
        item_hint = get_args(hint)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if value is None:
            value = []
        if not isinstance(value, list | tuple):
            raise _Invalid(key, f"expected a list, got {_describe(value)}")
        # Record names such as 100 are numbers in YAML but names to us.
        if item_hint is str:
            value = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return tuple(_coerce(item_hint, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise _Invalid(key, f"expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(key, f"expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(key, f"expected a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _Invalid(key, f"expected a string, got {_describe(value)}")
        return value
    if hint is typing.Any:
        return value
    raise TypeError(f"config field {key} has an unsupported type {hint!r}")


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())

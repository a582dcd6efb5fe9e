"""The stage graph of a pipeline: which functions run, in which order, reading what.

Every pipeline (mitdb, ptbdb, smoke) has the same stages; what differs is its config.
"""

from __future__ import annotations

from ecg.config import PipelineConfig
from ecg.engine import Engine, Stage

STAGES: tuple[Stage, ...] = (
    Stage(
        name="download",
        run="ecg.databases.download:download_stage",
        # Where the files come from (source, mirror, timeouts) is not a param: verified files
        # are the same files whichever way they arrived.
        params=("download.database", "download.version", "download.records"),
        code=("ecg.databases.catalog", "ecg.databases.wfdb_io"),
        help="fetch a database's records into the local cache and verify every file",
    ),
    Stage(
        name="preprocess",
        run="ecg.preprocess:preprocess_stage",
        # signal.workers changes how fast, not what: it is no param.
        params=(
            "download.database",
            "signal.leads",
            "signal.fs",
            "signal.bandpass_hz",
            "signal.filter_order",
            "signal.notch_hz",
            "signal.baseline",
            "signal.max_nan_fraction",
            "segment",
        ),
        upstream=("download",),
        code=(
            "ecg.signal",
            "ecg.segment",
            "ecg.labels",
            "ecg.databases.wfdb_io",
            "ecg.databases.subjects",
        ),
        help="filter, resample, cut beats or windows and label them",
    ),
    Stage(
        name="split",
        run="ecg.split:split_stage",
        params=("split",),
        upstream=("preprocess",),
        code=("ecg.databases.subjects",),
        help="assign patients to train, validation and test (or folds)",
    ),
    Stage(
        name="train",
        run="ecg.train:train_stage",
        # train.device and train.threads change speed, not the model: no params.
        params=(
            "model",
            "train.classes",
            "train.epochs",
            "train.batch_size",
            "train.optimizer",
            "train.lr",
            "train.weight_decay",
            "train.momentum",
            "train.class_weights",
            "train.class_weight_power",
            "train.weight_cap",
            "train.patient_adversary",
            "train.weight_rhythms",
            "train.precision",
            "train.average_epochs",
            "train.loss",
            "train.focal_gamma",
            "train.label_smoothing",
            "train.sampler",
            "train.patient_balance",
            "train.samples_per_epoch",
            "train.clip_grad_norm",
            "train.patience",
            "train.lr_patience",
            "train.lr_factor",
            "train.lr_schedule",
            "train.seed",
            "augment",
            "split.val_fraction",  # 0: no validation side, a fixed number of epochs
        ),
        upstream=("download", "preprocess", "split"),
        code=(
            "ecg.model",
            "ecg.dataset",
            "ecg.metrics",
            "ecg.augment",
            "ecg.losses",
            "ecg.adversary",
        ),
        help="fit the BiLSTM on the training patients (stopped on validation patients, if any)",
    ),
    Stage(
        name="evaluate",
        run="ecg.evaluate:evaluate_stage",
        params=("evaluate",),
        upstream=("preprocess", "split", "train"),
        code=("ecg.metrics", "ecg.dataset", "ecg.plots", "ecg.decision", "ecg.priors"),
        help="score the model on the test patients, with intervals by patient",
    ),
    Stage(
        name="report",
        run="ecg.report.stage:report_stage",
        params=("report",),
        upstream=("train", "evaluate"),
        code=(
            "ecg.report",
            "ecg.report.collect",
            "ecg.report.document",
            "ecg.report.render",
            "ecg.plots",
            "ecg.metrics",
        ),
        help="render the run's report (HTML and Markdown) and log it to the run",
    ),
)


def engine_for(config: PipelineConfig) -> Engine:
    return Engine(config, STAGES)

"""The evaluate stage: the test side, read once, scored with intervals by patient.

Writes ``metrics.json`` and ``predictions.csv`` (one row per test piece: record, sample index at
the record's own sampling rate, the reference rhythm for annotated beats, true and predicted
class, class probabilities, so anyone can re-score a run against the ``.atr`` files with their
own script) to the stage folder and to
``reports/<pipeline>/<run_id>/``, and logs them, with the test metrics, to the run the model was
trained in.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ecg.config import EvaluateConfig, flatten, to_dict
from ecg.dataset import load_fold
from ecg.decision import without_s_where_irregular
from ecg.engine import StageContext
from ecg.errors import EcgError
from ecg.metrics import (
    bootstrap_by_group,
    breakdown,
    confusion,
    from_confusion,
    roc_auc_per_class,
)
from ecg.plots import confusion_matrix_png
from ecg.priors import adapt_by_group
from ecg.tracking import Tracker, param_text
from ecg.train import load_classifier, predict_proba, select_device

log = logging.getLogger("ecg")

STRICT_DROPS = ("202",)
"""Under dechazal, the same model is also scored without record 202 (patient of 201 in DS1)."""


def score(
    predictions: pd.DataFrame, classes: list[str], resamples: int, confidence: float, seed: int
) -> dict:
    """Point metrics, intervals by patient, confusion matrix and ROC-AUC of a prediction table."""
    y_true = predictions["true_id"].to_numpy()
    y_pred = predictions["predicted_id"].to_numpy()
    proba = predictions[[f"p_{c}" for c in classes]].to_numpy()
    cm = confusion(y_true, y_pred, len(classes))
    point = from_confusion(cm, classes)
    point.update(roc_auc_per_class(y_true, proba, classes))
    intervals = bootstrap_by_group(
        y_true, y_pred, predictions["patient"].to_numpy(), classes, resamples, confidence, seed
    )
    return {
        "n": int(len(predictions)),
        "patients": int(predictions["patient"].nunique()),
        "records": int(predictions["record"].nunique()),
        "metrics": point,
        "ci": {k: list(v) for k, v in intervals.items()},
        "confusion": cm.tolist(),
    }


def pooled(predictions: pd.DataFrame, by: str, classes: list[str], how: str) -> pd.DataFrame:
    """Window predictions pooled to one prediction per record or per patient.

    ``mean`` averages the class probabilities; ``majority`` takes the most predicted class (ties
    to the higher mean probability) and the share of votes as its probability.
    """
    proba_columns = [f"p_{c}" for c in classes]
    groups = predictions.groupby(by, sort=True)
    table = groups.agg(
        record=("record", "first"),
        patient=("patient", "first"),
        true_id=("true_id", "first"),
        fold=("fold", "first"),
    )
    table = table.drop(columns=[by]) if by in table.columns else table
    means = groups[proba_columns].mean()
    if how == "majority":
        votes = (
            pd.get_dummies(predictions["predicted_id"])
            .reindex(columns=range(len(classes)), fill_value=0)
            .groupby(predictions[by])
            .mean()
        )
        votes.columns = proba_columns
        scores = votes + 1e-6 * means  # tie-break by mean probability
        table[proba_columns] = votes
    else:
        scores = means
        table[proba_columns] = means
    table["predicted_id"] = scores.to_numpy().argmax(axis=1)
    table["true"] = np.asarray(classes, dtype=object)[table["true_id"].to_numpy()]
    table["predicted"] = np.asarray(classes, dtype=object)[table["predicted_id"].to_numpy()]
    return table.reset_index()


def level_scores(predictions: pd.DataFrame, level: str, classes: list[str], cfg) -> dict:
    """Scores at one level (window, record, patient): pooled over all folds with intervals by
    patient, each fold alone, and the mean over folds with a t interval across folds."""
    table = predictions if level == "window" else pooled(predictions, level, classes, cfg.pool)
    folds = [
        score(part, classes, 0, cfg.confidence, cfg.seed)["metrics"]
        for _, part in table.groupby("fold")
    ]
    return {
        "pooled": score(table, classes, cfg.bootstrap, cfg.confidence, cfg.seed),
        "folds": folds,
        "across_folds": across_folds(folds, cfg.confidence),
    }


def across_folds(folds: list[dict], confidence: float) -> dict[str, list[float]]:
    """Mean of each metric over folds with a Student-t interval: [mean, low, high]."""
    from scipy import stats

    out = {}
    for key in folds[0] if folds else []:
        values = np.array([f[key] for f in folds], dtype=float)
        values = values[~np.isnan(values)]
        if len(values) == 0:
            out[key] = [float("nan")] * 3
            continue
        mean = float(values.mean())
        if len(values) < 2:
            out[key] = [mean, float("nan"), float("nan")]
            continue
        half = (
            stats.t.ppf((1 + confidence) / 2, len(values) - 1)
            * values.std(ddof=1)
            / np.sqrt(len(values))
        )
        # metrics are proportions: an interval past 0 or 1 says only that five folds are few
        out[key] = [mean, max(mean - half, 0.0), min(mean + half, 1.0)]
    return out


def per_record(predictions: pd.DataFrame, classes: list[str]) -> list[dict]:
    """Accuracy of each record and what it confused, so one bad record cannot hide in a mean."""
    patients = {str(k): v for k, v in predictions.groupby("record")["patient"].first().items()}
    return [
        {"record": record, "patient": patients[record], **part}
        for record, part in breakdown(predictions, "record", classes).items()
    ]


def per_rhythm(predictions: pd.DataFrame, classes: list[str]) -> list[dict]:
    """The same by the reference rhythm of each beat ('' where none was annotated): the false S
    beats of an inter-patient model come from atrial fibrillation more than from any record."""
    return [
        {"rhythm": rhythm, **part}
        for rhythm, part in breakdown(predictions, "rhythm", classes).items()
    ]


def evaluate_stage(ctx: StageContext) -> None:
    config = ctx.config
    cfg = config.evaluate
    run = json.loads((ctx.inputs["train"] / "run.json").read_text())
    device = select_device(ctx.options.get("device") or config.train.device)
    frames = []
    classes: list[str] = []
    set_aside: dict = {}
    priors: dict[str, list[float]] = {}
    gated = 0
    for fold in range(run["folds"]):
        model, normalizer, spec = load_classifier(ctx.inputs["train"] / f"fold_{fold}" / "model.pt")
        classes = spec["classes"]
        data = load_fold(
            ctx.inputs["preprocess"],
            ctx.inputs["split"],
            config.split.protocol,
            fold,
            classes=classes,
            rr_names=spec["rr_features"] if spec["n_rr"] else None,
            sides=("test",),
        )
        for label, n in data.set_aside["test"].items():
            set_aside[label] = set_aside.get(label, 0) + n
        test = data.sides["test"]
        with torch.no_grad():
            proba = predict_proba(model.to(device), normalizer.to(device), test, device)
        proba, estimated, n_gated = decision_proba(
            proba, data.index.loc[test.rows], cfg, classes, partial(_train_prior, spec, fold)
        )
        priors.update(estimated)
        gated += n_gated
        frames.append(
            _prediction_table(data.index, test.rows, test.y.numpy(), proba, classes, fold)
        )
    predictions = pd.concat(frames, ignore_index=True)
    result = {
        "pipeline": config.name,
        "run_id": run["run_id"],
        "settings": evaluate_settings(config),
        "protocol": config.split.protocol,
        "classes": classes,
        "set_aside": set_aside,
        "confidence": cfg.confidence,
        "bootstrap_resamples": cfg.bootstrap,
        "interval_unit": "patient",
        "test": score(predictions, classes, cfg.bootstrap, cfg.confidence, cfg.seed),
        "per_record": per_record(predictions, classes),
    }
    if priors:
        result["record_priors"] = {
            "method": "EM on each record's own probabilities (Saerens et al. 2002)",
            "shrinkage": cfg.prior_shrinkage,
            "estimated": priors,
        }
    if cfg.fibrillation_gate:
        result["fibrillation_gate"] = {"from": cfg.fibrillation_gate, "beats": gated}
    if "rhythm" in predictions:
        result["per_rhythm"] = per_rhythm(predictions, classes)
    if run["folds"] > 1:
        result["per_fold"] = [
            {"fold": fold, **score(part, classes, 0, cfg.confidence, cfg.seed)}
            for fold, part in predictions.groupby("fold")
        ]
    if config.download.database == "ptbdb":
        result["levels"] = {
            level: level_scores(predictions, level, classes, cfg)
            for level in ("window", "record", "patient")
        }
    if config.split.protocol == "dechazal":
        strict = predictions[~predictions["record"].isin(STRICT_DROPS)]
        result["test_strict"] = score(strict, classes, cfg.bootstrap, cfg.confidence, cfg.seed)
    examples = example_beats(predictions, ctx.inputs["preprocess"], classes, config.evaluate.seed)
    np.savez_compressed(ctx.out / "examples.npz", **examples)
    _write(ctx, result, predictions, run)
    _log_headline(result)


def decision_proba(
    proba: np.ndarray,
    pieces: pd.DataFrame,
    cfg: EvaluateConfig,
    classes: list[str],
    train_prior: Callable[[], np.ndarray],
) -> tuple[np.ndarray, dict[str, list[float]], int]:
    """The probabilities the arg-max is taken from: each record's own priors
    (``adapt_priors``), then no S where the rhythm is irregular (``fibrillation_gate``). Also the
    estimated priors and how many pieces the gate touched. ``pieces`` are the index rows of
    ``proba``'s rows; ``train_prior`` is asked only when the priors are adapted. Shared with
    ``benchmarks/refit_ensemble.py``, which scores these options nested in DS1."""
    estimated: dict[str, list[float]] = {}
    if cfg.adapt_priors == "record":
        proba, estimated = record_priors(
            proba, pieces["record"].to_numpy(), train_prior(), cfg.prior_shrinkage
        )
    if not cfg.fibrillation_gate:
        return proba, estimated, 0
    if "rr_irregularity" not in pieces:
        raise EcgError(
            "evaluate.fibrillation_gate: the preprocessed pieces have no rr_irregularity column "
            "(preprocessed before ecg computed it); run the preprocess stage again"
        )
    irregularity = pieces["rr_irregularity"].to_numpy()
    gated = proba
    proba = without_s_where_irregular(proba, irregularity, classes, cfg.fibrillation_gate)
    return proba, estimated, int((proba != gated).any(axis=1).sum())


def record_priors(
    proba: np.ndarray, records: np.ndarray, train_prior: np.ndarray, shrinkage: float = 0.0
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """The test pieces' probabilities under each record's own estimated priors, and the priors
    (``decision_proba``'s first step)."""
    adapted, estimated = adapt_by_group(
        proba, np.asarray(records).astype(str), train_prior, shrinkage
    )
    return adapted.astype(np.float32), {
        record: [round(float(v), 4) for v in prior] for record, prior in estimated.items()
    }


def _train_prior(spec: dict, fold: int) -> np.ndarray:
    if "train_prior" not in spec:
        raise EcgError(
            f"evaluate.adapt_priors: the model of fold {fold} does not record the class prior it "
            "was trained under (it was trained before ecg stored it); train it again"
        )
    return np.asarray(spec["train_prior"])


def example_beats(
    predictions: pd.DataFrame,
    preprocess_dir: Path,
    classes: list[str],
    seed: int,
    per_class: int = 3,
) -> dict[str, np.ndarray]:
    """A few right and wrong test pieces of each class, with their signal, for the report."""
    from ecg.preprocess import load_pieces

    windows, _, meta = load_pieces(preprocess_dir)
    rng = np.random.default_rng(seed)
    picked = []
    for name in classes:
        of_class = predictions[predictions["true"] == name]
        for right in (True, False):
            pool = of_class[(of_class["predicted"] == name) == right]
            if len(pool):
                picked += list(
                    rng.choice(pool.index.to_numpy(), min(per_class, len(pool)), replace=False)
                )
    chosen = predictions.loc[picked]
    return {
        "windows": np.asarray(windows[chosen["row"].to_numpy()], dtype=np.float32),
        "true": chosen["true"].to_numpy(dtype=str),
        "predicted": chosen["predicted"].to_numpy(dtype=str),
        "record": chosen["record"].to_numpy(dtype=str),
        "sample": chosen["sample"].to_numpy(),
        "fs": np.asarray(meta["fs"]),
    }


def _prediction_table(index, rows, y_true, proba, classes, fold) -> pd.DataFrame:
    y_pred = proba.argmax(axis=1)
    table = pd.DataFrame(
        {
            "record": index.loc[rows, "record"].to_numpy(),
            "patient": index.loc[rows, "patient"].to_numpy(),
            "sample": index.loc[rows, "sample"].to_numpy(),
            **({"rhythm": index.loc[rows, "rhythm"].to_numpy()} if "rhythm" in index else {}),
            "true": np.asarray(classes, dtype=object)[y_true],
            "predicted": np.asarray(classes, dtype=object)[y_pred],
            "true_id": y_true,
            "predicted_id": y_pred,
            "fold": fold,
            "row": rows,
        }
    )
    for i, name in enumerate(classes):
        table[f"p_{name}"] = proba[:, i].astype(np.float32)
    return table


def _write(ctx: StageContext, result: dict, predictions: pd.DataFrame, run: dict) -> None:
    config = ctx.config
    (ctx.out / "metrics.json").write_text(json.dumps(result, indent=1))
    columns = [c for c in predictions.columns if not c.endswith("_id") and c != "row"]
    predictions[columns].to_csv(ctx.out / "predictions.csv", index=False, float_format="%.5f")
    confusion_matrix_png(
        np.asarray(result["test"]["confusion"]),
        result["classes"],
        ctx.out / "confusion_matrix.png",
        title=f"{config.name} test ({result['protocol']})",
    )
    report_dir = config.resolve("reports") / config.name / run["run_id"]
    report_dir.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.json", "predictions.csv", "confusion_matrix.png", "examples.npz"):
        shutil.copyfile(ctx.out / name, report_dir / name)
    tracker = Tracker(run["tracking_uri"], run["experiment"])
    tracker.reopen(run["run_id"])
    try:
        _record_settings(tracker, run["run_id"], result["settings"])
        flat = {f"test_{k}": v for k, v in result["test"]["metrics"].items()}
        for key, (low, high) in result["test"]["ci"].items():
            flat[f"test_{key}_ci_low"], flat[f"test_{key}_ci_high"] = low, high
        if "test_strict" in result:
            flat.update(
                {f"test_strict_{k}": v for k, v in result["test_strict"]["metrics"].items()}
            )
        for level, scores in result.get("levels", {}).items():
            flat.update({f"{level}_{k}": v for k, v in scores["pooled"]["metrics"].items()})
        tracker.log_metrics(run["run_id"], flat)
        for name in ("metrics.json", "predictions.csv", "confusion_matrix.png", "examples.npz"):
            tracker.log_artifact(run["run_id"], ctx.out / name)
    except BaseException as exc:
        tracker.fail(run["run_id"], exc)
        raise
    tracker.finish(run["run_id"])
    log.info(
        "evaluate: metrics and predictions in %s and in MLflow run %s",
        config.relative(report_dir),
        run["run_id"],
    )


def evaluate_settings(config) -> dict:
    """The ``evaluate.*`` settings this evaluation ran under. A run's params are written once, when
    its model is trained; the evaluate stage can run again inside that run with other settings
    (``--set evaluate.adapt_priors=record``), so its own settings go with its metrics."""
    return {k: v for k, v in flatten(to_dict(config)).items() if k.startswith("evaluate.")}


def _record_settings(tracker: Tracker, run_id: str, settings: dict) -> None:
    """The settings as the run's tags (which ``ecg runs`` and the report read before the params),
    and a warning where the params, from training, say otherwise."""
    tracker.set_tags(run_id, settings)
    params = tracker.run(run_id).data.params
    differ = [
        f"{key}: {params[key]} -> {param_text(value)}"
        for key, value in settings.items()
        if key in params and params[key] != param_text(value)
    ]
    if differ:
        log.warning(
            "evaluate: run %s was trained with other evaluate settings (%s); its params keep "
            "those, its tags and metrics.json hold this evaluation's",
            run_id,
            "; ".join(differ),
        )


def _log_headline(result: dict) -> None:
    test = result["test"]
    m, ci = test["metrics"], test["ci"]

    def cell(key: str) -> str:
        value = m.get(key, float("nan"))
        if np.isnan(value):
            return "n/a"
        low, high = ci.get(key, (float("nan"), float("nan")))
        return (
            f"{100 * value:5.1f} [{100 * low:4.1f}, {100 * high:4.1f}]"
            if not np.isnan(low)
            else f"{100 * value:5.1f}"
        )

    lines = [
        f"evaluate: {test['n']:,} test pieces from {test['patients']} patients; "
        f"accuracy {cell('accuracy')}, macro-F1 {cell('macro_f1')} "
        f"({int(100 * result['confidence'])}% CI by patient)"
    ]
    for c in result["classes"]:
        lines.append(
            f"  {c:>8}: Se {cell(f'{c}_recall')}  +P {cell(f'{c}_precision')}  "
            f"F1 {cell(f'{c}_f1')}  (n={int(m[f'{c}_support']):,})"
        )
    log.info("\n".join(lines))

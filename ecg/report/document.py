"""The content of a report, as a list of blocks that render to Markdown and to HTML alike.

Building the content once and rendering it twice means the two formats cannot disagree. Every
number comes from the run's own metrics.json, predictions.csv and logged values; none is typed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ecg import plots
from ecg.labels import MITDB_RHYTHMS
from ecg.metrics import breakdown
from ecg.report.collect import RunData

KNOWN_FLAWS = {
    "dechazal": "Records 201 (DS1, training) and 202 (DS2, test) come from the same patient: the "
    "published de Chazal protocol leaks this one patient. The same model scored without 202 "
    "(dechazal-strict) is shown below the main results.",
}


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str


@dataclass
class Note:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Image:
    path: Path
    caption: str


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> None:
        self.blocks.extend(blocks)


# ------------------------------------------------------------------------------ formatting


def pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}"


def with_ci(metrics: dict, ci: dict, key: str) -> str:
    value = metrics.get(key)
    text = pct(value)
    low, high = ci.get(key, (None, None))
    if text != "n/a" and low is not None and not math.isnan(low):
        text += f" [{pct(low)}, {pct(high)}]"
    return text


def count(value) -> str:
    return f"{int(value):,}"


# ------------------------------------------------------------------------------ sections


def build(run: RunData, figures: Path, compare: list[RunData] = ()) -> Document:
    """The whole report of ``run``; figures are written into ``figures``."""
    database = run.params.get("download.database", "")
    doc = Document(f"{run.params.get('name', run.tags.get('pipeline', ''))} evaluation report")
    _header(doc, run)
    _headline(doc, run)
    _data(doc, run)
    _training(doc, run, figures)
    _test(doc, run, figures)
    if "record_priors" in run.metrics:
        _record_priors(doc, run)
    if "fibrillation_gate" in run.metrics:
        _fibrillation_gate(doc, run)
    if "levels" in run.metrics:
        _levels(doc, run)
    _per_unit(doc, run, figures, "patient" if database == "ptbdb" else "record")
    _per_rhythm(doc, run)
    _examples(doc, run, figures)
    _published(doc, run, database)
    if compare:
        _compare(doc, [run, *compare])
    return doc


def _header(doc: Document, run: RunData) -> None:
    protocol = run.metrics.get("protocol", run.params.get("split.protocol", ""))
    wall = run.wall_seconds
    rows = [
        ["pipeline", f"{run.params.get('name', '')} — {run.params.get('description', '')}"],
        ["run", f"{run.run_id} ({run.status})"],
        ["date", run.start.strftime("%Y-%m-%d %H:%M UTC")],
        ["git commit", run.tags.get("git_commit", "unknown")],
        ["device", run.tags.get("device", "unknown")],
        ["wall time (train + evaluate)", f"{wall / 60:.1f} min" if wall else "still running"],
        [
            "raw data digest (SHA-256 of the verified file list)",
            run.tags.get("raw_data_digest", "unknown"),
        ],
        [
            "dataset digest (SHA-256 of the beat/window index)",
            run.tags.get("dataset_digest", "unknown"),
        ],
        ["split protocol", protocol],
        [
            "intervals",
            f"{int(100 * run.metrics['confidence'])} % bootstrap, "
            f"{run.metrics['bootstrap_resamples']:,} resamples of "
            f"{run.metrics['interval_unit']}s",
        ],
    ]
    doc.add(Heading(1, doc.title), Table(["", ""], rows))
    if protocol in KNOWN_FLAWS:
        doc.add(Note(f"Known flaw of the protocol: {KNOWN_FLAWS[protocol]}"))


def _headline(doc: Document, run: RunData) -> None:
    test = run.metrics["test"]
    m, ci = test["metrics"], test["ci"]
    rows = [
        [label, with_ci(m, ci, key)]
        for label, key in (
            ("accuracy", "accuracy"),
            ("macro F1", "macro_f1"),
            ("macro precision (+P)", "macro_precision"),
            ("macro recall (Se)", "macro_recall"),
            ("weighted F1", "weighted_f1"),
        )
    ]
    doc.add(
        Heading(2, "Headline"),
        Paragraph(
            f"Test side: {test['n']:,} pieces from {test['patients']} patients "
            f"({test['records']} records), classes {', '.join(run.classes)}."
        ),
        Table(["metric", "value [95 % CI]"], rows),
    )


def _data(doc: Document, run: RunData) -> None:
    doc.add(Heading(2, "Data"))
    if run.split_summary is not None:
        table = run.split_summary
        doc.add(
            Table(
                list(table.columns),
                [[_cell(v) for v in row] for row in table.itertuples(index=False)],
                "pieces per class, patients and records, per fold and side",
            )
        )
    aside = run.metrics.get("set_aside") or {}
    if aside:
        doc.add(
            Paragraph(
                "Set aside from the test side (classes the model does not learn): "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(aside.items()))
                + "."
            )
        )
    if run.records is not None:
        dropped = run.records[~run.records["used"].astype(bool)]
        if len(dropped):
            doc.add(
                Table(
                    ["record dropped", "why"], [[r.record, r.reason] for r in dropped.itertuples()]
                )
            )
        else:
            doc.add(Paragraph("No record was dropped."))
        issues = run.records[run.records["lead_issues"].fillna("") != ""]
        if len(issues):
            doc.add(
                Table(
                    ["record", "lead problems"],
                    [[r.record, r.lead_issues] for r in issues.itertuples()],
                )
            )
        edge = int(run.records["dropped_at_edges"].sum())
        if edge:
            doc.add(
                Paragraph(
                    f"{edge:,} beats were dropped because their window passed the edge "
                    "of their record."
                )
            )


def _training(doc: Document, run: RunData, figures: Path) -> None:
    doc.add(Heading(2, "Training"))
    if not run.histories:
        doc.add(Paragraph("No training history was logged with this run."))
        return
    best = {}
    lines = []
    validated = False
    averaged = int(run.params.get("train.average_epochs", 1) or 1)
    last = "the last kept" if averaged == 1 else f"the mean of the last {averaged} kept"
    for name, history in run.histories.items():
        f1s = history["val_macro_f1"]
        if f1s.notna().any():
            validated = True
            kept = int(history.loc[f1s.idxmax(), "epoch"])
            best[name] = kept
            lines.append(
                f"{name}: {len(history)} epochs run, epoch {kept} kept "
                f"(validation macro-F1 {f1s.max():.3f})"
            )
        else:
            lines.append(f"{name}: {len(history)} epochs run, {last}")
    path = plots.training_curves_png(run.histories, best, figures / "training.png")
    sentences = ["; ".join(lines)]
    if any("member" in name for name in run.histories):
        sentences.append(
            "The model is the ensemble of these members: their probabilities are averaged"
        )
    if validated:
        sentences.append(
            "Early stopping and model selection use the validation patients only, drawn from "
            "the training side"
        )
    else:
        sentences.append(
            "No patients were held out for validation: every training patient trained, for a "
            "number of epochs fixed in the configuration (chosen beforehand on validation "
            "patients of the training side), at a constant learning rate"
        )
    sentences += [s for s in (_fusion_sentence(run), _adversary_sentence(run)) if s]
    shown = "loss, validation macro-F1 and" if validated else "loss and"
    doc.add(
        Image(path, f"{shown} learning rate per epoch"),
        Paragraph(". ".join(sentences) + "."),
    )


def _fusion_sentence(run: RunData) -> str:
    """The synthetic fusion beats (``augment.fusion_share``) the data table does not count."""
    share = float(run.params.get("augment.fusion_share", 0) or 0)
    if not share:
        return ""
    made = run.logged_metrics.get("fusion_beats")  # None: a run from before it was logged
    f = _training_sides(run, "F")
    if made is not None and round(made) == 0:
        why = (
            "the training side holds no real F beats to match"
            if f and not any(f)
            else "no training patient had the N and V beats to lend"
        )
        return (
            f"augment.fusion_share asked for {share:g} times as many synthetic fusion (F) beats as "
            f"real ones, but none were made: {why}"
        )
    real = ""
    if len(f) == 1:  # with several folds each member trained on its own fold's F beats
        count = round(share * f[0]) if made is None else round(made)
        each = " on average" if float(run.params.get("model.ensemble_patients", 1)) < 1 else ""
        real = f" ({count:,}{each} beside the table's {f[0]:,} real ones)"
    many = "as many" if share == 1 else f"{share:g} times as many"
    return (
        f"Each member's training side also held {many} synthetic fusion (F) beats as real "
        f"ones{real}, each a random N and V beat of one training patient mixed, with the N "
        "beat's RR features (augment.fusion_share)"
    )


def _adversary_sentence(run: RunData) -> str:
    """What the patient adversary (``train.patient_adversary``) ended at, against the loss of a
    head that names no patient: whether the LSTM had an opponent at all (``benchmarks/quality.md``,
    twenty-ninth round, where the first head never found one)."""
    last = [
        float(h["adversary_loss"].dropna().iloc[-1])
        for h in run.histories.values()
        if "adversary_loss" in h and h["adversary_loss"].notna().any()
    ]
    if not last:
        return ""
    sentence = (
        f"A patient adversary (weight {run.params.get('train.patient_adversary', '?')}) trained "
        "beside the model, guessing each N beat's training patient with its gradient reversed "
        f"into the LSTM; its loss in the last epoch: {', '.join(f'{v:.2f}' for v in last)}"
    )
    patients = max(_training_sides(run, "patients"), default=0)
    if patients > 1:
        sentence += (
            f" (a head that names no patient scores about ln {patients} = "
            f"{math.log(patients):.2f}; lower means it still finds the patient)"
        )
    return sentence


def _training_sides(run: RunData, column: str) -> list[int]:
    """``column`` of the split summary's training side, one value per fold (none where the run
    logged no summary, or one without that column)."""
    summary = run.split_summary
    if summary is None or not {"split", column} <= set(summary.columns):
        return []
    return [int(v) for v in summary.loc[summary["split"] == "train", column]]


def _class_table(m: dict, ci: dict, classes: list[str]) -> Table:
    rows = []
    for c in classes:
        rows.append(
            [
                c,
                with_ci(m, ci, f"{c}_recall"),
                with_ci(m, ci, f"{c}_precision"),
                with_ci(m, ci, f"{c}_specificity"),
                with_ci(m, ci, f"{c}_f1"),
                pct(m.get(f"{c}_roc_auc")),
                count(m.get(f"{c}_support", 0)),
            ]
        )
    return Table(
        ["class", "Se (recall)", "+P (precision)", "specificity", "F1", "ROC-AUC", "n"],
        rows,
        "per class, value [95 % CI]",
    )


def _test(doc: Document, run: RunData, figures: Path) -> None:
    test = run.metrics["test"]
    classes = run.classes
    doc.add(Heading(2, "Test results"), _class_table(test["metrics"], test["ci"], classes))
    cm = np.asarray(test["confusion"])
    path = plots.confusion_matrix_png(
        cm,
        classes,
        figures / "confusion_matrix.png",
        title="confusion matrix: counts and share of true class",
    )
    doc.add(Image(path, "confusion matrix (rows: true class; colour: share of the row)"))
    rows = [[c, *[count(v) for v in cm[i]]] for i, c in enumerate(classes)]
    doc.add(Table(["true \\ predicted", *classes], rows, "confusion matrix, counts"))
    p = run.predictions
    y_true = p["true"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    proba = p[[f"p_{c}" for c in classes]].to_numpy()
    path = plots.roc_pr_png(y_true, proba, classes, figures / "roc_pr.png")
    doc.add(Image(path, "one-vs-rest ROC and precision-recall curves"))
    if "test_strict" in run.metrics:
        strict = run.metrics["test_strict"]
        doc.add(
            Heading(3, "Same model, dechazal-strict (without record 202)"),
            Paragraph(
                f"{strict['n']:,} pieces from {strict['patients']} patients; "
                f"accuracy {with_ci(strict['metrics'], strict['ci'], 'accuracy')}, "
                f"macro F1 {with_ci(strict['metrics'], strict['ci'], 'macro_f1')}."
            ),
            _class_table(strict["metrics"], strict["ci"], classes),
        )


def _record_priors(doc: Document, run: RunData) -> None:
    """With ``evaluate.adapt_priors``, every number above comes from probabilities re-weighted to
    each record's estimated priors; a reader must be told, and shown how good the estimates were."""
    estimated = run.metrics["record_priors"]["estimated"]
    shrinkage = run.metrics["record_priors"].get("shrinkage", 0.0)
    classes = run.classes
    truth = (
        run.predictions.assign(record=run.predictions["record"].astype(str))
        .groupby("record")["true"]
        .value_counts(normalize=True)
        .unstack(fill_value=0.0)
        .reindex(columns=classes, fill_value=0.0)
    )
    rows = [
        [record, *[f"{pct(prior[i])} ({pct(truth.loc[record, c])})" for i, c in enumerate(classes)]]
        for record, prior in sorted(estimated.items())
    ]
    doc.add(
        Heading(2, "Each record's estimated class priors"),
        Paragraph(
            "The decisions above were taken after re-weighting each test record's probabilities "
            "to that record's own class priors, estimated from all its beats without labels by "
            "EM (Saerens et al. 2002; evaluate.adapt_priors: record). "
            + (
                f"Each EM step's estimate was mixed with the training prior at weight "
                f"{shrinkage:g} (evaluate.prior_shrinkage), so no class's share fell below "
                f"{shrinkage:g} times its share in training."
                if shrinkage
                else "Where the estimate of a class falls to zero, that record's beats of the "
                "class are called something else."
            )
        ),
        Table(
            ["record", *classes],
            rows,
            "estimated share of each class, % (true share in brackets)",
        ),
    )


def _fibrillation_gate(doc: Document, run: RunData) -> None:
    """With ``evaluate.fibrillation_gate`` a rule, not the network, took some decisions; the
    reader must know which rule and on how many beats."""
    gate = run.metrics["fibrillation_gate"]
    beats = 2 * int(run.params.get("segment.rr_local_beats", 10)) + 1
    doc.add(
        Heading(2, "No S beats in an irregular rhythm"),
        Paragraph(
            f"{gate['beats']:,} test beats whose RR intervals were irregular (rr_irregularity at "
            f"least {gate['from']:g}: the median change between successive RR intervals over "
            f"{beats} beats, over the local mean RR) could not be called S "
            "(evaluate.fibrillation_gate): "
            "in atrial fibrillation there is no atrial premature beat to find. Every number "
            "above was taken after that rule."
        ),
    )


LEVEL_METRICS = (
    ("accuracy", "accuracy"),
    ("Se (recall)", "{p}_recall"),
    ("Sp (specificity)", "{p}_specificity"),
    ("+P (precision)", "{p}_precision"),
    ("F1", "{p}_f1"),
    ("ROC-AUC", "{p}_roc_auc"),
)


def _levels(doc: Document, run: RunData) -> None:
    """PTB: window, record and patient level, pooled over folds and fold by fold."""
    positive = run.classes[-1]
    levels = run.metrics["levels"]
    rows = []
    for level, scores in levels.items():
        pooled = scores["pooled"]
        across = scores["across_folds"]
        for label, key in LEVEL_METRICS:
            key = key.format(p=positive)
            mean, low, high = across.get(key, [float("nan")] * 3)
            fold_text = pct(mean) + (f" [{pct(low)}, {pct(high)}]" if not math.isnan(low) else "")
            rows.append(
                [
                    level,
                    f"{pooled['n']:,}",
                    label,
                    with_ci(pooled["metrics"], pooled["ci"], key),
                    fold_text,
                ]
            )
    doc.add(
        Heading(2, "Window, record and patient level"),
        Paragraph(
            f"Positive class: {positive}. Window predictions are pooled to records and "
            f"patients by their {run.params.get('evaluate.pool', 'mean')} "
            "probability. 'Pooled' scores all test predictions of all folds together "
            "(each patient is tested in exactly one fold), with a bootstrap interval "
            "by patient; 'across folds' is the mean of the folds with a t interval."
        ),
        Table(["level", "n", "metric", "pooled [95 % CI]", "mean across folds [95 % CI]"], rows),
    )
    fold_rows = []
    for level, scores in levels.items():
        for i, fold in enumerate(scores["folds"]):
            fold_rows.append(
                [
                    level,
                    str(i),
                    pct(fold["accuracy"]),
                    pct(fold.get(f"{positive}_recall")),
                    pct(fold.get(f"{positive}_specificity")),
                    pct(fold.get(f"{positive}_f1")),
                ]
            )
    doc.add(Table(["level", "fold", "accuracy", "Se", "Sp", "F1"], fold_rows, "each fold alone"))


def _confusion_rows(
    p: pd.DataFrame, by: str, classes: list[str]
) -> list[tuple[float, int, list[str]]]:
    """(accuracy, size, table row) of each group of ``p``; the row holds its name, size,
    accuracy, true classes and most frequent confusions."""
    rows = []
    for name, part in breakdown(p, by, classes).items():
        truth, pairs = part["true_counts"], list(part["confusions"].items())
        rows.append(
            (
                part["accuracy"],
                part["n"],
                [
                    name,
                    count(part["n"]),
                    pct(part["accuracy"]),
                    " ".join(f"{c} {truth[c]:,}" for c in classes),
                    ", ".join(f"{k.replace('->', '→')} {v:,}" for k, v in pairs[:3]) or "—",
                ],
            )
        )
    return rows


def _per_unit(doc: Document, run: RunData, figures: Path, unit: str) -> None:
    rows = _confusion_rows(run.predictions, unit, run.classes)
    names = [row[0] for _, _, row in rows]
    accuracy = [acc for acc, _, _ in rows]
    sizes = [n for _, n, _ in rows]
    path = plots.per_record_png(names, accuracy, sizes, figures / f"per_{unit}.png", unit)
    doc.add(
        Heading(2, f"Per {unit}"),
        Image(path, f"accuracy per {unit}"),
        Table(
            [unit, "n", "accuracy", "true classes", "most frequent confusions"],
            [r for _, _, r in sorted(rows, key=lambda item: item[0])],
            f"sorted from the worst {unit}",
        ),
    )


def _per_rhythm(doc: Document, run: RunData) -> None:
    """Test beats by the reference rhythm they fall in: where false S beats come from is often
    a rhythm (atrial fibrillation), not a record."""
    p = run.predictions
    if "rhythm" not in p.columns or p["rhythm"].isna().all():
        return
    p = p.assign(rhythm=p["rhythm"].fillna("(none)"))
    rows = _confusion_rows(p, "rhythm", run.classes)
    for _, _, row in rows:
        row[0] = f"{row[0]} ({MITDB_RHYTHMS[row[0]]})" if row[0] in MITDB_RHYTHMS else row[0]
    doc.add(
        Heading(2, "Per reference rhythm"),
        Paragraph(
            "Each test beat under the rhythm annotation in effect at it (the model never sees "
            "the rhythm)."
        ),
        Table(
            ["rhythm", "n", "accuracy", "true classes", "most frequent confusions"],
            [r for _, _, r in sorted(rows, key=lambda item: item[0])],
            "sorted from the worst rhythm",
        ),
    )


def _examples(doc: Document, run: RunData, figures: Path) -> None:
    if not run.examples or len(run.examples["true"]) == 0:
        return
    e = run.examples
    order = np.argsort(
        [run.classes.index(t) if t in run.classes else 99 for t in e["true"]], kind="stable"
    )
    path = plots.example_beats_png(
        e["windows"][order],
        list(e["true"][order]),
        list(e["predicted"][order]),
        float(e["fs"]),
        figures / "examples.png",
    )
    doc.add(
        Heading(2, "Example beats"),
        Image(path, "test pieces of each class, right (green) and wrong (red), first lead"),
    )


def published_results() -> dict:
    text = (resources.files("ecg.report") / "published.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _published(doc: Document, run: RunData, database: str) -> None:
    anchors = published_results().get(database, [])
    if not anchors:
        return
    m = run.metrics["test"]["metrics"]
    doc.add(Heading(2, "Against published results"))
    if database == "mitdb":
        header = ["work", "protocol", "Acc", "S Se", "S +P", "S F1", "V Se", "V +P", "V F1"]
        rows = []
        for a in anchors:
            s, v = a.get("S", {}), a.get("V", {})
            rows.append(
                [
                    a["work"],
                    a["protocol"],
                    _num(a.get("accuracy")),
                    _num(s.get("se")),
                    _num(s.get("ppv")),
                    _num(s.get("f1"), 2),
                    _num(v.get("se")),
                    _num(v.get("ppv")),
                    _num(v.get("f1"), 2),
                ]
            )
        rows.append(
            [
                "**this run**",
                run.metrics["protocol"],
                pct(m["accuracy"]),
                pct(m.get("S_recall")),
                pct(m.get("S_precision")),
                _frac(m.get("S_f1")),
                pct(m.get("V_recall")),
                pct(m.get("V_precision")),
                _frac(m.get("V_f1")),
            ]
        )
    else:
        positive = run.classes[-1]
        header = ["work", "protocol", f"{positive} Se", f"{positive} Sp"]
        rows = [
            [
                a["work"],
                a["protocol"],
                _num(a.get("MI", {}).get("se")),
                _num(a.get("MI", {}).get("sp")),
            ]
            for a in anchors
        ]
        levels = run.metrics.get("levels", {})
        level = "patient" if "patient" in levels else "window"
        if level == "patient":
            m = levels["patient"]["pooled"]["metrics"]
        folds = len(run.metrics.get("per_fold", [])) or 1
        rows.append(
            [
                f"**this run** ({level} level)",
                f"patient-wise {folds}-fold cross-validation, "
                f"{run.metrics['test']['patients']} patients",
                pct(m.get(f"{positive}_recall")),
                pct(m.get(f"{positive}_specificity")),
            ]
        )
    doc.add(Table(header, rows, "percentages; F1 as a fraction"))
    unchecked = [a["work"] for a in anchors if not a.get("checked")]
    if unchecked:
        doc.add(
            Note(
                "The published figures are quoted as given in the project's design notes "
                "and have not yet been checked against the papers: "
                + ", ".join(unchecked)
                + ". Sources:"
            )
        )
    doc.add(Paragraph(" ".join(_source(a) for a in anchors)))


def _source(anchor: dict) -> str:
    checked = anchor.get("checked")
    against = f" Checked against {checked}." if isinstance(checked, str) and checked else ""
    return f"[{anchor['work']}] {anchor['source']}{against}"


def _compare(doc: Document, runs: list[RunData]) -> None:
    doc.add(Heading(2, "Compared runs"))
    ids = [r.run_id[:8] for r in runs]
    keys = sorted(set().union(*(r.params for r in runs)))
    differing = [k for k in keys if len({r.params.get(k) for r in runs}) > 1]
    if differing:
        doc.add(
            Table(
                ["param", *ids],
                [[k, *[r.params.get(k, "—") for r in runs]] for k in differing],
                "config values that differ",
            )
        )
    else:
        doc.add(Paragraph("The runs have the same config."))
    names = sorted(set().union(*(r.logged_metrics for r in runs)))
    rows = []
    for name in names:
        values = [r.logged_metrics.get(name) for r in runs]
        base = values[0]
        cells = [_metric(v) for v in values]
        deltas = ["—" if v is None or base is None else f"{v - base:+.4f}" for v in values[1:]]
        rows.append([name, *cells, *deltas])
    doc.add(
        Table(
            ["metric", *ids, *[f"Δ {i}" for i in ids[1:]]],
            rows,
            f"every logged metric; Δ against {ids[0]}",
        )
    )


def _metric(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _num(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _frac(value) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def _cell(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    return "" if pd.isna(value) else str(value)

"""Reports: numbers equal the run's logged metrics, images embedded, runs compared, gaps n/a."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from ecg.cli import main
from ecg.evaluate import score
from ecg.report import write_report
from ecg.report.collect import collect
from ecg.report.document import build, pct
from ecg.report.render import html_page, markdown
from ecg.tracking import Tracker

from conftest import write_pipeline

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The smoke pipeline run twice on the fixtures, the second with another seed."""
    root = tmp_path_factory.mktemp("project")
    fixtures = REPO / "tests" / "fixtures"
    text = (REPO / "pipelines" / "smoke.yaml").read_text()
    write_pipeline(
        root, "smoke", text.replace("source: tests/fixtures/mitdb", f"source: {fixtures / 'mitdb'}")
    )
    config = str(root / "pipelines" / "smoke.yaml")
    assert main(["run", "--config", config]) == 0
    assert main(["run", "--config", config, "--set", "train.seed=1"]) == 0
    tracker = Tracker(f"sqlite:///{root / 'data' / 'mlflow.db'}", "smoke")
    runs = tracker.search()
    ids = list(runs["run_id"])  # newest first
    return root, tracker, ids[1], ids[0]


def test_report_numbers_equal_the_logged_metrics(two_runs):
    root, tracker, first, _ = two_runs
    folder = root / "reports" / "smoke" / first
    text = (folder / "report.md").read_text()
    logged = tracker.run(first).data.metrics
    row = re.search(r"^\| accuracy \| (\S+) \[", text, re.M).group(1)
    assert row == pct(logged["test_accuracy"])
    s_row = re.search(r"^\| S \| (\S+) \[[^|]*\| (\S+)", text, re.M)
    assert s_row.group(1) == pct(logged["test_S_recall"])
    assert s_row.group(2) == pct(logged["test_S_precision"])
    artifacts = {a.path for a in tracker.client.list_artifacts(first, "report")}
    assert {"report/report.md", "report/report.html"} <= artifacts


def test_every_image_is_there_and_embedded(two_runs):
    root, _, first, _ = two_runs
    folder = root / "reports" / "smoke" / first
    md = (folder / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) >= 5
    assert all((folder / name).is_file() for name in images)
    page = (folder / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(images)
    assert not re.search(r'src="(?!data:)', page)  # nothing to fetch: opens from disk


def test_compare_lists_the_changed_param_and_every_metric(two_runs, capsys):
    root, tracker, first, second = two_runs
    assert (
        main(
            [
                "report",
                "--config",
                str(root / "pipelines" / "smoke.yaml"),
                "--run",
                first,
                "--compare",
                second,
                "--format",
                "md",
            ]
        )
        == 0
    )
    text = (root / "reports" / "smoke" / first / "report.md").read_text()
    compared = text.split("## Compared runs", 1)[1]
    assert re.search(r"^\| train\.seed \| 0 \| 1 \|", compared, re.M)
    assert "| test_accuracy |" in compared and "| best_val_macro_f1 |" in compared


def test_latest_and_runs_table(two_runs, capsys):
    root, _, _, second = two_runs
    config = str(root / "pipelines" / "smoke.yaml")
    assert main(["report", "--config", config, "--latest", "--format", "html"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"reports/smoke/{second}/report.html")
    assert main(["runs", "--config", config, "--sort", "test_macro_f1"]) == 0
    table = capsys.readouterr().out
    assert "train.seed" in table and "macro F1" in table and second[:8] in table
    assert main(["runs", "--config", config, "--sort", "nonsense"]) == 1


def test_a_class_missing_from_the_test_side_renders_as_na(two_runs, tmp_path):
    _, tracker, first, _ = two_runs
    run = collect(tracker, first)
    without_f = run.predictions[run.predictions["true"] != "F"].copy()
    without_f["true_id"] = without_f["true"].map({c: i for i, c in enumerate(run.classes)})
    without_f["predicted_id"] = without_f["predicted"].map(
        {c: i for i, c in enumerate(run.classes)}
    )
    run.predictions = without_f
    run.metrics["test"] = score(without_f, run.classes, 50, 0.95, 0)
    run.metrics.pop("test_strict")
    doc = build(run, tmp_path)
    text = markdown(doc)
    f_row = re.search(r"^\| F \|(.*)$", text, re.M).group(1)
    assert f_row.count("n/a") >= 2  # recall and F1 are undefined without true F beats
    assert "<html" in html_page(doc)


@pytest.mark.browser
def test_html_renders_in_headless_chromium(two_runs, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    root, tracker, first, _ = two_runs
    page = root / "reports" / "smoke" / first / "report.html"
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,3000",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 50_000  # a page with tables and plots, not a blank one


def test_write_report_refuses_an_unknown_format(two_runs, tmp_path):
    _, tracker, first, _ = two_runs
    with pytest.raises(Exception, match="expected html and/or md"):
        write_report(tracker, first, tmp_path, ["pdf"], log_to_run=False)


def test_ptb_cross_validation_reports_window_record_and_patient_levels(tmp_path, capsys):
    fixtures = REPO / "tests" / "fixtures"
    config = write_pipeline(
        tmp_path,
        "ptb",
        f"""
download: {{database: ptbdb, version: fixtures, source: {fixtures / "ptbdb"}}}
signal: {{leads: [i, ii, v1, v2, v5, v6], fs: 100, workers: 1}}
segment: {{task: mi_vs_healthy, kind: windows, window_s: 2.56, stride_s: 1.28}}
split: {{protocol: kfold, folds: 2, val_fraction: 0.5}}
model: {{hidden: 8, layers: 1, pooling: mean, use_rr: false, downsample: 4}}
train: {{epochs: 2, batch_size: 8}}
evaluate: {{bootstrap: 50}}
""",
    )
    assert main(["run", "--config", str(config)]) == 0
    tracker = Tracker(f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}", "ptb")
    runs = tracker.search()
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 2  # one nested run per fold
    parent = parents.iloc[0]
    assert "metrics.patient_MI_recall" in runs.columns
    text = next((tmp_path / "reports" / "ptb").glob("*/report.md")).read_text()
    assert "## Window, record and patient level" in text
    assert re.search(r"^\| patient \| 4 \| Se \(recall\) \|", text, re.M)
    assert "## Per patient" in text
    assert "**this run** (patient level) | patient-wise 2-fold cross-validation, 4 patients" in text
    assert parent["status"] == "FINISHED"


def test_test_beats_are_also_reported_by_their_reference_rhythm(two_runs):
    root, _, first, _ = two_runs
    folder = root / "reports" / "smoke" / first
    predictions = pd.read_csv(folder / "predictions.csv", keep_default_na=False)
    counts = predictions["rhythm"].replace("", "(none)").value_counts()
    assert "N" in counts
    text = (folder / "report.md").read_text()
    section = text.split("## Per reference rhythm", 1)[1].split("\n## ", 1)[0]
    for rhythm, n in counts.items():
        row = re.search(rf"^\| {re.escape(rhythm)}( \([^)]*\))? \| ([\d,]+) \|", section, re.M)
        assert row and int(row.group(2).replace(",", "")) == n, rhythm
    assert "| N (normal sinus rhythm) |" in section
    metrics = json.loads((folder / "metrics.json").read_text())
    logged = {row["rhythm"] or "(none)": row["n"] for row in metrics["per_rhythm"]}
    assert logged == counts.to_dict()


def test_published_figures_say_which_were_checked_and_against_what(two_runs):
    from ecg.report.document import published_results

    anchors = [a for database in published_results().values() for a in database]
    for a in anchors:
        assert a["work"] and a["protocol"] and a["source"]
        assert a["checked"] is False or (isinstance(a["checked"], str) and a["checked"])
    root, _, first, _ = two_runs
    text = (root / "reports" / "smoke" / first / "report.md").read_text()
    section = text[text.index("## Against published results") :]
    unchecked = re.search(r"checked against the papers: (.*?)\. Sources:", section, re.S)
    mitdb = published_results()["mitdb"]
    assert unchecked.group(1).split(", ") == [a["work"] for a in mitdb if not a["checked"]]
    for a in (a for a in mitdb if a["checked"]):
        assert f"Checked against {a['checked']}." in section
        assert a["work"] not in unchecked.group(1)


def test_a_patient_adversary_is_reported_against_a_head_that_finds_no_patient(two_runs, tmp_path):
    _, tracker, first, _ = two_runs
    run = collect(tracker, first)
    assert "patient adversary" not in markdown(build(run, tmp_path))
    run.params["train.patient_adversary"] = "1.0"
    for i, history in enumerate(run.histories.values()):
        history["adversary_loss"] = [3.0 - 0.1 * i - 0.01 * e for e in range(len(history))]
    text = markdown(build(run, tmp_path))
    patients = int(run.split_summary.query("split == 'train'")["patients"].max())
    last = ", ".join(f"{h['adversary_loss'].iloc[-1]:.2f}" for h in run.histories.values())
    assert "A patient adversary (weight 1.0) trained beside the model" in text
    assert f"its loss in the last epoch: {last}" in text
    assert f"about ln {patients} = {math.log(patients):.2f}" in text


def test_synthetic_fusion_beats_are_counted_beside_the_real_ones(two_runs, tmp_path):
    _, tracker, first, _ = two_runs
    run = collect(tracker, first)
    assert "synthetic fusion" not in markdown(build(run, tmp_path))
    run.params["augment.fusion_share"] = "1.0"
    real = int(run.split_summary.query("split == 'train'")["F"].sum())
    text = markdown(build(run, tmp_path))
    assert f"also held as many synthetic fusion (F) beats as real ones ({real:,} beside" in text
    run.params["augment.fusion_share"] = "0.5"
    text = markdown(build(run, tmp_path))
    assert f"0.5 times as many synthetic fusion (F) beats as real ones ({round(real / 2):,}" in text
    # the count the train stage logged wins over the share: what was made, not what was asked
    run.logged_metrics["fusion_beats"] = 7.0
    assert f"real ones (7 beside the table's {real:,} real ones)" in markdown(build(run, tmp_path))
    run.logged_metrics["fusion_beats"] = 0.0
    text = markdown(build(run, tmp_path))
    assert real and "but none were made: no training patient had the N and V beats" in text
    assert "also held" not in text
    run.split_summary.loc[run.split_summary["split"] == "train", "F"] = 0
    text = markdown(build(run, tmp_path))
    assert "none were made: the training side holds no real F beats to match" in text

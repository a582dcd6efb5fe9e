"""`ecg runs`: past runs of a pipeline as a terminal table, for people who skip the UI."""

from __future__ import annotations

import pandas as pd

from ecg.errors import EcgError
from ecg.tracking import Tracker

COLUMNS = {
    "metrics.test_accuracy": "accuracy",
    "metrics.test_macro_precision": "macro +P",
    "metrics.test_macro_recall": "macro Se",
    "metrics.test_macro_f1": "macro F1",
}
IGNORED_PARAMS = {"params.download.source", "params.download.mirror", "params.data_dir"}


def runs_table(
    tracker: Tracker, sort: str | None = None, limit: int = 20, max_param_columns: int = 6
) -> pd.DataFrame:
    """Top-level runs, newest first (or by ``sort``), with the params that differ between them."""
    runs = tracker.search(max_results=1000)
    if runs.empty:
        return runs
    if "tags.mlflow.parentRunId" in runs.columns:
        runs = runs[runs["tags.mlflow.parentRunId"].isna()]
    if sort:
        key = sort if sort.startswith("metrics.") else f"metrics.{sort}"
        if key not in runs.columns:
            known = sorted(
                c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.test_")
            )
            raise EcgError(f"--sort {sort}: no such metric (for example: {', '.join(known[:8])})")
        runs = runs.sort_values(key, ascending=False, na_position="last")
    runs = runs.head(limit).copy()
    for column in [c for c in runs.columns if c.startswith("params.")]:
        tag = "tags." + column.removeprefix("params.")  # a later stage's own setting
        if tag in runs.columns:
            runs[column] = runs[tag].fillna(runs[column])
    params = [
        c
        for c in runs.columns
        if c.startswith("params.")
        and c not in IGNORED_PARAMS
        and runs[c].astype(str).nunique(dropna=False) > 1
    ][:max_param_columns]
    table = pd.DataFrame(
        {
            "run": runs["run_id"].str[:8],
            "date": pd.to_datetime(runs["start_time"]).dt.strftime("%Y-%m-%d %H:%M"),
            "status": runs["status"],
        }
    )
    for column in params:
        table[column.removeprefix("params.")] = runs[column]
    for column, label in COLUMNS.items():
        table[label] = (runs[column] * 100).round(1) if column in runs.columns else float("nan")
    wall = pd.to_datetime(runs["end_time"]) - pd.to_datetime(runs["start_time"])
    table["wall"] = wall.dt.total_seconds().map(
        lambda s: "" if pd.isna(s) else f"{int(s // 60)}m{int(s % 60):02d}s"
    )
    return table.reset_index(drop=True)

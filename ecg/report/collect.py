"""Everything a report shows, read back from an MLflow run and its artifacts.

A report is built from the run alone (never from the current state of ``data/``), so it can be
rendered for any past run, on any machine that can reach the tracking store.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ecg.errors import EcgError
from ecg.tracking import Tracker


@dataclass
class RunData:
    run_id: str
    name: str
    status: str
    start: datetime
    end: datetime | None
    params: dict[str, str]
    tags: dict[str, str]
    logged_metrics: dict[str, float]
    metrics: dict
    """metrics.json of the evaluate stage."""
    predictions: pd.DataFrame
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)
    split_summary: pd.DataFrame | None = None
    split_meta: dict | None = None
    records: pd.DataFrame | None = None
    preprocess_meta: dict | None = None
    examples: dict[str, np.ndarray] | None = None

    @property
    def wall_seconds(self) -> float | None:
        return (self.end - self.start).total_seconds() if self.end else None

    @property
    def classes(self) -> list[str]:
        return list(self.metrics["classes"])


def collect(tracker: Tracker, run_id: str) -> RunData:
    try:
        run = tracker.run(run_id)
    except Exception as exc:
        raise EcgError(f"run {run_id}: not found in {tracker.uri} ({exc})") from None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        available = _artifact_paths(tracker, run_id)
        if "metrics.json" not in available:
            raise EcgError(
                f"run {run_id} has no metrics.json: its evaluate stage has not "
                "completed (run `ecg run PIPELINE` or `ecg evaluate PIPELINE`)"
            )

        def fetch(path: str) -> Path | None:
            return tracker.download(run_id, path, folder) if path in available else None

        metrics = json.loads(fetch("metrics.json").read_text())
        predictions = pd.read_csv(fetch("predictions.csv"), dtype={"record": str, "patient": str})
        histories = {}
        for name in sorted(p for p in available if p.startswith("history/")):
            histories[Path(name).stem.replace("_", " ")] = pd.read_csv(fetch(name))
        # one model's run: its own history; folds or ensemble members: one curve each (above)
        if not histories and (path := fetch("history.csv")) is not None:
            histories["model"] = pd.read_csv(path)
        data = RunData(
            run_id=run_id,
            name=run.info.run_name or run_id,
            status=run.info.status,
            start=_time(run.info.start_time),
            end=_time(run.info.end_time) if run.info.end_time else None,
            params=settled_params(run.data.params, run.data.tags),
            tags={
                k: v
                for k, v in run.data.tags.items()
                if not k.startswith("mlflow.") and k not in run.data.params
            },
            logged_metrics=dict(run.data.metrics),
            metrics=metrics,
            predictions=predictions,
            histories=histories,
        )
        if (path := fetch("data/split_summary.csv")) is not None:
            data.split_summary = pd.read_csv(path)
        if (path := fetch("data/split_meta.json")) is not None:
            data.split_meta = json.loads(path.read_text())
        if (path := fetch("data/records.csv")) is not None:
            data.records = pd.read_csv(
                path, dtype={"record": str, "patient": str, "reason": str, "lead_issues": str}
            )
        if (path := fetch("data/preprocess_meta.json")) is not None:
            data.preprocess_meta = json.loads(path.read_text())
        if (path := fetch("examples.npz")) is not None:
            with np.load(path) as npz:
                data.examples = {k: npz[k] for k in npz.files}
    return data


def settled_params(params: dict[str, str], tags: dict[str, str]) -> dict[str, str]:
    """The run's params, with the ones a later stage ran under instead (the evaluate stage
    writes its settings as tags of the same name, since a run's params cannot change)."""
    return {**params, **{k: v for k, v in tags.items() if k in params}}


def _artifact_paths(tracker: Tracker, run_id: str) -> set[str]:
    paths: set[str] = set()
    pending = [None]
    while pending:
        for item in tracker.client.list_artifacts(run_id, pending.pop()):
            if item.is_dir:
                pending.append(item.path)
            else:
                paths.add(item.path)
    return paths


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)

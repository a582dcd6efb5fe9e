"""The only module that imports mlflow.

Runs are addressed by id through an ``MlflowClient`` bound to one tracking URI, rather than through
mlflow's process-global active run, so two stages (or a test and a server) never write into each
other's runs. The default store is SQLite inside the project's data folder, set explicitly:
MLflow 3 would otherwise create ``mlflow.db`` wherever the command happened to start, and its plain
file store refuses to run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ecg.errors import EcgError, first_line

log = logging.getLogger("ecg")

_PARAM_LIMIT = 6000  # characters MLflow keeps of a param value


def _mlflow():
    import mlflow  # imported here: it costs seconds, and `ecg status` never needs it

    return mlflow


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a local store live beside its database.

    MLflow's default for a SQLite store is ``./mlruns`` of whatever folder the process started
    in, which scatters models over the user's disk (and put the test suite's artifacts into the
    working tree). A server decides for itself.
    """
    path = _sqlite_path(uri)
    if path is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]", "_", experiment)
    return (path.parent / "mlartifacts" / folder).as_uri()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a local SQLite store; None for a server."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _create_store_whole(path: Path) -> None:
    """A new SQLite store is built under a temporary name and put in place whole.

    MLflow creates its schema through dozens of migrations that take seconds on a first run;
    killed among them (Ctrl-C), it left a database that every later run refused with a
    traceback (caught by tests/test_interrupt.py). A hard link puts the finished file in place
    only if no other process did so first.
    """
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _mlflow().MlflowClient(tracking_uri=f"sqlite:///{temporary}").search_experiments(
            max_results=1
        )
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile: theirs
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class Tracker:
    def __init__(self, uri: str, experiment: str | None):
        mlflow = _mlflow()
        # MLflow's own INFO lines (table creation, ...) and download bars are noise in a
        # pipeline's output; a user who wants the bars can set the variable.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if (path := _sqlite_path(uri)) is not None:
            _create_store_whole(path)
        self.uri = uri
        self.experiment = experiment
        try:  # a SQLite store is opened (and checked) when the client is made
            self.client = mlflow.MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment) if experiment else None
        except Exception as exc:  # sqlalchemy, sqlite3 and MLflow each raise their own kind
            raise EcgError(
                f"{uri}: cannot open the MLflow store ({first_line(exc)}); if it is a local file "
                "that an interrupted run left half-made, move it away and run again"
            ) from None
        if experiment is None:  # only reading runs and models by id
            self.experiment_id = None
            return
        self.experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment, _artifact_location(uri, experiment))
        )

    # --------------------------------------------------------------------- runs

    def start(self, run_name: str, tags: Mapping[str, str], parent: str | None = None) -> str:
        all_tags = dict(tags)
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        return run.info.run_id

    def finish(self, run_id: str) -> None:
        self.client.set_terminated(run_id, status="FINISHED")

    def fail(self, run_id: str, error: BaseException) -> None:
        """Mark a run FAILED with the error; what it had logged stays."""
        message = f"{type(error).__name__}: {error}"[:5000]
        self.client.set_tag(run_id, "error", message)
        interrupted = isinstance(error, KeyboardInterrupt)
        self.client.set_terminated(run_id, status="KILLED" if interrupted else "FAILED")

    def reopen(self, run_id: str) -> None:
        """A later stage (evaluate, report) writes into the run its model was trained in."""
        self.client.update_run(run_id, status="RUNNING")

    # --------------------------------------------------------------------- values

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self._log_batch(run_id, "params", params)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Tags, unlike params, may change: the evaluate stage's settings are tags, since it can
        run again inside a finished run with other settings."""
        self._log_batch(run_id, "tags", tags)

    def _log_batch(self, run_id: str, kind: str, values: Mapping[str, Any]) -> None:
        """In batches of 100, the most one MLflow request takes."""
        mlflow = _mlflow()
        entity = {"params": mlflow.entities.Param, "tags": mlflow.entities.RunTag}[kind]
        items = [entity(k, param_text(v)) for k, v in sorted(values.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, **{kind: items[start : start + 100]})

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None):
        mlflow = _mlflow()
        import time

        now = int(time.time() * 1000)
        items = [
            mlflow.entities.Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start : start + 500])

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def log_artifact_as(self, run_id: str, path: Path, name: str) -> None:
        """Log ``path`` under another artifact name, e.g. ``data/records.csv``."""
        target = Path(name)
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / target.name
            shutil.copyfile(path, copy)
            self.client.log_artifact(run_id, str(copy), target.parent.as_posix() or None)

    def log_dataset(self, run_id: str, table, name: str, source: str, context: str) -> None:
        """Record what the model was trained on (``mlflow.log_input``): a table with its digest."""
        mlflow = _mlflow()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The specified dataset source")
            dataset = mlflow.data.from_pandas(table, source=source, name=name)
        self.client.log_inputs(
            run_id,
            datasets=[
                mlflow.entities.DatasetInput(
                    dataset._to_mlflow_entity(),
                    tags=[mlflow.entities.InputTag("mlflow.data.context", context)],
                )
            ],
        )

    # --------------------------------------------------------------------- models

    def log_model(
        self, run_id: str, model, example, registered_name: str | None, requirements: list[str]
    ) -> str:
        """Log a torch module as an MLflow model, optionally registered; returns its URI.

        ``serialization_format="pickle"`` with explicit requirements: the default path traces the
        LSTM through torch.export (tens of seconds) and loads back as a GraphModule; inferred
        requirements drop torch's ``+cpu`` label (measured, FACTS.md).
        """
        mlflow = _mlflow()
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, output.astype(np.float32))
        # Its warning about pickle is the trade-off made knowingly above.
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
        # Saved locally and logged through this client, not with mlflow.log_model: that needs
        # mlflow's process-wide active run and tracking URI, and setting the URI also sets
        # MLFLOW_TRACKING_URI for everything the process does afterwards.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model"
            mlflow.pytorch.save_model(
                model,
                str(path),
                serialization_format="pickle",
                pip_requirements=requirements,
                signature=signature,
                input_example=example,
                # the pickled model refers to ecg.model: ship the package with it
                code_paths=[str(Path(__file__).resolve().parent)],
            )
            self.client.log_artifacts(run_id, str(path), "model")
        uri = f"runs:/{run_id}/model"
        if not registered_name:
            return uri
        try:
            self.client.create_registered_model(registered_name)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self.client.create_model_version(registered_name, source=uri, run_id=run_id)
        return f"models:/{registered_name}/{version.version}"

    # --------------------------------------------------------------------- reading

    def run(self, run_id: str):
        return self.client.get_run(run_id)

    def search(self, max_results: int = 100, order_by: list[str] | None = None):
        """Runs of the experiment as a table shaped like ``mlflow.search_runs``'s (run_id,
        status, start_time, end_time, params.*, metrics.*, tags.*), newest first."""
        import pandas as pd

        runs = self.client.search_runs(
            [self.experiment_id],
            max_results=max_results,
            order_by=order_by or ["attributes.start_time DESC"],
        )
        rows = []
        for run in runs:
            row = {
                "run_id": run.info.run_id,
                "status": run.info.status,
                "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
                "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True)
                if run.info.end_time
                else pd.NaT,
                "tags.mlflow.parentRunId": None,
            }
            row.update({f"params.{k}": v for k, v in run.data.params.items()})
            row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
            row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def download(self, run_id: str, path: str, into: Path) -> Path:
        return Path(self.client.download_artifacts(run_id, path, str(into)))

    def run_of_model(self, uri: str) -> str:
        """The run a model URI comes from: models:/NAME/VERSION, models:/MODEL_ID, runs:/ID/..."""
        try:
            if uri.startswith("runs:/"):
                return uri.removeprefix("runs:/").split("/")[0]
            parts = uri.removeprefix("models:/").strip("/").split("/")
            if len(parts) == 2:
                name, version = parts
                if version == "latest":
                    versions = self.client.search_model_versions(f"name='{name}'")
                    version = str(max(int(v.version) for v in versions))
                return self.client.get_model_version(name, version).run_id
            return self.client.get_logged_model(parts[0]).source_run_id
        except Exception as exc:
            raise EcgError(f"--model {uri}: not found in {self.uri} ({exc})") from None


def param_text(value: Any) -> str:
    """A param's or tag's value as MLflow stores it: lists as JSON, cut to MLflow's limit."""
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text if len(text) <= _PARAM_LIMIT else text[: _PARAM_LIMIT - 3] + "..."


def ui_command(uri: str, port: int) -> list[str]:
    """The ``mlflow ui`` command line for a store (run by ``ecg ui``)."""
    import sys

    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]

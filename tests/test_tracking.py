"""MLflow: the smoke pipeline against a real `mlflow server` over HTTP, read back by a user."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ecg.cli import main
from ecg.tracking import Tracker

from conftest import write_pipeline

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    server_log = open(root / "server.log", "w")  # noqa: SIM115 - open for the server's lifetime
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=server_log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # stopped by PID, with its workers
        process.wait(timeout=30)
        server_log.close()


def _smoke_project(tmp_path, fixtures) -> Path:
    text = (REPO / "pipelines" / "smoke.yaml").read_text()
    text = text.replace("source: tests/fixtures/mitdb", f"source: {fixtures / 'mitdb'}")
    return write_pipeline(tmp_path, "smoke", text)


@pytest.mark.slow
def test_smoke_pipeline_logs_everything_to_a_real_mlflow_server(
    mlflow_server, tmp_path, fixtures, monkeypatch
):
    import mlflow

    monkeypatch.chdir(tmp_path)
    _smoke_project(tmp_path, fixtures)
    assert main(["run", "smoke", "--tracking-uri", mlflow_server]) == 0
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store
    assert "MLFLOW_TRACKING_URI" not in os.environ  # and nothing leaked into the process

    # never mlflow.set_tracking_uri: it also sets the variable for the rest of the process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    runs = Tracker(mlflow_server, "smoke").search()
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    assert run["params.model.hidden"] == "16"
    assert run["params.split.protocol"] == "dechazal"
    assert run["tags.split_protocol"] == "dechazal"
    assert run["tags.git_commit"]
    metrics = json.loads(next((tmp_path / "reports" / "smoke").glob("*/metrics.json")).read_text())
    assert run["run_id"] == metrics["run_id"]
    assert run["metrics.test_accuracy"] == pytest.approx(metrics["test"]["metrics"]["accuracy"])
    assert run["metrics.test_S_recall"] == pytest.approx(metrics["test"]["metrics"]["S_recall"])
    history = mlflow.MlflowClient(mlflow_server).get_metric_history(run["run_id"], "val_macro_f1")
    assert [m.step for m in history] == [1, 2, 3]
    artifacts = {a.path for a in mlflow.MlflowClient(mlflow_server).list_artifacts(run["run_id"])}
    assert {"metrics.json", "predictions.csv", "confusion_matrix.png"} <= artifacts

    model = mlflow.pyfunc.load_model("models:/ecg-smoke/1")
    example = np.zeros((3, 90, 1 + 9), dtype=np.float32)
    example[..., 1:] = 1.0  # RR features: a steady 1 s rhythm
    proba = np.asarray(model.predict(example))
    assert proba.shape == (3, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_a_failed_stage_marks_the_run_failed_and_keeps_what_was_logged(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "failures")
    run_id = tracker.start("doomed", {"pipeline": "x"})
    tracker.log_metrics(run_id, {"val_macro_f1": 0.5}, step=1)
    tracker.fail(run_id, RuntimeError("disk full"))
    run = tracker.run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: disk full"
    assert run.data.metrics["val_macro_f1"] == 0.5


def test_the_default_store_is_in_the_project_data_folder(tmp_path, fixtures, monkeypatch):
    from ecg.config import load_config

    path = _smoke_project(tmp_path, fixtures)
    monkeypatch.chdir("/")
    config = load_config(path)
    assert config.tracking_uri == f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"


def test_artifacts_of_a_local_store_live_beside_it_not_in_the_working_folder(tmp_path, monkeypatch):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tracker = Tracker(f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}", "my experiment")
    run_id = tracker.start("r", {})
    note = tmp_path / "note.txt"
    note.write_text("hello")
    tracker.log_artifact(run_id, note)
    assert (tmp_path / "data" / "mlartifacts" / "my_experiment").is_dir()
    assert list(cwd.iterdir()) == []


def test_a_new_local_store_appears_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "data" / "mlflow.db"
    tracker = Tracker(f"sqlite:///{path}", "whole")
    run = tracker.start("r", {})
    tracker.finish(run)
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []
    assert Tracker(f"sqlite:///{path}", "whole").run(run).info.status == "FINISHED"


def test_a_damaged_local_store_is_named_with_what_to_do(tmp_path):
    from ecg.errors import EcgError

    path = tmp_path / "mlflow.db"
    path.write_bytes(b"half a database, as a killed first run would leave " * 100)
    with pytest.raises(EcgError, match=r"mlflow\.db: cannot open the MLflow store .*move it away"):
        Tracker(f"sqlite:///{path}", "anything")

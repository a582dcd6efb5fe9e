"""Killing `ecg run` at any moment: the next run finishes the work, redoes nothing complete and
reads nothing half-written."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecg.config import load_config
from ecg.digests import DigestCache
from ecg.pipeline import engine_for

from conftest import write_pipeline

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def _smoke(root: Path) -> Path:
    text = (REPO / "pipelines" / "smoke.yaml").read_text()
    text = text.replace("source: tests/fixtures/mitdb", f"source: {FIXTURES / 'mitdb'}")
    return write_pipeline(root, "smoke", text + "\ntracking:\n  experiment: smoke\n")


def _ecg(*args: str) -> list[str]:
    return [sys.executable, "-m", "ecg", *args]


def _outputs(config_path: Path) -> dict[str, str]:
    config = load_config(config_path)
    engine = engine_for(config)
    digests = DigestCache(config.data_path / "digests-check.json")
    return {s: digests.path_digest(engine.out_dir(s)) for s in ("preprocess", "split")}


@pytest.mark.slow
def test_killed_at_any_moment_the_next_run_completes_the_same_outputs(tmp_path):
    clean = _smoke(tmp_path / "clean")
    subprocess.run(_ecg("-q", "run", "--config", str(clean)), check=True)
    expected = _outputs(clean)

    config = _smoke(tmp_path / "killed")
    kills = 0
    for delay, sig in (
        (0.8, signal.SIGTERM),
        (1.6, signal.SIGINT),
        (2.6, signal.SIGTERM),
        (4.0, signal.SIGINT),
        (6.0, signal.SIGTERM),
    ):
        process = subprocess.Popen(
            _ecg("run", "--config", str(config)), stderr=subprocess.PIPE, text=True
        )
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(sig)
            kills += 1
        _, err = process.communicate(timeout=120)
        assert "Traceback" not in err
        if process.returncode == 130:
            assert "interrupted" in err
        elif process.returncode:
            # a signal that lands while Python is still importing ends it before `ecg` can
            # catch anything: nothing has been written yet
            assert process.returncode in (-signal.SIGINT, -signal.SIGTERM), err
        work = config.parent.parent / "data" / "processed" / "smoke"
        assert not list(work.glob(".*.tmp-*")), "a killed stage left its temporary folder"
    assert kills >= 3
    final = subprocess.run(
        _ecg("run", "--config", str(config)), capture_output=True, text=True, check=True
    )
    status = subprocess.run(
        _ecg("status", "--config", str(config)), capture_output=True, text=True, check=True
    ).stdout
    assert "stale" not in status, status
    assert _outputs(config) == expected
    assert "Traceback" not in final.stderr


def test_a_killed_download_resumes_without_fetching_again(tmp_path, mirror):
    mirror.publish(FIXTURES / "mitdb", "mitdb", "fixtures")
    mirror.delay_s = 0.05
    config = write_pipeline(tmp_path, "p", "download: {database: mitdb, version: fixtures}\n")
    args = _ecg("download", "--config", str(config), "--mirror", mirror.url)
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(mirror.fetched(".dat")) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err
    fetched_before = {p for p, _ in mirror.requests if not p.endswith(("RECORDS", ".txt"))}
    mirror.requests.clear()
    mirror.delay_s = 0
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    fetched = int(re.search(r"fetched (\d+) ", done.stderr).group(1))
    assert 0 < fetched < 36
    assert fetched + len(fetched_before) >= 36
    refetched = {p for p, _ in mirror.requests} & fetched_before
    # at most the one file that was being written when the signal came is asked for again
    assert len({p for p in refetched if not p.endswith(".hea")}) <= 1

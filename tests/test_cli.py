"""The ecg command as a user types it."""

from __future__ import annotations

import re
import subprocess
import sys

from ecg.cli import main

from conftest import write_pipeline


def _smoke(tmp_path, fixtures):
    return write_pipeline(
        tmp_path,
        "smoke",
        f"download:\n  database: mitdb\n  version: fixtures\n  source: {fixtures / 'mitdb'}\n",
    )


def test_download_then_nothing_to_do_then_status(tmp_path, fixtures, capsys, monkeypatch):
    _smoke(tmp_path, fixtures)
    monkeypatch.chdir(tmp_path)
    assert main(["download", "smoke"]) == 0
    err = capsys.readouterr().err
    assert "download: running (never completed)" in err
    assert "12 records, 36 files in data/raw/mitdb/fixtures; fetched 36" in err
    assert (tmp_path / "data" / "raw" / "mitdb" / "fixtures" / "232.atr").is_file()

    assert main(["download", "smoke"]) == 0
    err = capsys.readouterr().err
    assert "download: fresh, nothing to do" in err
    assert "every stage is fresh; nothing was run" in err

    assert main(["status", "smoke"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"download +fresh +\(finished ", out)
    assert re.search(r"preprocess +stale\n +- never completed", out)


def test_status_explains_why_a_stage_is_stale(tmp_path, fixtures, capsys, monkeypatch):
    _smoke(tmp_path, fixtures)
    monkeypatch.chdir(tmp_path)
    main(["download", "smoke"])
    (tmp_path / "data" / "raw" / "mitdb" / "fixtures" / "100.dat").unlink()
    capsys.readouterr()
    main(["status", "smoke", "--records", "100,232"])
    out = capsys.readouterr().out
    assert re.search(r"download +stale", out)
    assert "param download.records changed: [" in out
    assert "data/raw/mitdb/fixtures/100.dat is missing" in out
    # running it puts the file back, verified
    assert main(["run", "smoke", "--until", "download"]) == 0
    assert (tmp_path / "data" / "raw" / "mitdb" / "fixtures" / "100.dat").is_file()


def test_source_option_reaches_the_download_stage(tmp_path, fixtures, capsys):
    path = write_pipeline(
        tmp_path,
        "p",
        "download: {database: ptbdb, version: fixtures}\n"
        "segment: {task: mi_vs_healthy, kind: windows}\nsplit: {protocol: kfold}\n",
    )
    code = main(
        ["run", "--config", str(path), "--source", str(fixtures / "ptbdb"), "--until", "download"]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "4 records, 8 files" in err
    assert "4 optional files absent at the source (.xyz)" in err


def test_unreachable_source_is_one_line_and_no_traceback(tmp_path, closed_port_url, capsys):
    path = write_pipeline(tmp_path, "p", "download:\n  database: mitdb\n")
    code = main(
        [
            "download",
            "--config",
            str(path),
            "--mirror",
            closed_port_url,
            "--set",
            "download.retries=0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("ecg: error:")]
    assert len(lines) == 1
    assert "could not reach the mirror" in lines[0] and "--source DIR" in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "data" / "raw" / "mitdb" / "1.0.0").exists()
    assert not (tmp_path / "data" / "processed" / "p" / "download").exists()


def test_config_typo_is_one_line_naming_the_file(tmp_path, capsys):
    path = write_pipeline(tmp_path, "p", "download:\n  database: mitdb\n  recrods: [100]\n")
    assert main(["status", "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ecg: error: {path}: download.recrods: unknown key")


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "ecg", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("ecg ")

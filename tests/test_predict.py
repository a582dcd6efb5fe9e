"""`ecg predict` and `ecg export` on a model trained on the fixtures, and every bad input."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import wfdb

from ecg.cli import main
from ecg.errors import EcgError
from ecg.export import example_input, export, packaged
from ecg.predict import load_model

from conftest import write_pipeline

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A model trained on the fixtures (smoke pipeline, up to train), in a throwaway project."""
    root = tmp_path_factory.mktemp("project")
    text = (REPO / "pipelines" / "smoke.yaml").read_text()
    write_pipeline(
        root, "smoke", text.replace("source: tests/fixtures/mitdb", f"source: {FIXTURES / 'mitdb'}")
    )
    assert main(["run", "--config", str(root / "pipelines" / "smoke.yaml")]) == 0
    return root


@pytest.fixture
def model_path(project) -> Path:
    return project / "data" / "processed" / "smoke" / "train" / "fold_0" / "model.pt"


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ecg: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_predict_on_a_wfdb_record_with_its_reference_beats(model_path, tmp_path, capsys):
    out = tmp_path / "208.csv"
    assert (
        main(
            [
                "predict",
                str(FIXTURES / "mitdb" / "208"),
                "--model",
                str(model_path),
                "--annotations",
                "atr",
                "--out",
                str(out),
                "--plot",
                str(tmp_path / "208.png"),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    table = pd.read_csv(out)
    ann = wfdb.rdann(str(FIXTURES / "mitdb" / "208"), "atr")
    beats = [s for s, y in zip(ann.sample, ann.symbol, strict=True) if y in "NLRejAaJSVEF/fQ"]
    assert set(table["sample"]) <= set(beats)
    assert len(table) >= len(beats) - 2  # at most one beat lost at each edge
    assert list(table.columns[:4]) == ["sample", "time_s", "reference", "class"]
    assert summary["pieces"] == len(table) and sum(summary["counts"].values()) == len(table)
    assert 40 < summary["heart_rate_bpm"] < 200
    assert (tmp_path / "208.png").stat().st_size > 10_000


def test_predict_on_a_csv_detects_beats_and_reports_samples_at_its_own_rate(
    model_path, tmp_path, capsys
):
    record = wfdb.rdrecord(str(FIXTURES / "mitdb" / "100"))
    fs = 250.0  # a rate the model never saw: it is resampled on the way in
    from scipy.signal import resample_poly

    x = resample_poly(record.p_signal[:, 0], 25, 36)
    csv = tmp_path / "ecg.csv"
    pd.DataFrame({"MLII": x}).to_csv(csv, index=False)
    out = tmp_path / "ecg.predictions.csv"
    assert (
        main(["predict", str(csv), "--fs", str(fs), "--model", str(model_path), "--out", str(out)])
        == 0
    )
    table = pd.read_csv(out)
    ann = wfdb.rdann(str(FIXTURES / "mitdb" / "100"), "atr")
    reference = (
        np.array([s for s, y in zip(ann.sample, ann.symbol, strict=True) if y == "N" or y == "A"])
        * fs
        / 360
    )
    assert abs(len(table) - len(reference)) <= 3
    # each detected beat sits on a reference beat, in samples at 250 Hz
    nearest = np.abs(table["sample"].to_numpy()[:, None] - reference[None, :]).min(axis=1)
    assert np.median(nearest) <= 0.05 * fs
    assert table["sample"].max() < len(x)


def test_predict_a_folder_in_batch(model_path, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("100", "232"):
        for ext in ("hea", "dat", "atr"):
            shutil.copy(FIXTURES / "mitdb" / f"{name}.{ext}", folder)
    assert main(["predict", str(folder), "--model", str(model_path)]) == 0
    summary = json.loads((folder / "predictions" / "summary.json").read_text())
    assert [r["record"] for r in summary["records"]] == ["100", "232"]
    assert (folder / "predictions" / "232.csv").is_file()


def test_predict_with_an_mlflow_model_uri(project, capsys):
    store = f"sqlite:///{project / 'data' / 'mlflow.db'}"
    assert (
        main(
            [
                "predict",
                str(FIXTURES / "mitdb" / "100"),
                "--model",
                "models:/ecg-smoke/1",
                "--tracking-uri",
                store,
                "--out",
                str(project / "p.csv"),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["pieces"] > 100


def test_exported_program_gives_the_same_outputs_at_any_batch_size(model_path, tmp_path):
    model = load_model(str(model_path))
    written = export(model, tmp_path, ["exported"])
    assert [p.name for p in written] == ["model.pt2", "spec.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2", "spec.json"]
    program = torch.export.load(str(written[0])).module()
    for batch in (1, 16):  # the export's example has 2
        x = example_input(model, batch=batch)
        with torch.no_grad():
            torch.testing.assert_close(program(x), packaged(model)(x), rtol=1e-5, atol=1e-6)
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert spec["classes"] == ["N", "S", "V", "F"] and spec["signal"]["fs"] == 128.0


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:DeprecationWarning")
def test_torchscript_export_gives_the_same_outputs_and_one_warning(model_path, tmp_path, caplog):
    model = load_model(str(model_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # torch's own are turned into ours
        written = export(model, tmp_path, ["torchscript"])
    assert [r.message for r in caplog.records if "TorchScript is deprecated" in r.message]
    scripted = torch.jit.load(str(written[0]))
    x = example_input(model, batch=16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), packaged(model)(x), rtol=1e-5, atol=1e-6)


def test_ecg_export_writes_the_exported_program_by_default(model_path, tmp_path, capsys):
    assert main(["export", "--model", str(model_path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == ["model.pt2", "spec.json"]


def test_export_names_an_unknown_format_before_writing(model_path, tmp_path):
    with pytest.raises(EcgError, match=r"--format pt: expected one or more of exported, "):
        export(load_model(str(model_path)), tmp_path / "out", ["exported", "pt"])
    assert not (tmp_path / "out").exists()


def test_onnx_export_gives_the_same_outputs_in_one_file(model_path, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = load_model(str(model_path))
    written = export(model, tmp_path, ["onnx"])
    assert [p.name for p in written] == ["model.onnx", "spec.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "spec.json"]
    session = ort.InferenceSession(str(written[0]))
    x = example_input(model, batch=16)  # another batch size than the export's example
    (got,) = session.run(None, {"packed": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, packaged(model)(x).numpy(), rtol=1e-4, atol=1e-5)


def test_onnx_export_without_its_packages_says_what_to_install(model_path, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    absent = ("onnx", "onnxscript")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name)
    )
    with pytest.raises(EcgError, match=r"needs the onnx and onnxscript package\(s\): pip install"):
        export(load_model(str(model_path)), tmp_path / "out", ["onnx"])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ bad input, one clear error


def _copy_record(name: str, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for ext in ("hea", "dat", "atr"):
        shutil.copy(FIXTURES / "mitdb" / f"{name}.{ext}", folder)
    return folder / name


def test_truncated_dat(model_path, tmp_path, capsys):
    record = _copy_record("100", tmp_path)
    data = record.with_suffix(".dat").read_bytes()
    record.with_suffix(".dat").write_bytes(data[: len(data) // 2])
    assert main(["predict", str(record), "--model", str(model_path)]) == 1
    message = _error(capsys)
    assert "100.dat" in message and "truncated" in message


def test_header_whose_sample_count_lies(model_path, tmp_path, capsys):
    record = _copy_record("100", tmp_path)
    header = record.with_suffix(".hea")
    header.write_text(header.read_text().replace("100 2 360 43200", "100 2 360 90000", 1))
    assert main(["predict", str(record), "--model", str(model_path)]) == 1
    assert "(90,000 samples)" in _error(capsys)


def test_unknown_annotation_symbol_is_reported_not_guessed(model_path, tmp_path, capsys):
    record = _copy_record("100", tmp_path)
    ann = wfdb.rdann(str(record), "atr")
    symbols = list(ann.symbol)
    symbols[5] = "?"  # a WFDB code (unclassifiable beat) outside the AAMI table
    wfdb.wrann("100", "atr", ann.sample, symbols, write_dir=str(tmp_path))
    preprocess_like = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ecg.labels import aami_labels; import wfdb;"
            f"print(aami_labels(wfdb.rdann({str(record)!r}, 'atr').symbol)[2])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert preprocess_like.stdout.strip() == "Counter({'?': 1})"
    out = tmp_path / "p.csv"
    assert (
        main(
            [
                "predict",
                str(record),
                "--model",
                str(model_path),
                "--annotations",
                "atr",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert int(ann.sample[5]) not in set(pd.read_csv(out)["sample"])


@pytest.mark.parametrize("column", ["nan", "flat"])
def test_all_nan_or_flat_lead(model_path, tmp_path, capsys, column):
    csv = tmp_path / "bad.csv"
    values = np.full(3600, np.nan) if column == "nan" else np.zeros(3600)
    pd.DataFrame({"MLII": values}).to_csv(csv, index=False)
    assert main(["predict", str(csv), "--fs", "360", "--model", str(model_path)]) == 1
    message = _error(capsys)
    assert "bad.csv" in message and f"MLII: {column}" in message and "dropped" in message


def test_wrong_fs(model_path, tmp_path, capsys):
    assert (
        main(
            ["predict", str(FIXTURES / "mitdb" / "100"), "--fs", "250", "--model", str(model_path)]
        )
        == 1
    )
    assert "--fs 250 contradicts" in _error(capsys)
    csv = tmp_path / "slow.csv"
    pd.DataFrame({"MLII": np.sin(np.arange(3000) / 5)}).to_csv(csv, index=False)
    assert main(["predict", str(csv), "--fs", "50", "--model", str(model_path)]) == 1
    assert "Nyquist" in _error(capsys)


def test_csv_with_text_in_a_numeric_column(model_path, tmp_path, capsys):
    csv = tmp_path / "text.csv"
    csv.write_text("MLII\n0.1\n0.2\nabc\n0.3\n")
    assert main(["predict", str(csv), "--fs", "360", "--model", str(model_path)]) == 1
    assert "text.csv: column MLII, data row 3: 'abc' is not a number" in _error(capsys)


def test_empty_file(model_path, tmp_path, capsys):
    csv = tmp_path / "empty.csv"
    csv.write_text("")
    assert main(["predict", str(csv), "--fs", "360", "--model", str(model_path)]) == 1
    assert "empty.csv: the file is empty" in _error(capsys)


def test_record_shorter_than_one_window(model_path, tmp_path, capsys):
    csv = tmp_path / "short.csv"
    pd.DataFrame({"MLII": np.sin(np.arange(180) / 5)}).to_csv(csv, index=False)
    out = tmp_path / "keep.csv"
    out.write_text("earlier results\n")
    assert (
        main(["predict", str(csv), "--fs", "360", "--model", str(model_path), "--out", str(out)])
        == 1
    )
    assert "0.50 s long, shorter than one window" in _error(capsys)
    assert out.read_text() == "earlier results\n"  # nothing already computed is damaged


# The hostile file is pickled at the highest protocol on purpose; torch warns about that protocol
# before it refuses the file, which is what the test checks.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol 5 in the checkpoint")
def test_a_model_file_that_is_not_a_checkpoint_is_never_unpickled(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "model.pt"
    torch.save({"spec": Exploit()}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    assert main(["predict", str(FIXTURES / "mitdb" / "100"), "--model", str(evil)]) == 1
    assert "model.pt: not an ecg model checkpoint" in _error(capsys)
    assert not marker.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(["predict", str(FIXTURES / "mitdb" / "100"), "--model", str(junk)]) == 1
    assert "junk.pt: not an ecg model checkpoint" in _error(capsys)


def test_debug_shows_the_traceback(model_path, tmp_path):
    csv = tmp_path / "empty.csv"
    csv.write_text("")
    quiet = subprocess.run(
        [
            sys.executable,
            "-m",
            "ecg",
            "predict",
            str(csv),
            "--fs",
            "360",
            "--model",
            str(model_path),
        ],
        capture_output=True,
        text=True,
    )
    loud = subprocess.run(
        [
            sys.executable,
            "-m",
            "ecg",
            "--debug",
            "predict",
            str(csv),
            "--fs",
            "360",
            "--model",
            str(model_path),
        ],
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr
    assert re.search(r"EcgError: .*empty\.csv: the file is empty", loud.stderr)

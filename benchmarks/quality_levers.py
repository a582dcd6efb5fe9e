"""Measure quality levers one at a time on MIT-BIH, each a full `ecg run` with one change.

    python benchmarks/quality_levers.py --out benchmarks/levers.jsonl "model.input_norm=window" ...

Each lever is a list of ``--set`` overrides separated by spaces. For each run the table keeps the
validation macro-F1 (DS1 validation patients: the only number used to choose) and, reported beside
it but never used to choose, the DS2 test metrics. Results are appended as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ecg.config import find_pipeline, load_config


def run_lever(pipeline: str, overrides: list[str]) -> dict:
    command = [sys.executable, "-m", "ecg", "-q", "run", pipeline]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    config = load_config(find_pipeline(pipeline), overrides)
    run = json.loads(
        (config.data_path / "processed" / config.name / "train" / "run.json").read_text()
    )
    metrics = json.loads(
        (config.data_path / "processed" / config.name / "evaluate" / "metrics.json").read_text()
    )
    import torch

    model = torch.load(
        config.data_path / "processed" / config.name / "train" / "fold_0" / "model.pt",
        weights_only=True,
    )
    test = metrics["test"]["metrics"]
    return {
        "overrides": overrides,
        "run_id": run["run_id"],
        "seconds": round(seconds, 1),
        "best_epoch": model["best_epoch"],
        "val_macro_f1": model["best_val_macro_f1"],
        "test": {
            k: test[k]
            for k in (
                "accuracy",
                "macro_f1",
                "S_recall",
                "S_precision",
                "S_f1",
                "V_recall",
                "V_precision",
                "V_f1",
                "F_f1",
            )
        },
        "test_strict_accuracy": metrics.get("test_strict", {}).get("metrics", {}).get("accuracy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("levers", nargs="+", help='e.g. "train.sampler=balanced"')
    parser.add_argument("--pipeline", default="mitdb")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/levers.jsonl"))
    args = parser.parse_args()
    for lever in args.levers:
        result = run_lever(args.pipeline, lever.split())
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        t = result["test"]
        print(
            f"{lever or 'baseline'}: val macro-F1 {result['val_macro_f1']:.4f} | DS2 acc "
            f"{t['accuracy']:.4f} macro-F1 {t['macro_f1']:.4f} S-F1 {t['S_f1']:.4f} "
            f"V-F1 {t['V_f1']:.4f} ({result['seconds']:.0f} s, run {result['run_id']})",
            flush=True,
        )


if __name__ == "__main__":
    main()

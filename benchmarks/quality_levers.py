"""Measure quality levers on MIT-BIH, each a full `ecg run` with one change, under several
validation splits of DS1.

    python benchmarks/quality_levers.py --seeds 0 1 2 "" "segment.beat_template=true" ...

A lever is a list of ``--set`` overrides separated by spaces ("" is the default config). Each is
run once per ``split.seed``: the seed picks which DS1 patients validate. Candidates are ranked by
their validation macro-F1 averaged over the seeds, the only number used to choose; six validation
patients with 15 F beats make a single split too noisy to choose by. DS2 (test) metrics are
recorded beside it, never used to choose. Results are appended as JSON lines; a (lever, seed)
already in the file is not run again (runs are deterministic on CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ecg.config import find_pipeline, load_config

TEST_KEYS = (
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


def run_lever(pipeline: str, overrides: list[str], seed: int) -> dict:
    settings = [*overrides, f"split.seed={seed}"]
    command = [sys.executable, "-m", "ecg", "-q", "run", pipeline]
    for override in settings:
        command += ["--set", override]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    config = load_config(find_pipeline(pipeline), settings)
    out = config.data_path / "processed" / config.name
    run = json.loads((out / "train" / "run.json").read_text())
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    model = torch.load(out / "train" / "fold_0" / "model.pt", weights_only=True)
    test = metrics["test"]["metrics"]
    return {
        "overrides": overrides,
        "seed": seed,
        "run_id": run["run_id"],
        "seconds": round(seconds, 1),
        "best_epoch": model["best_epoch"],
        "val_macro_f1": model["best_val_macro_f1"],
        "test": {k: test[k] for k in TEST_KEYS},
        "test_strict_accuracy": metrics.get("test_strict", {}).get("metrics", {}).get("accuracy"),
    }


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        row.setdefault("seed", 0)
    return rows


def summary(rows: list[dict], levers: list[str]) -> str:
    lines = [
        "| lever | seeds | val macro-F1 (mean) | DS2 acc | DS2 macro-F1 | S F1 | V F1 | F F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lever in levers:
        mine = [r for r in rows if r["overrides"] == lever.split()]
        if not mine:
            continue

        def mean(key, sub=None, mine=mine):
            return statistics.mean(r[sub][key] if sub else r[key] for r in mine)

        lines.append(
            f"| {lever or 'default'} | {','.join(str(r['seed']) for r in mine)} | "
            f"{mean('val_macro_f1'):.4f} | {100 * mean('accuracy', 'test'):.1f} | "
            f"{mean('macro_f1', 'test'):.3f} | {mean('S_f1', 'test'):.3f} | "
            f"{mean('V_f1', 'test'):.3f} | {mean('F_f1', 'test'):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("levers", nargs="+", help='e.g. "train.sampler=balanced"')
    parser.add_argument("--pipeline", default="mitdb")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/levers.jsonl"))
    args = parser.parse_args()
    for lever in args.levers:
        config = load_config(find_pipeline(args.pipeline), lever.split())
        if config.split.val_fraction == 0:
            parser.error(
                f"{lever or 'default'}: no validation patients (split.val_fraction 0), so "
                "nothing to rank by; add split.val_fraction=0.2 to the lever to measure the "
                "early-stopped recipe, or compare refits nested in DS1 "
                "(benchmarks/refit_ensemble.py)"
            )
    for seed in args.seeds:
        for lever in args.levers:
            done = load(args.out)
            if any(r["overrides"] == lever.split() and r["seed"] == seed for r in done):
                continue
            result = run_lever(args.pipeline, lever.split(), seed)
            with args.out.open("a") as f:
                f.write(json.dumps(result) + "\n")
            t = result["test"]
            print(
                f"{lever or 'default'} (split seed {seed}): val macro-F1 "
                f"{result['val_macro_f1']:.4f} | DS2 acc {t['accuracy']:.4f} macro-F1 "
                f"{t['macro_f1']:.4f} ({result['seconds']:.0f} s, run {result['run_id']})",
                flush=True,
            )
    print(summary(load(args.out), args.levers))


if __name__ == "__main__":
    main()

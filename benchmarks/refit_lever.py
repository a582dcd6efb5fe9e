"""A lever on top of the refit default, measured nested inside DS1.

    python benchmarks/refit_lever.py mitdb --refit-steps 5 7 7 5 7 --lever augment.scale=0.2 ...

The default trains without validation patients, so it has no validation score to rank levers by
(``quality_levers.py`` needs one). Here, for each outer split k (split seed k; its validation side
V_k plays the test patients), the default and the default with the lever's overrides are both
trained on DS1 minus V_k for the step count given for k (from ``refit_steps.py``: the other
sides' pooled curves, so V_k chose nothing) and scored on V_k, through the pipeline's own
``train_members``. DS2 is never read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from refit_ensemble import refit
from refit_steps import append_line, sides_of

from ecg.config import find_pipeline, load_config
from ecg.pipeline import engine_for
from ecg.preprocess import load_pieces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="mitdb")
    parser.add_argument("--outer", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--refit-steps", type=int, nargs="+", required=True)
    parser.add_argument("--lever", nargs="+", required=True, metavar="KEY=VALUE")
    parser.add_argument("--folds", type=int, default=5, help="split seeds that make up DS1")
    parser.add_argument("--out", type=Path, help="append each outer split as one JSON line")
    args = parser.parse_args()
    if len(args.refit_steps) != len(args.outer):
        parser.error(f"--refit-steps: {len(args.refit_steps)} counts for {len(args.outer)} splits")
    path = find_pipeline(args.pipeline)
    arms = {"default": load_config(path), "lever": load_config(path, args.lever)}
    torch.set_num_threads(arms["default"].train.threads or 2)
    preprocess = engine_for(arms["default"]).out_dir("preprocess")
    if engine_for(arms["lever"]).out_dir("preprocess") != preprocess:
        parser.error("the lever changes the dataset; this compares training on one dataset")
    _, index, _ = load_pieces(preprocess)
    seeds = list(range(args.folds))
    ds1, val = sides_of(index, arms["default"], seeds)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for k, steps in zip(args.outer, args.refit_steps, strict=True):
            row = {"outer": k, "steps": steps, "overrides": args.lever}
            for name, config in arms.items():
                folder = Path(scratch) / f"{k}_{name}"
                row[name] = refit(config, steps, preprocess, folder, ds1 & ~val[k], val[k])
            rows.append(row)
            print(
                f"outer {k} ({steps} steps): default {row['default']:.4f}, "
                f"lever {row['lever']:.4f}",
                flush=True,
            )
            append_line(args.out, row)
    means = {name: statistics.mean(r[name] for r in rows) for name in arms}
    print(
        f"mean: default {means['default']:.4f}, lever {means['lever']:.4f} "
        f"(lever - default {means['lever'] - means['default']:+.4f})"
    )


if __name__ == "__main__":
    main()

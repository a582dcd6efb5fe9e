"""The default ensemble, early-stopped on one validation side, against the same ensemble refit.

    python benchmarks/refit_ensemble.py mitdb --outer 0 1 2 3 4 --refit-steps 5 7 7 5 7 \
        --set split.val_fraction=0.2 --set train.epochs=15

(The ``--set`` pair is the early-stopped default this was first run against, before the refit
became the default; ``--set`` takes the same overrides as ``ecg run``.)

``refit_steps.py`` compared single models; this compares what the pipeline would ship, through
the pipeline's own ``train_members`` (same members, seeds, normaliser and augmentation). Nested
inside DS1, for each outer split k (split seed k; its validation side V_k plays the test
patients):

- default: the configuration as it is (its ensemble, learning-rate decay, early stopping), trained
  on DS1 minus V_k minus V_j and stopped on V_j, for each other split j; scored on V_k, and the
  mean over j is the default's score (any one of those sides could have been the one it got);
- refit: the same ensemble trained on DS1 minus V_k, without a validation side, for the given
  step count (chosen for k by ``refit_steps.py`` on the other sides' pooled curves, so V_k chose
  nothing), at a constant learning rate, the last weights kept; scored on V_k.

DS2 is never read. Each outer split appends one JSON line to ``--out`` as soon as it is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from refit_steps import append_line, load_sides, nested_setup

from ecg.config import find_pipeline, load_config
from ecg.decision import decide, macro_f1
from ecg.evaluate import decision_proba
from ecg.train import fold_prior, predict_proba, train_members


def score(config, data, validated: bool, device: torch.device) -> float:
    """Macro-F1 on the data's test side of the ensemble trained on its training side."""
    return scored(config, data, probabilities(config, data, validated, device))


def probabilities(config, data, validated: bool, device: torch.device) -> np.ndarray:
    """The test side's class probabilities from the ensemble trained on the training side."""
    val = data.sides["val"] if validated else None
    model, normalizer, _ = train_members(config, data, val, device, progress=False)
    # train_members hands the model back on the CPU; predicting on the device it trained on
    # keeps a GPU run from waiting on two CPU threads
    return predict_proba(model.to(device), normalizer.to(device), data.sides["test"], device)


def scored(config, data, proba: np.ndarray) -> float:
    """Macro-F1 of the test side's decisions (``decisions``)."""
    return macro_f1(data.sides["test"].y.numpy(), decisions(config, data, proba), data.classes)


def decisions(config, data, proba: np.ndarray) -> np.ndarray:
    """The test side's classes as the evaluate stage would take them from ``proba`` (with its
    options: each record's own priors, no S where the rhythm is irregular)."""
    pieces = data.index.loc[data.sides["test"].rows]
    prior = partial(fold_prior, config, data)
    proba, _, _ = decision_proba(proba, pieces, config.evaluate, data.classes, prior)
    return decide(proba)


def refit_data(config, steps: int, preprocess: Path, folder: Path, train, test):
    """The configuration at ``steps`` epochs and its data: ``train`` rows to train on without a
    validation side, ``test`` rows to score."""
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=steps))
    return config, load_sides(config, preprocess, folder, train, np.zeros_like(train), test)


def refit(
    config, steps: int, preprocess: Path, folder: Path, train, test, device: torch.device
) -> float:
    """Macro-F1 on the ``test`` rows of the ensemble trained on the ``train`` rows without a
    validation side, for ``steps`` epochs."""
    config, data = refit_data(config, steps, preprocess, folder, train, test)
    return score(config, data, validated=False, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="mitdb")
    parser.add_argument("--outer", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--refit-steps", type=int, nargs="+", required=True, help="one per --outer split"
    )
    parser.add_argument("--folds", type=int, default=5, help="split seeds that make up DS1")
    parser.add_argument("--out", type=Path, help="append each outer split as one JSON line")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    if len(args.refit_steps) != len(args.outer):
        parser.error(f"--refit-steps: {len(args.refit_steps)} counts for {len(args.outer)} splits")
    config = load_config(find_pipeline(args.pipeline), args.overrides)
    if config.split.val_fraction == 0:
        parser.error(
            "the early-stopped arm needs validation patients: "
            "--set split.val_fraction=0.2 --set train.epochs=15"
        )
    device, preprocess, _, ds1, val = nested_setup(config, args.device, args.folds)
    seeds = list(val)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for k, steps in zip(args.outer, args.refit_steps, strict=True):
            started = time.perf_counter()
            default = []
            for j in (s for s in seeds if s != k):
                folder = Path(scratch) / f"{k}_{j}"
                train = ds1 & ~val[k] & ~val[j]
                data = load_sides(config, preprocess, folder, train, val[j], val[k])
                default.append(score(config, data, validated=True, device=device))
                print(f"outer {k}, stopped on {j}: {default[-1]:.4f}", flush=True)
            folder = Path(scratch) / f"{k}_refit"
            refitted = refit(config, steps, preprocess, folder, ds1 & ~val[k], val[k], device)
            row = {
                "outer": k,
                "default": statistics.mean(default),
                "default_each": [round(s, 4) for s in default],
                "refit": refitted,
                "refit_steps": steps,
                "ensemble": config.model.ensemble,
                "seconds": round(time.perf_counter() - started),
            }
            rows.append(row)
            print(
                f"outer {k}: default {row['default']:.4f} (mean of {len(default)}), "
                f"refit {refitted:.4f} after {steps} steps ({row['seconds']} s)",
                flush=True,
            )
            append_line(args.out, row)
    print("outer  default  refit  steps")
    for r in rows:
        print(f"{r['outer']:>5}  {r['default']:.4f}   {r['refit']:.4f} {r['refit_steps']:>5}")
    default_mean = statistics.mean(r["default"] for r in rows)
    refit_mean = statistics.mean(r["refit"] for r in rows)
    gain = refit_mean - default_mean
    print(f" mean  {default_mean:.4f}   {refit_mean:.4f}  (refit - default {gain:+.4f})")


if __name__ == "__main__":
    main()

"""Early stopping on one validation side, or a step count chosen on pooled folds and a refit?

    python benchmarks/refit_steps.py mitdb --outer 0 1 2 3 4 --steps 10
    python benchmarks/refit_steps.py mitdb --choose --steps 10

``--choose`` does not compare: it gives the step count for a refit on all of DS1, the peak of the
mean validation curve over all the split seeds' sides (each trained on the rest of DS1).

The default keeps the step at which one validation side of four to six DS1 patients scored best,
and trains on the other patients only. The alternative measured here chooses the number of
training steps on the mean validation curve of several sides, then trains on all the patients
for that many steps. Both are scored on patients neither of them saw, one level down (nested):

for each outer split k (split seed k; its validation side V_k plays the test patients):
- inner runs, one per other split j: train on DS1 minus V_k and V_j for ``--steps`` steps of
  ``train.samples_per_epoch`` beats, validating on V_j after each step;
- early stopping: each inner run's best step on V_j, scored on V_k (the default recipe);
- refit: the step count where the mean of the inner curves peaks, trained on DS1 minus V_k, its
  last weights scored on V_k.

One model per run (no ensemble), the learning rate held constant in both arms (the default lowers
it when validation stalls, which a refit without a validation side cannot do). DS2 is never read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ecg.config import find_pipeline, load_config
from ecg.dataset import load_fold
from ecg.decision import decide, macro_f1
from ecg.pipeline import engine_for
from ecg.preprocess import load_pieces
from ecg.split import build_split
from ecg.train import predict_proba, select_device, train_members


def sides_of(index: pd.DataFrame, config, seeds: list[int]) -> tuple[np.ndarray, dict]:
    """DS1's rows (the same under every seed), and each split seed's validation rows; at the
    usual fraction, 0.2, when the configuration holds no patients out (the refit default)."""
    fraction = config.split.val_fraction or 0.2
    splits = {
        seed: build_split(
            index, dataclasses.replace(config.split, seed=seed, val_fraction=fraction)
        )["split_0"]
        for seed in seeds
    }
    ds1 = splits[seeds[0]].isin(["train", "val"]).to_numpy()
    return ds1, {seed: (split == "val").to_numpy() for seed, split in splits.items()}


def nested_setup(config, device: str, folds: int):
    """What every nested comparison starts from: the device, the pieces' folder and index, DS1's
    rows and each of the ``folds`` split seeds' validation rows."""
    torch.set_num_threads(config.train.threads or 2)
    chosen = select_device(device)
    preprocess = engine_for(config).out_dir("preprocess")
    _, index, _ = load_pieces(preprocess)
    ds1, val = sides_of(index, config, list(range(folds)))
    return chosen, preprocess, index, ds1, val


def load_sides(config, preprocess: Path, folder: Path, train, val, test):
    """Tensors of three row masks, through the pipeline's own loader."""
    side = np.full(len(train), "excluded", dtype=object)
    side[train], side[val], side[test] = "train", "val", "test"
    folder.mkdir()
    pd.DataFrame({"split_0": side}).to_parquet(folder / "split.parquet", index=False)
    mcfg = config.model
    return load_fold(
        preprocess,
        folder,
        config.split.protocol,
        0,
        classes=config.train.classes,
        rr_names=mcfg.rr_features if mcfg.use_rr else None,
    )


def append_line(path: Path | None, row: dict) -> None:
    """One JSON line onto ``--out``, if given, as soon as a result is known."""
    if path is not None:
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def train_once(config, data, steps: int, device: torch.device):
    """One model, trained as the pipeline trains an ensemble member (``train_members``: its
    synthetic fusion beats, augmentation and loss groups included); the weights of its best
    validation step, or, with no validation side, of its last."""
    sides = data.sides
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, ensemble=1),
        train=dataclasses.replace(
            config.train, epochs=steps, patience=steps + 1, lr_patience=10**6
        ),
    )
    val = sides["val"] if len(sides["val"]) else None
    model, normalizer, (state,) = train_members(config, data, val, device, progress=False)
    test = sides["test"]
    score = float("nan")
    if len(test):
        score = macro_f1(
            test.y.numpy(),
            decide(predict_proba(model, normalizer, test, device)),
            data.classes,
        )
    curve = [entry["val_macro_f1"] for entry in state.history]
    return score, curve, state.best_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="mitdb")
    parser.add_argument("--outer", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--folds", type=int, default=5, help="split seeds that make up DS1")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, help="append the result as one JSON line")
    parser.add_argument(
        "--choose", action="store_true", help="the step count for a refit on all of DS1"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    config = load_config(find_pipeline(args.pipeline), args.overrides)
    device, preprocess, _, ds1, val = nested_setup(config, args.device, args.folds)
    seeds = list(val)
    if args.choose:
        choose(config, preprocess, ds1, val, args, device)
        return
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for k in args.outer:
            early, curves = [], []
            for j in (s for s in seeds if s != k):
                data = load_sides(
                    config,
                    preprocess,
                    Path(scratch) / f"{k}_{j}",
                    ds1 & ~val[k] & ~val[j],
                    val[j],
                    val[k],
                )
                score, curve, best = train_once(config, data, args.steps, device)
                early.append(score)
                curves.append(curve)
                print(f"outer {k}, inner {j}: best step {best}, scored on {k}: {score:.4f}")
            mean_curve = np.mean(curves, axis=0)
            n_star = int(np.argmax(mean_curve)) + 1
            nobody = np.zeros_like(ds1)  # the refit has no validation side: its last step counts
            data = load_sides(
                config, preprocess, Path(scratch) / f"{k}_refit", ds1 & ~val[k], nobody, val[k]
            )
            refit, _, _ = train_once(config, data, n_star, device)
            row = {
                "outer": k,
                "early_stopping": statistics.mean(early),
                "early_each": [round(s, 4) for s in early],
                "refit": refit,
                "refit_steps": n_star,
                "mean_curve": [round(float(v), 4) for v in mean_curve],
            }
            rows.append(row)
            print(
                f"outer {k}: early stopping {row['early_stopping']:.4f} (mean of {len(early)}), "
                f"refit {refit:.4f} after {n_star} steps"
            )
    early_mean = statistics.mean(r["early_stopping"] for r in rows)
    refit_mean = statistics.mean(r["refit"] for r in rows)
    print("outer  early stopping  refit  steps")
    for r in rows:
        print(
            f"{r['outer']:>5}  {r['early_stopping']:.4f}          {r['refit']:.4f}"
            f" {r['refit_steps']:>5}"
        )
    print(f" mean  {early_mean:.4f}          {refit_mean:.4f}")
    append_line(args.out, {"steps": args.steps, "overrides": args.overrides, "rows": rows})


def choose(
    config, preprocess: Path, ds1: np.ndarray, val: dict, args, device: torch.device
) -> None:
    """The peak of the mean validation curve over every seed's side: a refit's step count."""
    curves = []
    nobody = np.zeros_like(ds1)
    with tempfile.TemporaryDirectory() as scratch:
        for j, side in val.items():
            data = load_sides(config, preprocess, Path(scratch) / str(j), ds1 & ~side, side, nobody)
            _, curve, best = train_once(config, data, args.steps, device)
            curves.append(curve)
            print(f"side {j}: " + " ".join(f"{v:.4f}" for v in curve) + f"  (best step {best})")
    mean_curve = np.mean(curves, axis=0)
    steps = int(np.argmax(mean_curve)) + 1
    print("mean:   " + " ".join(f"{v:.4f}" for v in mean_curve))
    print(f"refit step count: {steps} (mean validation macro-F1 {mean_curve[steps - 1]:.4f})")
    append_line(
        args.out,
        {"choose": steps, "steps": args.steps, "overrides": args.overrides, "curves": curves},
    )


if __name__ == "__main__":
    main()

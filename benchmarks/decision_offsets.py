"""Would per-class decision offsets, chosen on DS1 validation patients, help on new patients?

    python benchmarks/decision_offsets.py mitdb --runs RUN_SEED0 RUN_SEED1 ... RUN_SEED4

Takes finished runs of one configuration, one per validation split of DS1 (``split.seed`` 0, 1,
..., in that order; the five seeds' validation sides are disjoint and cover DS1's 22 patients),
rebuilds each run's validation side and recomputes its model's validation probabilities. Then it
scores three ways of deciding, each on validation patients that did not choose the offsets:

- arg-max: no offsets (what the run logged; checked to match);
- pooled: offsets chosen on the other runs' validation sides together (all of DS1 but the held-out
  patients), applied to the held-out run;
- single: offsets chosen on one other run's validation side, applied to the held-out run, the mean
  over the other runs (what a run would get from choosing offsets on its own validation side).

DS2 is never read. The offsets of one model are applied to another model's probabilities, so the
pooled and single scores are conservative for a model choosing offsets for itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from ecg.config import find_pipeline, load_config
from ecg.dataset import load_fold
from ecg.decision import choose_offsets, decide, macro_f1
from ecg.pipeline import engine_for
from ecg.preprocess import load_pieces
from ecg.split import build_split
from ecg.tracking import Tracker
from ecg.train import load_classifier, predict_proba


def validation_of(
    config, preprocess: Path, index, run_id: str, seed: int, tracker: Tracker, scratch: Path
) -> dict:
    folder = scratch / run_id
    folder.mkdir()
    model, normalizer, spec = load_classifier(
        tracker.download(run_id, "checkpoint/model.pt", folder)
    )
    split_cfg = dataclasses.replace(config.split, seed=seed)
    build_split(index, split_cfg).to_parquet(folder / "split.parquet", index=False)
    data = load_fold(
        preprocess,
        folder,
        split_cfg.protocol,
        0,
        classes=spec["classes"],
        rr_names=spec["rr_features"] if spec["n_rr"] else None,
        sides=("val",),
    )
    val = data.sides["val"]
    proba = predict_proba(model, normalizer, val, torch.device("cpu"))
    logged = tracker.run(run_id).data.metrics["best_val_macro_f1"]
    y = val.y.numpy()
    recomputed = macro_f1(y, decide(proba), spec["classes"])
    if abs(recomputed - logged) > 1e-6:
        raise SystemExit(
            f"run {run_id}: validation macro-F1 recomputed {recomputed:.6f}, logged {logged:.6f}; "
            "the preprocess stage on disk is not the one this run used"
        )
    return {"run_id": run_id, "seed": seed, "y": y, "proba": proba, "classes": spec["classes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("--runs", nargs="+", required=True, help="run ids, split seeds 0, 1, ...")
    parser.add_argument("--out", type=Path, help="append the result as one JSON line")
    args = parser.parse_args()
    config = load_config(find_pipeline(args.pipeline))
    tracker = Tracker(config.tracking_uri, config.experiment)
    torch.set_num_threads(2)
    preprocess = engine_for(config).out_dir("preprocess")
    _, index, _ = load_pieces(preprocess)
    with tempfile.TemporaryDirectory() as scratch:
        folds = [
            validation_of(config, preprocess, index, run_id, seed, tracker, Path(scratch))
            for seed, run_id in enumerate(args.runs)
        ]
    classes = folds[0]["classes"]
    own = [choose_offsets(f["y"], f["proba"], classes) for f in folds]
    rows = []
    for k, held in enumerate(folds):
        others = [f for j, f in enumerate(folds) if j != k]
        pooled = choose_offsets(
            np.concatenate([f["y"] for f in others]),
            np.concatenate([f["proba"] for f in others]),
            classes,
        )
        single = [own[j] for j in range(len(folds)) if j != k]
        y, proba = held["y"], held["proba"]
        rows.append(
            {
                "seed": held["seed"],
                "run_id": held["run_id"],
                "argmax": macro_f1(y, decide(proba), classes),
                "pooled": macro_f1(y, decide(proba, pooled), classes),
                "pooled_offsets": [round(float(v), 1) for v in pooled],
                "single": statistics.mean(macro_f1(y, decide(proba, o), classes) for o in single),
                "own_in_sample": macro_f1(y, decide(proba, own[k]), classes),
                "own_offsets": [round(float(v), 1) for v in own[k]],
            }
        )
    everything = choose_offsets(
        np.concatenate([f["y"] for f in folds]),
        np.concatenate([f["proba"] for f in folds]),
        classes,
    )
    print(f"classes {'/'.join(classes)}; offsets are added to log-probabilities")
    print("seed  arg-max  pooled  single  (own, in-sample)  pooled offsets        own offsets")
    for r in rows:
        print(
            f"{r['seed']:>4}  {r['argmax']:.4f}   {r['pooled']:.4f}  {r['single']:.4f}"
            f"  ({r['own_in_sample']:.4f})          {r['pooled_offsets']!s:<20}  {r['own_offsets']}"
        )
    means = {key: statistics.mean(r[key] for r in rows) for key in ("argmax", "pooled", "single")}
    rounded = [round(float(v), 1) for v in everything]
    print(
        f"mean  {means['argmax']:.4f}   {means['pooled']:.4f}  {means['single']:.4f}"
        f"   offsets chosen on all of DS1's validation sides: {rounded}"
    )
    if args.out:
        with args.out.open("a") as f:
            record = {"runs": args.runs, "means": means, "folds": rows}
            record["all_offsets"] = [float(v) for v in everything]
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

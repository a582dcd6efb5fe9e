"""Which beats the refit default gets wrong on DS1's held-out sides, and how far they lie from
their record's typical beat.

    python benchmarks/held_out_errors.py mitdb --refit-steps 3 8 7 4 7
    python benchmarks/held_out_errors.py mitdb --refit-steps 3 8 7 4 7 \
        --set segment.template_s=300 --set data_dir=data/local

The trainings are ``refit_lever.py``'s (each outer side held out in turn, the rest of DS1
trained on), read from its cache when they ran before. Printed: the confusion pooled over the
five held-out sides (rows true, columns predicted), the records that hold most N beats called
F and called S, and for the main cells the median root mean square of the first lead minus its
record's median beat, minus the median of the beats within +-``--span`` / 2 s, and minus the
template the model was given. A reading, not a choice: DS2 is never read, and nothing here
decides a default (``benchmarks/quality.md``, thirty-first round).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from refit_ensemble import decisions, refit_data
from refit_lever import held_out_probabilities
from refit_steps import nested_setup

from ecg.config import find_pipeline, load_config
from ecg.metrics import confusion
from ecg.pipeline import engine_for
from ecg.preprocess import load_pieces
from ecg.segment import with_template_difference

CELLS = (("N", "N"), ("N", "F"), ("N", "S"), ("F", "F"), ("V", "V"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="mitdb")
    parser.add_argument("--outer", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--refit-steps", type=int, nargs="+", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--span", type=float, default=300.0, help="seconds of the local median")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    if len(args.refit_steps) != len(args.outer):
        parser.error(f"--refit-steps: {len(args.refit_steps)} counts for {len(args.outer)} splits")
    config = load_config(find_pipeline(args.pipeline), args.overrides)
    if not config.segment.beat_template:
        parser.error("the distances need the template channel (segment.beat_template)")
    if config.download.database != "mitdb":
        parser.error("the beats' times are read at MIT-BIH's 360 Hz: mitdb pipelines only")
    device, preprocess, index, ds1, val = nested_setup(config, "cpu", args.folds)
    stamp = engine_for(config).stamp_path("preprocess")
    held: list[pd.DataFrame] = []
    with tempfile.TemporaryDirectory() as scratch:
        for k, steps in zip(args.outer, args.refit_steps, strict=True):
            sides = (ds1 & ~val[k], val[k])
            arm, data = refit_data(config, steps, preprocess, Path(scratch) / str(k), *sides)
            proba = held_out_probabilities(arm, data, device, stamp, sides)
            test = data.sides["test"]
            names = np.asarray(data.classes)
            held.append(
                pd.DataFrame(
                    {
                        "row": np.asarray(test.rows),
                        "true": names[test.y.numpy()],
                        "predicted": names[decisions(arm, data, proba)],
                    }
                )
            )
            print(f"outer {k}: {len(test.rows):,} held-out beats", flush=True)
    table = pd.concat(held, ignore_index=True)
    classes = list(data.classes)
    counts = confusion(
        table["true"].map(classes.index).to_numpy(),
        table["predicted"].map(classes.index).to_numpy(),
        len(classes),
    )
    print(pd.DataFrame(counts, index=classes, columns=classes).to_string())
    table["record"] = index.loc[table["row"], "record"].to_numpy()
    for wrong in ("F", "S"):
        mask = (table["true"] == "N") & (table["predicted"] == wrong)
        by_record = table.loc[mask, "record"].value_counts().head(6)
        print(
            f"N called {wrong} by record: " + ", ".join(f"{r} {n:,}" for r, n in by_record.items())
        )
    distances(table, load_pieces(preprocess)[0], index, args.span)


def distances(table: pd.DataFrame, windows: np.ndarray, index: pd.DataFrame, span: float) -> None:
    """The table of distances from a template, per cell of the confusion."""
    leads = windows.shape[2] // 2
    rows = table["row"].to_numpy()
    table["given"] = _rms(np.asarray(windows[rows, :, leads]))
    table["whole"] = np.nan
    table["local"] = np.nan
    fs = 360.0  # MIT-BIH's rate, at which the index keeps its samples (checked in main)
    for record in table["record"].unique():
        mine = (table["record"] == record).to_numpy()
        of_record = (index["record"] == record).to_numpy()
        times = index.loc[of_record, "sample"].to_numpy() / fs
        lead = np.asarray(windows[np.flatnonzero(of_record), :, :1])
        at = np.searchsorted(np.flatnonzero(of_record), rows[mine])
        for name, s in (("whole", 0.0), ("local", span)):
            difference = with_template_difference(lead, times, s)[at, :, 1]
            table.loc[mine, name] = _rms(difference)
    print(
        "| true, predicted | beats | minus the record's median beat "
        f"| minus the median of +-{span / 2:g} s | minus the template the model was given |"
    )
    for true, predicted in CELLS:
        cell = table[(table["true"] == true) & (table["predicted"] == predicted)]
        if len(cell):
            print(
                f"| {true}, {predicted} | {len(cell):,} | {cell['whole'].median():.3f} "
                f"| {cell['local'].median():.3f} | {cell['given'].median():.3f} |"
            )


def _rms(difference: np.ndarray) -> np.ndarray:
    return np.sqrt((difference**2).mean(axis=1))


if __name__ == "__main__":
    main()

"""How the default's nested score grows with the number of training patients.

    python benchmarks/patient_curve.py mitdb --refit-steps 3 8 7 4 7 --device cuda
    python benchmarks/patient_curve.py mitdb --refit-steps 3 8 7 4 7 --of beats --shares 0.25 0.5
    python benchmarks/patient_curve.py mitdb --summary rows.jsonl

No new lever since the thirtieth round has cleared the rounds' margin, and the quality issue's gap
to the published results is largest in S. Whether more patients would close it cannot be measured
with more patients than DS1 has, but the slope at the patients it has can: for each outer split k
(split seed k; its validation side V_k plays the test patients, as in ``refit_lever.py``), the
default is trained on a random share of DS1 minus V_k's patients, for the default's step count for
k, and scored on V_k. Each share is drawn ``--draws`` times, each draw with its own patients and its
own ``train.seed`` (``--first-seed`` + draw); the whole share (1.0) keeps every patient and only
changes the seed, so with the defaults it is the nested rounds' default arm over seeds 3, 4 and 5.
An epoch is ``train.samples_per_epoch`` beats whatever the share, so every share takes the same
number of updates. DS2 is never read.

A share of the patients is also a share of the beats. ``--of beats`` is the control: every
training patient kept, each of their beats kept with the share's probability; where it scores as
the whole does, the curve is about patients, not beats (``benchmarks/quality.md``).

Each outer split appends one JSON line to ``--out`` as soon as it is done; ``--summary`` prints the
table of several such files together (the outer splits can then run as separate processes, side
by side on one GPU, and be summed up afterwards).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
from pathlib import Path

import numpy as np
from refit_ensemble import decisions, probabilities, refit_data
from refit_steps import append_line, nested_setup

from ecg.config import find_pipeline, load_config
from ecg.metrics import confusion, from_confusion

S_PATIENT_BEATS = 10
"""A training patient counts as one with S beats from this many on (DS1's patients with one or
two S beats teach little about S)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="mitdb")
    parser.add_argument("--outer", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--refit-steps", type=int, nargs="+", help="one per --outer split")
    parser.add_argument(
        "--shares", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0],
        help="shares of each split's training patients (or beats, --of beats) to train on",
    )  # fmt: skip
    parser.add_argument(
        "--of", choices=("patients", "beats"), default="patients",
        help="what a share draws: whole patients, or each patient's beats (every patient kept)",
    )  # fmt: skip
    parser.add_argument(
        "--draws", type=int, default=3, help="draws of patients (and seeds) per share"
    )
    parser.add_argument("--first-seed", type=int, default=3, help="train.seed of the first draw")
    parser.add_argument("--folds", type=int, default=5, help="split seeds that make up DS1")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, help="append each outer split as one JSON line")
    parser.add_argument(
        "--summary", type=Path, nargs="+", metavar="ROWS",
        help="print the table of these --out files and train nothing",
    )  # fmt: skip
    args = parser.parse_args()
    if args.summary:
        rows = [json.loads(line) for path in args.summary for line in path.read_text().splitlines()]
        outers = [row["outer"] for row in rows]
        twice = sorted({k for k in outers if outers.count(k) > 1})
        if twice:
            parser.error(f"--summary: outer split(s) {twice} in more than one line")
        if len({row.get("of", "patients") for row in rows}) > 1:
            parser.error("--summary: lines of shares of patients and of beats together")
        for line in summary(rows):
            print(line)
        return
    if args.refit_steps is None or len(args.refit_steps) != len(args.outer):
        parser.error("--refit-steps: one count per --outer split")
    if not all(0 < share <= 1 for share in args.shares):
        parser.error("--shares: each in (0, 1]")
    config = load_config(find_pipeline(args.pipeline))
    device, preprocess, index, ds1, val = nested_setup(config, args.device, args.folds)
    rows = []
    for k, steps in zip(args.outer, args.refit_steps, strict=True):
        row = outer_split(args, config, device, preprocess, index, ds1 & ~val[k], val[k], k, steps)
        rows.append(row)
        append_line(args.out, row)
        for line in split_lines(row):
            print(line, flush=True)
    for line in summary(rows):
        print(line)


def outer_split(args, config, device, preprocess, index, train, test, k: int, steps: int) -> dict:
    """Every share's draws on one outer split: each draw's patients, macro-F1 and F1 by class."""
    patients = np.array(sorted(index.loc[train, "patient"].unique()))
    s_beats = index.loc[train & (index["label"] == "S").to_numpy()].groupby("patient").size()
    row: dict = {"outer": k, "of": args.of, "steps": steps, "patients": len(patients), "shares": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for share in args.shares:
            draws = []
            for draw in range(args.draws):
                chosen, rows = _training_rows(args.of, index, train, patients, (k, draw, share))
                seed = args.first_seed + draw
                seeded = dataclasses.replace(
                    config, train=dataclasses.replace(config.train, seed=seed)
                )
                folder = Path(scratch) / f"{share}-{draw}"
                seeded, data = refit_data(seeded, steps, preprocess, folder, rows, test)
                proba = probabilities(seeded, data, False, device)
                y = data.sides["test"].y.numpy()
                metrics = from_confusion(
                    confusion(y, decisions(seeded, data, proba), len(data.classes)), data.classes
                )
                draws.append(
                    {
                        "seed": seed,
                        "patients": [str(p) for p in chosen],
                        "s_patients": int(
                            (s_beats.reindex(chosen).fillna(0) >= S_PATIENT_BEATS).sum()
                        ),
                        "beats": int(rows.sum()),
                        "macro_f1": round(metrics["macro_f1"], 4),
                        "f1": {c: round(metrics[f"{c}_f1"], 4) for c in data.classes},
                    }
                )
            row["shares"][str(share)] = draws
    return row


def _training_rows(of: str, index, train, patients: np.ndarray, at: tuple) -> tuple:
    """One draw's training patients and rows: a share of the patients, or of each one's beats."""
    outer, draw, share = at
    if of == "patients":
        chosen = _drawn(patients, share, outer, draw)
        return chosen, train & index["patient"].isin(chosen).to_numpy()
    return patients, train & _beats_drawn(len(index), share, outer, draw)


def _drawn(patients: np.ndarray, share: float, outer: int, draw: int) -> np.ndarray:
    """``share`` of the patients, at least two, the same for the same split, share and draw."""
    if share >= 1:
        return patients
    count = max(2, round(share * len(patients)))
    rng = np.random.default_rng([outer, draw, round(share * 1000)])
    return np.sort(rng.choice(patients, size=count, replace=False))


def _beats_drawn(count: int, share: float, outer: int, draw: int) -> np.ndarray:
    """A mask keeping about ``share`` of the beats, each patient's and each class's alike, the
    same for the same split, share and draw."""
    if share >= 1:
        return np.ones(count, dtype=bool)
    return np.random.default_rng([outer, draw, round(share * 1000), 1]).random(count) < share


def split_lines(row: dict) -> list[str]:
    lines = [f"outer {row['outer']} ({row['steps']} steps, {row['patients']} training patients):"]
    for share, draws in row["shares"].items():
        each = " ".join(f"{d['macro_f1']:.4f}" for d in draws)
        macro = statistics.mean(d["macro_f1"] for d in draws)
        s_f1 = statistics.mean(d["f1"]["S"] for d in draws)
        lines.append(
            f"  share {float(share):.2f} ({len(draws[0]['patients'])} patients, "
            f"{draws[0]['beats']:,} beats): "
            f"macro-F1 {macro:.4f} ({each}), S F1 {s_f1:.3f}"
        )
    return lines


def summary(rows: list[dict]) -> list[str]:
    """Each share's mean over the outer splits of the mean over its draws: patients, patients
    with S beats, training beats (NaN for lines written before they were counted), macro-F1 and
    F1 by class. A class that a held-out side neither holds nor is called on has no F1 there
    (undefined, ``ecg.metrics``, not 0: side 2 has no F beat), so such draws are left out of
    that class's mean, and a split with none left out of the splits'."""
    rows = sorted(rows, key=lambda r: r["outer"])
    shares = list(rows[0]["shares"])
    classes = list(rows[0]["shares"][shares[0]][0]["f1"])
    lines = [
        f"mean over outer splits {' '.join(str(r['outer']) for r in rows)} "
        f"(shares of the {rows[0].get('of', 'patients')}, "
        f"each the mean of {len(rows[0]['shares'][shares[0]])} draws):",
        f"  share  patients  with S    beats  macro-F1  {'  '.join(f'{c} F1' for c in classes)}",
    ]
    for share in shares:
        draws = [r["shares"][share] for r in rows]

        def mean(value, draws=draws) -> float:
            defined = [[v for d in split if not math.isnan(v := value(d))] for split in draws]
            means = [statistics.mean(values) for values in defined if values]
            return statistics.mean(means) if means else math.nan

        by_class = "  ".join(f"{mean(lambda d, c=c: d['f1'][c]):.3f}" for c in classes)
        lines.append(
            f"  {float(share):5.2f}  {mean(lambda d: len(d['patients'])):8.1f}  "
            f"{mean(lambda d: d['s_patients']):6.1f}  "
            f"{mean(lambda d: d.get('beats', math.nan)):7.0f}  "
            f"{mean(lambda d: d['macro_f1']):8.4f}  {by_class}"
        )
    return lines


if __name__ == "__main__":
    main()

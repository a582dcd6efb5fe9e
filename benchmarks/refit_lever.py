"""A lever on top of the refit default, measured nested inside DS1.

    python benchmarks/refit_lever.py mitdb --refit-steps 3 8 7 4 7 --lever augment.scale=0.2 ...
    python benchmarks/refit_lever.py mitdb --refit-steps 3 8 7 4 7 --lever-steps 4 4 5 4 4 \
        --lever model.hidden=128 --device cuda
    python benchmarks/refit_lever.py mitdb --refit-steps 3 8 7 4 7 \
        --lever augment.scale=0.2 --lever train.lr=0.001
    python benchmarks/refit_lever.py mitdb --refit-steps 3 8 7 4 7 --seeds 0 1 2 \
        --lever augment.scale=0.2

The counts 3 8 7 4 7 are the default's per outer split, from ``refit_steps.py --outer 0 1 2 3 4
--steps 10`` on the recipe that ships (``benchmarks/quality.md``, after the thirty-third round);
the tenth to thirty-third rounds used 5 7 7 5 7, chosen before the fusion beats.

The default trains without validation patients, so it has no validation score to rank levers by
(``quality_levers.py`` needs one). Here, for each outer split k (split seed k; its validation side
V_k plays the test patients), the default and the default with the lever's overrides are both
trained on DS1 minus V_k for the step count given for k (from ``refit_steps.py``: the other
sides' pooled curves, so V_k chose nothing) and scored on V_k, through the pipeline's own
``train_members``. A lever that changes how fast the model learns deserves its own step counts
(``--lever-steps``, from ``refit_steps.py --set ...`` the same way); without them the lever arm
uses the default's. Each ``--lever`` is one arm (its overrides together); several arms share one
training of the default per split, which on two CPU cores is half of a one-lever round. DS2 is
never read.

One draw of a recipe is noisy: the default drawn with four training seeds spans 0.017 on the
mean over the five splits (``benchmarks/quality.md``, after the thirty-eighth round), more than
the rounds' 0.01 margin. ``--seeds 0 1 2`` trains every arm once per ``train.seed`` and scores
it by the mean over seeds (macro-F1 and F1 by class; each seed's score is printed too); the
pooled interval then pairs each seed's decisions with the default's of the same seed, all seeds'
beats together, resampled by patient.

An arm that differs from another only in how the evaluate stage decides (``evaluate.*``, such as
``evaluate.adapt_priors=record``) is scored on that arm's trained ensemble, not trained again.

Each training's held-out probabilities are kept in ``refit_cache/`` beside the pipeline's stage
folders, under a key made of everything that decides them: the arm's whole configuration, the
step count, the training and held-out rows, the preprocessed pieces' digest (from their stage
stamp), the source of the ``ecg`` package and of these benchmarks, torch's version and the device.
The default arm, the same in every round, is then trained once per code version instead of every
round, which halves a training lever's round on two CPU cores; any change to the code or the data
makes a new key. ``--no-cache`` trains everything again.

``--lend PIECES --lend-as healthy=N`` adds one arm, "lent": the default trained also on another
database's patients (``lend.py``), every one of them on every training side and none ever held
out, so that the held-out sides and their scores are the default's own beats:

    ecg run ptbdb --source ../shared/data/ptbdb --until preprocess --set data_dir=data/ptb_beats \
        --set segment.kind=beats --set segment.r_peaks=gqrs --set 'signal.leads=[ii]' \
        --set signal.fs=128 --set segment.pre_s=0.25 --set segment.post_s=0.45 \
        --set segment.rr_local_beats=10 --set segment.rr_average_s=300 \
        --set segment.beat_template=true
    python benchmarks/refit_lever.py mitdb --refit-steps 3 8 7 4 7 --seeds 3 4 5 \
        --lend data/ptb_beats/processed/ptbdb/preprocess --lend-as healthy=N

Each round is also one MLflow run in the experiment ``<pipeline's experiment>-levers`` of the
pipeline's own store (``round_log.py``): each arm's overrides as params, each outer split's scores
as metrics as soon as the split is done, the summary, and every printed line as ``round.txt``; a
round stopped by an error or Ctrl-C is marked FAILED or KILLED with what it had. ``--no-mlflow``
prints only.

An arm may change the pieces themselves (``segment.*``, ``signal.*``): its pieces live in a data
directory of its own, preprocessed first, and every arm is scored on the beats that all of them
keep, matched by record and sample, so that the splits are the same patients' same beats. Most
such arms keep every beat; a longer window (``segment.post_s=0.6``) drops a few more at the
records' ends, and the round then says on how many beats it was run:

    ecg run mitdb --source ../shared/data/mitdb --until preprocess \
        --set segment.scale_by_template=true --set data_dir=data/scaled
    python benchmarks/refit_lever.py mitdb --refit-steps 3 8 7 4 7 \
        --lever segment.scale_by_template=true data_dir=data/scaled
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lend import lend
from refit_ensemble import decisions, probabilities, refit_data
from refit_steps import append_line, nested_setup
from round_log import RoundLog, metric_name

import ecg
from ecg.atomic import atomic_path
from ecg.config import find_pipeline, load_config
from ecg.metrics import confusion, from_confusion, paired_difference
from ecg.pipeline import engine_for
from ecg.preprocess import load_pieces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="mitdb")
    parser.add_argument("--outer", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--refit-steps", type=int, nargs="+", required=True)
    parser.add_argument(
        "--lever-steps", type=int, nargs="+", help="the lever arm's own, one per --outer split"
    )
    parser.add_argument(
        "--lever",
        dest="levers",
        nargs="+",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one arm's overrides; repeat for more arms",
    )
    parser.add_argument(
        "--lend",
        type=Path,
        metavar="PIECES",
        help="one more arm, 'lent': the default trained also on these pieces (another "
        "database's preprocess folder, made with the default's rate, window and RR settings), "
        "all of them on every training side and never held out (see lend.py)",
    )
    parser.add_argument(
        "--lend-as",
        nargs="+",
        default=[],
        metavar="LABEL=CLASS",
        help="the lent pieces' labels as the default's classes, e.g. healthy=N; pieces of any "
        "other label are not lent",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="train.seed values: every arm is trained once per seed and scored by the mean "
        "(default: the configuration's own seed, one draw)",
    )
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--folds", type=int, default=5, help="split seeds that make up DS1")
    parser.add_argument("--out", type=Path, help="append each outer split as one JSON line")
    parser.add_argument(
        "--no-cache", action="store_true", help="train every arm again, even if cached"
    )
    parser.add_argument(
        "--no-mlflow",
        action="store_true",
        help="print only; by default the round is also one MLflow run in the pipeline's store "
        "(experiment <pipeline's experiment>-levers)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        _main(parser, args, Path(scratch))


def _main(parser: argparse.ArgumentParser, args, scratch: Path) -> None:
    arms = _arms(parser, args, scratch)
    params = {
        "pipeline": args.pipeline,
        "outer": args.outer,
        "folds": args.folds,
        "refit_steps": args.refit_steps,
        "lever_steps": arms.lever_steps,
        "seeds": arms.seeds,
        "device": str(arms.device),
        "scored_beats": _scored(arms, args.outer),
    }
    for name in arms.names:
        params[f"arm.{metric_name(name)}"] = arms.described[name]
    title = " | ".join(arms.described.values())[:200]
    tags = {"kind": "nested lever round", "ds2": "not read"}
    default = arms.configs["default"]
    with RoundLog.for_pipeline(default, title, params, tags, enabled=not args.no_mlflow) as log:
        _round(args, arms, log)


@dataclasses.dataclass(frozen=True)
class Arms:
    """A round's arms and what they are trained and scored on, checked before any training."""

    configs: dict  # arm name -> its configuration; "default" first
    names: list[str]  # the other arms' names: the levers', then "lent" if any
    described: dict  # each of those arms as its overrides, or what it lends
    seeds: list[int]
    lever_steps: list[int]
    device: torch.device
    index: pd.DataFrame  # the default's beats
    ds1: np.ndarray
    val: dict  # outer split -> its held-out side, a mask over the default's beats
    engines: dict
    preprocess: dict  # arm name -> its pieces' folder
    rows_of: dict  # arm name -> each default beat's row in its pieces (-1: not there)
    sizes: dict  # arm name -> its number of pieces
    shared: np.ndarray  # the default's beats that every arm keeps
    lent: dict  # arm name -> mask over its pieces of those on every training side
    lent_digest: dict  # arm name -> the lent pieces' output digest, for the cache key
    scratch: Path  # where trainings' split files and the lent arm's pieces go


def _arms(parser: argparse.ArgumentParser, args, scratch: Path) -> Arms:
    if not args.levers and args.lend is None:
        parser.error("nothing to compare: give --lever, --lend or both")
    if (args.lend is None) != (not args.lend_as):
        parser.error("--lend and --lend-as go together")
    if any(not label or not cls for label, _, cls in (p.partition("=") for p in args.lend_as)):
        parser.error(f"--lend-as: LABEL=CLASS pairs, not {' '.join(args.lend_as)}")
    mapping = dict(pair.partition("=")[::2] for pair in args.lend_as)
    lever_steps = args.lever_steps or args.refit_steps
    for name, counts in (("--refit-steps", args.refit_steps), ("--lever-steps", lever_steps)):
        if len(counts) != len(args.outer):
            parser.error(f"{name}: {len(counts)} counts for {len(args.outer)} splits")
    if args.lever_steps and len(args.levers) > 1:
        parser.error("--lever-steps: for one --lever only (each lever would need its own)")
    path = find_pipeline(args.pipeline)
    names = (
        ["lever"]
        if len(args.levers) == 1
        else [f"lever {i}" for i in range(1, 1 + len(args.levers))]
    )
    arms = {"default": load_config(path)}
    arms.update(
        {name: load_config(path, lever) for name, lever in zip(names, args.levers, strict=True)}
    )
    seeds = args.seeds or [arms["default"].train.seed]
    device, _, index, ds1, val = nested_setup(arms["default"], args.device, args.folds)
    engines = {name: engine_for(config) for name, config in arms.items()}
    preprocess = {name: engine.out_dir("preprocess") for name, engine in engines.items()}
    rows_of = {name: np.arange(len(index)) for name in arms}  # each arm's row of a default beat
    sizes = dict.fromkeys(arms, len(index))
    for name in names:
        if engines[name].params("preprocess") == engines["default"].params("preprocess"):
            preprocess[name] = preprocess["default"]
            continue
        try:
            rows_of[name], sizes[name] = _arm_rows(engines[name], preprocess["default"], index)
        except ValueError as problem:
            parser.error(f"{name} changes the pieces (segment or signal settings): {problem}")
    described = {name: " ".join(lever) for name, lever in zip(names, args.levers, strict=True)}
    lent, lent_digest = {}, {}
    if args.lend is not None:
        arms["lent"], engines["lent"] = arms["default"], engines["default"]
        preprocess["lent"] = scratch / "lent"
        try:
            lent_pieces = lend(preprocess["default"], args.lend, mapping, preprocess["lent"])
        except (ValueError, OSError) as problem:
            parser.error(f"--lend: {problem}")
        rows_of["lent"] = np.arange(len(index))  # the default's beats first, then the lent
        sizes["lent"] = len(index) + lent_pieces.pieces
        lent["lent"] = np.arange(sizes["lent"]) >= len(index)
        lent_digest["lent"] = lent_pieces.digest
        names.append("lent")
        described["lent"] = (
            f"lend {lent_pieces.pieces:,} pieces of {lent_pieces.patients} patients "
            f"from {args.lend} as {' '.join(args.lend_as)}"
        )
    shared = np.all([rows >= 0 for rows in rows_of.values()], axis=0)
    return Arms(
        configs=arms,
        names=names,
        described=described,
        seeds=seeds,
        lever_steps=lever_steps,
        device=device,
        index=index,
        ds1=ds1,
        val=val,
        engines=engines,
        preprocess=preprocess,
        rows_of=rows_of,
        sizes=sizes,
        shared=shared,
        lent=lent,
        lent_digest=lent_digest,
        scratch=scratch,
    )


def _scored(setup: Arms, outer) -> int:
    """The beats a round scores once per seed: the held-out sides' beats that every arm keeps,
    of the classes the default learns (all of DS1's over the five sides of the usual round)."""
    classes = setup.configs["default"].train.classes
    learnt = setup.index["label"].isin(classes).to_numpy() if classes else True
    return int(sum((setup.val[k] & setup.shared & learnt).sum() for k in outer))


def _round(args, setup: Arms, log: RoundLog) -> None:
    """Trains and scores every arm on each outer split in turn, then the summary lines."""
    arms, names, seeds, shared, index = (
        setup.configs,
        setup.names,
        setup.seeds,
        setup.shared,
        setup.index,
    )
    if not shared.all():
        log.say(
            f"(every arm scored on the {shared.sum():,} of the default's {len(index):,} beats "
            "that all arms keep)"
        )
    for name in setup.lent:
        log.say(f"({name}: {setup.described[name]}, on every training side)")
    rows = []
    pooled: dict[str, list] = {"y": [], "patient": [], **{name: [] for name in arms}}
    for k, steps, own in zip(args.outer, args.refit_steps, setup.lever_steps, strict=True):
        row = {
            "outer": k,
            "steps": steps,
            "lever_steps": own,
            "overrides": args.levers[0] if len(args.levers) == 1 else args.levers,
            **({"lent": setup.described["lent"]} if setup.lent else {}),
            "device": str(setup.device),
        }
        trained: dict = {}  # (pieces, training settings) -> (data, probabilities), for arms
        # that differ only in how the evaluate stage decides (evaluate.*): one training serves all
        default_sides = (
            setup.ds1 & ~setup.val[k] & shared,
            setup.val[k] & shared,
        )  # training, held-out rows
        for name, config in arms.items():
            folder = setup.scratch / f"{k}_{name.replace(' ', '_')}"
            count = steps if name == "default" or name in setup.lent else own
            train, held = (
                _in_rows(side, setup.rows_of[name], setup.sizes[name]) for side in default_sides
            )
            sides = (train | setup.lent[name], held) if name in setup.lent else (train, held)
            config, data = refit_data(config, count, setup.preprocess[name], folder, *sides)
            drawn = []  # one (macro-F1, F1 by class) per seed
            for seed in seeds:
                seeded = dataclasses.replace(
                    config, train=dataclasses.replace(config.train, seed=seed)
                )
                settings = dataclasses.replace(seeded, evaluate=arms["default"].evaluate)
                key = setup.preprocess[name], settings
                if key not in trained:
                    stamp = None if args.no_cache else setup.engines[name].stamp_path("preprocess")
                    lent = setup.lent_digest.get(name)
                    probas = held_out_probabilities(
                        settings, data, setup.device, stamp, sides, lent
                    )
                    trained[key] = data, probas
                data, proba = trained[key]
                y = data.sides["test"].y.numpy()
                classes = data.classes
                predicted = decisions(seeded, data, proba)
                pooled[name].append(predicted)
                metrics = from_confusion(confusion(y, predicted, len(classes)), classes)
                drawn.append((metrics["macro_f1"], [metrics[f"{c}_f1"] for c in classes]))
            row[name] = statistics.mean(score for score, _ in drawn)
            mean_f1 = np.mean([by_class for _, by_class in drawn], axis=0).tolist()
            row[f"{name} F1"] = {c: round(f, 4) for c, f in zip(classes, mean_f1, strict=True)}
            if len(seeds) > 1:
                row[f"{name} by seed"] = [round(score, 4) for score, _ in drawn]
        held = data.index.loc[data.sides["test"].rows, "patient"].to_numpy()
        pooled["y"] += [y] * len(seeds)  # each seed's decisions against the same beats
        pooled["patient"] += [held] * len(seeds)
        rows.append(row)
        scores = ", ".join(f"{name} {row[name]:.4f}" for name in arms)
        log.say(f"outer {k} ({steps} / {own} steps): {scores}")
        by_class = "; ".join(
            f"{name} " + " ".join(f"{v:.3f}" for v in row[f"{name} F1"].values()) for name in arms
        )
        log.say(f"  F1 by class ({' '.join(classes)}): {by_class}")
        if len(seeds) > 1:
            each = "; ".join(
                f"{name} " + " ".join(f"{v:.4f}" for v in row[f"{name} by seed"]) for name in arms
            )
            log.say(f"  by seed ({' '.join(map(str, seeds))}): {each}")
        log.metrics(_split_metrics(row, arms, seeds), step=k)
        append_line(args.out, row)
    means = {name: statistics.mean(r[name] for r in rows) for name in arms}
    gains = ", ".join(f"{name} - default {means[name] - means['default']:+.4f}" for name in names)
    log.say(f"mean: {', '.join(f'{name} {means[name]:.4f}' for name in arms)} ({gains})")
    log.metrics({f"{metric_name(name)}.mean_macro_f1": means[name] for name in arms})
    log.metrics({f"{metric_name(name)}.gain": means[name] - means["default"] for name in names})
    left_out = _left_out_gains(rows, names)
    for line in _each_split_left_out(rows, left_out):
        log.say(line)
    for name, gains in left_out.items():
        for r, gain in zip(rows, gains, strict=True):  # the step: the split left out
            log.metrics({f"{metric_name(name)}.gain_left_out": gain}, step=r["outer"])
    lines, values = _pooled_difference(
        {k: np.concatenate(v) for k, v in pooled.items()}, names, classes
    )
    for line in lines:
        log.say(line)
    log.metrics(values)
    if len(names) > 1:
        for name in names:
            log.say(f"{name}: {setup.described[name]}")


def _split_metrics(row: dict, arms, seeds) -> dict[str, float]:
    """One outer split's scores as MLflow metrics: each arm's macro-F1, F1 by class and, over
    several seeds, each seed's macro-F1."""
    values = {}
    for name in arms:
        arm = metric_name(name)
        values[f"{arm}.macro_f1"] = row[name]
        values.update({f"{arm}.{c}_f1": f for c, f in row[f"{name} F1"].items()})
        for seed, score in zip(seeds, row.get(f"{name} by seed", []), strict=False):
            values[f"{arm}.seed_{seed}.macro_f1"] = score
    return values


def held_out_probabilities(
    config, data, device, stamp: Path | None, sides, lent: str | None = None
) -> np.ndarray:
    """``probabilities`` of one training, from the cache when that exact training ran before
    (``stamp``: the preprocess stage's stamp, whose output digest goes into the key; None: no
    cache; ``lent``: the digest of pieces lent to the training side, which goes in too)."""
    if stamp is None or not stamp.is_file():
        return probabilities(config, data, False, device)
    key = hashlib.sha256()
    for part in (
        repr(config),
        json.loads(stamp.read_text())["out"],
        torch.__version__,
        device.type,
        *(np.packbits(mask).tobytes().hex() for mask in sides),
        _source_digest(),
        *([lent] if lent else []),
    ):
        key.update(str(part).encode())
    path = stamp.parent.parent / "refit_cache" / f"{key.hexdigest()[:32]}.npy"
    if path.is_file():
        print(f"  (held-out probabilities from {path.name}, trained before)", file=sys.stderr)
        return np.load(path)
    proba = probabilities(config, data, False, device)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.save(f, proba)
    return proba


@functools.cache
def _source_digest() -> str:
    """Of every Python file of the ``ecg`` package and of these benchmarks: a code change, even
    one that should not change a result, makes new keys. Read once per run."""
    digest = hashlib.sha256()
    for root in (Path(ecg.__file__).parent, Path(__file__).parent):
        for path in sorted(root.rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _each_split_left_out(rows: list[dict], left_out: dict[str, list[float]]) -> list[str]:
    """``_left_out_gains`` as printed lines. Most rounds were decided by one side, the one that
    holds record 208 out (DS1's only patient with many F beats): a gain that vanishes or flips
    without one split shows it in the round's own printout, not in a reading made after the
    fact."""
    lines = []
    for name, gains in left_out.items():
        each = ", ".join(f"{r['outer']} {g:+.4f}" for r, g in zip(rows, gains, strict=True))
        lines.append(f"  {name} - default, each split left out: {each}")
    return lines


def _left_out_gains(rows: list[dict], names: list[str]) -> dict[str, list[float]]:
    """Each arm's gain on the mean over the splits with each split left out in turn, in the
    order of ``rows``; nothing with one split."""
    if len(rows) < 2:
        return {}
    return {
        name: [
            statistics.mean(r[name] - r["default"] for r in rows if r is not left) for left in rows
        ]
        for name in names
    }


def _pooled_difference(
    pooled: dict[str, np.ndarray], names: list[str], classes
) -> tuple[list[str], dict[str, float]]:
    """Every held-out beat once (the outer sides are disjoint), each arm's decisions pooled: the
    difference in macro-F1 with a 95 % interval from resampling patients. The rule decides on the
    mean over the splits; this says how much of a difference the patients themselves make.
    Returns the lines to print and the same numbers as metrics."""
    y, patients = pooled["y"], pooled["patient"]
    scores = {
        name: from_confusion(confusion(y, pooled[name], len(classes)), classes)["macro_f1"]
        for name in ["default", *names]
    }
    lines = [
        f"pooled over the held-out sides ({len(y):,} beats, {len(np.unique(patients))} patients): "
        + ", ".join(f"{name} {score:.4f}" for name, score in scores.items())
    ]
    values = {f"pooled.{metric_name(name)}.macro_f1": score for name, score in scores.items()}
    for name in names:
        point, low, high = paired_difference(y, pooled["default"], pooled[name], patients, classes)
        lines.append(
            f"  {name} - default {point:+.4f} [{low:+.4f}, {high:+.4f}] (95 % CI by patient)"
        )
        arm = metric_name(name)
        values.update(
            {
                f"{arm}.pooled_gain": point,
                f"{arm}.pooled_gain_low": low,
                f"{arm}.pooled_gain_high": high,
            }
        )
    return lines, values


def _arm_rows(engine, default: Path, index) -> tuple[np.ndarray, int]:
    """Each of the default's beats' row in the pieces of an arm that changes them (-1 where the
    arm has no such beat), and the arm's number of pieces. Raises ValueError saying why the arm
    cannot be compared: it needs pieces of its own, made by its own settings, whose beats in
    common with the default's carry the same labels in the same order."""
    own = engine.out_dir("preprocess")
    if own == default:
        raise ValueError(
            "give it a data directory of its own (data_dir=...) and preprocess it there"
        )
    (status,) = [s for s in engine.status() if s.name == "preprocess"]
    if not status.fresh:
        raise ValueError(f"its pieces in {own} are not up to date ({'; '.join(status.reasons)})")
    _, theirs, _ = load_pieces(own)
    keys = ["record", "sample"]
    matched = index[[*keys, "label"]].merge(
        theirs[[*keys, "label"]].assign(row=np.arange(len(theirs))),
        on=keys,
        how="left",
        suffixes=("", "_theirs"),
    )
    if len(matched) != len(index) or theirs.duplicated(keys).any():
        raise ValueError(f"two of its pieces in {own} share a record and sample")
    found = matched["row"].notna().to_numpy()
    rows = matched["row"].fillna(-1).astype(np.int64).to_numpy()
    if not found.any():
        raise ValueError(f"none of its {len(theirs):,} pieces is one of the default's beats")
    if (matched.loc[found, "label"] != matched.loc[found, "label_theirs"]).any():
        raise ValueError("beats it shares with the default carry other labels")
    if (np.diff(rows[found]) <= 0).any():
        raise ValueError("the beats it shares with the default are in another order")
    return rows, len(theirs)


def _in_rows(mask: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    """A mask over the default's beats as a mask over an arm's pieces (``rows`` from
    ``_arm_rows``); the beats the mask holds must all be the arm's."""
    kept = rows[mask]
    if (kept < 0).any():
        raise ValueError(f"{(kept < 0).sum():,} of the beats asked for are not the arm's")
    out = np.zeros(size, dtype=bool)
    out[kept] = True
    return out


if __name__ == "__main__":
    main()

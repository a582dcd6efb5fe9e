"""Does the patient adversary's head find an N beat's patient at all? (twenty-ninth round)

One member trained on the whole training side of a pipeline's preprocessed data, with the
pipeline's own settings and steps, beside a patient head (``train.patient_adversary``) whose
reversal factor is held at ``--factor`` throughout (0: the head learns, the LSTM is left alone).
Printed every 25 steps: the head's accuracy on the last 25 batches' N beats. At the end, the
same on 4,000 N beats the head is asked about afterwards, against a logistic regression fitted
on 8,000 others' pooled states (the same patients): how much of the patient the state holds,
and how much of it the head found. A head that finds nothing leaves the reversal nothing to
push against.

    python benchmarks/adversary_head.py mitdb --factor 0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ecg.config import find_pipeline, load_config, to_dict
from ecg.dataset import load_fold
from ecg.model import build_model
from ecg.pipeline import engine_for
from ecg.train import (
    build_optimizer,
    epoch_order,
    fit_normalizer,
    seed_everything,
    training_loss,
    training_step,
    with_adversary,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pipeline", help="a pipeline whose preprocess and split stages have run")
    parser.add_argument("--factor", type=float, default=0.0, help="the reversal factor, held")
    args = parser.parse_args()
    config = load_config(find_pipeline(args.pipeline), ["train.patient_adversary=1"])
    cfg, engine = config.train, engine_for(config)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    cpu = torch.device("cpu")
    data = load_fold(
        engine.out_dir("preprocess"),
        engine.out_dir("split"),
        config.split.protocol,
        0,
        classes=cfg.classes,
        rr_names=config.model.rr_features if config.model.use_rr else None,
        sides=("train",),
    )
    train = data.sides["train"]
    seed_everything(cfg.seed)
    single = {**to_dict(config.model), "ensemble": 1}
    model = build_model(data.n_leads, len(data.classes), len(data.rr_names), single)
    normalizer = fit_normalizer(train, config.model.input_norm == "window")
    patients = data.index["patient"].to_numpy()[train.rows]
    both, targets = with_adversary(model, train, data.classes, cfg, patients)
    n_patients = len(np.unique(patients))
    loss_fn = training_loss(train.y, None, len(data.classes), cfg, cpu)
    optimizer = build_optimizer(both, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)

    def guesses(rows: torch.Tensor) -> np.ndarray:
        """The head's patient for each row, its normalisation on the rows' own statistics as in
        training (its running statistics lag a state that moves every step)."""
        model.eval()
        both.adversary.train()
        with torch.no_grad():
            x, _ = normalizer(train.x[rows], None)
            return both.adversary.head(model.pooled(x)).argmax(dim=1).numpy()

    print(f"{n_patients} patients, {int((targets >= 0).sum()):,} N beats, factor {args.factor}")
    step, hits, seen = 0, 0, 0
    for _ in range(cfg.epochs):
        order = epoch_order(train, cfg, generator)
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            both.train()
            rr = None if train.rr is None else train.rr[rows]
            training_step(
                both, normalizer, loss_fn, optimizer, cfg, cpu, train.x[rows], train.y[rows], rr,
                None, targets[rows], args.factor,
            )  # fmt: skip
            n = (targets[rows] >= 0).numpy()
            hits += int((guesses(rows)[n] == targets[rows].numpy()[n]).sum())
            seen += int(n.sum())
            step += 1
            if step % 25 == 0:
                print(f"step {step}: the head's accuracy on N beats {hits / max(seen, 1):.3f}")
                hits, seen = 0, 0
    model.eval()
    rows = np.random.default_rng(0).choice(np.flatnonzero(targets >= 0), 12_000, replace=False)
    with torch.no_grad():
        state = model.pooled(normalizer(train.x[rows], None)[0]).numpy()
    truth = targets.numpy()[rows]
    scaler = StandardScaler().fit(state[:8000])
    read_out = LogisticRegression(max_iter=2000).fit(scaler.transform(state[:8000]), truth[:8000])
    print(
        "4,000 held-back N beats: logistic regression on the pooled state "
        f"{read_out.score(scaler.transform(state[8000:]), truth[8000:]):.3f}, "
        f"the head {(guesses(torch.from_numpy(rows[8000:])) == truth[8000:]).mean():.3f}, "
        f"the largest patient's share {np.bincount(truth).max() / len(truth):.3f}"
    )


if __name__ == "__main__":
    main()

"""Training and inference speed of a pipeline's model on its real data, with peak memory.

    ecg run mitdb --until split                 # once, so the dataset is built
    python benchmarks/train_speed.py mitdb --device cpu --repeats 5
    python benchmarks/train_speed.py mitdb --set model.ensemble=1   # one member alone
    python benchmarks/train_speed.py mitdb --set train.precision=bf16  # bf16 autocast

``--set`` takes the same overrides as ``ecg run``; one that changes the data (signal, segment,
split) needs ``ecg run mitdb --until split`` with the same ``--set`` first.

Training: beats/s over whole optimiser steps on batches of the training side, through the step
``fit`` takes (its loss, class weights, optimiser and gradient clipping; no augmentation);
inference: beats/s of the packaged model (normalisation + BiLSTM + softmax) on batches of 1024
test beats. Each figure is the median of ``--repeats`` timed passes after one warm-up.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from ecg.config import find_pipeline, load_config, to_dict
from ecg.dataset import load_fold
from ecg.model import PackagedClassifier, build_model, pack
from ecg.pipeline import engine_for
from ecg.train import (
    build_optimizer,
    fit_normalizer,
    select_device,
    training_loss,
    training_step,
    weight_groups,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="mitdb")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-batches", type=int, default=40)
    parser.add_argument("--infer-beats", type=int, default=20480)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = load_config(find_pipeline(args.pipeline), args.overrides)
    engine = engine_for(config)
    device = select_device(args.device)
    if config.train.threads and device.type == "cpu":
        torch.set_num_threads(config.train.threads)
    mcfg, tcfg = config.model, config.train
    data = load_fold(
        engine.out_dir("preprocess"),
        engine.out_dir("split"),
        config.split.protocol,
        0,
        classes=tcfg.classes,
        rr_names=mcfg.rr_features if mcfg.use_rr else None,
        sides=("train", "test"),
    )
    train, test = data.sides["train"], data.sides["test"]
    n_rr = len(data.rr_names)
    model = build_model(data.n_leads, len(data.classes), n_rr, to_dict(mcfg)).to(device)
    normalizer = fit_normalizer(train, mcfg.input_norm == "window").to(device)
    groups = weight_groups(train, data.index, data.classes, tcfg.weight_rhythms)
    loss_fn = training_loss(train.y, groups, len(data.classes), tcfg, device)
    optimizer = build_optimizer(model, tcfg)
    bs = tcfg.batch_size
    x_all = train.x.to(device)
    rr_all = None if train.rr is None else train.rr.to(device)
    y_all = train.y.to(device)
    groups_all = None if groups is None else groups.to(device)

    def train_pass() -> float:
        model.train()
        order = torch.randperm(len(train), device=device)[: bs * args.train_batches]
        sync(device)
        started = time.perf_counter()
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            rr = None if rr_all is None else rr_all[idx]
            group = None if groups_all is None else groups_all[idx]
            training_step(model, normalizer, loss_fn, optimizer, tcfg, device,
                          x_all[idx], y_all[idx], rr, group)  # fmt: skip
        sync(device)
        return len(order) / (time.perf_counter() - started)

    packaged = PackagedClassifier(model, normalizer, data.n_leads, n_rr).eval()
    n = min(args.infer_beats, len(test))
    packed = pack(test.x[:n], None if test.rr is None else test.rr[:n]).to(device)

    @torch.no_grad()
    def infer_pass() -> float:
        sync(device)
        started = time.perf_counter()
        for start in range(0, n, 1024):
            packaged(packed[start : start + 1024])
        sync(device)
        return n / (time.perf_counter() - started)

    train_pass(), infer_pass()  # warm-up
    train_rates = [train_pass() for _ in range(args.repeats)]
    infer_rates = [infer_pass() for _ in range(args.repeats)]
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    print(
        f"{args.pipeline}: {mcfg.ensemble} x BiLSTM hidden {mcfg.hidden}, {mcfg.layers} layers, "
        f"pooling {mcfg.pooling}, {data.n_leads} lead(s) x {train.x.shape[1]} samples, {n_rr} RR "
        f"features, batch {bs}; device {device} ({torch.get_num_threads()} CPU threads), "
        f"training in {tcfg.precision}{' autocast' if tcfg.precision == 'bf16' else ''}"
    )
    print(
        f"  training:  median {statistics.median(train_rates):,.0f} beats/s "
        f"(min {min(train_rates):,.0f}, max {max(train_rates):,.0f}; {args.repeats} passes "
        f"of {args.train_batches} batches)"
    )
    print(
        f"  inference: median {statistics.median(infer_rates):,.0f} beats/s "
        f"(min {min(infer_rates):,.0f}, max {max(infer_rates):,.0f}; {args.repeats} passes "
        f"of {n:,} beats)"
    )
    what = "GPU memory allocated" if device.type == "cuda" else "RSS"
    print(f"  peak {what}: {peak:,.0f} MB")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()

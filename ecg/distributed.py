"""`torchrun --nproc_per_node=N -m ecg train PIPELINE`: one training across N processes.

PyTorch's own launcher starts the processes; here rank 0 builds the dataset (the stages before
train) and owns the engine (lock, temporary folder, stamp, MLflow run), while the other ranks join
the same fit loop, which runs as DistributedDataParallel, and write nothing. Whether training runs
at all is decided by rank 0 and broadcast, so no rank waits for a partner that never comes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ecg.engine import Engine

log = logging.getLogger("ecg")


def run_distributed(
    engine: Engine,
    options: Mapping[str, Any],
    force: Sequence[str],
    on_stage: Callable | None = None,
) -> bool:
    """Train under torchrun; returns whether training ran."""
    import torch
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and options.get("device") != "cpu"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        decision: list[Any] = [None]
        if rank == 0:
            engine.run(until="split", on_stage=on_stage, options=options)
            decision = [("train" in force) or not engine.is_fresh("train")]
            if not decision[0]:
                log.info("train: fresh, nothing to do (%d processes)", world)
        dist.broadcast_object_list(decision, src=0)
        if not decision[0]:
            return False
        if rank == 0:
            engine.run(until="train", force=force, on_stage=on_stage, options=options)
        else:
            log.setLevel(logging.WARNING)  # one voice: rank 0 reports for all
            engine.run_detached("train", options)
        dist.barrier()
        return True
    finally:
        dist.destroy_process_group()

"""Seconds and peak memory of the whole preprocess stage of a pipeline: cold (forced rerun) and
cached (fresh: nothing to do), each as a full ``ecg`` command, median of several runs.

    ecg download mitdb --source ../shared/data/mitdb      # once, so the raw cache is full
    python benchmarks/preprocess.py mitdb --runs 5

Peak RSS is that of the largest single process (the main one or a worker), from getrusage.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="mitdb")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    ecg = [sys.executable, "-m", "ecg", "-q", "run", args.pipeline, "--until", "preprocess"]
    timed(ecg)  # make sure upstream stages are fresh and the cache is warm
    cold = [timed([*ecg, "--force", "preprocess"]) for _ in range(args.runs)]
    cached = [timed(ecg) for _ in range(args.runs)]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{args.pipeline} preprocess, {args.runs} runs each, full `ecg run` commands:")
    print(
        f"  cold (forced):  median {statistics.median(cold):.2f} s "
        f"(min {min(cold):.2f}, max {max(cold):.2f})"
    )
    print(
        f"  cached (fresh): median {statistics.median(cached):.2f} s "
        f"(min {min(cached):.2f}, max {max(cached):.2f})"
    )
    print(f"  peak RSS of the largest process: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()

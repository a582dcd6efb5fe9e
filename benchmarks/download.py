"""Seconds to bring a database into the cache from a local copy: cold (copy and verify every
file) and warm (everything already verified), median of several runs.

    python benchmarks/download.py ../shared/data/mitdb --database mitdb --runs 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ecg.config import DownloadConfig
from ecg.databases.download import fetch_database
from ecg.databases.sources import LocalSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--database", default="mitdb")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cfg = DownloadConfig(database=args.database, version=args.version)
    cold, warm = [], []
    for _ in range(args.runs):
        cache = Path(tempfile.mkdtemp()) / "cache"
        started = time.perf_counter()
        result = fetch_database(cfg, LocalSource(args.source.resolve()), cache)
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        fetch_database(cfg, LocalSource(args.source.resolve()), cache)
        warm.append(time.perf_counter() - started)
        shutil.rmtree(cache.parent)
    print(
        f"{args.database} {args.version}: {len(result.records)} records, "
        f"{len(result.files)} files, {result.fetched_bytes / 1e6:.1f} MB"
    )
    print(
        f"cold (copy + verify): median {statistics.median(cold):.2f} s over {args.runs} runs "
        f"(min {min(cold):.2f}, max {max(cold):.2f})"
    )
    print(
        f"warm (all verified):  median {statistics.median(warm):.3f} s over {args.runs} runs "
        f"(min {min(warm):.3f}, max {max(warm):.3f})"
    )


if __name__ == "__main__":
    main()

"""The pieces the nested comparisons read, packed small enough to carry to another machine.

    python benchmarks/carry_pieces.py mitdb --pack pieces.tar.xz        # here
    tar -xJf pieces.tar.xz -C data                                      # there, into data_dir
    python benchmarks/carry_pieces.py mitdb --check SHA256              # there

``refit_lever.py``, ``refit_ensemble.py``, ``refit_steps.py`` and ``held_out_errors.py`` read the
training side of the protocol alone (DS1 for mitdb). ``--pack`` keeps the preprocess folder's index,
metadata and records table whole and zeroes every window outside that side, so the archive
shrinks to the side's share (mitdb: 75.6 MB of windows, 37 MB packed) while every row keeps its
number; it prints the sha256 of the kept rows, which ``--check`` recomputes where the archive was
unpacked (``--set data_dir=...`` for another data directory). The thirty-fourth to
thirty-eighth rounds of ``benchmarks/quality.md`` ran on a GPU machine this way. Stage stamps
do not travel: the windows outside the side differ from what the preprocess stage wrote, and a
lever with pieces of its own (``refit_lever.py`` checks their freshness) needs them made there.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from refit_steps import sides_of

from ecg.config import find_pipeline, load_config
from ecg.pipeline import engine_for
from ecg.preprocess import load_pieces

TABLES = ("index.parquet", "meta.json", "records.csv")


def kept_rows(config, folds: int) -> tuple[np.ndarray, np.ndarray, Path]:
    """The preprocess folder's windows, the mask of the training side's rows, and the folder."""
    folder = engine_for(config).out_dir("preprocess")
    windows, index, _ = load_pieces(folder)
    side, _ = sides_of(index, config, list(range(folds)))
    return windows, side, folder


def digest(windows: np.ndarray, rows: np.ndarray) -> str:
    """sha256 of the chosen rows' bytes, in order."""
    return hashlib.sha256(np.ascontiguousarray(windows[rows]).tobytes()).hexdigest()


def pack(config, folds: int, archive: Path) -> str:
    """Write the archive (paths relative to ``data_dir``); return the kept rows' digest."""
    windows, rows, folder = kept_rows(config, folds)
    zeroed = np.zeros(windows.shape, dtype=windows.dtype)
    zeroed[rows] = windows[rows]
    inside = folder.relative_to(config.data_path)
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / "windows.npy"
        np.save(staged, zeroed)
        partial = archive.with_name(archive.name + ".partial")
        with tarfile.open(partial, "w:xz") as tar:
            tar.add(staged, arcname=str(inside / "windows.npy"))
            for name in TABLES:
                tar.add(folder / name, arcname=str(inside / name))
        partial.replace(archive)  # a crash leaves no archive that looks whole
    return digest(zeroed, rows)  # the kept rows, already in memory: no second read of the file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="mitdb")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--pack", type=Path, metavar="ARCHIVE", help="write a .tar.xz")
    action.add_argument("--check", metavar="SHA256", help="compare the kept rows' sha256")
    parser.add_argument("--folds", type=int, default=5, help="split seeds that make up the side")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = load_config(find_pipeline(args.pipeline), args.overrides)
    if args.pack:
        if args.pack.suffixes[-2:] != [".tar", ".xz"]:
            parser.error(f"{args.pack}: the archive is written as .tar.xz")
        sha = pack(config, args.folds, args.pack)
        print(f"{args.pack}: {args.pack.stat().st_size / 1e6:.1f} MB; kept rows sha256 {sha}")
        return 0
    windows, rows, folder = kept_rows(config, args.folds)
    sha = digest(windows, rows)
    if sha != args.check:
        print(f"{folder}: the kept rows' sha256 is {sha}, not {args.check}", file=sys.stderr)
        return 1
    print(f"{folder}: {int(rows.sum()):,} kept rows, sha256 {sha} as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())

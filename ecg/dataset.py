"""The built dataset (memory-mapped windows + index table + split) as tensors for one fold.

Each side of a split is read from the memory-mapped array once, into memory (MIT-BIH DS1 at
128 Hz is 18 MB), and batches are cut from tensors by index: far faster on two CPU cores than a
DataLoader calling ``__getitem__`` fifty thousand times an epoch, and on a GPU the whole side
moves to device memory once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ecg.errors import EcgError
from ecg.preprocess import load_pieces
from ecg.split import load_split


@dataclass
class Side:
    """The pieces of one side (train, val or test) of one fold."""

    x: torch.Tensor
    """float32 (pieces, time, leads), filtered signal in mV."""
    rr: torch.Tensor | None
    """float32 (pieces, features), or None when the model takes no RR features."""
    y: torch.Tensor
    """int64 class index into ``FoldData.classes``."""
    rows: np.ndarray
    """Row of each piece in the index table."""

    def __len__(self) -> int:
        return len(self.y)

    def take(self, keep: np.ndarray) -> Side:
        """The pieces where the boolean mask ``keep`` is true, in order."""
        keep = np.asarray(keep, dtype=bool)
        mask = torch.from_numpy(keep)
        rr = None if self.rr is None else self.rr[mask]
        return Side(self.x[mask], rr, self.y[mask], self.rows[keep])


@dataclass
class FoldData:
    classes: list[str]
    rr_names: list[str]
    sides: dict[str, Side]
    index: pd.DataFrame
    set_aside: dict[str, dict[str, int]]
    """Pieces of the loaded sides whose class the model does not learn: side -> class -> n."""
    meta: dict

    @property
    def n_leads(self) -> int:
        return self.sides["train"].x.shape[2]


def load_fold(
    preprocess_dir: Path,
    split_dir: Path,
    protocol: str,
    fold: int,
    classes: Sequence[str] = (),
    rr_names: Sequence[str] | None = (),
    sides: Sequence[str] = ("train", "val", "test"),
) -> FoldData:
    """Tensors of the chosen sides of fold ``fold``; ``rr_names=None`` means no RR features,
    an empty sequence all of them."""
    windows, index, meta = load_pieces(preprocess_dir)
    split = load_split(split_dir, index, protocol)
    column = f"split_{fold}"
    if column not in split.columns:
        raise EcgError(f"{split_dir}: no fold {fold} (it has {len(split.columns)})")
    wanted = list(classes) or list(meta["classes"])
    unknown = [c for c in wanted if c not in meta["classes"]]
    if unknown:
        raise EcgError(f"train.classes: {', '.join(unknown)} not among {meta['classes']}")
    if rr_names is None:
        names: list[str] = []
    else:
        names = list(rr_names) or list(meta["rr_features"])
        missing = [n for n in names if n not in index.columns]
        if missing:
            raise EcgError(
                f"model.rr_features: {', '.join(missing)} not in the dataset "
                f"(it has {', '.join(meta['rr_features'] + meta.get('rr_optional', [])) or 'none'})"
            )
    keep_class = index["label"].isin(wanted).to_numpy()
    set_aside = {}
    class_id = {c: i for i, c in enumerate(wanted)}
    result = {}
    for side in sides:
        on_side = split[column].to_numpy() == side
        rows = np.flatnonzero(on_side & keep_class)
        aside = index.loc[on_side & ~keep_class, "label"].value_counts()
        set_aside[side] = {str(k): int(v) for k, v in aside.items()}
        x = torch.from_numpy(np.ascontiguousarray(windows[rows], dtype=np.float32))
        rr = None
        if names:
            rr = torch.from_numpy(index.loc[rows, names].to_numpy(dtype=np.float32, copy=True))
        y = torch.from_numpy(
            index.loc[rows, "label"].map(class_id).to_numpy(dtype=np.int64, copy=True)
        )
        result[side] = Side(x, rr, y, rows)
    return FoldData(wanted, names, result, index, set_aside, meta)

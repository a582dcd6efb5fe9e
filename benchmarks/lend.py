"""Another database's patients lent to a round's training sides, never to a held-out one.

``patient_curve.py`` measured that the nested score still rises with the number of training
patients where DS1 ends (``benchmarks/quality.md``, after the fifty-sixth round). DS1 has no more
of them; another database's do, if their beats look enough like MIT-BIH's to the model. Their
pieces are made by the pipeline itself (``ecg run <pipeline> --until preprocess`` with the
default's rate, window and RR settings, R peaks from a detector where the database has no beat
annotations) and joined to the default's here, their labels mapped to the default's classes
(``healthy=N``: PTB's healthy controls; every other label of theirs is left out).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ecg.preprocess import load_pieces

MAY_DIFFER = {
    "download.database",
    "signal.leads",
    "signal.max_nan_fraction",
    "segment.task",
    "segment.r_peaks",
    "segment.detector_lead",
    "segment.window_s",
    "segment.stride_s",
}
"""The preprocess settings in which lent pieces may differ from the default's; every other one
(rate, filter, window, RR averages, template) must be the same for the model to read them alike."""


@dataclasses.dataclass(frozen=True)
class Lent:
    pieces: int
    patients: int
    digest: str
    """The lent folder's output digest, from its stage stamp: what a cache key needs of it."""


def lend(default: Path, lent: Path, mapping: dict[str, str], out: Path) -> Lent:
    """Writes to ``out`` the default's pieces followed by the lent ones whose label ``mapping``
    maps, under the mapped label: the default's rows keep their numbers, the lent rows come after
    them. Raises ValueError saying what does not fit."""
    windows, index, meta = load_pieces(default)
    theirs_windows, theirs, their_meta = load_pieces(lent)
    ours, stamp = (_stamp(folder) for folder in (default, lent))
    settings = (set(ours["params"]) | set(stamp["params"])) - MAY_DIFFER
    for key in sorted(settings):
        if ours["params"].get(key) != stamp["params"].get(key):
            raise ValueError(
                f"{lent}: {key} is {stamp['params'].get(key)!r}, "
                f"the default's {ours['params'].get(key)!r}"
            )
    if theirs_windows.shape[1:] != windows.shape[1:]:
        raise ValueError(
            f"{lent}: pieces of shape {theirs_windows.shape[1:]}, the default's {windows.shape[1:]}"
        )
    unknown = sorted(set(mapping) - set(their_meta["classes"]))
    foreign = sorted(set(mapping.values()) - set(meta["classes"]))
    if unknown:
        raise ValueError(f"{lent}: no label {', '.join(unknown)} (it has {their_meta['classes']})")
    if foreign:
        raise ValueError(f"the default has no class {', '.join(foreign)} ({meta['classes']})")
    keep = theirs["label"].isin(list(mapping)).to_numpy()
    if not keep.any():
        raise ValueError(f"{lent}: no piece labelled {', '.join(mapping)}")
    missing = [c for c in index.columns if c not in theirs.columns and c != "label_id"]
    if missing:
        raise ValueError(f"{lent}: its index has no {', '.join(missing)}")
    shared = sorted(set(index["patient"]) & set(theirs.loc[keep, "patient"]))
    if shared:
        raise ValueError(f"{lent}: patient(s) {', '.join(shared)} are the default's too")
    lent_rows = theirs.loc[keep, [c for c in index.columns if c != "label_id"]].copy()
    lent_rows["label"] = lent_rows["label"].map(mapping)
    lent_rows["label_id"] = lent_rows["label"].map(meta["classes"].index).astype("int8")
    joined = pd.concat([index, lent_rows], ignore_index=True)
    out.mkdir(parents=True)
    np.save(out / "windows.npy", np.concatenate([windows, theirs_windows[keep]]))
    joined.to_parquet(out / "index.parquet", index=False)
    lent_meta = {"from": str(lent), "as": mapping, "pieces": int(keep.sum())}
    (out / "meta.json").write_text(json.dumps({**meta, "pieces": len(joined), "lent": lent_meta}))
    return Lent(
        pieces=int(keep.sum()),
        patients=lent_rows["patient"].nunique(),
        digest=stamp["out"],
    )


def _stamp(folder: Path) -> dict:
    """The stage stamp the engine wrote beside a finished stage's folder."""
    path = folder.parent / ".stamps" / f"{folder.name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise ValueError(
            f"{folder}: no readable stage stamp at {path}; is it a finished stage?"
        ) from None

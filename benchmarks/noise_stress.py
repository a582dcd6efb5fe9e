"""Noise stress test: how the default model holds up when electrode-motion noise is added.

    python benchmarks/noise_stress.py --nstdb ../shared/data/nstdb --mitdb ../shared/data/mitdb

The MIT-BIH Noise Stress Test Database adds electrode-motion noise to records 118 and 119 at
24, 18, 12, 6, 0 and -6 dB SNR, in alternating two-minute segments after the first five minutes.
Both records are in DS1, so the model is trained here on DS1 *without* them: the default mitdb
config with ``split.exclude_records=[118, 119]``, as pipeline ``mitdb-noise-stress``. Each noisy
record is classified at its reference beats (``.atr``), and scored beside the clean originals.
Scores are over the noisy segments only (the clean minutes of a noisy record would flatter it),
pooling 118 and 119; macro-F1 over the classes present (N, S, V).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ecg.metrics import confusion, from_confusion  # noqa: E402
from ecg.predict import load_model, predict, read_recording  # noqa: E402
from ecg.report.document import Table  # noqa: E402
from ecg.report.render import markdown_table  # noqa: E402

SNRS = {"e24": 24, "e18": 18, "e12": 12, "e06": 6, "e00": 0, "e_6": -6}
PIPELINE = "mitdb-noise-stress"


def noisy_segment(samples: np.ndarray, fs: float) -> np.ndarray:
    """Beats inside the noisy two-minute segments: 5-7 min, 9-11 min, ... (nstdb.txt)."""
    t = samples / fs
    return (t >= 300) & (((t - 300) % 240) < 120)


def train(source: Path | None, overrides: list[str]) -> Path:
    command = [
        sys.executable,
        "-m",
        "ecg",
        "run",
        "mitdb",
        "--until",
        "train",
        "--set",
        f"name={PIPELINE}",
        "--set",
        "split.exclude_records=[118, 119]",
    ]
    for override in overrides:
        command += ["--set", override]
    if source:
        command += ["--source", str(source)]
    subprocess.run(command, check=True)
    return Path("data") / "processed" / PIPELINE / "train" / "fold_0" / "model.pt"


def score(tables: list[pd.DataFrame], classes: list[str]) -> dict:
    table = pd.concat(tables)
    table = table[table["reference"].isin(classes)]
    ids = {c: i for i, c in enumerate(classes)}
    cm = confusion(
        table["reference"].map(ids).to_numpy(), table["class"].map(ids).to_numpy(), len(classes)
    )
    return {"beats": len(table), **from_confusion(cm, classes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nstdb", type=Path, required=True)
    parser.add_argument("--mitdb", type=Path, required=True, help="clean records 118 and 119")
    parser.add_argument("--source", type=Path, help="mitdb source for training, if not cached")
    parser.add_argument("--out", type=Path, default=Path("reports") / "noise_stress")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="train a variant of the default config",
    )
    args = parser.parse_args()
    model = load_model(str(train(args.source or args.mitdb, args.overrides)))
    classes = model.spec["classes"]
    leads = list(model.signal.leads)
    rows = []
    for label, folder, suffix in [
        ("clean", args.mitdb, ""),
        *[(f"{snr} dB", args.nstdb, s) for s, snr in SNRS.items()],
    ]:
        tables = []
        for record in ("118", "119"):
            recording = read_recording(folder / f"{record}{suffix}", leads, None)
            table, _ = predict(model, recording, annotations="atr")
            tables.append(table[noisy_segment(table["sample"].to_numpy(), recording.fs)])
        result = score(tables, classes)
        present = [c for c in classes if result[f"{c}_support"] > 0]
        rows.append(
            {
                "SNR": label,
                "beats": result["beats"],
                "accuracy": result["accuracy"],
                "macro_f1": float(np.mean([result[f"{c}_f1"] for c in present])),
                **{f"{c} Se": result[f"{c}_recall"] for c in present},
                **{f"{c} +P": result[f"{c}_precision"] for c in present},
            }
        )
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "noise_stress.csv", index=False)
    shown = table.copy()
    for column in shown.columns[2:]:
        shown[column] = (100 * shown[column]).map(lambda v: "n/a" if np.isnan(v) else f"{v:.1f}")
    print(markdown_table(Table(list(shown.columns), shown.astype(str).values.tolist())))
    clean = table.loc[0, "macro_f1"]
    at12 = table.loc[table["SNR"] == "12 dB", "macro_f1"].iloc[0]
    print(
        f"\nmacro-F1 at 12 dB {at12:.3f} vs clean {clean:.3f}: drop {clean - at12:+.3f} "
        f"(target: within 0.05)"
    )
    snr = [SNRS[s] for s in SNRS]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(snr, table["macro_f1"].iloc[1:], "o-", label="noisy segments")
    ax.axhline(clean, color="grey", ls="--", label="clean records")
    ax.axhline(clean - 0.05, color="grey", ls=":", label="clean - 0.05")
    ax.set(xlabel="SNR (dB)", ylabel="macro-F1 (N, S, V)", title="MIT-BIH noise stress test")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "noise_stress.png", dpi=110)
    print(f"table and plot in {args.out}")


if __name__ == "__main__":
    main()

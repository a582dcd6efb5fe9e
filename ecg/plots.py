"""Plots as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_matrix_png(
    cm: np.ndarray, classes: Sequence[str], path: Path, title: str = ""
) -> Path:
    """Counts, with each row's share as the colour (so rare classes are not washed out)."""
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(rows > 0, cm / rows, 0.0)
    size = 1.0 + 0.7 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{cm[i, j]:,}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves_png(histories: dict, best_epochs: dict[str, int], path: Path) -> Path:
    """Loss, validation macro-F1 and learning rate per epoch, the kept epoch marked; a run
    without validation patients has no validation panel, as it has nothing to draw there."""
    validated = any(h["val_macro_f1"].notna().any() for h in histories.values())
    fig, axes = plt.subplots(1, 3 if validated else 2, figsize=(11 if validated else 7.5, 3.2))
    loss_ax, lr_ax = axes[0], axes[-1]
    for name, history in histories.items():
        label = f" ({name})" if len(histories) > 1 else ""
        loss_ax.plot(history["epoch"], history["train_loss"], label=f"train{label}")
        lr_ax.plot(history["epoch"], history["lr"], label=name)
        if not validated:
            continue
        loss_ax.plot(history["epoch"], history["val_loss"], "--", label=f"validation{label}")
        axes[1].plot(history["epoch"], history["val_macro_f1"], label=name)
        best = best_epochs.get(name)
        if best:
            axes[1].axvline(best, color="grey", lw=0.8, ls=":")
            f1 = history.loc[history["epoch"] == best, "val_macro_f1"]
            if len(f1):
                axes[1].plot([best], [float(f1.iloc[0])], "o", color="black", ms=5)
    loss_ax.set_title("loss", fontsize=10)
    if validated:
        axes[1].set_title("validation macro-F1 (kept epoch: dot)", fontsize=10)
    lr_ax.set_title("learning rate", fontsize=10)
    lr_ax.set_yscale("log")
    loss_ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def roc_pr_png(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """One-vs-rest ROC and precision-recall curves; a class absent from the test set is skipped."""
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 3.8))
    for i, name in enumerate(classes):
        positive = y_true == i
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, proba[:, i])
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        precision, recall, _ = precision_recall_curve(positive, proba[:, i])
        pr_ax.plot(recall, precision, label=f"{name} (prevalence {positive.mean():.3f})")
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    roc_ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, one vs rest")
    pr_ax.set(xlabel="recall (Se)", ylabel="precision (+P)", title="precision-recall")
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def per_record_png(
    records: Sequence[str],
    accuracy: Sequence[float],
    counts: Sequence[int],
    path: Path,
    unit: str = "record",
) -> Path:
    """Accuracy of each record (or patient), bar width telling nothing, label telling size."""
    order = np.argsort(accuracy)
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(records)), 3.2))
    xs = np.arange(len(records))
    ax.bar(xs, np.asarray(accuracy)[order], color="#4878a8")
    ax.set_xticks(xs, [f"{records[i]}\n{counts[i]:,}" for i in order], fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"accuracy per {unit} (below each: test pieces)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def example_beats_png(
    windows: np.ndarray,
    true: Sequence[str],
    predicted: Sequence[str],
    fs: float,
    path: Path,
    per_row: int = 6,
) -> Path:
    """A grid of pieces, one row per true class: the first lead, with label and prediction."""
    classes = list(dict.fromkeys(true))
    fig, axes = plt.subplots(
        len(classes),
        per_row,
        figsize=(1.7 * per_row, 1.3 * len(classes)),
        squeeze=False,
        sharex=True,
    )
    t = np.arange(windows.shape[1]) / fs
    for row, name in enumerate(classes):
        picks = [i for i, c in enumerate(true) if c == name][:per_row]
        for col in range(per_row):
            ax = axes[row, col]
            ax.set_yticks([])
            if col >= len(picks):
                ax.axis("off")
                continue
            i = picks[col]
            right = predicted[i] == true[i]
            ax.plot(t, windows[i, :, 0], color="#2a6f3a" if right else "#b03030", lw=0.9)
            ax.set_title(
                f"{true[i]} -> {predicted[i]}", fontsize=7, color="black" if right else "#b03030"
            )
    for ax in axes[-1]:
        ax.set_xlabel("s", fontsize=7)
    fig.suptitle("examples: true -> predicted (green right, red wrong)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


CLASS_COLOURS = {
    "N": "#2a6f3a",
    "S": "#d4801f",
    "V": "#b03030",
    "F": "#7b3fa0",
    "Q": "#666666",
    "healthy": "#2a6f3a",
    "MI": "#b03030",
    "disease": "#b03030",
}


def strip_png(
    x: np.ndarray,
    fs: float,
    samples: np.ndarray,
    classes: Sequence[str],
    path: Path,
    seconds: float = 20.0,
    title: str = "",
) -> Path:
    """The first ``seconds`` of the first lead, each classified beat marked in its class colour."""
    n = min(len(x), int(seconds * fs))
    t = np.arange(n) / fs
    fig, ax = plt.subplots(figsize=(12, 2.6))
    ax.plot(t, x[:n], color="#333333", lw=0.7)
    shown = set()
    for sample, name in zip(samples, classes, strict=True):
        if sample >= n:
            break
        colour = CLASS_COLOURS.get(name, "#1f77b4")
        ax.axvline(sample / fs, color=colour, alpha=0.35, lw=4)
        ax.text(
            sample / fs, ax.get_ylim()[1], name, color=colour, ha="center", va="bottom", fontsize=7
        )
        shown.add(name)
    ax.set_xlabel("s")
    ax.set_ylabel("mV")
    ax.set_xlim(0, n / fs)
    if title:
        ax.set_title(title, fontsize=9, pad=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

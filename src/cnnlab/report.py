"""Figures drawn from saved results: the only module that imports matplotlib.

Nothing here trains or evaluates; each function reads numbers that a stage wrote to disk
(``history.json``, ``eval.json``) and writes a PNG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: DVC stages and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_learning_curves(history: list[dict], path: Path, batch_losses: list[float] | None = None,
                         title: str = "") -> Path:
    epochs = [h["epoch"] for h in history]
    panels = 3 if batch_losses else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    axes[0].set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    axes[1].plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    axes[1].plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    best = max(history, key=lambda h: h["val_accuracy"])
    axes[1].axvline(best["epoch"], color="grey", ls="--", lw=1)
    axes[1].annotate(f"best {best['val_accuracy']:.4f} @ {best['epoch']}", (best["epoch"], best["val_accuracy"]),
                     textcoords="offset points", xytext=(-60, -20))
    axes[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in axes[:2]:
        ax.legend()
        ax.grid(alpha=0.3)
    if batch_losses:
        steps = np.arange(len(batch_losses))
        axes[2].plot(steps, batch_losses, lw=0.5, alpha=0.5, label="per batch")
        window = max(1, len(batch_losses) // 100)
        smooth = np.convolve(batch_losses, np.ones(window) / window, mode="valid")
        axes[2].plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window}")
        axes[2].set(xlabel="batch", ylabel="training loss", title="per-batch loss", yscale="log")
        axes[2].legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    counts = np.asarray(matrix)
    normalized = counts / np.clip(counts.sum(1, keepdims=True), 1, None)
    size = max(5, 0.5 * len(classes) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, data, fmt, name in ((axes[0], counts, "d", "counts"), (axes[1], normalized, ".2f", "row-normalised")):
        image = ax.imshow(data, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
               title=name)
        ax.set_xticklabels(classes, rotation=90)
        ax.set_yticklabels(classes)
        if len(classes) <= 20:
            threshold = data.max() / 2
            for i in range(len(classes)):
                for j in range(len(classes)):
                    ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if data[i, j] > threshold else "black")
    errors = int(counts.sum() - np.trace(counts))
    fig.suptitle(f"{title} — {errors} errors of {int(counts.sum())}".strip(" —"))
    return _save(fig, path)

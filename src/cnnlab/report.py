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
        fig.suptitle(title, y=1.02 + 0.08 / rows)  # above the two-line subplot titles
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


def plot_tsne(points, labels, classes: list[str], path: Path, title: str = "") -> Path:
    """Scatter of t-SNE points (N, 2) coloured by class; axes have no units, so no ticks."""
    points, labels = np.asarray(points), np.asarray(labels)
    palette = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    marker_size = float(np.clip(20_000 / max(len(points), 1), 2, 20))  # dots shrink as the cloud grows
    fig, ax = plt.subplots(figsize=(8, 7))
    for index, name in enumerate(classes):
        members = labels == index
        ax.scatter(points[members, 0], points[members, 1], s=marker_size, alpha=0.6, linewidths=0,
                   color=palette(index % palette.N), label=f"{name} ({int(members.sum())})")
    ax.legend(title="class", markerscale=max(1.0, 6 / marker_size), loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set(xticks=[], yticks=[], title=title or f"t-SNE of {len(points):,} points")
    return _save(fig, path)


def plot_weight_histograms(histograms: dict[str, dict], path: Path) -> Path:
    """One row per layer: its weight histogram, then its bias histogram (blank when it has none)."""
    fig, axes = plt.subplots(len(histograms), 2, figsize=(10, 2 * len(histograms)), squeeze=False)
    for row, (layer, tensors) in zip(axes, histograms.items()):
        for ax, kind in zip(row, ("weight", "bias")):
            if tensors[kind] is None:
                ax.axis("off")
                ax.text(0.5, 0.5, f"{layer}: no {kind}", ha="center", va="center", transform=ax.transAxes)
                continue
            counts, edges = tensors[kind]
            ax.stairs(counts, edges, fill=True, alpha=0.7)
            ax.set_title(f"{layer} {kind} ({sum(counts):,} values)", fontsize=9)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("value")
    fig.tight_layout()
    return _save(fig, path)


def plot_feature_maps(maps: dict, path: Path, max_channels: int = 16) -> Path:
    """One row per conv layer: its first ``max_channels`` output channels for one input image."""
    columns = min(max_channels, max(len(channels) for channels in maps.values()))
    fig, axes = plt.subplots(len(maps), columns, figsize=(columns, 1.2 * len(maps)), squeeze=False)
    for row, (layer, channels) in zip(axes, maps.items()):
        channels = np.asarray(channels)
        for index, ax in enumerate(row):
            ax.set(xticks=[], yticks=[])
            if index < len(channels):
                ax.imshow(channels[index], cmap="viridis")  # each channel scaled to its own range
            else:
                ax.axis("off")
        row[0].set_ylabel(f"{layer}\n{' × '.join(map(str, channels.shape))}", fontsize=8, rotation=0,
                          ha="right", va="center")
    return _save(fig, path)


def plot_example_grid(images, true_labels, predicted_labels, classes: list[str], path: Path,
                      title: str = "") -> Path:
    """uint8 images (N, C, H, W), each titled with its predicted and true class; red when wrong."""
    images = np.asarray(images)
    count = max(len(images), 1)  # an empty set still gets a figure that says so
    columns = min(count, 8)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not len(images):
        axes[0, 0].text(0.5, 0.5, "no examples", ha="center", va="center")
    for ax, image, true, predicted in zip(axes.flat, images, true_labels, predicted_labels):
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        ax.imshow(pixels, cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=255)
        ax.set_title(f"pred {classes[int(predicted)]}\ntrue {classes[int(true)]}", fontsize=8,
                     color="black" if int(predicted) == int(true) else "red")
    if title:
        fig.suptitle(title, y=1.02 + 0.08 / rows)  # above the two-line subplot titles
    return _save(fig, path)

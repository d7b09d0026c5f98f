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


def _finite(value) -> float | None:
    """``value`` as a float; None when it is missing, not a number (bools included) or not finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return None
    return float(value)


def _message_figure(text: str, title: str = ""):
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    if title:
        ax.set_title(title)
    return fig


def _complete_trials(summary: dict) -> list[dict]:
    """COMPLETE trials of a search summary that have a validation accuracy, in trial-number order."""
    complete = [t for t in summary.get("trials") or []
                if t.get("state") == "COMPLETE" and _finite(t.get("val_accuracy")) is not None]
    return sorted(complete, key=lambda t: _finite(t.get("number")) or 0.0)


def _cut_kind(trial: dict, param_budget) -> str | None:
    """Why a trial has no final accuracy: "over budget", "pruned" or "failed"; None when it was not cut."""
    if trial.get("state") == "FAIL":
        return "failed"
    if trial.get("state") != "PRUNED":
        return None
    parameters, budget = _finite(trial.get("parameters")), _finite(param_budget)
    over = str(trial.get("reason") or "").startswith("over budget") or (
        parameters is not None and budget is not None and parameters > budget)
    return "over budget" if over else "pruned"


def _pareto_front(points) -> list[int]:
    """Indices of the (parameters, accuracy) points that no other point beats: none has as few or
    fewer parameters and as high or higher accuracy (one strictly). Ordered by parameters; of
    identical points only the first is kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best_accuracy = [], -np.inf
    for index in order:
        if points[index][1] > best_accuracy:  # fewer parameters were already seen, so it must be more accurate
            front.append(index)
            best_accuracy = points[index][1]
    return front


def _cut_strip(ax, cut: list[tuple[str, float]], empty_text: str) -> None:
    """Rug under a main panel: one row per kind of cut trial ("over budget", "pruned", "failed") at x."""
    styles = {"over budget": ("v", "tab:red"), "pruned": ("x", "tab:orange"), "failed": ("X", "black")}
    kinds = [kind for kind in styles if any(k == kind for k, _ in cut)]
    for row, kind in enumerate(kinds):
        xs = [x for k, x in cut if k == kind]
        ax.scatter(xs, [row] * len(xs), marker=styles[kind][0], color=styles[kind][1], s=36, linewidths=1.5)
    ax.set_yticks(range(len(kinds)), [f"{kind} ({sum(k == kind for k, _ in cut)})" for kind in kinds], fontsize=8)
    ax.set_ylim(len(kinds) - 0.5 if kinds else 0.5, -0.5)  # first kind on top
    ax.grid(axis="x", alpha=0.3)
    if not kinds:
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", fontsize=8, color="grey", transform=ax.transAxes)


def _search_title(summary: dict) -> str:
    trials = summary.get("trials") or []
    counts = {state: sum(t.get("state") == state for t in trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    return (f"{summary.get('study') or 'search'}: {len(trials)} trials, {counts['COMPLETE']} complete, "
            f"{counts['PRUNED']} pruned, {counts['FAIL']} failed")


def _axes_with_strip():
    """A main axis over a thin strip that shares its x axis (for trials cut without a score)."""
    fig, (ax, strip) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5),
                                    gridspec_kw={"height_ratios": [4, 1], "hspace": 0.06})
    return fig, ax, strip


def _scatter_pruned_with_accuracy(ax, trials: list[dict], x_key: str) -> list[dict]:
    """Pruned trials as hollow markers at the accuracy Optuna kept when it cut them; returns them."""
    scored = [t for t in trials if t.get("state") == "PRUNED" and _finite(t.get("val_accuracy")) is not None
              and _finite(t.get(x_key)) is not None]
    if scored:
        ax.scatter([t[x_key] for t in scored], [t["val_accuracy"] for t in scored], s=28,
                   facecolors="none", edgecolors="tab:orange", label="pruned (accuracy when cut)")
    return scored


def plot_search_history(summary: dict, path: Path) -> Path:
    """Validation accuracy by trial number: complete trials as dots with the best-so-far line, pruned
    trials as hollow markers at the accuracy they had when cut (when Optuna kept one), and a strip
    below marking every trial that was over budget, pruned or failed."""
    budget = summary.get("param_budget")
    numbered = [t for t in summary.get("trials") or [] if _finite(t.get("number")) is not None]
    complete = [t for t in _complete_trials(summary) if _finite(t.get("number")) is not None]
    cut = [(kind, float(t["number"])) for t in numbered if (kind := _cut_kind(t, budget))]
    fig, ax, strip = _axes_with_strip()
    _scatter_pruned_with_accuracy(ax, numbered, "number")
    if complete:
        numbers = [t["number"] for t in complete]
        accuracies = [t["val_accuracy"] for t in complete]
        best_so_far = np.maximum.accumulate(accuracies)
        last = max(t["number"] for t in numbered)
        ax.scatter(numbers, accuracies, s=28, color="tab:blue", zorder=3, label="complete")
        ax.step([*numbers, last], [*best_so_far, best_so_far[-1]], where="post", color="tab:green", label="best so far")
        best = max(complete, key=lambda t: t["val_accuracy"])
        ax.annotate(f"best #{best['number']}: {best['val_accuracy']:.4f}", (best["number"], best["val_accuracy"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.margins(y=0.12)  # room for the annotation above the best point
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no complete trials", ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set(ylabel="validation accuracy", title=_search_title(summary))
    ax.grid(alpha=0.3)
    _cut_strip(strip, cut, "no trial was over budget, pruned or failed")
    strip.set_xlabel("trial number")
    strip.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return _save(fig, path)


def plot_accuracy_vs_parameters(summary: dict, path: Path) -> Path:
    """Validation accuracy against trainable parameters: complete trials as dots, their Pareto front
    (more accurate with fewer parameters) as a staircase, pruned trials hollow at the accuracy they had
    when cut, the budget as a dashed line, and a strip below placing trials cut without an accuracy
    (over budget, pruned, failed) at their parameter count. Log x axis when counts span over 20×."""
    budget = _finite(summary.get("param_budget"))
    trials = summary.get("trials") or []
    complete = [t for t in _complete_trials(summary) if _finite(t.get("parameters")) is not None]
    cut = [(kind, float(t["parameters"])) for t in trials
           if (kind := _cut_kind(t, budget)) and _finite(t.get("parameters")) is not None]
    fig, ax, strip = _axes_with_strip()
    pruned_scored = _scatter_pruned_with_accuracy(ax, trials, "parameters")
    if complete:
        points = [(t["parameters"], t["val_accuracy"]) for t in complete]
        front = [complete[i] for i in _pareto_front(points)]
        ax.scatter(*zip(*points), s=28, color="tab:blue", alpha=0.6, label="complete")
        ax.step([t["parameters"] for t in front], [t["val_accuracy"] for t in front], where="post",
                color="tab:green", lw=1.2)
        ax.scatter([t["parameters"] for t in front], [t["val_accuracy"] for t in front], s=70, facecolors="none",
                   edgecolors="tab:green", linewidths=1.8, zorder=3, label=f"Pareto front ({len(front)})")
        best = max(complete, key=lambda t: t["val_accuracy"])
        ax.annotate(f"best #{best.get('number')}: {best['val_accuracy']:.4f}\n{best['parameters']:,} parameters",
                    (best["parameters"], best["val_accuracy"]), textcoords="offset points", xytext=(8, -4),
                    va="top", fontsize=8)
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no complete trials", ha="center", va="center", fontsize=12, transform=ax.transAxes)
    if budget is not None:
        for panel in (ax, strip):
            panel.axvline(budget, color="tab:red", ls="--", lw=1)
        ax.annotate(f"budget {budget:,.0f}", (budget, 1), xycoords=("data", "axes fraction"),
                    textcoords="offset points", xytext=(-4, -4), ha="right", va="top", fontsize=8, color="tab:red",
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    xs = [p for p in [*(t["parameters"] for t in complete + pruned_scored), *(x for _, x in cut), budget]
          if p is not None and p > 0]
    if xs and max(xs) > 20 * min(xs):
        strip.set_xscale("log")
    strip.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.set(ylabel="validation accuracy", title=_search_title(summary))
    ax.grid(alpha=0.3)
    _cut_strip(strip, cut, "no trial was cut before training finished")
    strip.set_xlabel("trainable parameters")
    return _save(fig, path)


def plot_param_importances(summary: dict, path: Path) -> Path:
    """Horizontal bars of the search's parameter importances for validation accuracy, largest on top."""
    importances = {name: value for name, raw in (summary.get("importances") or {}).items()
                   if (value := _finite(raw)) is not None}
    if not importances:
        return _save(_message_figure("too few complete trials for importances", summary.get("study") or ""), path)
    names, values = zip(*sorted(importances.items(), key=lambda item: item[1]))  # barh draws bottom-up
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.32 * len(names)))
    bars = ax.barh(names, values, color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    # summaries written before the evaluator was recorded gave Optuna's default the accuracy as it is
    xlabel = ("PED-ANOVA importance for high validation accuracy" if summary.get("importance_evaluator")
              else "importance from Optuna's default evaluator, undirected (it explains low accuracy)")
    ax.set(xlabel=xlabel, xlim=(0, 1.15 * max(max(values), 1e-12)),
           title=f"{summary.get('study') or 'search'}: parameter importances "
                 f"from {len(_complete_trials(summary))} complete trials")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _ordered_param_names(trials: list[dict]) -> list[str]:
    """Every parameter name in the trials, a conditional one placed after the name it follows where it appears."""
    names: list[str] = []
    for trial in trials:
        previous = None
        for name in trial.get("params") or {}:
            if name not in names:
                names.insert(names.index(previous) + 1 if previous is not None else 0, name)
            previous = name
    return names


def _axis_positions(name: str, values: list) -> tuple[list[float | None], list[tuple[float, str]]]:
    """One parallel-coordinates axis: each value's height in [0, 1] (None where missing) and the ticks.

    Numbers are scaled min→0, max→1 (log10 first for learning rates and weight decay); anything else
    (strings, bools, mixtures) is a category at evenly spaced heights in sorted order."""
    present = [v for v in values if v is not None]
    if present and all(_finite(v) is not None for v in present):
        log = name in ("lr", "learning_rate", "weight_decay") and min(present) > 0
        scale = np.log10 if log else float
        low, high = scale(min(present)), scale(max(present))

        def height(value):
            return 0.5 if high == low else (scale(value) - low) / (high - low)

        def label(value):
            return f"{value:,d}" if isinstance(value, int) else f"{value:.3g}"

        distinct = sorted(set(present))
        shown = distinct if all(isinstance(v, int) for v in present) and len(distinct) <= 6 else [min(present),
                                                                                                  max(present)]
        return [None if v is None else height(v) for v in values], [(height(v), label(v)) for v in dict.fromkeys(shown)]

    def key(value):
        number = _finite(value)
        return type(value).__name__, number if number is not None else 0.0, str(value)

    categories = list(dict.fromkeys((type(v).__name__, str(v)) for v in sorted(present, key=key)))
    spacing = {c: (0.5 if len(categories) == 1 else i / (len(categories) - 1)) for i, c in enumerate(categories)}
    heights = [None if v is None else spacing[(type(v).__name__, str(v))] for v in values]
    return heights, [(spacing[c], c[1]) for c in categories]


def plot_parallel_coordinates(summary: dict, path: Path) -> Path:
    """One vertical axis per searched parameter plus validation accuracy, each trial a line coloured by
    its accuracy (best drawn last and thickest). Each axis is scaled to its own range (see
    ``_axis_positions``). A parameter a trial did not sample (conditional ones, such as width_3 only when
    stages=4) is drawn at an "n/a" position below that axis, so every line stays unbroken."""
    complete = _complete_trials(summary)
    title = f"{summary.get('study') or 'search'}: parameters of {len(complete)} complete trials"
    if not complete:
        return _save(_message_figure("no complete trials", title), path)
    not_sampled = -0.15
    names = _ordered_param_names(complete)
    accuracies = np.array([t["val_accuracy"] for t in complete])
    columns, ticks = [], []
    for name in names:
        heights, axis_ticks = _axis_positions(name, [(t.get("params") or {}).get(name) for t in complete])
        if any(h is None for h in heights):
            axis_ticks.append((not_sampled, "n/a"))
        columns.append([not_sampled if h is None else h for h in heights])
        ticks.append(axis_ticks)
    low, high = accuracies.min(), accuracies.max()
    columns.append(list(np.full(len(complete), 0.5) if high == low else (accuracies - low) / (high - low)))
    ticks.append([(0.5, f"{low:.4f}")] if high == low else [(0.0, f"{low:.4f}"), (1.0, f"{high:.4f}")])
    labels = [*names, "val accuracy"]

    fig, ax = plt.subplots(figsize=(max(8.0, 1.0 * len(labels) + 2), 5.5))
    order = np.argsort(accuracies, kind="stable")  # best last, so it is drawn on top
    segments = [np.column_stack([np.arange(len(labels)), [column[i] for column in columns]]) for i in order]
    widths = [2.8 if accuracies[i] == high else 1.2 for i in order]
    norm = matplotlib.colors.Normalize(low - 0.005, high + 0.005) if high == low else matplotlib.colors.Normalize(
        low, high)
    lines = matplotlib.collections.LineCollection(segments, cmap="viridis", norm=norm, linewidths=widths, alpha=0.85)
    lines.set_array(accuracies[order])
    ax.add_collection(lines)
    for x, axis_ticks in enumerate(ticks):
        ax.axvline(x, color="0.3", lw=0.8, zorder=0)
        for y, text in axis_ticks:
            ax.text(x - 0.06, y, text, ha="right", va="center", fontsize=7,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    any_missing = any(not_sampled in column for column in columns)
    if any_missing:
        ax.axhspan(not_sampled - 0.06, not_sampled + 0.06, color="0.93", zorder=-1)
    ax.set_xlim(-0.8, len(labels) - 0.6)
    ax.set_ylim(not_sampled - 0.1 if any_missing else -0.08, 1.08)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.colorbar(lines, ax=ax, pad=0.01, fraction=0.03, label="validation accuracy")
    ax.set_title(title + " (each axis scaled to its own range" + ("; n/a = not sampled)" if any_missing else ")"),
                 fontsize=10)
    return _save(fig, path)


def plot_separability(panels: list[dict], classes: list[str], path: Path, title: str = "") -> Path:
    """E8: one t-SNE map per approach, coloured by class, with the separating line of a linear
    classifier fitted on the 2-D points and its accuracy. Each panel: ``name``, ``points`` (N, 2),
    ``labels``, ``model_accuracy``, ``separability`` (from analysis.linear_separability)."""
    palette = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        points, labels = np.asarray(panel["points"]), np.asarray(panel["labels"])
        for index, name in enumerate(classes):
            members = labels == index
            ax.scatter(points[members, 0], points[members, 1], s=10, alpha=0.7, linewidths=0,
                       color=palette(index % palette.N), label=name)
        line = panel["separability"].get("line")
        if line:
            (w0, w1), b = line["weight"], line["bias"]
            xs = np.array(ax.get_xlim())
            if abs(w1) > 1e-12:
                ax.plot(xs, -(w0 * xs + b) / w1, "k--", lw=1.5)
            else:
                ax.axvline(-b / w0, color="k", ls="--", lw=1.5)
            ax.set_xlim(xs)
            ax.set_ylim(points[:, 1].min() - 1, points[:, 1].max() + 1)
        ax.set(xticks=[], yticks=[], title=f"{panel['name']}\nmodel test acc {panel['model_accuracy']:.3f}; "
                                            f"linear on t-SNE {panel['separability']['accuracy']:.3f}")
        ax.title.set_fontsize(9)
    axes[0][0].legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_freeze_sweep(sweep: dict, path: Path) -> Path:
    """E6: test accuracy and training time against the number of frozen layers (``freeze_sweep.json``)."""
    runs = sorted(sweep["runs"], key=lambda r: r["freeze_k"])
    ks = [r["freeze_k"] for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(ks, [r["test_accuracy"] for r in runs], "o-", label="fine-tuned from pre-training")
    if sweep.get("scratch_test_accuracy") is not None:
        axes[0].axhline(sweep["scratch_test_accuracy"], color="grey", ls="--", label="from scratch")
    axes[0].set(xlabel="layers frozen (a conv with its norm counts as one)", ylabel="test accuracy",
                title="accuracy")
    axes[0].legend()
    axes[1].plot(ks, [r["wall_seconds"] for r in runs], "o-", color="tab:orange")
    axes[1].set(xlabel="layers frozen", ylabel="training seconds", title="training time")
    for ax in axes:
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{sweep['experiment']}: freeze the first k of {sweep['layers']} layers")
    return _save(fig, path)


def plot_search_comparison(comparison: dict, path: Path) -> Path:
    """Left: each sampler's best validation accuracy so far against the trial-epochs it spent.
    Right: each arm's retrained test accuracy (mean ± std over seeds), the hand-designed
    candidate included (test accuracy is reported here; validation chose every winner)."""
    fig, (progress, final) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for arm in comparison["arms"]:
        curve = arm.get("best_so_far") or []
        if curve:
            spent, best = zip(*curve)
            progress.step(spent, best, where="post", label=f"{arm['arm']} (winner {arm['winner']['val_accuracy']:.4f})")
    progress.axvline(comparison["epoch_budget"], color="grey", ls=":", lw=1, label="epoch budget")
    progress.set(xlabel="trial-epochs spent", ylabel="best validation accuracy (complete trials)",
                 title=f"{comparison['study']}: search progress at equal compute")
    progress.grid(alpha=0.3)
    progress.legend(fontsize=8)
    names = [a["arm"] for a in comparison["arms"]]
    means = [100 * a["retrained"]["test_accuracy_mean"] for a in comparison["arms"]]
    stds = [100 * a["retrained"]["test_accuracy_std"] for a in comparison["arms"]]
    bars = final.bar(names, means, yerr=stds, capsize=6, color=["tab:blue", "tab:orange", "tab:grey"][: len(names)])
    for bar, mean in zip(bars, means):
        final.annotate(f"{mean:.2f}", (bar.get_x() + bar.get_width() / 2, mean), textcoords="offset points",
                       xytext=(0, 8), ha="center", fontsize=9)
    low = min(m - s for m, s in zip(means, stds))
    final.set_ylim(max(0.0, low - 2.0), min(100.0, max(means) + 1.5))
    final.set(ylabel=f"test accuracy, % (mean ± std, {len(comparison['seeds'])} seeds)",
              title=f"retrained {comparison['retrain_epochs']} epochs")
    final.grid(alpha=0.3, axis="y")
    return _save(fig, path)

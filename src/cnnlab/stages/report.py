"""``cnnlab report``: every figure from saved results and a Markdown report, logged to MLflow.

It reads only what train, evaluate and analyze wrote (the run's settings from its config.yaml),
so no setting of its own can make a report stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .. import report as plots
from ..analysis import format_layer_table
from ..config import Config
from ..contract import RunFiles
from ..files import read_json
from ..selection import pick_by_validation
from ..tracking import reopen_run


def report(config: Config) -> list[Path]:
    """The figures drawn; the report itself is ``RunFiles.report``."""
    files = RunFiles.of(config)
    history = read_json(files.history, "train")
    batch_losses = read_json(files.batch_losses, "train")
    evaluation = read_json(files.eval, "evaluate")
    details = read_json(files.analysis_json, "analyze")
    layers = read_json(files.layers, "analyze")
    train_metrics = read_json(files.train_metrics, "train")
    settings = yaml.safe_load(files.config.read_text())
    arrays = np.load(files.analysis)
    classes, title, fig = evaluation["classes"], config.name, files.figures
    figures = [
        plots.plot_learning_curves(history, fig / "learning_curves.png", batch_losses, title),
        plots.plot_confusion_matrix(evaluation["confusion_matrix"], classes, fig / "confusion_matrix.png", title),
        plots.plot_tsne(arrays["tsne_intermediate"], arrays["tsne_labels"], classes, fig / "tsne_intermediate.png",
                        f"{title}: t-SNE of the intermediate representation"),
        plots.plot_tsne(arrays["tsne_final"], arrays["tsne_labels"], classes, fig / "tsne_final.png",
                        f"{title}: t-SNE of the final representation (logits)"),
        plots.plot_weight_histograms(details["weight_histograms"], fig / "weight_histograms.png"),
        plots.plot_feature_maps({k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("feature_map/")},
                                fig / "feature_maps.png"),
    ]
    n_correct = details["examples"]["correct"]
    for kind, part in (("correct", slice(0, n_correct)), ("wrong", slice(n_correct, None))):
        if len(arrays["example_true"][part]):
            figures.append(plots.plot_example_grid(
                arrays["example_images"][part], arrays["example_true"][part], arrays["example_predicted"][part],
                classes, fig / f"examples_{kind}.png", f"{title}: {kind}ly classified test images"))
    text = render_report(title, settings, train_metrics, history, evaluation, figures, format_layer_table(layers))
    files.report.write_text(text)
    tracker = reopen_run(config, files.run_info, "cnnlab report")
    tracker.log_artifacts(figures, "figures")
    tracker.log_artifacts([files.report, files.layers])
    tracker.set_description(summary(text))
    print(f"report: {files.report} with {len(figures)} figures")
    return figures


def summary(report_text: str) -> str:
    """The report up to its first section: the title and the headline bullets, the run's
    description in MLflow."""
    return report_text.split("\n## ", 1)[0].strip() + "\n"


def render_report(title: str, settings: dict[str, Any], train: dict[str, Any], history: list[dict[str, Any]],
                  evaluation: dict[str, Any], figures: list[Path], layer_table: str) -> str:
    best = pick_by_validation(history)  # the epoch fit chose for best.pt
    model, data, recipe = settings["model"], settings["data"], settings["train"]
    lines = [
        f"# {title}", "",
        f"- model: `{model['name']}` {model['kwargs'] or ''}, **{train['total_parameters']:,d}** parameters, "
        f"{train['trainable_parameters']:,d} trainable",
        f"- data: `{data['name']}` from {train['data_source']} (sha256 {train['data_sha256'][:12]}…)"
        + (" — **embedded 5,000-digit subset**" if train["data_embedded"] else ""),
        *labelled_lines(train),
        f"- training: {len(history)} epochs, {recipe['optimizer']} lr {recipe['lr']}, batch "
        f"{recipe['batch_size']}, {train['runtime']}, {train['wall_seconds']:.0f} s",
        f"- best validation accuracy **{best['val_accuracy']:.4f}** at epoch {best['epoch']}",
        f"- test accuracy **{evaluation['test_accuracy']:.4f}** ({evaluation['test_errors']} errors of "
        f"{evaluation['test_samples']}) from the best-validation checkpoint",
    ]
    if train.get("transfer_plan"):
        lines.append(f"- transfer: {train['transfer_plan']} ({train.get('frozen_parameters', 0):,d} parameters frozen)")
    lines.append(f"- train − val at the best epoch: accuracy {train['train_val_accuracy_gap']:+.4f}, "
                 f"loss (val − train) {train['train_val_loss_gap']:+.4f}")
    lines += ["", "## Most confused pairs", "", "| true | predicted | count |", "| --- | --- | ---: |"]
    lines += [f"| {p['true']} | {p['predicted']} | {p['count']} |" for p in evaluation["most_confused"]]
    lines += ["", "## Layers", "", layer_table, "", "## Figures", ""]
    lines += [f"![{f.stem}](figures/{f.name})" for f in figures]
    return "\n".join(lines) + "\n"


def labelled_lines(train: dict[str, Any]) -> list[str]:
    """How many labelled images trained and how many chose the checkpoint (runs recorded since
    train_metrics.json counts them)."""
    if "train_images" not in train:
        return []
    budget = train.get("labelled_budget", 0)
    where = (f"a labelled budget of {budget:,d} in all" if budget
             else "the validation split the prepare stage set aside")
    return [f"- labelled images: {train['train_images']:,d} trained, {train['val_images']:,d} chose the best "
            f"epoch ({where})"]

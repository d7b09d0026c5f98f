"""Per-run analysis of a trained model: numbers and arrays only, no figures, no tracking, no files.

The evaluation stage computes these from the best checkpoint and hands them to ``report.py``
(figures) and to the run's JSON outputs:

    rows = layer_summary(model, data.input_shape)        # format_layer_table(rows) -> Markdown
    logits, features = predict(model, data.x_test, transform, batch_size)
    keep = stratified_sample(data.y_test, 10_000, seed)
    points = tsne_embedding(features[keep], seed=seed)   # report.plot_tsne(points, data.y_test[keep], ...)
    histograms = weight_histograms(model)                # report.plot_weight_histograms
    maps = feature_maps(model, transform(data.x_test[:1], train=False)[0])  # report.plot_feature_maps
    examples = pick_examples(logits.argmax(1), data.y_test)                 # report.plot_example_grid

Every function leaves the model's weights and train/eval mode as it found them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import openTSNE
import torch
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits
from torch import nn

ArrayLike = torch.Tensor | np.ndarray
Histogram = tuple[list[int], list[float]]  # (counts per bin, bin edges: one more than counts)

# t-SNE settings tuned on 10,000 MNIST test images (raw pixels and SimpleCNN fc1 features) on 2
# CPU cores: about 4x faster than openTSNE's defaults, 5-NN accuracy on the 2-D points within 0.005.
EXAGGERATION_ITERATIONS = 125  # openTSNE default 250; at lr = N / 12 the clusters have separated by then
ITERATIONS = 250  # openTSNE default 500
FFT_CELL_SIDE = 2  # embedding units per FFT grid cell (default 1): the late phase, where the
                   # embedding is widest and the grid largest, took 90 ms per iteration at 1


def layer_summary(model: nn.Module, input_shape: Sequence[int]) -> list[dict[str, Any]]:
    """One row per leaf module, in the order forward runs them, for one zero image of ``input_shape``.

    Rows are ``{"layer", "type", "output_shape" (no batch dimension), "parameters" (trainable)}``.
    Shapes come from forward hooks, so they are what the model computes, not what its
    constructor arguments suggest. A module called twice gets a second row with 0 parameters,
    so the rows always sum to the trainable parameters of the modules that ran.
    """
    leaves = [(name, module) for name, module in model.named_modules() if not any(module.children())]
    rows: list[dict[str, Any]] = []
    counted: set[int] = set()

    def record_row(name: str) -> Callable:
        def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            parameters = 0 if id(module) in counted else _trainable_parameters(module)
            counted.add(id(module))
            rows.append({"layer": name, "type": type(module).__name__,
                         "output_shape": list(output.shape[1:]), "parameters": parameters})
        return hook

    with torch.no_grad(), _eval_mode(model), _forward_hooks(leaves, record_row):
        model(torch.zeros(1, *input_shape, device=_device_of(model)))
    return rows


def summary_total(rows: list[dict[str, Any]]) -> int:
    """Trainable parameters over all rows of ``layer_summary``."""
    return sum(row["parameters"] for row in rows)


def format_layer_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``layer_summary`` rows with a bold total row, for READMEs and run notes."""
    lines = ["| layer | type | output shape | parameters |", "|---|---|---|---:|"]
    for row in rows:
        shape = " × ".join(str(size) for size in row["output_shape"])
        lines.append(f"| {row['layer']} | {row['type']} | {shape} | {row['parameters']:,} |")
    lines.append(f"| **total** | | | **{summary_total(rows):,}** |")
    return "\n".join(lines)


def tsne_embedding(features: ArrayLike, seed: int = 0, pca_dims: int = 50, perplexity: float = 30.0,
                   n_jobs: int = 1) -> np.ndarray:
    """2-D t-SNE coordinates (N, 2) of ``features`` (N, D; images are flattened): PCA to ``pca_dims``, then openTSNE.

    PCA removes noise dimensions and makes the exact neighbour search cheap. Perplexity is
    lowered to (N - 1) / 3 for small N, since t-SNE needs 3 x perplexity neighbours per point.
    The coordinates have no units; only distances between neighbours mean something.

    ``n_jobs`` is 1 because openTSNE's OpenMP threads wait for each other every iteration: with
    one core busy elsewhere, 2 threads took 14 s instead of 8.5 s for 10,000 points and 1.6-12 s
    instead of 0.1 s for 40. Pass 2 only on a machine with nothing else running.
    """
    data = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    # Single-threaded BLAS: on 2 cores, BLAS threads fighting openTSNE's (or any other process's)
    # made the 10,000 x 784 PCA take 1-7 s instead of 0.2 s.
    with threadpool_limits(limits=1):
        reduced = _pca(data, pca_dims, seed)
        tsne = openTSNE.TSNE(
            perplexity=min(perplexity, (len(data) - 1) / 3),
            early_exaggeration_iter=EXAGGERATION_ITERATIONS,
            n_iter=ITERATIONS,
            ints_in_interval=FFT_CELL_SIDE,
            neighbors="exact",  # over <= 50 dims: 0.9 s for 10,000 points, Annoy took 4.7 s
            negative_gradient_method="auto",  # openTSNE: Barnes-Hut below 10,000 points, FFT from there
            n_jobs=n_jobs,
            random_state=seed,
        )
        return np.asarray(tsne.fit(reduced))


def _pca(data: np.ndarray, dims: int, seed: int) -> np.ndarray:
    if data.shape[1] <= dims:
        return data
    return PCA(n_components=min(dims, len(data)), random_state=seed).fit_transform(data)


def weight_histograms(model: nn.Module, bins: int = 50) -> dict[str, dict[str, Histogram | None]]:
    """Per layer with a ``weight``: ``{"weight": (counts, edges), "bias": (counts, edges) or None}``.

    Counts are ints over ``bins`` equal-width bins from the tensor's min to max (they sum to its
    numel); edges are in the weights' own units. Dead or exploding layers show up as a spike at
    zero or a range far wider than their neighbours'.
    """
    histograms = {}
    for name, module in model.named_modules():
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(weight, torch.Tensor):
            histograms[name] = {"weight": _histogram(weight, bins),
                                "bias": _histogram(bias, bins) if isinstance(bias, torch.Tensor) else None}
    return histograms


def _histogram(values: torch.Tensor, bins: int) -> Histogram:
    counts, edges = np.histogram(values.detach().float().cpu().numpy().ravel(), bins=bins)
    return counts.tolist(), edges.tolist()


def feature_maps(model: nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output (channels, H, W) of every ``nn.Conv2d`` for one normalised float image (C, H, W).

    Taken before the activation that follows the convolution, in eval mode without gradients;
    float32 on the CPU, ready to plot.
    """
    convolutions = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    maps: dict[str, torch.Tensor] = {}

    def keep_output(name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            maps[name] = output[0].float().cpu().contiguous()
        return hook

    with torch.no_grad(), _eval_mode(model), _forward_hooks(convolutions, keep_output):
        model(image.unsqueeze(0).to(_device_of(model)))
    return maps


def pick_examples(predicted: ArrayLike, labels: ArrayLike, count: int = 5, seed: int = 0) -> dict[str, list[int]]:
    """Sorted indices of up to ``count`` correctly and ``count`` wrongly classified samples.

    Drawn at random with ``seed`` rather than taken from the front, so the grid is not always
    the same first few test images; fewer are returned when there are not enough.
    """
    is_correct = np.asarray(predicted) == np.asarray(labels)
    rng = np.random.default_rng(seed)
    return {"correct": _draw(np.flatnonzero(is_correct), count, rng),
            "wrong": _draw(np.flatnonzero(~is_correct), count, rng)}


def _draw(indices: np.ndarray, count: int, rng: np.random.Generator) -> list[int]:
    return sorted(rng.choice(indices, size=min(count, len(indices)), replace=False).tolist())


def evenly_spaced(names: Sequence[str], limit: int) -> list[str]:
    """At most ``limit`` of ``names`` (0 = all), first and last included, spread evenly: a
    100-layer backbone's histograms or feature maps, readable on one page."""
    if not limit or len(names) <= limit:
        return list(names)
    if limit == 1:
        return [names[-1]]
    picks = np.linspace(0, len(names) - 1, limit).round().astype(int)
    return [names[i] for i in sorted(set(picks.tolist()))]


def linear_separability(points: ArrayLike, labels: ArrayLike, seed: int = 0) -> dict[str, Any]:
    """A linear classifier (logistic regression) fitted on 2-D points, e.g. a t-SNE map (E8):
    its training accuracy, and for two classes the separating line ``w . p + b = 0``."""
    from sklearn.linear_model import LogisticRegression

    points, labels = np.asarray(points, dtype=np.float64), np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"linear_separability expects (N, 2) points, got {points.shape}")
    classifier = LogisticRegression(max_iter=1000, random_state=seed).fit(points, labels)
    result: dict[str, Any] = {"accuracy": float(classifier.score(points, labels)), "points": len(points)}
    if len(classifier.classes_) == 2:
        result["line"] = {"weight": classifier.coef_[0].tolist(), "bias": float(classifier.intercept_[0])}
    return result


def _trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off, batch-norm running statistics) for the block, then the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _forward_hooks(modules: list[tuple[str, nn.Module]], make_hook: Callable[[str], Callable]) -> Iterator[None]:
    """``make_hook(name)`` as a forward hook on each named module, removed when the block ends."""
    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

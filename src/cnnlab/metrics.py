"""Pure metric functions: tensors in, numbers out. No I/O, no plotting."""

from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item() if len(labels) else float("nan")


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true, predicted]; rows sum to the number of samples of each true class."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def most_confused_pairs(matrix: torch.Tensor, classes: list[str], top: int = 10) -> list[dict]:
    """Off-diagonal cells, largest first: (true class, predicted class, count)."""
    off = matrix.clone()
    off.fill_diagonal_(0)
    counts, flat_idx = off.flatten().sort(descending=True)
    n = matrix.shape[0]
    pairs = []
    for count, idx in zip(counts.tolist(), flat_idx.tolist()):
        if count == 0 or len(pairs) == top:
            break
        true, pred = divmod(idx, n)
        pairs.append({"true": classes[true], "predicted": classes[pred], "count": count})
    return pairs


def classification_summary(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    predicted = logits.argmax(1)
    matrix = confusion_matrix(predicted, labels, len(classes))
    per_class = (matrix.diag().double() / matrix.sum(1).clamp_min(1)).tolist()
    return {
        "accuracy": accuracy(logits, labels),
        "loss": torch.nn.functional.cross_entropy(logits.float(), labels).item(),
        "errors": int((predicted != labels).sum()),
        "samples": len(labels),
        "per_class_accuracy": dict(zip(classes, per_class)),
        "most_confused": most_confused_pairs(matrix, classes),
        "confusion_matrix": matrix.tolist(),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    std = tensor.std().item() if len(values) > 1 else 0.0
    return tensor.mean().item(), std

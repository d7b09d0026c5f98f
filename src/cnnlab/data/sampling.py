"""Stratified selection: the one place that draws a class-balanced share of a labelled set.

    kept, rest = stratified_split(raw.y_train, 0.9, seed=0)   # prepare: train/val
    keep = stratified_sample(data.y_test, 10_000, seed=0)     # t-SNE points, search trial subsets

Both are scikit-learn's ``train_test_split(..., stratify=labels)``: each class keeps its share of
the draw (to within one sample), and the same labels and seed always give the same indices.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.model_selection import train_test_split


def stratified_split(labels: ArrayLike | torch.Tensor, keep: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, rest) indices: ``keep`` samples (a count, or a fraction in (0, 1)) and the others.

    Both come in ``train_test_split``'s shuffled order, which prepared splits are stored in;
    sorting them would reorder every prepared dataset and so every result trained on one.
    """
    labels = np.asarray(labels)
    return train_test_split(np.arange(len(labels)), train_size=keep, stratify=labels, random_state=seed)


def stratified_sample(labels: ArrayLike | torch.Tensor, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` samples with the class proportions of ``labels``; all of them if n >= len."""
    if n >= len(labels):
        return np.arange(len(labels))
    return np.sort(stratified_split(labels, n, seed)[0])

"""The one stratified sampler (cnnlab.data.sampling): class shares kept, exact sizes, the same draw per seed."""

import numpy as np
import pytest
import torch

from cnnlab.data import prepare
from cnnlab.data.sampling import stratified_sample, stratified_split

# 3 classes of 500, 300 and 200: proportions a uniform draw would not keep by luck
LABELS = np.repeat([0, 1, 2], [500, 300, 200])


@pytest.mark.parametrize("keep", [100, 333, 0.25])
def test_split_keeps_class_proportions_within_one_sample_and_the_exact_size(keep):
    kept, rest = stratified_split(LABELS, keep, seed=0)
    size = keep if isinstance(keep, int) else int(keep * len(LABELS))
    assert len(kept) == size and len(rest) == len(LABELS) - size
    assert sorted(np.concatenate([kept, rest]).tolist()) == list(range(len(LABELS)))  # a partition
    expected = np.bincount(LABELS) / len(LABELS) * size
    assert np.abs(np.bincount(LABELS[kept], minlength=3) - expected).max() <= 1


def test_the_same_seed_gives_the_same_draw_and_another_seed_another():
    first, again, other = (stratified_split(torch.from_numpy(LABELS), 100, seed) for seed in (0, 0, 1))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(np.sort(first[0]), np.sort(other[0]))


def test_sample_is_sorted_and_takes_everything_when_asked_for_more(mnist_small):
    labels = mnist_small.y_test.numpy()
    keep = stratified_sample(labels, 1000, seed=0)
    assert len(keep) == len(set(keep)) == 1000 and (np.diff(keep) > 0).all()
    expected = np.bincount(labels) / len(labels) * 1000
    assert np.abs(np.bincount(labels[keep]) - expected).max() <= 1
    assert np.array_equal(keep, stratified_sample(labels, 1000, seed=0))
    assert (stratified_sample(labels, len(labels) + 5) == np.arange(len(labels))).all()


def test_prepare_stores_the_split_in_the_samplers_order(mnist_raw):
    # Sorting the indices would reorder every prepared dataset and so change every result trained on one.
    data = prepare(mnist_raw, val_fraction=0.1, seed=0)
    kept, rest = stratified_split(mnist_raw.y_train, 0.9, seed=0)
    assert torch.equal(data.y_train, mnist_raw.y_train[kept]) and torch.equal(data.y_val, mnist_raw.y_train[rest])
    assert torch.equal(data.x_val[:5], mnist_raw.x_train[rest[:5]])

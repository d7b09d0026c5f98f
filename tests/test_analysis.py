"""Per-run analysis (cnnlab.analysis) and the figures drawn from it (cnnlab.report), on real MNIST."""

import numpy as np
import pytest
import torch
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from cnnlab import report
from cnnlab.analysis import (
    feature_maps, format_layer_table, layer_summary, pick_examples, summary_total, tsne_embedding, weight_histograms,
)
from cnnlab.data.sampling import stratified_sample
from cnnlab.models import create_model, list_models, model_entry, total_parameters
from cnnlab.runtime import resolve_runtime
from cnnlab.train import BatchTransform

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mnist_tsne(mnist_small):
    """t-SNE of 1,000 stratified real MNIST test digits (raw pixels): (points, labels, images)."""
    keep = torch.from_numpy(stratified_sample(mnist_small.y_test, 1000, seed=0))
    images = mnist_small.x_test[keep]
    return tsne_embedding(images.flatten(1).float() / 255, seed=0), mnist_small.y_test[keep].numpy(), images


def first_test_image(data) -> torch.Tensor:
    """The first test digit, normalised the way training and evaluation see it."""
    transform = BatchTransform(data.mean, data.std, resolve_runtime("cpu", "fp32"))
    return transform(data.x_test[:1], train=False)[0]


def assert_png(path):
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("name", list_models())
def test_layer_summary_sums_to_the_trainable_parameter_count(name):
    model = create_model(name)
    assert summary_total(layer_summary(model, model_entry(name).input_shape)) == total_parameters(model)


@pytest.mark.parametrize("name, total", [("simple_cnn", 813_802), ("reduced_alexnet", 6_199_498)])
def test_layer_summary_matches_the_catalogue_counts(name, total):
    assert summary_total(layer_summary(create_model(name), model_entry(name).input_shape)) == total


def test_simple_cnn_rows_follow_forward_order_with_real_shapes():
    rows = {row["layer"]: row for row in layer_summary(create_model("simple_cnn"), (1, 28, 28))}
    assert list(rows) == ["conv1", "conv2", "pool", "drop1", "fc1", "drop2", "fc2"]
    assert rows["conv2"]["output_shape"] == [32, 28, 28]
    assert rows["pool"]["output_shape"] == [32, 14, 14]
    assert rows["fc1"]["output_shape"] == [128]
    assert rows["fc1"]["parameters"] == 32 * 14 * 14 * 128 + 128
    assert rows["pool"]["parameters"] == 0 and rows["pool"]["type"] == "MaxPool2d"


def test_reduced_alexnet_features_end_at_128_x_2_x_2():
    rows = layer_summary(create_model("reduced_alexnet"), (3, 32, 32))
    last_feature_row = [row for row in rows if row["layer"].startswith("features.")][-1]
    assert last_feature_row["output_shape"] == [128, 2, 2]
    assert rows[-1]["output_shape"] == [10]


def test_a_module_called_twice_counts_its_parameters_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x):
            return self.linear(self.linear(x))

    rows = layer_summary(Twice(), (4,))
    assert [row["parameters"] for row in rows] == [20, 0]


def test_layer_summary_restores_training_mode():
    model = create_model("simple_cnn").train()
    layer_summary(model, (1, 28, 28))
    assert model.training and model.drop1.training


def test_layer_table_has_a_row_per_layer_and_the_total():
    rows = layer_summary(create_model("simple_cnn"), (1, 28, 28))
    table = format_layer_table(rows).splitlines()
    assert len(table) == 2 + len(rows) + 1
    assert table[-1] == "| **total** | | | **813,802** |"
    assert "| pool | MaxPool2d | 32 × 14 × 14 | 0 |" in table


def test_tsne_of_real_digits_keeps_classes_apart(mnist_tsne):
    points, labels, _ = mnist_tsne
    assert points.shape == (1000, 2) and np.isfinite(points).all()
    # Pixels alone give ~0.95 at 10,000 points; a shuffled embedding would give ~0.1.
    assert cross_val_score(KNeighborsClassifier(5), points, labels, cv=5).mean() > 0.8


def test_tsne_is_deterministic_and_handles_fewer_points_than_the_perplexity_needs(mnist_small):
    features = mnist_small.x_test[:40].flatten(1).float() / 255  # 40 < 3 x 30 + 1
    first, second = tsne_embedding(features, seed=3), tsne_embedding(features, seed=3)
    assert first.shape == (40, 2) and np.isfinite(first).all()
    assert np.array_equal(first, second)


def test_weight_histograms_count_every_value():
    model = create_model("simple_cnn")
    histograms = weight_histograms(model, bins=20)
    assert list(histograms) == ["conv1", "conv2", "fc1", "fc2"]
    for name, tensors in histograms.items():
        layer = getattr(model, name)
        for kind in ("weight", "bias"):
            counts, edges = tensors[kind]
            assert len(counts) == 20 and len(edges) == 21
            assert all(isinstance(count, int) for count in counts)
            assert sum(counts) == getattr(layer, kind).numel()
            assert edges[0] == getattr(layer, kind).min().item()


def test_weight_histograms_mark_a_missing_bias():
    histograms = weight_histograms(nn.Sequential(nn.Conv2d(1, 4, 3, bias=False)))
    assert histograms["0"]["bias"] is None and sum(histograms["0"]["weight"][0]) == 36


def test_feature_maps_are_each_conv_output_for_a_real_digit(mnist_small):
    model = create_model("simple_cnn").train()
    image = first_test_image(mnist_small)
    maps = feature_maps(model, image)
    assert list(maps) == ["conv1", "conv2"]
    assert all(tuple(m.shape) == (32, 28, 28) for m in maps.values())
    with torch.no_grad():
        assert torch.allclose(maps["conv1"], model.conv1(image[None])[0])
    assert model.training


def test_feature_maps_follow_reduced_alexnet_downsampling():
    maps = feature_maps(create_model("reduced_alexnet"), torch.randn(3, 32, 32))
    assert [tuple(m.shape) for m in maps.values()] == [(48, 16, 16), (128, 8, 8), (192, 4, 4), (192, 4, 4),
                                                      (128, 4, 4)]


def test_pick_examples_returns_correct_and_wrong_indices(mnist_small):
    labels = mnist_small.y_test[:100]
    predicted = labels.clone()
    predicted[::7] = (labels[::7] + 1) % 10  # 15 mistakes
    examples = pick_examples(predicted, labels, count=5, seed=1)
    assert len(examples["correct"]) == len(examples["wrong"]) == 5
    assert all(predicted[i] == labels[i] for i in examples["correct"])
    assert all(predicted[i] != labels[i] for i in examples["wrong"])
    assert examples == pick_examples(predicted, labels, count=5, seed=1)
    assert len(pick_examples(predicted, labels, count=50)["wrong"]) == 15
    assert pick_examples(labels, labels)["wrong"] == []


def test_tsne_plot_is_written(mnist_tsne, mnist_small, tmp_path):
    points, labels, _ = mnist_tsne
    assert_png(report.plot_tsne(points, labels, mnist_small.classes, tmp_path / "tsne.png", "MNIST pixels"))


def test_weight_histogram_plot_is_written(tmp_path):
    histograms = weight_histograms(nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.Linear(4, 2)))
    assert_png(report.plot_weight_histograms(histograms, tmp_path / "weights.png"))


def test_feature_map_plot_is_written(mnist_small, tmp_path):
    maps = feature_maps(create_model("simple_cnn"), first_test_image(mnist_small))
    assert_png(report.plot_feature_maps(maps, tmp_path / "maps.png", max_channels=8))


def test_example_grid_plot_is_written(mnist_small, tmp_path):
    images, labels = mnist_small.x_test[:6], mnist_small.y_test[:6]
    predicted = torch.where(torch.arange(6) % 2 == 0, labels, (labels + 1) % 10)
    assert_png(report.plot_example_grid(images, labels, predicted, mnist_small.classes, tmp_path / "grid.png",
                                        "half wrong"))
    assert_png(report.plot_example_grid(images[:0], labels[:0], predicted[:0], mnist_small.classes,
                                        tmp_path / "empty.png"))

"""Model selection reads validation only (issue #14), and a few-shot run's labels are counted in
full: every choice (the best epoch in fit, the freeze-sweep k, the registered seed, the search
winner) is made on inputs where the test metric would choose otherwise, or cannot be read at all.
There is no early stopping to check: fit runs its epochs and keeps the best-validation one."""

import dataclasses
import json

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.data import DatasetError, select_view
from cnnlab.selection import chosen_seed_run, pick_by_validation
from cnnlab.stages.freeze_sweep import summarize_sweep

from .conftest import PROJECT_ROOT, fit_run

TINY_PLAIN = {"name": "search_cnn", "kwargs": {"block_style": "plain", "widths": [8, 16], "convs_per_block": 1}}


class ValidationOnly(dict):
    """A run's record whose test metrics fail the test when a selection reads them."""

    def __getitem__(self, key):
        assert "test" not in key, f"a selection read {key!r}"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert "test" not in key, f"a selection read {key!r}"
        return super().get(key, default)


class Sealed:
    """Stands for the test split in fit: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"fit touched the test split ({name})")

    def __len__(self):
        raise AssertionError("fit touched the test split (len)")

    def __getitem__(self, index):
        raise AssertionError("fit touched the test split (indexing)")


def with_sections(config, **sections):
    changes = {name: dataclasses.replace(getattr(config, name), **values) for name, values in sections.items()}
    return dataclasses.replace(config, **changes)


def run(val_accuracy, val_loss, test_accuracy, **extra):
    return ValidationOnly(best_val_accuracy=val_accuracy, best_val_loss=val_loss, test_accuracy=test_accuracy,
                          **extra)


def test_a_selection_on_a_test_metric_is_refused():
    with pytest.raises(ValueError, match="test metrics are reported, never used to choose"):
        pick_by_validation([{"test_accuracy": 1.0}], "test_accuracy", loss=None)
    with pytest.raises(ValueError, match="validation metrics only"):
        pick_by_validation([{"val_accuracy": 1.0, "test_loss": 0.1}], "val_accuracy", "test_loss")


def test_ties_on_validation_accuracy_go_to_the_lower_loss_then_the_first():
    history = [{"epoch": 1, "val_accuracy": 1.0, "val_loss": 0.30}, {"epoch": 2, "val_accuracy": 1.0, "val_loss": 0.05},
               {"epoch": 3, "val_accuracy": 0.95, "val_loss": 0.01}, {"epoch": 4, "val_accuracy": 1.0, "val_loss": 0.05}]
    assert pick_by_validation(history)["epoch"] == 2
    assert pick_by_validation(history, loss=None)["epoch"] == 1


def test_freeze_sweep_seed_and_search_winner_are_chosen_on_validation_where_test_disagrees(mnist_small):
    # The best on test is k=0 / seed 0 / trial 0 each time; validation says k=5 / seed 2 / trial 1.
    sweep_runs = [run(0.90, 0.3, 0.99, freeze_k=0), run(0.95, 0.2, 0.90, freeze_k=5), run(0.95, 0.4, 0.95, freeze_k=7)]
    view = select_view(mnist_small, ["0", "9"], labelled_budget=100)
    sweep = summarize_sweep("e6", 8, sweep_runs, {"test_accuracy": 0.9}, view)
    assert sweep["best_k"] == 5
    assert (sweep["train_samples"], sweep["val_samples"], sweep["labelled_images"]) == (80, 20, 100)
    seed_runs = [run(0.97, 0.1, 0.99, seed=0), run(0.98, 0.2, 0.91, seed=1), run(0.98, 0.1, 0.92, seed=2)]
    assert chosen_seed_run(seed_runs)["seed"] == 2
    trials = [ValidationOnly(number=0, val_accuracy=0.80, test_accuracy=0.99),
              ValidationOnly(number=1, val_accuracy=0.85, test_accuracy=0.70)]
    assert pick_by_validation(trials, "val_accuracy", loss=None)["number"] == 1


def test_fit_chooses_its_best_epoch_without_the_test_split(tiny_config, mnist_small):
    view = select_view(mnist_small, ["0", "9"], labelled_budget=60)
    sealed = dataclasses.replace(view, x_test=Sealed(), y_test=Sealed())
    config = with_sections(tiny_config, model=TINY_PLAIN, train={"epochs": 3, "batch_size": 16})
    result = fit_run(config, sealed)
    assert result.best_epoch == pick_by_validation(result.history)["epoch"]
    assert torch.load(result.best_path, weights_only=False)["epoch"] == result.best_epoch


def test_a_few_shot_view_counts_its_validation_images_in_the_budget(mnist_small):
    view = select_view(mnist_small, ["0", "9"], labelled_budget=100, budget_val_fraction=0.2)
    assert (len(view.y_train), len(view.y_val)) == (80, 20)
    assert torch.bincount(view.y_train).tolist() == [40, 40] and torch.bincount(view.y_val).tolist() == [10, 10]
    # Both come from the prepared training split, none twice; the prepared validation split is unused.
    pool = {bytes(x.numpy()) for x in mnist_small.x_train}
    chosen = [bytes(x.numpy()) for x in torch.cat([view.x_train, view.x_val])]
    assert set(chosen) <= pool and len(set(chosen)) == 100
    assert view.provenance["view"]["labelled_budget"] == 100
    with pytest.raises(DatasetError, match="at least one per class"):
        select_view(mnist_small, ["0", "9"], labelled_budget=5)
    with pytest.raises(DatasetError, match="set one"):
        select_view(mnist_small, ["0", "9"], train_subset=80, labelled_budget=100)
    e6 = load_config(PROJECT_ROOT / "params.yaml", ["experiment=e6_finetune"]).data
    assert (e6.labelled_budget, e6.train_subset) == (100, 0)  # "from 100 images": 100 labels in all


def test_an_e6_style_run_sees_no_more_labels_than_its_budget(tiny_config):
    from cnnlab.stages.report import labelled_lines
    from cnnlab.stages.train import train

    config = with_sections(tiny_config, model=TINY_PLAIN, data={"classes": ["0", "9"], "labelled_budget": 30},
                           train={"batch_size": 16})
    train(config)
    metrics = json.loads((config.output_dir / "train_metrics.json").read_text())
    assert metrics["train_images"] + metrics["val_images"] == metrics["labelled_budget"] == 30
    assert labelled_lines(metrics) == ["- labelled images: 24 trained, 6 chose the best epoch "
                                       "(a labelled budget of 30 in all)"]

"""The comparison table: verdicts, not-run reasons, sorted sweep groups."""

import json

import pytest

from cnnlab.cli import main
from cnnlab.compare import Row, format_markdown, verdict

from .conftest import PROJECT_ROOT


@pytest.mark.parametrize("reference, mean, expected", [
    (0.90, 0.92, "beats"), (0.90, 0.903, "matches"), (0.90, 0.897, "matches"), (0.90, 0.88, "below"),
    (None, 0.9, "no reference"), (0.9, None, "not run"),
])
def test_verdict_with_tolerance(reference, mean, expected):
    assert verdict(reference, mean, 0.005) == expected


def test_group_table_is_sorted_best_first_with_deltas():
    rows = [Row(name, "mnist", "test_accuracy", ref, mean, None, 1, 1000, 10.0, "", "", "sweep")
            for name, ref, mean in (("a", 0.95, 0.96), ("b", 0.98, 0.985), ("c", 0.90, 0.93))]
    table = format_markdown(rows, 0.005)
    sweep = table.split("**sweep**")[1]
    assert sweep.index("| b |") < sweep.index("| a |") < sweep.index("| c |")
    assert "| a | 96.00 | -2.50 |" in sweep and "| b | 98.50 | +0.00 |" in sweep


def test_a_group_spanning_two_datasets_gets_one_table_each():
    rows = [Row(name, dataset, "test_accuracy", None, mean, None, 1, 1000, 10.0, "", "", "l2")
            for name, dataset, mean in (("m1", "mnist", 0.98), ("m2", "mnist", 0.97),
                                        ("c1", "cifar10", 0.70), ("c2", "cifar10", 0.60))]
    table = format_markdown(rows, 0.005)
    cifar = table.split("**l2** on cifar10")[1].split("**l2** on mnist")[0]
    assert "| c1 | 70.00 | +0.00 |" in cifar and "| c2 | 60.00 | -10.00 |" in cifar
    assert "| m1 | 98.00 | +0.00 |" in table.split("**l2** on mnist")[1]


def test_compare_and_seeds_commands(tmp_path, datasets_dir, tracking_uri, capsys):
    common = ["--params", str(PROJECT_ROOT / "params.yaml"), "-S", f"models_dir={tmp_path / 'models'}",
              f"outputs_dir={tmp_path / 'outputs'}", f"data.prepared_dir={tmp_path / 'prepared'}",
              f"data.datasets_dir={datasets_dir}", "data.download=false", "data.train_subset=1000",
              "train.epochs=1", "train.progress=false", f"tracking.uri={tracking_uri}", "tracking.log_model=false",
              "tracking.experiment=compare-test", "seeds=[0, 1]"]
    assert main(["prepare", *common]) == 0
    assert main(["seeds", *common]) == 0
    seeds = json.loads((tmp_path / "outputs" / "e1_mnist_simple_cnn" / "seeds.json").read_text())
    accuracies = [run["test_accuracy"] for run in seeds["runs"]]
    assert [run["seed"] for run in seeds["runs"]] == [0, 1]
    assert accuracies[0] != accuracies[1]  # different seeds, different runs
    assert seeds["test_accuracy_mean"] == pytest.approx(sum(accuracies) / 2)
    assert seeds["test_accuracy_std"] > 0

    assert main(["compare", *common]) == 0
    rows = {r["experiment"]: r for r in json.loads((tmp_path / "outputs" / "comparison.json").read_text())}
    e1 = rows["e1_mnist_simple_cnn"]
    assert e1["runs"] == 2 and e1["reference"] == 0.9901 and e1["verdict"] == "below"  # 1 epoch on 1,000 digits
    assert rows["e2_cifar10_alexnet"]["verdict"] == "not run"
    assert "no results" in rows["e2_cifar10_alexnet"]["note"]
    assert rows["e4_base"]["dataset"] == "cifar10"
    assert "not run:" in (tmp_path / "outputs" / "comparison.md").read_text()


def test_a_search_row_reports_its_retrained_winner(tmp_path):
    from cnnlab.compare import experiment_row
    from cnnlab.config import catalogue_for, load_config

    config = load_config(PROJECT_ROOT / "params.yaml", ["experiment=e5_search", f"outputs_dir={tmp_path}"])
    reference = catalogue_for(PROJECT_ROOT / "params.yaml").reference("e5_search")
    assert experiment_row(config, reference, 0.005, lambda _: "").verdict == "not run"
    winner = tmp_path / f"{config.search.study}_winner"
    winner.mkdir()
    (winner / "seeds.json").write_text(json.dumps({
        "test_accuracy_mean": 0.9, "test_accuracy_std": 0.002, "wall_seconds_mean": 100.0, "parameters": 149_000,
        "runs": [{"seed": s} for s in (0, 1, 2)]}))
    row = experiment_row(config, reference, 0.005, lambda _: "")
    assert (row.mean, row.std, row.runs, row.parameters) == (0.9, 0.002, 3, 149_000)
    assert "search winner retrained" in row.note and "reference is svhn" in row.note

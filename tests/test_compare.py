"""The comparison table: like-with-like verdicts, intervals, proxy rows, not-run reasons, sweep groups."""

import json

import pytest

from cnnlab.cli import main
from cnnlab.compare import Row, experiment_row, format_freeze_sweep, format_markdown, mean_interval, verdict
from cnnlab.config import catalogue_for, load_config
from cnnlab.contract import EntryResults

from .conftest import PROJECT_ROOT, SMALL_VAL_FRACTION


@pytest.mark.parametrize("reference, mean, expected", [
    ((0.90, 0.90), 0.92, "above (n=1)"), ((0.90, 0.90), 0.903, "matches"), ((0.90, 0.90), 0.897, "matches"),
    ((0.90, 0.90), 0.88, "below (n=1)"), (None, 0.9, "no reference"), ((0.9, 0.9), None, "not run"),
    ((0.7065, 0.72), 0.7070, "matches"), ((0.7065, 0.72), 0.724, "matches"), ((0.7065, 0.72), 0.726, "above (n=1)"),
])
def test_single_run_verdict_within_the_widened_range(reference, mean, expected):
    assert verdict(reference, mean, None, 1, 0.005) == expected


@pytest.mark.parametrize("mean, std, expected", [
    (0.93, 0.002, "beats"),     # interval 92.50-93.50, wholly above 90.5
    (0.89, 0.002, "below"),     # 88.50-89.50, wholly below 89.5
    (0.93, 0.02, "matches"),    # 88.03-97.97 overlaps the widened range
    (0.905, 0.001, "matches"),
])
def test_with_three_seeds_the_interval_decides(mean, std, expected):
    assert verdict((0.90, 0.90), mean, std, 3, 0.005) == expected


def test_interval_is_student_t():
    low, high = mean_interval(0.9, 0.01, 3)
    assert high - 0.9 == pytest.approx(4.302653 * 0.01 / 3 ** 0.5)  # t_{0.975, 2}
    assert 0.9 - low == pytest.approx(high - 0.9)


def _write(directory, **files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / f"{name}.json").write_text(json.dumps(content))


def _seeds(test, best_val):
    return {"test_accuracy_mean": sum(test) / len(test), "test_accuracy_std": 0.0, "wall_seconds_mean": 10.0,
            "parameters": 1000, "runs": [{"seed": s, "test_accuracy": a, "best_val_accuracy": v}
                                         for s, (a, v) in enumerate(zip(test, best_val))]}


def _row(tmp_path, reference, experiment="e3_mnist_k5_s1_same", sweeps=(), **files):
    config = load_config(PROJECT_ROOT / "params.yaml", [f"experiment={experiment}", f"outputs_dir={tmp_path}"])
    _write(config.output_dir, **files)
    return experiment_row(config, EntryResults.of(config, sweeps), reference, 0.005, lambda _: "")


ONE_RUN = {"eval": {"test_accuracy": 0.95, "parameters": 1000},
           "train_metrics": {"best_val_accuracy": 0.98, "wall_seconds": 5.0, "epochs": 2}}


def test_a_best_val_reference_compares_with_best_val_accuracy(tmp_path):
    row = _row(tmp_path, {"best_val_accuracy": 0.98}, **ONE_RUN)
    assert (row.metric, row.mean, row.verdict) == ("best_val_accuracy", 0.98, "matches")
    seeds = _row(tmp_path / "seeds", {"best_val_accuracy": [0.97, 0.98]}, sweeps=("seeds",),
                 seeds=_seeds([0.90, 0.91, 0.92], [0.975, 0.976, 0.977]))
    assert seeds.mean == pytest.approx(0.976) and seeds.runs == 3 and seeds.verdict == "matches"
    assert seeds.interval[0] < 0.976 < seeds.interval[1]


def test_no_verdict_for_a_proxy_run_or_a_missing_metric(tmp_path):
    proxy = _row(tmp_path, {"test_accuracy": 0.90, "dataset": "svhn"}, **ONE_RUN)
    assert proxy.proxy and proxy.verdict == "proxy: no verdict"
    table = format_markdown([proxy], 0.005)
    assert "**Proxy runs**" in table and "| e3_mnist_k5_s1_same | mnist | svhn | test | 90.00 | 95.00 (n=1)" in table
    missing = _row(tmp_path / "m", {"best_val_accuracy": 0.98}, eval=ONE_RUN["eval"])
    assert missing.verdict == "no verdict: our results record no best_val_accuracy"


def test_a_derived_reference_gets_no_verdict(tmp_path):
    row = _row(tmp_path, {"test_accuracy": 0.95, "derived": True}, **ONE_RUN)
    assert row.verdict == "no verdict: derived reference" and "derived reference" in row.note


def test_with_three_seeds_a_row_reports_its_interval(tmp_path):
    row = _row(tmp_path, {"test_accuracy": 0.80}, sweeps=("seeds",), seeds=_seeds([0.90, 0.91, 0.92], [0.9, 0.9, 0.9]))
    assert (row.runs, row.verdict) == (3, "beats") and row.std == pytest.approx(0.01)
    assert row.interval == pytest.approx(mean_interval(0.91, 0.01, 3))
    assert "95% interval" in format_markdown([row], 0.005)


def test_the_catalogue_compares_like_with_like(tmp_path):
    """The committed catalogue: E4 and E6 ran on stand-ins for SVHN; E8's fine-tune kept its backbone frozen."""
    catalogue = catalogue_for(PROJECT_ROOT / "params.yaml")
    for name in ("e6_scratch", *(n for n in catalogue.experiments() if n.startswith("e4_"))):
        row = _row(tmp_path / name, catalogue.reference(name), name, **ONE_RUN)
        assert row.proxy and row.verdict == "proxy: no verdict", name
    e2 = _row(tmp_path / "e2", catalogue.reference("e2_cifar10_alexnet"), "e2_cifar10_alexnet",
              eval={"test_accuracy": 0.70, "parameters": 1}, train_metrics={"best_val_accuracy": 0.7070})
    assert (e2.metric, e2.reference, e2.verdict) == ("best_val_accuracy", (0.7065, 0.72), "matches")
    e8 = _row(tmp_path / "e8", catalogue.reference("e8_finetune_aug"), "e8_finetune_aug",
              eval={"test_accuracy": 0.94, "parameters": 1},
              train_metrics={"best_val_accuracy": 0.95, "transfer_policy": "last_layer",
                             "frozen_parameters": 3_371_008, "epochs": 25})
    assert e8.what_ran == "25 epochs; frozen backbone (last_layer, 3,371,008 params frozen)"
    assert e8.reference == (0.95, 0.955) and e8.verdict == "below (n=1)"


def test_group_table_is_sorted_best_first_with_deltas():
    rows = [Row(name, "mnist", "test_accuracy", (ref, ref), mean, None, 1, 1000, 10.0, "", "", "sweep")
            for name, ref, mean in (("a", 0.95, 0.96), ("b", 0.98, 0.985), ("c", 0.90, 0.93))]
    table = format_markdown(rows, 0.005)
    sweep = table.split("**sweep**")[1]
    assert sweep.index("| b |") < sweep.index("| a |") < sweep.index("| c |")
    assert "| a | test | 96.00 | -2.50 |" in sweep and "| b | test | 98.50 | +0.00 |" in sweep


def test_a_group_spanning_two_datasets_gets_one_table_each():
    rows = [Row(name, dataset, "test_accuracy", None, mean, None, 1, 1000, 10.0, "", "", "l2")
            for name, dataset, mean in (("m1", "mnist", 0.98), ("m2", "mnist", 0.97),
                                        ("c1", "cifar10", 0.70), ("c2", "cifar10", 0.60))]
    table = format_markdown(rows, 0.005)
    cifar = table.split("**l2** on cifar10")[1].split("**l2** on mnist")[0]
    assert "| c1 | test | 70.00 | +0.00 |" in cifar and "| c2 | test | 60.00 | -10.00 |" in cifar
    assert "| m1 | test | 98.00 | +0.00 |" in table.split("**l2** on mnist")[1]


def test_compare_and_seeds_commands(tmp_path, datasets_dir, tracking_uri, capsys):
    common = ["--params", str(PROJECT_ROOT / "params.yaml"), "-S", f"models_dir={tmp_path / 'models'}",
              f"outputs_dir={tmp_path / 'outputs'}", f"data.prepared_dir={tmp_path / 'prepared'}",
              f"data.datasets_dir={datasets_dir}", "data.download=false", "data.train_subset=1000",
              f"data.val_fraction={SMALL_VAL_FRACTION}",
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
    assert e1["runs"] == 2 and e1["metric"] == "best_val_accuracy" and e1["reference"] == [0.9898, 0.9901]
    assert e1["verdict"] == "below (n=2)"  # 1 epoch on 1,000 digits
    assert rows["e2_cifar10_alexnet"]["verdict"] == "not run"
    assert "no results" in rows["e2_cifar10_alexnet"]["note"]
    assert rows["e4_base"]["dataset"] == "cifar10" and rows["e4_base"]["proxy"]
    assert "not run:" in (tmp_path / "outputs" / "comparison.md").read_text()


def test_a_results_file_no_stage_declares_is_not_read(tmp_path):
    """A seeds.json left by a `cnnlab seeds` run outside DVC: the entry declares no seeds sweep, so
    its row stays its single run, as the compare stage's deps say."""
    row = _row(tmp_path, {"test_accuracy": 0.95}, seeds=_seeds([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]), **ONE_RUN)
    assert (row.runs, row.mean) == (1, 0.95)
    config = load_config(PROJECT_ROOT / "params.yaml", ["experiment=e3_mnist_k5_s1_same", f"outputs_dir={tmp_path}"])
    nowhere = experiment_row(config, None, {"test_accuracy": 0.95}, 0.005, lambda _: "")
    assert nowhere.verdict == "not run" and "pipeline: none" in nowhere.note


def test_a_search_row_reports_its_retrained_winner(tmp_path):
    config = load_config(PROJECT_ROOT / "params.yaml", ["experiment=e5_search", f"outputs_dir={tmp_path}"])
    reference = catalogue_for(PROJECT_ROOT / "params.yaml").reference("e5_search")
    study = EntryResults.of(config, ("search", "retrain_best"))  # a study with no seeds of its own model
    assert experiment_row(config, study, reference, 0.005, lambda _: "").verdict == "not run"
    winner = tmp_path / f"{config.search.study}_winner"
    winner.mkdir()
    (winner / "seeds.json").write_text(json.dumps({
        "test_accuracy_mean": 0.9, "test_accuracy_std": 0.002, "wall_seconds_mean": 100.0, "parameters": 149_000,
        "runs": [{"seed": s, "test_accuracy": a} for s, a in ((0, 0.898), (1, 0.9), (2, 0.902))]}))
    row = experiment_row(config, study, reference, 0.005, lambda _: "")
    assert (row.mean, row.std, row.runs, row.parameters) == (pytest.approx(0.9), pytest.approx(0.002), 3, 149_000)
    assert "search winner retrained" in row.note and row.proxy and row.verdict == "proxy: no verdict"


def test_a_few_shot_row_and_its_freeze_sweep_say_how_many_labels_trained_and_chose(tmp_path):
    few_shot = {"best_val_accuracy": 1.0, "wall_seconds": 5.0, "epochs": 30, "transfer_policy": "scratch",
                "labelled_budget": 100, "train_images": 80, "val_images": 20}
    row = _row(tmp_path, {"test_accuracy": 0.69, "dataset": "svhn"}, "e6_scratch",
               eval={"test_accuracy": 0.98, "parameters": 1000}, train_metrics=few_shot)
    assert row.what_ran == "30 epochs; from scratch; 100 labelled images (80 train + 20 validation)"
    run = {"trainable_parameters": 10, "best_val_accuracy": 0.9, "test_accuracy": 0.99, "wall_seconds": 3.0}
    sweep = {"experiment": "e6_finetune", "layers": 8, "best_k": 5, "train_samples": 80, "val_samples": 20,
             "runs": [{**run, "freeze_k": 0}, {**run, "freeze_k": 5, "best_val_accuracy": 0.95}], "scratch": run}
    table = format_freeze_sweep(sweep)
    assert "80 training + 20 validation labelled images" in table and "k = 5 chosen on validation" in table
    assert "| 5 (chosen) | 10 | 95.00 | 99.00 | 3 |" in table and "| from scratch |" in table

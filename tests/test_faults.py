"""Faults in CI: kill -9 of train, search and register, a flipped byte in a checkpoint, the
prepared data, the ONNX file and each SQLite store, and a wrong value for every setting. Each
is bench/faults.py's function at a fixed point (the bench draws many at random): the next
command recovers, nothing is left RUNNING, nothing finished is lost, and a corrupt input is one
clear error (exit 2) that overwrites nothing."""

import importlib.util
import json
import sys

import pytest

from .conftest import PROJECT_ROOT


def _harness():
    spec = importlib.util.spec_from_file_location("cnnlab_bench_faults", PROJECT_ROOT / "bench" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


faults = _harness()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A scratch project whose base run is trained (model logged), evaluated and exported."""
    return faults.prepare_project(tmp_path_factory.mktemp("faults"))


def assert_survived(record, note: str = ""):
    assert record.outcome == "survived" and not record.data_lost, str(record)  # a str: pytest cuts an object's repr
    assert note in record.note, str(record)


def assert_killed_and_survived(record, note: str = ""):
    assert "(it had ended)" not in record.when, str(record)  # the kill landed while the command ran
    assert_survived(record, note)


def middle(path) -> int:
    return path.stat().st_size // 2


def test_every_setting_rejects_a_wrong_type_and_an_out_of_range_value(tmp_path):
    tried, failures = faults.bad_settings_sweep(cli_keys=2, root=tmp_path)
    assert not failures, failures
    assert {t["key"] for t in tried} == {key for key, _ in faults.leaf_settings()}
    assert {"wrong type", "out of range"} <= {t["what"] for t in tried}
    assert [t["cli"] for t in tried if "cli" in t] == ["survived", "survived"]


def test_a_flipped_checkpoint_byte_is_a_clear_error_and_overwrites_nothing(project):
    best = project.model_dir(faults.BASE_RUN) / "best.pt"
    assert_survived(faults.flip_checkpoint(project, 0, "best.pt", offset=middle(best)), "clear error")


def test_a_flipped_pixel_of_the_prepared_data_is_found(project):
    record = faults.flip_prepared(project, 0, offset=middle(project.prepared()))  # inside the uint8 images
    assert_survived(record, "clear error naming the file")


def test_a_flipped_onnx_byte_is_never_registered(project):
    onnx = project.model_dir(faults.BASE_RUN) / "model.onnx"
    assert_survived(faults.flip_onnx(project, 0, offset=middle(onnx)), "register refused")


def test_a_flipped_mlflow_store_is_a_clear_error_before_any_file(project):
    assert_survived(faults.flip_store(project, 0, "mlflow", offset=0), "clear error naming the store")


def test_a_flipped_optuna_storage_is_a_clear_error(project):
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(study_name="finished-study", storage=f"sqlite:///{project.optuna}",
                                load_if_exists=True)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    assert_survived(faults.flip_store(project, 0, "optuna", offset=0), "clear error naming the store")


@pytest.mark.slow
def test_kill_9_of_train_then_resume_leaves_no_running_run(project):
    assert_killed_and_survived(faults.kill_train(project, 0, epochs_before=1, delay=0), "resumed from last.pt")


@pytest.mark.slow
def test_kill_9_of_the_search_coordinator_then_the_study_resumes(project):
    assert_killed_and_survived(faults.kill_search(project, 0, workers=1, trials_before=1, delay=0), "rerun finished")


@pytest.mark.slow
def test_kill_9_of_export_after_it_wrote_the_onnx_file_then_export_again(project):
    assert_killed_and_survived(faults.kill_stage(project, 0, "export", onnx_written=True))


def test_kill_9_of_register_then_register_again_gives_one_version(project):
    assert_killed_and_survived(faults.kill_stage(project, 0, "register", delay=3))


def test_the_readme_sentence_renders_from_what_the_bench_writes_now(tmp_path):
    # rendered from the committed file alone, a change to the bench's record would only show
    # (as a KeyError in `cnnlab results`) once someone re-ran the hour-long bench
    from cnnlab.results import faults as faults_sentence
    from cnnlab.runtime import machine

    killed = faults.FaultRecord("kill -9", "train", 0, "after 1 epoch line(s)", "survived", False, "resumed")
    flipped = faults.FaultRecord("byte flip", "optuna store", 1, "offset 9", "undetected", False, "rows changed")
    bad_inputs = [{"key": "train.lr", "outcome": "survived"}, {"key": "train.epochs", "outcome": "failed"}]
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "faults.json").write_text(json.dumps(faults.bench_record(2, 7, [killed, flipped], bad_inputs)))
    sentence = faults_sentence(tmp_path)
    assert machine()["cpu"] in sentence and "--faults 2 --seed 7" in sentence
    assert "2 faults injected, 1 survived, 2 bad inputs tried (1 rejected" in sentence and "undetected 1" in sentence

"""E5 search machinery on small real data: hard budget, resume, MLflow lineage, failures."""

import dataclasses
import json
import warnings

import numpy as np

import pytest
from mlflow import MlflowClient

optuna = pytest.importorskip("optuna")

from cnnlab.config import load_config  # noqa: E402
from cnnlab.data.prepare import save_prepared  # noqa: E402
from cnnlab.lifecycle import interruption_behind  # noqa: E402
from cnnlab.search import (PARENT_RUN_ATTR, end_unended_trial, open_study, run_search,  # noqa: E402
                           search_with_workers, studies_named, study_name)
from cnnlab.training_cost import TIMING_NOISE  # noqa: E402

from .conftest import PROJECT_ROOT  # noqa: E402

TINY_SPACE = [
    "search.space.block_styles=[plain, residual]", "search.space.stages=[2, 2]", "search.space.widths=[8, 16]",
    "search.space.convs_per_block=[1, 1]", "search.space.blocks_per_stage=[1, 1]", "search.space.head_widths=[0]",
    "search.space.dropout=[0.0, 0.0]", "search.space.optimizers=[adam]", "search.space.lr=[0.001, 0.003]",
]


@pytest.fixture
def search_config(tmp_path, tracking_uri):
    def make(*overrides):
        return load_config(PROJECT_ROOT / "params.yaml", [
            f"models_dir={tmp_path / 'models'}", f"outputs_dir={tmp_path / 'outputs'}",
            f"tracking.uri={tracking_uri}", f"tracking.experiment=search-test-{tmp_path.name}",
            f"search.storage=sqlite:///{tmp_path / 'optuna.db'}", f"search.study=s-{tmp_path.name}",
            "search.trial_epochs=1", "search.trial_train_subset=600", "search.n_trials=2",
            "train.eval_batch_size=2000", "search.enqueue=[]", *TINY_SPACE, *overrides,
        ])
    return make


def trials_of(config):
    return open_study(config).get_trials(deepcopy=False)


def test_over_budget_candidates_are_pruned_without_training(search_config, mnist_small, tmp_path):
    config = search_config("search.param_budget=100", "search.budget_mode=reject", "search.n_trials=3")
    run_search(config, mnist_small)
    trials = trials_of(config)
    assert [t.state.name for t in trials] == ["PRUNED"] * 3
    assert all(t.user_attrs["parameters"] > 100 and "over budget" in t.user_attrs["reason"] for t in trials)
    assert not (tmp_path / "models").exists()  # nothing was trained or checkpointed


def test_a_candidate_slower_to_train_than_the_entry_s_own_model_is_pruned_before_training(search_config, mnist_small,
                                                                                          tmp_path):
    """The entry's own search_cnn is the baseline: beside a tiny one every 64-wide candidate is too
    slow and none trains; beside a large one an 8-wide candidate trains. Each keeps its cost."""
    from cnnlab.search import write_summary

    # Batches of 32: the compute budget times both nets at the trial's batch size, and the ratios
    # here are far from 1 at any size (at params.yaml's 256, timing the large baseline took a minute).
    baseline = "model.kwargs={widths: [8, 8], convs_per_block: 1}"
    small_batches = "search.space.batch_sizes=[32]"
    slow = search_config("model.name=search_cnn", baseline, "search.space.widths=[64]", small_batches)
    run_search(slow, mnist_small)
    trials = trials_of(slow)
    assert [t.state.name for t in trials] == ["PRUNED"] * 2
    assert all(t.user_attrs["relative_cost"] > 1 and "as slow per image as the baseline" in t.user_attrs["reason"]
               for t in trials)
    assert not (tmp_path / "models").exists()  # nothing was trained or checkpointed

    fast = search_config("model.name=search_cnn", "model.kwargs={widths: [64, 128], convs_per_block: 3}",
                         "search.n_trials=1", small_batches)
    study = run_search(fast, mnist_small)
    (trial,) = trials_of(fast)
    assert trial.state.name == "COMPLETE" and trial.user_attrs["relative_cost"] < 1
    summary = write_summary(study, tmp_path / "search.json", fast)
    assert summary["compute_budget"] == {"model": "search_cnn", "kwargs": {"widths": [64, 128], "convs_per_block": 3},
                                         "cost_cap": 1.0, "timing_noise": TIMING_NOISE}
    assert summary["trials"][0]["relative_cost"] == trial.user_attrs["relative_cost"]
    assert study_name(fast) != study_name(search_config("model.name=search_cnn", baseline))  # the budget is identity


def test_a_raised_cost_cap_lets_a_slower_candidate_train(search_config, mnist_small):
    """search.cost_cap is the compute budget's setting: the 64-wide candidate that the tiny
    baseline's 1x cap prunes trains under a cap far above its cost, and the summary says which cap."""
    from cnnlab.search import write_summary

    config = search_config("model.name=search_cnn", "model.kwargs={widths: [8, 8], convs_per_block: 1}",
                           "search.space.widths=[64]", "search.n_trials=1", "search.cost_cap=1000",
                           "search.space.batch_sizes=[32]")  # the timing's steps cost little (see above)
    study = run_search(config, mnist_small)
    (trial,) = trials_of(config)
    assert trial.state.name == "COMPLETE" and 1 < trial.user_attrs["relative_cost"] <= 1000
    assert write_summary(study, config.output_dir / "search.json", config)["compute_budget"]["cost_cap"] == 1000


@pytest.mark.parametrize("timed_cost, trains", [(1 + TIMING_NOISE / 2, True), (1 + 2 * TIMING_NOISE, False)])
def test_a_candidate_as_fast_as_the_baseline_trains_whichever_way_the_timing_s_noise_falls(
        search_config, mnist_small, monkeypatch, timed_cost, trains):
    """A net of the baseline's own shape times a few percent either side of 1x (the last real study
    pruned one at 1.001x under a cap of 1): within the noise allowed for, it trains at cap 1; timed
    well past it, it is pruned, the cap and the allowance named."""
    import cnnlab.search

    monkeypatch.setattr(cnnlab.search, "relative_training_cost", lambda *args: timed_cost)
    config = search_config("model.name=search_cnn", "model.kwargs={widths: [8, 8], convs_per_block: 1}",
                           "search.n_trials=1")
    run_search(config, mnist_small)
    (trial,) = trials_of(config)
    assert trial.user_attrs["relative_cost"] == round(timed_cost, 3)
    assert trial.state.name == ("COMPLETE" if trains else "PRUNED")
    if not trains:
        assert f"cap 1x, {1 + TIMING_NOISE:.2f}x with the timing's noise" in trial.user_attrs["reason"]


def test_shrink_to_fit_trains_a_model_under_the_budget(search_config, mnist_small):
    config = search_config("search.param_budget=20000", "search.budget_mode=shrink", "search.n_trials=1",
                           "search.space.widths=[64]", "search.trial_train_subset=0", "search.trial_epochs=3")
    run_search(config, mnist_small)
    (trial,) = trials_of(config)
    assert trial.state.name == "COMPLETE"
    assert 15000 < trial.user_attrs["parameters"] <= 20000  # shrunk to hug the budget
    assert max(trial.user_attrs["model_kwargs"]["widths"]) < 64
    assert trial.value > 0.2  # it trained: 3 short epochs of a global-pooling net, chance is 0.1


def test_sgd_draws_its_learning_rate_from_a_range_of_its_own():
    """SGD's useful steps are ~30x Adam's: one shared range would waste most SGD trials."""
    from cnnlab.config import SearchSpaceConfig
    from cnnlab.search import suggest

    space = SearchSpaceConfig()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        _, training = suggest(trial, space)
        sgd = training["optimizer"] == "sgd"
        low, high = space.sgd_lr if sgd else space.lr
        assert low <= training["lr"] <= high and trial.params["sgd_lr" if sgd else "lr"] == training["lr"]
        assert ("lr" in trial.params) != sgd
        seen.add(training["optimizer"])
        study.tell(trial, 0.5)
    assert seen == {"adam", "adamw", "sgd"}


def test_blocks_per_stage_is_drawn_from_its_range_into_the_model():
    """Depth at a width is the space's own choice: every value of the range is drawn, and the
    drawn value is what the model gets."""
    from cnnlab.config import SearchSpaceConfig
    from cnnlab.search import suggest

    space = SearchSpaceConfig(blocks_per_stage=[1, 3])
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        model, _ = suggest(trial, space)
        assert model["blocks_per_stage"] == trial.params["blocks_per_stage"]
        seen.add(model["blocks_per_stage"])
        study.tell(trial, 0.5)
    assert seen == {1, 2, 3}


def test_grown_widths_never_narrow_and_independent_ones_can():
    """width_growths: a stage is never narrower than the one before, so shrinking to the budget
    cannot leave a net whose last stages collapsed (E5's first winner: 28/68/12/12)."""
    import dataclasses

    from cnnlab.config import SearchSpaceConfig
    from cnnlab.search import space_domains, suggest

    def draws(space):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(60):
            trial = study.ask()
            model, _ = suggest(trial, space)
            study.tell(trial, 0.5)
            yield model["widths"], trial.params

    independent = SearchSpaceConfig()
    assert any(w[i + 1] < w[i] for w, _ in draws(independent) for i in range(len(w) - 1))
    grown = dataclasses.replace(independent, width_growths=[1.0, 1.5, 2.0])
    seen = set()
    for widths, params in draws(grown):
        assert all(b >= a for a, b in zip(widths, widths[1:])) and widths[0] in grown.widths
        assert set(params) <= set(space_domains(grown)) and "width_1" not in params
        seen.add(widths[1] / widths[0] if widths[0] % 4 == 0 else None)
    assert {1.0, 2.0} <= seen  # both ends of the growths are drawn


def test_tpe_models_trials_after_its_start_up_draws(tmp_path):
    """search.startup_trials: TPE's first trials are random draws; with fewer of them it starts
    modelling sooner, so the study's third trial differs from one drawn with the default start-up."""
    from cnnlab.config import SearchConfig
    from cnnlab.search import suggest

    def third_trial(startup):
        search = SearchConfig(study=f"startup{startup}", storage=f"sqlite:///{tmp_path / f'{startup}.db'}",
                              startup_trials=startup)
        study = open_study(dataclasses.replace(load_config(PROJECT_ROOT / "params.yaml"), search=search))
        for value in (0.3, 0.6, None):
            trial = study.ask()
            suggest(trial, search.space)
            if value is None:
                return trial.params
            study.tell(trial, value)

    assert third_trial(2) != third_trial(10)


def test_resume_continues_the_same_study(search_config, mnist_small):
    first = search_config("search.n_trials=1")
    run_search(first, mnist_small)
    (before,) = trials_of(first)
    run_search(search_config("search.n_trials=2"), mnist_small)
    trials = trials_of(first)
    assert len(trials) == 2
    assert trials[0].number == before.number and trials[0].value == before.value
    # A fresh process must not replay the seeded sampler's first draws (a duplicate trial).
    assert trials[1].params != trials[0].params
    run_search(search_config("search.n_trials=2"), mnist_small)  # already done: no new trial
    assert len(trials_of(first)) == 2


def test_a_study_resumes_only_under_the_settings_its_trials_ran_with(search_config, mnist_small, tracking_uri):
    """`dvc exp run -S search.trial_train_subset=300` re-runs the search stage: resuming the
    study of that name would find its trials done and report them as the new settings' result."""
    first = search_config()
    run_search(first, mnist_small)
    changed = search_config("search.trial_train_subset=300")
    run_search(changed, mnist_small)
    runs = [{t.user_attrs["mlflow_run_id"] for t in trials_of(c)} for c in (first, changed)]
    assert len(runs[1]) == 2 and not runs[0] & runs[1]  # trials of its own
    client = MlflowClient(tracking_uri=tracking_uri)
    assert {client.get_run(r).data.tags["optuna.storage_study"] for r in runs[1]} == {study_name(changed)}

    # how long it goes on and where it runs are no part of it: more trials resume the first study
    more = search_config("search.n_trials=3", "search.epoch_budget=50", "train.epochs=7", "model.kwargs={}")
    assert study_name(more) == study_name(first)
    run_search(more, mnist_small)
    assert [t.user_attrs["mlflow_run_id"] for t in trials_of(more)][:2] == [
        t.user_attrs["mlflow_run_id"] for t in trials_of(first)][:2] and len(trials_of(first)) == 3
    assert sorted(studies_named(first.search.study, first.search.storage)) == sorted(
        {study_name(first), study_name(changed)})


def test_a_study_s_identity_is_every_setting_its_trials_depend_on(search_config, tmp_path):
    base = study_name(search_config())
    for setting in ("search.trial_epochs=2", "search.space.lr=[0.001, 0.01]", "search.sampler=random",
                    "train.label_smoothing=0.1", "train.augment.hflip=true", "data.split_seed=3", "train.seed=1"):
        assert study_name(search_config(setting)) != base, setting
    for setting in ("search.workers=2", f"search.storage=sqlite:///{tmp_path / 'other.db'}", "search.timeout_seconds=60",
                    f"data.prepared_dir={tmp_path}", "train.threads=1", "train.progress=false"):
        assert study_name(search_config(setting)) == base, setting


def test_the_timing_noise_a_compute_budget_allows_for_is_part_of_the_study_s_identity(search_config, monkeypatch):
    """The allowance is code, not a setting, yet it decides which trials train: a study resumed
    after it changed would mix trials pruned under two rules. Without a baseline it decides nothing."""
    import cnnlab.search

    budgeted = search_config("model.name=search_cnn", "model.kwargs={widths: [8, 8], convs_per_block: 1}")
    before, unbudgeted = study_name(budgeted), study_name(search_config())
    monkeypatch.setattr(cnnlab.search, "TIMING_NOISE", TIMING_NOISE * 2)
    assert study_name(budgeted) != before and study_name(search_config()) == unbudgeted


def test_trials_are_child_runs_of_one_parent(search_config, mnist_small, tracking_uri):
    config = search_config()
    study = run_search(config, mnist_small)
    parent = study.user_attrs[PARENT_RUN_ATTR]
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 2
    assert {c.data.tags["optuna.trial"] for c in children} == {"0", "1"}
    assert all(c.data.params["model.name"] == "search_cnn" and "model.total_parameters" in c.data.params for c in children)
    assert all(len(client.get_metric_history(c.info.run_id, "val_accuracy")) == 1 for c in children)


def test_a_trial_run_left_running_by_a_dead_worker_is_failed_by_the_next_search(search_config, mnist_small,
                                                                               tracking_uri):
    import socket
    import subprocess
    import sys

    config = search_config("search.n_trials=1")
    parent = run_search(config, mnist_small).user_attrs[PARENT_RUN_ATTR]
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    orphan = client.create_run(experiment.experiment_id, run_name="trial-9", tags={
        "mlflow.parentRunId": parent, "cnnlab.pid": dead_pid, "cnnlab.host": socket.gethostname()})
    run_search(config, mnist_small)  # the study is complete: it only reopens the parent
    failed = client.get_run(orphan.info.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["cnnlab.failure"] == "process died (found by cnnlab search)"


def test_a_trial_whose_end_the_busy_storage_refused_is_failed_once_the_storage_is_free(tmp_path):
    """Optuna writes a trial's end once; a SQLite file held by another writer for longer than
    SQLite waits (5 s) refuses it, and the trial would stay RUNNING. It is written again."""
    import sqlite3
    import threading

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="busy")
    trial = study.ask()
    busy = sqlite3.connect(tmp_path / "optuna.db", timeout=60, isolation_level=None, check_same_thread=False)
    busy.execute("BEGIN IMMEDIATE")  # readers go on, writers wait
    # busy for longer than two 5 s waits: Optuna's write of the trial's end and the first rewrite fail
    threading.Timer(12, busy.execute, ("ROLLBACK",)).start()
    with pytest.raises(optuna.exceptions.StorageInternalError):  # what Optuna's own write of its end meets
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    end_unended_trial(study, trial.number)
    assert study.trials[0].state.name == "FAIL"
    end_unended_trial(study, trial.number)  # a trial that did end is left as it is
    study.tell(study.ask(), 0.5)
    end_unended_trial(study, 1)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_an_interruption_while_optuna_creates_a_trial_leaves_no_trial_running(search_config, mnist_small,
                                                                             monkeypatch, terminal_signals, signum):
    """The signal lands right after the storage created the trial, before Optuna handed it to the
    objective: before, nothing knew the trial's number and it stayed RUNNING for good."""
    import os
    import signal

    from cnnlab.lifecycle import signals_as_interrupts

    create = optuna.storages.RDBStorage._create_new_trial  # what the cached storage in front of it calls

    def create_then_signal(storage, *args, **kwargs):
        trial = create(storage, *args, **kwargs)
        os.kill(os.getpid(), getattr(signal, signum))
        return trial

    monkeypatch.setattr(optuna.storages.RDBStorage, "_create_new_trial", create_then_signal)
    config = search_config("search.n_trials=1")
    with pytest.raises(KeyboardInterrupt) as interrupted:
        with signals_as_interrupts():
            run_search(config, mnist_small)
    assert type(interrupted.value).__name__ == ("Terminated" if signum == "SIGTERM" else "KeyboardInterrupt")
    assert [t.state.name for t in trials_of(config)] == ["FAIL"]


def test_an_error_raised_on_the_way_out_of_an_interruption_still_ends_the_command_as_interrupted():
    from cnnlab.lifecycle import Terminated

    try:
        try:
            raise Terminated("terminated by SIGTERM")
        except KeyboardInterrupt:
            raise AssertionError("Should not reach.")  # Optuna, when its write of the trial's end fails
    except AssertionError as err:
        assert isinstance(interruption_behind(err), Terminated)
    assert interruption_behind(ValueError("a bug")) is None


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(search_config, mnist_small):
    config = search_config("search.space.optimizers=[adam]", "search.space.lr=[1000000.0, 1000000.0]",
                           "search.space.block_styles=[plain]", "search.space.batch_norm=[false]")
    run_search(config, mnist_small)
    trials = trials_of(config)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all("loss became" in t.user_attrs["reason"] for t in trials)


def test_journal_storage_for_one_machine(search_config, mnist_small, tmp_path):
    config = search_config(f"search.storage=journal:{tmp_path / 'journal.log'}", "search.n_trials=1")
    run_search(config, mnist_small)
    assert (tmp_path / "journal.log").stat().st_size > 0
    assert [t.state.name for t in trials_of(config)] == ["COMPLETE"]


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_two_worker_processes_share_the_study_on_one_machine(search_config, mnist_small, tmp_path, storage,
                                                             tracking_uri):
    """`search.workers=2`: two processes, one study on the default storages for one machine,
    distinct candidates (each worker's sampler is seeded apart), all under one parent run."""
    url = f"sqlite:///{tmp_path / 'workers.db'}" if storage == "sqlite" else f"journal:{tmp_path / 'workers.log'}"
    config = search_config(f"search.storage={url}", "search.workers=2", "search.n_trials=6",
                           "search.pruner=none", "train.threads=2")
    prepared = save_prepared(mnist_small, tmp_path / "prepared" / "mnist.pt")
    study = search_with_workers(config, prepared)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) >= 6 and all(t.state.name == "COMPLETE" for t in trials)  # none lost
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == len(trials)  # none run twice
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = [client.get_run(t.user_attrs["mlflow_run_id"]) for t in trials]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {study.user_attrs[PARENT_RUN_ATTR]}
    assert {r.data.params["train.threads"] for r in runs} == {"1"}  # the 2 threads split over 2 workers
    # from each worker's first trial on, its compute-budget timing included (it runs before fit)
    assert {t.user_attrs["machine"]["torch_threads"] for t in trials} == {1}


def test_workers_without_prepared_data_fail_before_anything_starts(search_config, tmp_path):
    from cnnlab.data import DatasetError

    config = search_config(f"search.storage=sqlite:///{tmp_path / 'never.db'}", "search.workers=2")
    with pytest.raises(DatasetError, match="run `cnnlab prepare`"):
        search_with_workers(config, tmp_path / "missing" / "mnist.pt")
    assert not (tmp_path / "never.db").exists()  # no study was created, no worker started


def test_search_report_then_retrain_best_exports_and_registers(search_config, mnist_small, tmp_path,
                                                                   tracking_uri, datasets_dir):
    from cnnlab.cli import main
    from cnnlab.data.prepare import save_prepared

    save_prepared(mnist_small, tmp_path / "prepared" / "mnist.pt")
    config = search_config()
    overrides = [f"data.prepared_dir={tmp_path / 'prepared'}", "seeds=[0, 1]", "train.epochs=1",
                 "train.progress=false", "tracking.log_model=true"]
    args = ["--params", str(PROJECT_ROOT / "params.yaml"), "-S", f"models_dir={config.models_dir}",
            f"outputs_dir={config.outputs_dir}", f"tracking.uri={tracking_uri}",
            f"tracking.experiment={config.tracking.experiment}", f"search.storage={config.search.storage}",
            f"search.study={config.search.study}", "search.trial_epochs=1", "search.trial_train_subset=600",
            "search.n_trials=2", "search.enqueue=[]", *TINY_SPACE, *overrides]
    assert main(["search", *args]) == 0
    assert main(["search-report", *args]) == 0
    study_dir = tmp_path / "outputs" / config.search.study
    assert sorted(p.name for p in (study_dir / "search_figures").glob("*.png")) == [
        "accuracy_vs_parameters.png", "history.png", "parallel_coordinates.png", "param_importances.png"]
    summary = json.loads((study_dir / "search.json").read_text())
    ran = load_config(PROJECT_ROOT / "params.yaml", args[3:])  # the settings after `-S`
    assert (summary["study"], summary["storage_study"]) == (config.search.study, study_name(ran))
    parent = summary["mlflow_parent_run_id"]
    logged = {a.path for a in MlflowClient(tracking_uri=tracking_uri).list_artifacts(parent, "search_figures")}
    assert len(logged) == 4
    assert MlflowClient(tracking_uri=tracking_uri).get_run(parent).info.status == "FINISHED"  # ends with the search
    assert main(["retrain-best", *args]) == 0
    winner = tmp_path / "outputs" / f"{config.search.study}_winner"
    seeds = json.loads((winner / "seeds.json").read_text())
    assert [r["seed"] for r in seeds["runs"]] == [0, 1]
    assert seeds["total_parameters"] <= config.search.param_budget
    registered = list(winner.glob("seed*/registered.json"))
    assert len(registered) == 1
    chosen = max(seeds["runs"], key=lambda r: r["best_val_accuracy"])["seed"]  # validation chooses, never test
    assert registered[0].parent.name == f"seed{chosen}"
    record = json.loads(registered[0].read_text())
    version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(record["name"], "champion")
    assert version.tags["onnx_parity"] == "passed"


def test_multi_objective_mode_keeps_a_pareto_front(search_config, mnist_small):
    from cnnlab.search import best_trials

    config = search_config("search.multi_objective=true", "search.n_trials=3")
    study = run_search(config, mnist_small)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    front = best_trials(study)
    assert front and all(len(t.values) == 2 for t in study.best_trials)
    by_parameters = sorted(front, key=lambda t: t["parameters"])
    accuracies = [t["val_accuracy"] for t in by_parameters]
    assert accuracies == sorted(accuracies)  # on the front, more parameters only for more accuracy


CANDIDATE = ("{stages: 2, block_style: residual, width_0: 16, width_1: 16, convs_per_block: 1, batch_norm: true,"
             " pooling: max, head_width: 0, dropout: 0.0, preactivation: true, optimizer: adam, lr: 0.002,"
             " batch_size: 256}")


def test_enqueued_candidates_run_first_and_once(search_config, mnist_small):
    config = search_config(f"search.enqueue=[{CANDIDATE}]", "search.n_trials=2")
    run_search(config, mnist_small)
    first = trials_of(config)[0]
    assert first.params["block_style"] == "residual" and first.params["lr"] == 0.002
    assert first.user_attrs["model_kwargs"]["widths"] == [16, 16]
    run_search(search_config(f"search.enqueue=[{CANDIDATE}]", "search.n_trials=3"), mnist_small)
    trials = trials_of(config)
    assert len(trials) == 3
    assert sum(t.params == first.params for t in trials) == 1  # resuming did not enqueue it again


@pytest.mark.parametrize("candidate, message", [
    ("{block_stlye: residual}", "unknown parameter 'block_stlye'.*search space names"),
    ("{batch_size: 64}", r"batch_size=64 is outside the search space \(one of \[256\]\)"),
    ("{lr: 0.5}", r"lr=0.5 is outside the search space \(in \[0.001, 0.003\]\)"),
    ("{blocks_per_stage: 2}", r"blocks_per_stage=2 is outside the search space \(in \[1, 1\]\)"),
    ("{lr: fast}", r"lr='fast' is outside the search space"),
    ("{optimizer: adam, sgd_lr: 0.05}", r"with optimizer 'adam' the learning rate is 'lr', not 'sgd_lr'"),
])
def test_an_enqueued_candidate_outside_the_space_is_a_config_error(search_config, mnist_small, candidate, message):
    from cnnlab.config import ConfigError

    config = search_config(f"search.enqueue=[{candidate}]")
    with pytest.raises(ConfigError, match=message):
        run_search(config, mnist_small)
    assert trials_of(config) == []  # nothing ran


def dashboard_get(app, path: str) -> tuple[str, dict]:
    """One GET through optuna-dashboard's WSGI app, as its server would route it."""
    from wsgiref.util import setup_testing_defaults

    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda code, headers, exc_info=None: status.append(code)))
    return status[0], json.loads(body)


def test_optuna_dashboard_reads_the_study_storage(search_config, mnist_small):
    """README: `optuna-dashboard <search.storage>` shows the study, its trials and their values."""
    import optuna_dashboard  # the test extra installs it

    config = search_config("search.n_trials=2")
    run_search(config, mnist_small)
    app = optuna_dashboard.wsgi(config.search.storage)
    status, listing = dashboard_get(app, "/api/studies")
    assert status.startswith("200")
    (summary,) = [s for s in listing["study_summaries"] if s["study_name"] == study_name(config)]
    status, study = dashboard_get(app, f"/api/studies/{summary['study_id']}")
    assert status.startswith("200")
    assert [t["number"] for t in study["trials"]] == [t.number for t in trials_of(config)]
    assert all(t["state"] == "Complete" and t["values"] for t in study["trials"])


def test_importances_explain_high_accuracy_not_low():
    """Accuracy is high only when `x` falls in a narrow window; `noise` does nothing. Explaining
    the best trials ranks `x` first; explaining the worst (PED-ANOVA given the accuracy itself,
    Optuna's default) would not."""
    import optuna

    from cnnlab.search import PED_ANOVA_TARGET_WARNING, param_importances

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    rng = np.random.default_rng(0)

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        trial.suggest_float("noise", 0, 1)  # searched, but the accuracy ignores it
        return (0.9 if 0.45 < x < 0.55 else 0.5) + 0.01 * rng.random()

    study.optimize(objective, n_trials=200)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importances = param_importances(study)
    assert importances["x"] > 0.8 > importances["noise"]
    # Optuna's advice to negate the target, printed by `cnnlab search`, would say it was not done
    assert not [w for w in caught if PED_ANOVA_TARGET_WARNING in str(w.message)]
    with pytest.warns(UserWarning, match=PED_ANOVA_TARGET_WARNING):  # the warning silenced, no other
        wrong_way = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=lambda t: t.values[0])
    assert wrong_way["x"] < importances["x"]


def test_hyperband_cuts_trials_at_epoch_rungs():
    """Epochs are the resource: with min 2, max 12 and factor 3, a trial is cut only after epoch
    2 or 6 (the rungs below 12), and the best trials run all 12."""
    from cnnlab.config import SearchConfig
    from cnnlab.search import make_pruner

    search = SearchConfig(pruner="hyperband", trial_epochs=12, min_trial_epochs=2, reduction_factor=3)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(search),
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        quality = trial.suggest_float("quality", 0, 1)
        for epoch in range(1, search.trial_epochs + 1):
            trial.report(quality * epoch / search.trial_epochs, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return quality

    study.optimize(objective, n_trials=60)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert pruned and {t.last_step for t in pruned} <= {2, 6}
    assert all(t.last_step == 12 for t in complete)
    best_pruned = max(t.params["quality"] for t in pruned)
    assert max(t.params["quality"] for t in complete) > best_pruned * 0.9  # the good ones went on


def test_search_wall_time_counts_overlapping_trials_once_and_no_idle_gap():
    """Two workers' overlapping trials, then a resumption a day later: the wall time is the time
    during which some trial ran (100 s + 30 s), not first start to last end."""
    from datetime import datetime, timedelta

    from cnnlab.search import study_wall_seconds

    study = optuna.create_study(direction="maximize")
    t0 = datetime(2026, 1, 1)
    for start, end in [(0, 60), (10, 100), (20, 50), (86_400, 86_430)]:
        study.add_trial(optuna.trial.FrozenTrial(
            number=0, trial_id=0, state=optuna.trial.TrialState.COMPLETE, value=0.5, values=None,
            datetime_start=t0 + timedelta(seconds=start), datetime_complete=t0 + timedelta(seconds=end),
            params={}, distributions={}, user_attrs={}, system_attrs={}, intermediate_values={}))
    assert study_wall_seconds(study) == pytest.approx(130.0)


def test_the_epoch_budget_stops_the_study_and_trials_use_the_whole_split(search_config, mnist_small):
    from cnnlab.search import EPOCHS_ATTR, Objective, epochs_spent

    config = search_config("search.trial_train_subset=0", "search.trial_epochs=2", "search.epoch_budget=5",
                           "search.n_trials=50", "search.pruner=none")
    assert len(Objective(config, mnist_small, "").data.y_train) == len(mnist_small.y_train)
    study = run_search(config, mnist_small)
    trials = study.get_trials(deepcopy=False)
    assert [t.user_attrs[EPOCHS_ATTR] for t in trials] == [2, 2, 1]  # each counted what it trained
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert "epoch budget (5) is spent" in trials[2].user_attrs["reason"]  # stopped mid-trial, not run over
    assert epochs_spent(study) == 5
    run_search(config, mnist_small)  # resumed with the budget spent: nothing more
    assert len(study.get_trials(deepcopy=False)) == 3


def test_the_recipe_is_searched_and_a_random_sampler_can_be_chosen(search_config, mnist_small, tracking_uri):
    config = search_config("search.sampler=random", "search.n_trials=1", "search.space.mixup_alphas=[0.2]",
                           "search.space.cutouts=[4]", "search.space.ema_decays=[0.9]",
                           "search.space.schedulers=[cosine]", "search.space.weight_decay=[0.0001, 0.0002]",
                           "search.space.label_smoothing=[0.05, 0.1]")
    study = run_search(config, mnist_small)
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    (trial,) = study.get_trials(deepcopy=False)
    training = trial.user_attrs["training"]
    assert training["mixup_alpha"] == 0.2 and training["ema_decay"] == 0.9 and training["scheduler"] == "cosine"
    assert training["augment"] == {"cutout": 4} and 0.0001 <= training["weight_decay"] <= 0.0002
    params = MlflowClient(tracking_uri=tracking_uri).get_run(trial.user_attrs["mlflow_run_id"]).data.params
    assert (params["train.mixup_alpha"], params["train.augment.cutout"], params["train.scheduler"]) == (
        "0.2", "4", "cosine")  # the trial trained with it


def test_the_winner_is_retrained_with_its_recipe_and_the_entry_s_augmentation(search_config):
    from cnnlab.stages.search import winner_config

    config = search_config("train.augment.crop_padding=4", "train.epochs=30", "train.tta=hflip")
    best = {"model_kwargs": {"widths": [8, 16]}, "training": {
        "optimizer": "adamw", "lr": 0.002, "batch_size": 256, "weight_decay": 0.0003, "label_smoothing": 0.05,
        "mixup_alpha": 0.2, "ema_decay": 0.999, "scheduler": "cosine", "augment": {"cutout": 8}}}
    train = winner_config(config, best).train
    assert (train.optimizer, train.lr, train.weight_decay, train.mixup_alpha, train.ema_decay, train.scheduler) == (
        "adamw", 0.002, 0.0003, 0.2, 0.999, "cosine")
    assert (train.augment.cutout, train.augment.crop_padding, train.epochs, train.tta) == (8, 4, 30, "hflip")


def test_an_enqueued_candidate_is_never_the_search_s_find():
    """The enqueued hand-designed candidate is the baseline: even when it scores best, the winner
    is the best trial the sampler proposed."""
    from cnnlab.search import best_trials

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"x": 0.5})

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        for key, value in (("parameters", 100), ("model_kwargs", {}), ("training", {})):
            trial.set_user_attr(key, value)
        return 1.0 if trial.number == 0 else x / 2

    study.optimize(objective, n_trials=5)
    (best,) = best_trials(study)
    assert best["number"] != 0 and best["val_accuracy"] == max(t.value for t in study.trials[1:])


def test_a_study_records_each_machine_its_trials_ran_on_and_sums_hours_only_on_one():
    """A study resumed on another machine lists both; search-compare adds its wall time to a
    retraining's only when every trial ran on the retraining's kind of machine (its thread count aside)."""
    from cnnlab.search import MACHINE_ATTR, study_machines
    from cnnlab.stages.search_compare import search_plus_retrain_hours

    here = {"cpu": "AMD EPYC", "cores_available": 2, "torch_threads": 1, "native_bf16": True,
            "bf16_flags": ["avx512_bf16"], "cuda": "", "torch": "2.14.1"}
    older = {**here, "native_bf16": False, "bf16_flags": []}  # one CPU name, another generation
    study = optuna.create_study(direction="maximize")
    for machine in (here, here, older, None):  # the last: a trial from before trials recorded it
        trial = study.ask()
        if machine is not None:
            trial.set_user_attr(MACHINE_ATTR, machine)
        study.tell(trial, 0.5)
    assert study_machines(study) == [here, older]
    arm = {"search_wall_seconds": 1800.0, "search_machines": [here],
           "retrained": {"wall_seconds": 5400.0, "machine": {**here, "torch_threads": 2}}}
    assert search_plus_retrain_hours(arm) == pytest.approx(2.0)
    assert search_plus_retrain_hours({**arm, "search_machines": [here, older]}) is None
    assert search_plus_retrain_hours({**arm, "search_machines": []}) is None  # not recorded: not known


@pytest.mark.slow
def test_search_compare_holds_the_study_against_random_search_and_the_hand_designed_model(
        search_config, mnist_small, tmp_path, tracking_uri, capsys):
    from cnnlab.cli import main

    save_prepared(mnist_small, tmp_path / "prepared" / "mnist.pt")
    config = search_config()
    args = ["--params", str(PROJECT_ROOT / "params.yaml"), "-S", f"models_dir={config.models_dir}",
            f"outputs_dir={config.outputs_dir}", f"tracking.uri={tracking_uri}",
            f"tracking.experiment={config.tracking.experiment}", f"search.storage={config.search.storage}",
            f"search.study={config.search.study}", "search.trial_epochs=1", "search.trial_train_subset=600",
            "search.n_trials=20", "search.epoch_budget=2", "search.enqueue=[]", *TINY_SPACE,
            f"data.prepared_dir={tmp_path / 'prepared'}", "seeds=[0, 1]", "train.epochs=1", "train.progress=false",
            "data.train_subset=600", "model.name=search_cnn", "model.kwargs={widths: [8, 16]}", "run=hand"]
    for command in ("search", "retrain-best", "search-control", "retrain-control", "seeds", "search-compare"):
        assert main([command, *args]) == 0, command
    study = config.search.study
    comparison = json.loads((tmp_path / "outputs" / study / "search_comparison.json").read_text())
    assert [a["arm"] for a in comparison["arms"]] == ["tpe", "random", "hand-designed"]
    tpe, random_arm, hand = comparison["arms"]
    assert random_arm["study"] == f"{study}_random" and random_arm["epochs_spent"] >= 2 == comparison["epoch_budget"]
    assert tpe["epochs_spent"] >= 2 and tpe["retrained"]["seeds"] == random_arm["retrained"]["seeds"] == [0, 1]
    assert hand["model_kwargs"] == {"widths": [8, 16]}
    assert all(a["retrained"]["machine"]["cores_available"] >= 1 for a in comparison["arms"])  # what timed it
    for arm in (tpe, random_arm):  # searched and retrained here: one machine, so a wall time
        assert [m["cpu"] for m in arm["search_machines"]] == [arm["retrained"]["machine"]["cpu"]]
        hours = (arm["search_wall_seconds"] + arm["retrained"]["wall_seconds"]) / 3600
        assert comparison["search_plus_retrain_hours"][arm["arm"]] == pytest.approx(hours)
    for arm in (tpe, random_arm):
        gain = 100 * (arm["retrained"]["test_accuracy_mean"] - hand["retrained"]["test_accuracy_mean"])
        assert comparison["gain_over_hand_designed_pp"][arm["arm"]] == pytest.approx(gain)
        assert arm["winner"]["parameters"] <= comparison["param_budget"]
    hand_seeds = json.loads((tmp_path / "outputs" / "hand" / "seeds.json").read_text())
    assert hand["retrained"]["test_accuracy_mean"] == pytest.approx(hand_seeds["test_accuracy_mean"])
    assert (tmp_path / "outputs" / study / "search_comparison.png").stat().st_size > 10_000
    parent = json.loads((tmp_path / "outputs" / study / "search.json").read_text())["mlflow_parent_run_id"]
    logged = MlflowClient(tracking_uri=tracking_uri).list_artifacts(parent, "search_comparison")
    assert sorted(a.path for a in logged) == ["search_comparison/search_comparison.json",
                                             "search_comparison/search_comparison.png"]
    assert "| hand-designed |" in capsys.readouterr().out
    assert main(["search-compare", *args, "-S", "search.epoch_budget=0"]) == 2
    assert "set search.epoch_budget" in capsys.readouterr().err
    # an arm from other settings (here: other seeds) is named, never compared
    assert main(["search-compare", *args, "-S", "seeds=[0, 1, 2]"]) == 2
    err = capsys.readouterr().err
    assert "tpe was retrained with seeds [0, 1]" in err and "hand-designed was retrained" in err


def test_retraining_on_another_kind_of_machine_than_the_search_says_so_before_it_trains(search_config, caplog):
    """The winner's retraining warns at its start when the study ran elsewhere (its wall time will
    not be summed with the search's), and stays quiet when the study ran on this kind of machine."""
    from cnnlab.contract import StudyFiles
    from cnnlab.runtime import machine
    from cnnlab.stages.search import retrained_winner

    config = search_config()
    best = {"number": 3, "val_accuracy": 0.9, "parameters": 1_000, "params": {}, "training": {},
            "model_kwargs": {"widths": [8, 16], "in_channels": 1, "num_classes": 10, "image_size": 28}}
    path = StudyFiles.of(config).search_summary
    path.parent.mkdir(parents=True, exist_ok=True)
    elsewhere = {**machine(), "cpu": "Another CPU", "bf16_flags": ["amx_bf16"]}
    for searched_on, warned in (([elsewhere], True), ([], True), ([{**machine(), "torch_threads": 7}], False)):
        path.write_text(json.dumps({"best": [best], "machines": searched_on}))
        caplog.clear()
        with caplog.at_level("WARNING", logger="cnnlab"):
            assert retrained_winner(config).model.kwargs == best["model_kwargs"]
        text = caplog.text
        assert ("this retraining runs on" in text) == warned, text
        if searched_on and warned:
            assert "Another CPU, native bf16 (amx_bf16)" in text

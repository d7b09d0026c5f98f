"""Several `cnnlab search` processes on one study: on the real PostgreSQL server (many machines)
and on the default SQLite file (one machine)."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from cnnlab.search import stored_study, studies_named  # noqa: E402

from .conftest import PROJECT_ROOT, SMALL_VAL_FRACTION  # noqa: E402

SQLITE_BUSY_TIMEOUT_S = 5  # how long Python's sqlite3 (so SQLAlchemy, so Optuna) waits for a busy file
POSTGRES_URL = os.environ.get("CNNLAB_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def postgres_url():
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(POSTGRES_URL).connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
    except Exception as err:  # no server here: say so instead of failing
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL} ({type(err).__name__}); "
                    "set CNNLAB_TEST_POSTGRES to a reachable server")
    return POSTGRES_URL


def worker(tmp_path: Path, study: str, storage: str, tracking_uri: str, n_trials: int, datasets_dir, *extra):
    overrides = [
        f"models_dir={tmp_path / 'models'}", f"outputs_dir={tmp_path / 'outputs'}",
        f"data.prepared_dir={tmp_path / 'prepared'}", f"data.datasets_dir={datasets_dir}",
        f"tracking.uri={tracking_uri}", "tracking.experiment=search-workers", f"search.study={study}",
        f"search.storage={storage}", f"search.n_trials={n_trials}", "search.trial_epochs=1",
        "search.trial_train_subset=600", "search.space.stages=[2, 2]", "search.space.widths=[8, 16]",
        "search.space.convs_per_block=[1, 1]", "search.space.blocks_per_stage=[1, 1]", "search.space.optimizers=[adam]",
        "train.threads=1", "search.pruner=none", "search.enqueue=[]", f"data.val_fraction={SMALL_VAL_FRACTION}", *extra,
    ]
    args = [sys.executable, "-m", "cnnlab.cli", "search", "--params", str(PROJECT_ROOT / "params.yaml")]
    for item in overrides:
        args += ["-S", item]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def storage_url(request, tmp_path):
    """The shared storage under test: the PostgreSQL server, or a SQLite file on this machine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def study_name(storage_url):
    """A fresh study name; the study is deleted afterwards so a shared database stays clean."""
    name = f"cnnlab-test-{uuid.uuid4().hex[:8]}"
    yield name
    for stored in studies_named(name, storage_url):
        optuna.delete_study(study_name=stored, storage=storage_url)


def prepared(tmp_path, datasets_dir, val_fraction=SMALL_VAL_FRACTION):
    # outputs_dir too: the stage's timings.json must not land in the project's own outputs/
    args = [sys.executable, "-m", "cnnlab.cli", "prepare", "--params", str(PROJECT_ROOT / "params.yaml"),
            "-S", f"data.prepared_dir={tmp_path / 'prepared'}", "-S", f"data.datasets_dir={datasets_dir}",
            "-S", f"outputs_dir={tmp_path / 'outputs'}", "-S", f"data.val_fraction={val_fraction}"]
    subprocess.run(args, check=True, capture_output=True)


@pytest.mark.slow
def test_two_workers_share_one_study_without_lost_or_duplicated_trials(tmp_path, storage_url, tracking_uri,
                                                                        datasets_dir, study_name):
    from mlflow import MlflowClient

    prepared(tmp_path, datasets_dir)
    study = study_name
    first = worker(tmp_path, study, storage_url, tracking_uri, 4, datasets_dir)
    time.sleep(8)  # the first worker creates the study and its parent run
    second = worker(tmp_path, study, storage_url, tracking_uri, 4, datasets_dir)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    # Optuna's warnings about its experimental heartbeat API are cnnlab's concern, not a user's
    assert not [line for out in outputs for line in out.splitlines() if "ExperimentalWarning" in line]

    trials = stored_study(study, storage_url).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) >= 4  # none duplicated
    assert all(t.state.name == "COMPLETE" for t in trials)  # none lost mid-way
    run_ids = [t.user_attrs["mlflow_run_id"] for t in trials]
    assert len(set(run_ids)) == len(trials)
    client = MlflowClient(tracking_uri=tracking_uri)
    parents = {client.get_run(r).data.tags["mlflow.parentRunId"] for r in run_ids}
    assert len(parents) == 1  # both workers logged under the study's one parent run


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried(tmp_path, storage_url, tracking_uri, datasets_dir, study_name):
    # 300 val digits, not 1,500: both trials score them after each of their many epochs
    small_val = 300 / 60_000
    prepared(tmp_path, datasets_dir, val_fraction=small_val)
    study = study_name
    storage = optuna.storages.RDBStorage(storage_url)
    # Its one trial must outlast the 2 s before the kill: with 3 epochs of this tiny net on
    # 3,000 digits it once completed first (after the allocator change), and so did 12 epochs on
    # 600 at 0.1 s an epoch (bf16 on an Intel Xeon with AMX), so 100. The rescuer runs the same
    # study, so with the same settings (else it would start its own), and trains the retried trial
    # in full.
    settings = ("search.heartbeat_seconds=1", "search.trial_epochs=100", f"data.val_fraction={small_val}")
    victim = worker(tmp_path, study, storage_url, tracking_uri, 1, datasets_dir, *settings)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until its trial is running, then kill it mid-trial
        try:
            running = stored_study(study, storage).get_trials(
                states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:
            running = []
        if running:
            break
        time.sleep(0.5)
    assert running, "the first worker never started a trial"
    time.sleep(2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    time.sleep(4)  # past the heartbeat grace period (2 x 1 s)

    rescuer = worker(tmp_path, study, storage_url, tracking_uri, 2, datasets_dir, *settings)
    output = rescuer.communicate(timeout=600)[0]
    assert rescuer.returncode == 0, output
    trials = stored_study(study, storage).get_trials(deepcopy=False)
    killed = trials[0]
    assert killed.state.name == "FAIL"  # its heartbeat stopped
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retried and retried[0].params == killed.params  # re-queued with the same parameters
    assert retried[0].state.name == "COMPLETE"


def training_trials(study: str, storage) -> list:
    """Running trials past their set-up: a trial is RUNNING in the study a moment before its
    MLflow run exists, and a signal in that moment leaves no run to end."""
    try:
        running = stored_study(study, storage).get_trials(
            states=(optuna.trial.TrialState.RUNNING,))
    except KeyError:  # not created yet
        return []
    return [t for t in running if "mlflow_run_id" in t.user_attrs]


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_retried(storage_url, study_name):
    # Optuna stores the trial RUNNING in ask and starts its heartbeat only after: a worker killed
    # in between leaves a trial with no heartbeat, which Optuna's own stale check passes over
    import warnings

    from cnnlab.config import SearchConfig
    from cnnlab.search import rdb_storage

    storage = rdb_storage(storage_url, SearchConfig(heartbeat_seconds=1))
    study = optuna.create_study(study_name=study_name, storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ask outside optimize, on a heartbeat storage: Optuna warns
        dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        alive = study.ask()
        time.sleep(2.5)  # past the grace period (2 x 1 s)
        storage.record_heartbeat(alive._trial_id)  # its worker is alive: its heartbeat is fresh
        just_asked = study.ask()  # no heartbeat yet, but younger than the grace period
        optuna.storages.fail_stale_trials(study)

    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states[dead.number] == "FAIL"
    assert states[alive.number] == states[just_asked.number] == "RUNNING"
    retried = [t for t in study.get_trials(deepcopy=False) if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retried) == 1 and retried[0].state.name == "WAITING" and retried[0].params == dead.params


@pytest.mark.slow
def test_sigterm_to_a_two_worker_search_stops_its_workers_and_ends_every_run(tmp_path, tracking_uri, datasets_dir):
    """What DVC or a job scheduler sends reaches the coordinator alone: it stops both workers,
    whose trials end (FAIL in the study, KILLED in MLflow), then exits 143; nothing runs on.
    The study's file is busy at that moment, longer than SQLite waits for it: a worker whose
    write of its trial's end is refused writes it again, rather than leave it RUNNING."""
    import sqlite3

    import psutil
    from mlflow import MlflowClient

    prepared(tmp_path, datasets_dir)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = f"stopped-{uuid.uuid4().hex[:8]}"  # the MLflow store is shared with other tests
    coordinator = worker(tmp_path, study, storage, tracking_uri, 50, datasets_dir, "search.workers=2",
                         "search.trial_train_subset=3000", "search.trial_epochs=30")
    deadline = time.time() + 180
    while len(training_trials(study, storage)) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert len(training_trials(study, storage)) == 2, "the two workers never both trained a trial"
    workers = psutil.Process(coordinator.pid).children(recursive=True)
    busy = sqlite3.connect(tmp_path / "optuna.db", timeout=60, isolation_level=None)
    busy.execute("BEGIN IMMEDIATE")  # another writer holds the file: readers go on, writers wait
    coordinator.send_signal(signal.SIGTERM)
    time.sleep(SQLITE_BUSY_TIMEOUT_S + 3)
    busy.execute("ROLLBACK")
    busy.close()
    output = coordinator.communicate(timeout=180)[0]

    assert coordinator.returncode == 143, output
    assert "Traceback" not in output, output
    gone, alive = psutil.wait_procs(workers, timeout=10)  # multiprocessing's resource tracker exits after it
    assert not [" ".join(p.cmdline()) for p in alive]
    trials = stored_study(study, storage).get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.state.name == "RUNNING"]
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("search-workers")
    runs = client.search_runs([experiment.experiment_id], f"tags.`optuna.study` = '{study}'")
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    interrupted = [t for t in trials if t.state.name == "FAIL"]
    assert interrupted, "no trial was stopped mid-way"  # 30-epoch trials: SIGTERM lands inside one
    for trial in interrupted:  # its run ends KILLED with the reason
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert (run.info.status, run.data.tags["cnnlab.failure"]) == ("KILLED", "interrupted by SIGTERM")
    (parent,) = [r for r in runs if r.data.tags.get("cnnlab.role") == "search-parent"]
    assert parent.info.status == "KILLED"

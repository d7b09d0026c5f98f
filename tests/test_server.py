"""`cnnlab server` shared by processes that share nothing else: each works in its own copy of a
tiny project and knows only two URLs, the tracking server's and the PostgreSQL database that
holds the Optuna study. A fresh database per test module, dropped afterwards."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from .conftest import MLFLOW_URI_VARIABLES, S3_BUCKET, S3_ENV, SMALL_VAL_FRACTION, TEST_PARAMS, s3_client

POSTGRES = os.environ.get("CNNLAB_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
STARTUP_S = 300  # a busy 2-core machine took minutes to start two MLflow workers
# MLflow's GenAI job runner (a huey consumer per job type) is not what these tests check, and its
# processes start beside the server on two cores.
NO_JOB_RUNNER = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def admin_engine():
    import sqlalchemy

    return sqlalchemy.create_engine(POSTGRES, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)


@pytest.fixture(scope="module")
def databases():
    """Two fresh database URLs (the MLflow store, created by `cnnlab server` itself; the Optuna
    storage), both dropped at the end."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        with admin_engine().connect() as connection:
            connection.execute(sqlalchemy.text("select 1"))
    except Exception as err:  # no server here: say so instead of failing
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES} ({type(err).__name__}); "
                    "set CNNLAB_TEST_POSTGRES to a reachable server")
    names = {role: f"cnnlab_test_{role}_{uuid.uuid4().hex[:8]}" for role in ("mlflow", "optuna")}
    with admin_engine().connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {names['optuna']}"))
    yield {role: make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
           for role, name in names.items()}
    with admin_engine().connect() as connection:
        for name in names.values():
            connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def cnnlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnlab.cli", *args]


@pytest.fixture(scope="module")
def server(databases, tmp_path_factory):
    """`cnnlab server` (two workers) on a free loopback port, its artifacts in a folder of its own."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        cnnlab("server", "--params", str(TEST_PARAMS), "-S", f"server.backend_store={databases['mlflow']}",
               "-S", f"server.port={port}", "-S", "server.workers=2", "-S", "server.pool_size=2",
               "-S", "server.max_overflow=2", "-S", f"server.artifacts_destination={root / 'artifacts'}"),
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=NO_JOB_RUNNER)
    uri = f"http://127.0.0.1:{port}"
    wait_for_health(process, uri, root / "server.log")
    # Each worker creates its engines on its first request: do that here, not in a client's
    # 15 s store probe (MLflow's own client waits out a slow answer)
    from mlflow import MlflowClient

    for _ in range(4):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    yield {"uri": uri, "artifacts": root / "artifacts", "log": root / "server.log"}
    stop(process)
    log.close()


def wait_for_health(process: subprocess.Popen, uri: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"cnnlab server did not answer /health:\n{log.read_text()[-3000:]}")
        time.sleep(1)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)  # the group: mlflow's uvicorn workers too
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def prepared_file(tmp_path_factory, datasets_dir):
    """MNIST prepared once; each working copy gets its own copy of the file."""
    root = tmp_path_factory.mktemp("prepare")
    # outputs_dir too: the stage's timings.json must not land in the project's own outputs/
    subprocess.run(cnnlab("prepare", "--params", str(TEST_PARAMS), "-S", f"data.prepared_dir={root}",
                          "-S", f"outputs_dir={root / 'outputs'}",
                          "-S", f"data.datasets_dir={datasets_dir}", "-S", "data.download=false",
                          "-S", f"data.val_fraction={SMALL_VAL_FRACTION}"),
                   check=True, capture_output=True, cwd=root)
    return root / "mnist.pt"


def working_copy(parent: Path, name: str, prepared: Path | None) -> Path:
    """A tiny project of its own: the test params and catalogue, and the prepared data unless
    it prepares its own (the pipeline)."""
    root = parent / name
    (root / "data" / "prepared").mkdir(parents=True)
    for file in ("params.yaml", "catalogue.yaml"):
        shutil.copy(TEST_PARAMS.parent / file, root / file)
    if prepared is not None:
        shutil.copy(prepared, root / "data" / "prepared" / prepared.name)
    return root


def start(root: Path, command: str, uri: str, *overrides: str) -> subprocess.Popen:
    args = cnnlab(command)
    for item in (f"tracking.uri={uri}", "tracking.experiment=shared-server", "data.train_subset=300",
                 "data.download=false", "analysis.tsne_points=100", "train.threads=1", *overrides):
        args += ["-S", item]
    return subprocess.Popen(args, cwd=root, env=machine_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def machine_env() -> dict[str, str]:
    """Another machine's environment: no MLflow store of this one (the URLs come as settings)."""
    return {key: value for key, value in os.environ.items() if key not in MLFLOW_URI_VARIABLES}


def test_pipeline_and_a_two_machine_search_share_one_server(server, databases, prepared_file, tmp_path):
    import mlflow
    from cnnlab.search import stored_study
    from mlflow import MlflowClient

    uri, study, model = server["uri"], f"shared-{uuid.uuid4().hex[:6]}", f"shared-{uuid.uuid4().hex[:6]}"
    search = ["search.workers=1", f"search.storage={databases['optuna']}", f"search.study={study}",
              "search.n_trials=4", "search.trial_epochs=1", "search.trial_train_subset=300",
              "search.space.stages=[2, 2]", "search.space.widths=[8, 16]", "search.space.convs_per_block=[1, 1]",
              "search.space.blocks_per_stage=[1, 1]", "search.space.optimizers=[adam]", "search.pruner=none",
              "search.enqueue=[]", f"data.val_fraction={SMALL_VAL_FRACTION}"]  # the split prepared_file holds
    # Three "machines" at once: the pipeline with its model logged and registered, and two
    # search workers on one study, started together (neither waits for the other's parent run).
    processes = [start(working_copy(tmp_path, "pipeline", None), "pipeline", uri,
                       "tracking.log_model=true", f"tracking.registered_model={model}"),
                 *(start(working_copy(tmp_path, f"worker{i}", prepared_file), "search", uri, *search)
                   for i in range(2))]
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], "\n\n".join(o[-3000:] for o in outputs)

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("shared-server")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied, not a client's file:// path
    trials = stored_study(study, databases["optuna"]).get_trials(deepcopy=False)
    assert len(trials) >= 4 and all(t.state.name == "COMPLETE" for t in trials)
    parents = client.search_runs([experiment.experiment_id], f"tags.`optuna.study` = '{study}' "
                                 "and tags.`cnnlab.role` = 'search-parent'")
    assert len(parents) == 1  # the two workers started together and still opened one parent
    children = {r.info.run_id for r in client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")}
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == children

    [run] = client.search_runs([experiment.experiment_id], "attributes.run_name = 'e1_mnist_simple_cnn'")
    report = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="report.md",
                                                 dst_path=str(tmp_path / "download"), tracking_uri=uri)
    assert Path(report).read_text().startswith("#")
    assert any(server["artifacts"].rglob("report.md"))  # stored by the server, not by the client

    # A fourth process, which never saw any working copy, loads the champion and predicts.
    predict = ("import sys, mlflow, numpy as np; mlflow.set_tracking_uri(sys.argv[1]); "
               "m = mlflow.pyfunc.load_model(f'models:/{sys.argv[2]}@champion'); "
               "out = np.asarray(m.predict(np.zeros((8, 1, 28, 28), dtype=np.float32))); print(out.shape)")
    result = subprocess.run([sys.executable, "-c", predict, uri, model], cwd=tmp_path, env=machine_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "(8, 10)", result.stderr[-3000:]


def test_artifacts_go_to_an_s3_bucket_that_only_the_server_can_reach(s3_endpoint, tmp_path):
    """server.artifacts_destination=s3://...: the server holds the keys and the endpoint
    ($AWS_*, $MLFLOW_S3_ENDPOINT_URL); a client with neither logs and downloads through it."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    port, log = free_port(), tmp_path / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            cnnlab("server", "--params", str(TEST_PARAMS), "-S", f"server.backend_store=sqlite:///{tmp_path / 'mlflow.db'}",
                   "-S", f"server.port={port}", "-S", "server.workers=1",
                   "-S", f"server.artifacts_destination=s3://{S3_BUCKET}/mlflow"),
            cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            env={**NO_JOB_RUNNER, **S3_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint})
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(process, uri, log)
        client = MlflowClient(tracking_uri=uri)
        run = client.create_run(client.create_experiment(f"s3-{uuid.uuid4().hex[:6]}"))
        client.log_text(run.info.run_id, "logged through the server", "notes/hello.txt")
        client.set_terminated(run.info.run_id)
        stored = [o["Key"] for o in s3_client(s3_endpoint).list_objects_v2(
            Bucket=S3_BUCKET, Prefix="mlflow/").get("Contents", [])]
        assert any(key.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt") for key in stored), stored
        downloaded = download_artifacts(run_id=run.info.run_id, artifact_path="notes/hello.txt",
                                        dst_path=str(tmp_path / "download"), tracking_uri=uri)
        assert Path(downloaded).read_text() == "logged through the server"
    finally:
        stop(process)


def test_unreachable_postgres_names_the_url_and_the_fix(tmp_path):
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/cnnlab_mlflow"
    result = subprocess.run(cnnlab("server", "--check", "--params", str(TEST_PARAMS),
                                   "-S", f"server.backend_store={url}"),
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot reach PostgreSQL for the MLflow store {url}" in result.stderr
    assert "Fix: start PostgreSQL" in result.stderr


def test_an_existing_database_is_used_without_the_maintenance_database(databases, monkeypatch):
    """A role that may connect to its own database only: the store's database exists, so the
    maintenance database is never needed; a missing one names the step that failed and the fix."""
    from sqlalchemy.engine import make_url

    from cnnlab import server

    monkeypatch.setattr(server, "MAINTENANCE_DATABASE", f"cnnlab_absent_{uuid.uuid4().hex[:8]}")
    assert server.ensure_database(make_url(databases["optuna"])) is False
    missing = make_url(databases["optuna"]).set(database=f"cnnlab_missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(server.ServerError, match=f"cannot create the database '{missing.database}'.*connecting to "
                                                 f"the '{server.MAINTENANCE_DATABASE}' database.*createdb"):
        server.ensure_database(missing)


def test_pools_that_could_exhaust_postgres_are_refused_with_the_numbers(databases, tmp_path):
    result = subprocess.run(cnnlab("server", "--check", "--params", str(TEST_PARAMS), "-S", "server.workers=200",
                                   "-S", f"server.backend_store={databases['optuna']}"),
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "203 processes (200 workers + 3 helpers)" in result.stderr and "max_connections" in result.stderr

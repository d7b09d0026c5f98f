"""An MLflow store that cannot be used is a one-line error with the fix, found in seconds and
before a run or any checkpoint exists: an unreachable or hanging server, a non-MLflow server,
a corrupt SQLite file."""

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from cnnlab.cli import main
from cnnlab.tracking import TrackingStoreError, check_store

from .conftest import PROJECT_ROOT

SERVER_FIX = "`cnnlab server`"
LOCAL_FIX = "leave tracking.uri"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_refused_connection_is_a_clear_error_at_once():
    uri = f"http://127.0.0.1:{free_port()}/"
    start = time.monotonic()
    with pytest.raises(TrackingStoreError) as err:
        check_store(uri)
    assert time.monotonic() - start < 20
    assert uri in str(err.value) and SERVER_FIX in str(err.value) and LOCAL_FIX in str(err.value)


def test_server_that_never_answers_times_out_in_seconds():
    with socket.socket() as silent:  # accepts connections (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(TrackingStoreError, match="cannot reach the MLflow tracking server"):
            check_store(uri)
        assert time.monotonic() - start < 20


def test_a_server_that_is_not_mlflow_is_named():
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(TrackingStoreError, match="answered HTTP 404.*not an MLflow tracking server") as err:
            check_store(uri)
        assert SERVER_FIX in str(err.value)
    finally:
        server.shutdown()
        server.server_close()


def test_corrupt_sqlite_store_names_the_file_and_the_fix(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not a database" * 200)
    with pytest.raises(TrackingStoreError) as err:
        check_store(f"sqlite:///{db}")
    message = str(err.value)
    assert str(db) in message and "not a readable SQLite database" in message
    assert f"mv {db} {db}.corrupt" in message and "make clean-stores" in message


def test_usable_sqlite_stores_pass(tmp_path):
    check_store(f"sqlite:///{tmp_path / 'new.db'}")  # missing: MLflow creates it
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute("CREATE TABLE runs (id TEXT)")
    check_store(f"sqlite:///{tmp_path / 'old.db'}")
    with pytest.raises(TrackingStoreError, match="does not exist"):
        check_store(f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}")


WRITER_KILLED_MID_TRANSACTION = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size=2")  # a tiny page cache spills the change into the file before commit
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE runs SET status = 'HALF-WRITTEN'")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_store_whose_writer_was_killed_mid_transaction_passes_and_is_rolled_back(tmp_path):
    # kill -9 of a run while MLflow writes leaves a hot journal; SQLite rolls it back on the next
    # read-write open, so the store is sound and the next run must be let through
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as store:
        store.execute("CREATE TABLE runs (status TEXT, padding BLOB)")
        store.executemany("INSERT INTO runs VALUES ('FINISHED', ?)", [(os.urandom(1000),) for _ in range(2000)])
    killed = subprocess.run([sys.executable, "-c", WRITER_KILLED_MID_TRANSACTION, str(db)])
    assert killed.returncode == -9 and (tmp_path / "mlflow.db-journal").stat().st_size > 0  # a hot journal
    check_store(f"sqlite:///{db}")
    with sqlite3.connect(db) as store:
        assert store.execute("SELECT DISTINCT status FROM runs").fetchall() == [("FINISHED",)]


@pytest.fixture
def prepared_overrides(tmp_path, tracking_uri):
    """The embedded 5,000 digits prepared (offline, seconds), paths under tmp_path."""
    overrides = [
        "--params", str(PROJECT_ROOT / "params.yaml"), "-S", "data.name=mnist_digits",
        "-S", f"models_dir={tmp_path / 'models'}", "-S", f"outputs_dir={tmp_path / 'outputs'}",
        "-S", f"data.prepared_dir={tmp_path / 'prepared'}", "-S", "train.epochs=1", "-S", "train.progress=false",
        "-S", "tracking.log_model=false", "-S", "tracking.experiment=store-test",
    ]
    assert main(["prepare", *overrides, "-S", f"tracking.uri={tracking_uri}"]) == 0
    return overrides


def test_train_against_an_unreachable_server_exits_2_before_any_checkpoint(prepared_overrides, tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}/"
    start = time.monotonic()
    assert main(["train", *prepared_overrides, "-S", f"tracking.uri={uri}"]) == 2
    assert time.monotonic() - start < 20  # MLflow's own retries took minutes
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"cnnlab train: error: cannot reach the MLflow tracking server at {uri}" in err and SERVER_FIX in err
    models = tmp_path / "models"
    assert not models.exists() or not any(models.rglob("*"))
    assert not any((tmp_path / "outputs").rglob("run.json")) and not any((tmp_path / "outputs").rglob("*metrics*"))


def test_train_against_a_corrupt_sqlite_store_exits_2(prepared_overrides, tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    db.write_bytes(os.urandom(8192))
    assert main(["train", *prepared_overrides, "-S", f"tracking.uri=sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cnnlab train: error: the MLflow store" in err
    assert str(db) in err and "make clean-stores" in err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*"))


def test_default_store_is_mlflow_db_in_the_project_root_with_artifacts_beside_it(tmp_path, monkeypatch, caplog):
    """MLflow's own default, so plain `mlflow ui` there finds it; a store left in .mlflow/ is named
    with the setting that keeps using it, never silently replaced by an empty one."""
    from mlflow import MlflowClient

    from cnnlab.tracking import ensure_experiment, resolve_tracking_uri

    (tmp_path / "params.yaml").write_text("{}\n")
    work = tmp_path / "outputs"
    work.mkdir()
    monkeypatch.chdir(work)  # a stage running below the root still finds it
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri("")
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}" and ".mlflow" not in caplog.text
    experiment = MlflowClient(uri).get_experiment(ensure_experiment(MlflowClient(uri), "team/cnnlab", uri))
    assert experiment.artifact_location == (tmp_path / "mlartifacts" / "team_cnnlab").as_uri()

    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "mlflow.db").write_bytes(b"")
    with caplog.at_level("WARNING", logger="cnnlab.tracking"):
        assert resolve_tracking_uri("") == uri
    assert f"-S tracking.uri=sqlite:///{tmp_path / '.mlflow' / 'mlflow.db'}" in caplog.text

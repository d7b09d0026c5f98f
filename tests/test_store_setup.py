"""A fresh MLflow store is created once, before worker processes open it (cnnlab.store_setup)."""

import sqlite3

from cnnlab.cli import main
from cnnlab.parallel import run_jobs
from cnnlab.store_setup import create_store_once, logs_to_mlflow

from .conftest import PROJECT_ROOT


def create_and_log(uri: str) -> str:
    """A job: what a worker of a command does with the store first (module level: spawned)."""
    from cnnlab.tracking import client_for, ensure_experiment

    create_store_once(uri)
    client = client_for(uri)
    run = client.create_run(ensure_experiment(client, "fresh-store", uri))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def statuses(db) -> list[str]:
    with sqlite3.connect(db) as store:
        return sorted(status for (status,) in store.execute("SELECT status FROM runs"))


def test_processes_that_open_one_fresh_store_at_once_all_log(tmp_path):
    """Unlocked, the three processes' migrations interleave and most of them fail ("duplicate
    column name: step", "table ... already exists"); one at a time, each finds the tables made."""
    db = tmp_path / "mlflow.db"
    run_ids = run_jobs(create_and_log, [(f"sqlite:///{db}",)] * 3, workers=3)  # raises when one failed
    assert len(set(run_ids)) == 3
    assert statuses(db) == ["FINISHED"] * 3


def test_only_stages_whose_code_logs_create_a_store():
    assert logs_to_mlflow("train") and logs_to_mlflow("seeds") and logs_to_mlflow("search")
    assert not logs_to_mlflow("prepare") and not logs_to_mlflow("compare")


def test_parallel_seeds_on_a_fresh_store_all_finish(tmp_path, capsys):
    """The first command of a fresh clone may start workers: every seed's run is logged."""
    common = ["--params", str(PROJECT_ROOT / "params.yaml"), "-S", "data.name=mnist_digits",
              f"models_dir={tmp_path / 'models'}", f"outputs_dir={tmp_path / 'outputs'}",
              f"data.prepared_dir={tmp_path / 'prepared'}", "data.train_subset=600", "train.epochs=1",
              "train.progress=false", "tracking.log_model=false", "tracking.experiment=fresh-store-seeds"]
    db = tmp_path / "fresh" / "mlflow.db"
    db.parent.mkdir()
    assert main(["prepare", *common]) == 0
    assert not db.exists()  # preparing data opens no store
    assert main(["seeds", *common, f"tracking.uri=sqlite:///{db}", "seeds=[0, 1, 2]", "seed_workers=3"]) == 0, \
        capsys.readouterr().err
    assert statuses(db) == ["FINISHED"] * 3

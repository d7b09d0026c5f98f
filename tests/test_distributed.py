"""`torchrun -m cnnlab.cli train` on two CPU processes (gloo) trains like one process, and
rank 0 alone writes; real torchrun processes on 3,000 real digits (1,000 validation images)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from cnnlab.checkpoint import load_checkpoint, model_from_checkpoint
from cnnlab.cli import main
from cnnlab.data.prepare import save_prepared
from cnnlab.distributed import Ranks, ranks_from_env
from cnnlab.runtime import resolve_runtime
from cnnlab.train import BatchTransform, validation_scores

from .conftest import PROJECT_ROOT, TEST_PARAMS, fit_run, tiny_config_at

RUN = "e1_mnist_simple_cnn"
# The two runs start from the same weights and see the same images in the same global batches,
# with the gradient of the same mean loss; they differ in dropout draws and float summation
# order. Seeds 0-3 of one process (which differ in initial weights too, so more) reached
# 0.847-0.871 on these 1,000 validation images after this 24-step epoch: a standard deviation
# of about 0.011; three of those is a bound that random draws do not cross by chance.
SAME_TRAINING_TOLERANCE = 0.03


@pytest.fixture
def small_val(mnist_small):
    """The fixture's 3,000 training digits with 1,000 of its validation digits: validation runs
    every epoch on every rank, and 6,000 would double the test's time."""
    return dataclasses.replace(mnist_small, x_val=mnist_small.x_val[:1000], y_val=mnist_small.y_val[:1000])


def cli_args(root: Path, data, tracking_uri: str, experiment: str) -> list[str]:
    save_prepared(data, root / "prepared" / "mnist.pt")
    return ["--params", str(TEST_PARAMS), "-S", f"models_dir={root / 'models'}",
            "-S", f"outputs_dir={root / 'outputs'}", "-S", f"data.prepared_dir={root / 'prepared'}",
            "-S", f"tracking.uri={tracking_uri}", "-S", f"tracking.experiment={experiment}"]


def torchrun(args: list[str], *extra: str) -> list[str]:
    # `python -m torch.distributed.run` is what the `torchrun` script runs, from this interpreter.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *extra,
            "-m", "cnnlab.cli", "train", *args]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}


def runs_of(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


@pytest.mark.slow
def test_two_ranks_train_like_one_process_and_only_rank_0_writes(tmp_path, small_val, tracking_uri):
    args = cli_args(tmp_path, small_val, tracking_uri, "ddp-two-ranks")
    logs = tmp_path / "rank_logs"
    done = subprocess.run(torchrun(args, "--log-dir", str(logs), "--redirects", "3"), env=environment(),
                          capture_output=True, text=True, timeout=600)
    rank_output = {int(path.parent.name): path.read_text() for path in logs.glob("*/attempt_0/*/stdout.log")}
    assert done.returncode == 0, done.stderr[-3000:] + "".join(p.read_text() for p in logs.rglob("stderr.log"))

    (run,) = runs_of(tracking_uri, "ddp-two-ranks")  # one MLflow run, not one per rank
    assert run.info.status == "FINISHED" and run.data.tags["cnnlab.ranks"] == "2"
    assert sorted(p.name for p in (tmp_path / "models" / RUN).iterdir()) == ["best.pt", "last.pt"]
    assert sorted(p.name for p in (tmp_path / "outputs" / RUN).iterdir()) == [
        "batch_losses.json", "config.yaml", "history.json", "run.json", "timings.json", "train_metrics.json"]
    assert "epoch   1" in rank_output[0] and rank_output[1] == ""  # rank 1 trained, said and wrote nothing
    metrics = json.loads((tmp_path / "outputs" / RUN / "train_metrics.json").read_text())
    assert metrics["runtime"].endswith("DDP on 2 ranks")

    # Sharded validation scored exactly what one process scores with the same weights.
    best = load_checkpoint(tmp_path / "models" / RUN / "best.pt")
    runtime = resolve_runtime("auto", "auto")
    transform = BatchTransform(small_val.mean, small_val.std, runtime)
    _, accuracy = validation_scores(model_from_checkpoint(best).to(runtime.device), small_val.x_val,
                                    small_val.y_val, transform, 1024, "none")
    assert accuracy == metrics["best_val_accuracy"] == best["val_accuracy"]

    single = fit_run(tiny_config_at(tmp_path / "single", small_val, tracking_uri), small_val)
    assert abs(single.best_val_accuracy - metrics["best_val_accuracy"]) <= SAME_TRAINING_TOLERANCE


def child_with_rank(parent: int, rank: int, timeout: float = 60) -> int:
    """The pid of torchrun's worker ``rank`` (its direct child with ``RANK=<rank>``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                environ = (stat.parent / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue  # a process that ended while we looked
            if ppid == parent and f"RANK={rank}".encode() in environ:
                return int(stat.parent.name)
        time.sleep(0.2)
    pytest.fail(f"no worker with RANK={rank} under torchrun {parent}")


@pytest.mark.slow
def test_sigterm_on_rank_1_leaves_no_running_mlflow_run(tmp_path, small_val, tracking_uri):
    args = cli_args(tmp_path, small_val, tracking_uri, "ddp-sigterm")
    process = subprocess.Popen(torchrun([*args, "-S", "train.epochs=4"]), env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("epoch   1"):  # rank 0 saved an epoch and logged it
            break
    else:
        pytest.fail(f"training ended before its first epoch: {process.communicate()[1][-3000:]}")
    os.kill(child_with_rank(process.pid, 1), signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)

    assert process.returncode != 0
    (run,) = runs_of(tracking_uri, "ddp-sigterm")
    # Rank 0 either sees rank 1's sockets close (FAILED) or gets torchrun's SIGTERM (KILLED).
    assert run.info.status in ("FAILED", "KILLED"), stderr[-3000:]
    assert run.data.tags["cnnlab.failure"]
    assert load_checkpoint(tmp_path / "models" / RUN / "last.pt")["mlflow_run_id"] == run.info.run_id


def test_other_commands_refuse_to_run_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["evaluate", "--params", str(TEST_PARAMS)]) == 2
    assert "only `cnnlab train` trains on several processes" in capsys.readouterr().err


def test_a_global_batch_splits_into_rank_shares_that_cover_it_once():
    import torch

    assert ranks_from_env({}) == Ranks()
    batch = torch.arange(57)
    ranks = [ranks_from_env({"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)}) for r in range(2)]
    shares = [r.share(batch) for r in ranks]
    assert [len(s) for s in shares] == [29, 28] and torch.equal(torch.cat(shares), batch)

"""``cnnlab train``: build the network, fit it, record the run in MLflow and in files. Under
torchrun every rank fits and rank 0 alone records (``cnnlab.distributed``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..builder import ModelStart, build_model
from ..checkpoint import load_checkpoint
from ..config import Config, save_config
from ..contract import RunFiles
from ..data import PreparedData, load_view
from ..distributed import SINGLE, Ranks, check_config, process_group, ranks_from_env
from ..files import write_json
from ..lifecycle import exit_signal, owner_tags
from ..models import total_parameters, trainable_parameters
from ..runtime import resolve_runtime
from ..train import FitResult, fit
from ..tracking import RunTracker, mark_dead_runs_of, provenance_tags, resumable_run


@dataclass
class TrainResult:
    metrics: dict[str, Any]  # what train_metrics.json holds
    run_id: str


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after the run was ended KILLED. ``resume_settings``
    are the ``-S`` settings that continue it (none when no epoch was saved to resume from)."""

    def __init__(self, message: str, resume_settings: dict[str, str], signal_number: int):
        super().__init__(message)
        self.resume_settings, self.signal_number = resume_settings, signal_number

    def __reduce__(self):  # so that it crosses back from a worker process (cnnlab.parallel)
        return type(self), (str(self), self.resume_settings, self.signal_number)


def train(config: Config) -> TrainResult:
    ranks = ranks_from_env()
    device = resolve_runtime(config.train.device, config.train.precision).device
    check_config(config, ranks, device)
    with process_group(ranks, device):
        return train_on_ranks(config, ranks)


def train_on_ranks(config: Config, ranks: Ranks = SINGLE) -> TrainResult:
    """Every rank fits; rank 0 (the only one of a single process) opens the run and writes files.
    Another rank returns no metrics and no run id."""
    files = RunFiles.of(config)
    data = load_view(files.prepared, config.data)
    start = build_model(config, data)
    if not ranks.is_main:
        fit(config, data, start, ranks=ranks)
        return TrainResult(metrics={}, run_id="")
    started = time.time()
    counts = {"total_parameters": total_parameters(start.model), "trainable_parameters": trainable_parameters(start.model)}
    tracker = open_run(config, data, start, ranks)  # the store answered: from here on files may change
    save_config(config, files.config)
    files.run_info.unlink(missing_ok=True)  # the previous run's pointer: later stages must not log into it
    print(f"training {start.model_name} ({counts['total_parameters']:,d} parameters, "
          f"{counts['trainable_parameters']:,d} trainable) on {data.name}; MLflow run {tracker.run_id} in "
          f"{tracker.uri}", flush=True)
    try:
        with tracker.running():  # whatever ends it, the run ends with a status and the reason
            tracker.log_config(config, counts)
            tracker.log_data(data, ["train", "val"])
            tracker.log_artifacts([files.config, files.data_summary])
            result = fit(config, data, start, tracker, run_id=tracker.run_id, ranks=ranks)
            metrics = record_results(config, data, files, tracker, result)
            tracker.set_terminated("FINISHED")
    except KeyboardInterrupt as err:
        raise interruption(config, files, tracker, start, started, err) from err
    tracker.write_run_info(files.run_info)  # only a finished run is pointed at
    print(f"best val accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch}; "
          f"{result.wall_seconds:.0f}s on {result.runtime}")
    return TrainResult(metrics, tracker.run_id)


def open_run(config: Config, data: PreparedData, start: ModelStart, ranks: Ranks = SINGLE) -> RunTracker:
    """The MLflow run this training logs into, once runs of its name whose process died are
    marked FAILED: under `mlflow run`, the run MLflow created; resuming an interrupted run's
    last.pt, that run again (same id, its metric steps go on); otherwise a new run, linked by
    ``cnnlab.resumed_from_run`` to the one whose checkpoint it resumes."""
    mark_dead_runs_of(config, "cnnlab train")
    tags = {**provenance_tags(config, data.provenance), **owner_tags(),  # owned (by rank 0) from its first moment
            "cnnlab.ranks": str(ranks.world_size)}
    previous = (start.resumed or {}).get("mlflow_run_id", "")
    run_id = os.environ.get("MLFLOW_RUN_ID") or resumable_run(config, previous)
    if config.train.resume_from:
        tags["cnnlab.resumed_from"] = config.train.resume_from
        tags["cnnlab.resumed_at_epoch"] = str(start.start_epoch)
    if previous and run_id != previous:
        tags["cnnlab.resumed_from_run"] = previous
    tracker = RunTracker(config, run_id=run_id, run_name=config.name, tags=tags, command="train")
    if previous and tracker.run_id == previous:
        tracker.reopen()
        tracker.log_missing_epochs(start.resumed["history"])
    return tracker


def record_results(config: Config, data: PreparedData, files: RunFiles, tracker: RunTracker,
                   result: FitResult) -> dict[str, Any]:
    """train_metrics.json, history.json and batch_losses.json, and the same in the MLflow run."""
    best = next(h for h in result.history if h["epoch"] == result.best_epoch)
    metrics = {
        "best_val_accuracy": result.best_val_accuracy, "best_val_loss": best["val_loss"],
        "best_epoch": result.best_epoch,
        "final_val_accuracy": result.history[-1]["val_accuracy"], "epochs": len(result.history),
        "trainable_parameters": result.trainable_parameters, "total_parameters": result.total_parameters,
        "wall_seconds": result.wall_seconds, "runtime": result.runtime,
        "train_images_per_second": sorted(h["train_images_per_second"] for h in result.history)[
            len(result.history) // 2],
        "data_embedded": bool(data.provenance.get("embedded", False)),
        "data_sha256": data.provenance.get("content_sha256", ""), "data_source": data.provenance.get("source", ""),
        **generalisation_gaps(result.history, result.best_epoch),
        "transfer_policy": config.transfer.policy, "transfer_plan": result.transfer.get("plan", ""),
        "frozen_parameters": result.transfer.get("frozen_parameters", 0),
        # The labels this run saw: the images it trained on and those that chose its best epoch.
        "train_images": len(data.y_train), "val_images": len(data.y_val),
        "labelled_budget": config.data.labelled_budget,
    }
    write_json(files.history, result.history)
    write_json(files.batch_losses, result.batch_losses)
    write_json(files.train_metrics, metrics)
    tracker.log_metrics({k: v for k, v in metrics.items() if k != "epochs"})
    tracker.set_tags({"cnnlab.transfer": metrics["transfer_plan"]})
    tracker.log_series("train_batch_loss", result.batch_losses)
    tracker.log_artifacts([files.history, files.train_metrics])
    if config.tracking.log_model:
        log_model(tracker, files.best, data)
    return metrics


def interruption(config: Config, files: RunFiles, tracker: RunTracker, start: ModelStart, started: float,
                 err: KeyboardInterrupt) -> TrainingInterrupted:
    """Where training stopped and the settings that resume it: this invocation's last.pt once it
    saved an epoch, else the checkpoint it was itself resuming from."""
    saved = files.last.exists() and files.last.stat().st_mtime >= started
    done = load_checkpoint(files.last)["epoch"] if saved else start.start_epoch
    resume_from = str(files.last) if saved else config.train.resume_from
    where = f"at epoch {done + 1} of {config.train.epochs}"
    if done >= config.train.epochs:  # every epoch ran; only the results were not recorded
        where, resume_from = "after the last epoch, while recording results", ""
    settings = {"train.resume_from": resume_from, "train.epochs": str(config.train.epochs)} if resume_from else {}
    return TrainingInterrupted(f"interrupted {where} (MLflow run {tracker.run_id} ended KILLED)", settings,
                               exit_signal(err))


def generalisation_gaps(history: list[dict[str, float]], epoch: int) -> dict[str, float]:
    """Train minus val accuracy and val minus train loss at ``epoch``: how much augmentation and
    freezing close the gap (E7). Train figures are the running means under augmentation/dropout."""
    record = next(h for h in history if h["epoch"] == epoch)
    return {"train_val_accuracy_gap": record["train_accuracy"] - record["val_accuracy"],
            "train_val_loss_gap": record["val_loss"] - record["train_loss"]}


def log_model(tracker: RunTracker, best_path: Path, data: PreparedData) -> str:
    """best.pt as the run's pyfunc model (pyfunc_model.py: float32 N x C x H x W in [0, 1] in,
    float32 N x classes probabilities out)."""
    import torch

    from ..checkpoint import inference_model

    module = inference_model(load_checkpoint(best_path))
    example = data.x_val[:4].float() / 255.0
    with torch.no_grad():
        probabilities = torch.softmax(module(example).float(), dim=1).numpy()
    return tracker.log_checkpoint_model(best_path, example.numpy(), probabilities)

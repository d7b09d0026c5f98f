"""``cnnlab train``: build the network, fit it, record the run in MLflow and in files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..builder import build_model
from ..config import Config, save_config
from ..contract import RunFiles
from ..data import PreparedData, load_view
from ..files import write_json
from ..models import total_parameters, trainable_parameters
from ..train import fit
from ..tracking import RunTracker, provenance_tags


@dataclass
class TrainResult:
    metrics: dict[str, Any]  # what train_metrics.json holds
    run_id: str


def train(config: Config) -> TrainResult:
    files = RunFiles.of(config)
    data = load_view(files.prepared, config.data)
    save_config(config, files.config)
    files.run_info.unlink(missing_ok=True)  # the previous run's pointer: later stages must not log into it
    start = build_model(config, data)
    counts = {"total_parameters": total_parameters(start.model), "trainable_parameters": trainable_parameters(start.model)}
    tags = provenance_tags(config, data.provenance)
    if config.train.resume_from:
        tags["cnnlab.resumed_from"] = config.train.resume_from
    # Under `mlflow run`, MLflow has already created the run: log into it instead of a second one.
    tracker = RunTracker(config, run_id=os.environ.get("MLFLOW_RUN_ID"), run_name=config.name, tags=tags)
    tracker.log_config(config, counts)
    tracker.log_artifacts([files.config, files.data_summary])
    print(f"training {start.model_name} ({counts['total_parameters']:,d} parameters, "
          f"{counts['trainable_parameters']:,d} trainable) on {data.name}; MLflow run {tracker.run_id} in "
          f"{tracker.uri}", flush=True)
    try:
        result = fit(config, data, start, tracker)
    except BaseException as err:  # whatever ends it, the run ends with a status and the reason
        tracker.set_tags({"cnnlab.failure": str(err) or type(err).__name__})
        tracker.set_terminated("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    metrics = {
        "best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
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
    tracker.set_terminated("FINISHED")
    tracker.write_run_info(files.run_info)  # only a finished run is pointed at
    print(f"best val accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch}; "
          f"{result.wall_seconds:.0f}s on {result.runtime}")
    return TrainResult(metrics, tracker.run_id)


def generalisation_gaps(history: list[dict[str, float]], epoch: int) -> dict[str, float]:
    """Train minus val accuracy and val minus train loss at ``epoch``: how much augmentation and
    freezing close the gap (E7). Train figures are the running means under augmentation/dropout."""
    record = next(h for h in history if h["epoch"] == epoch)
    return {"train_val_accuracy_gap": record["train_accuracy"] - record["val_accuracy"],
            "train_val_loss_gap": record["val_loss"] - record["train_loss"]}


def log_model(tracker: RunTracker, best_path: Path, data: PreparedData) -> str:
    import torch

    from ..checkpoint import inference_model, load_checkpoint

    module = inference_model(load_checkpoint(best_path))
    example = data.x_val[:4].float() / 255.0
    with torch.no_grad():
        output = module(example).numpy()
    return tracker.log_pytorch_model(module, example.numpy(), output)

"""``cnnlab freeze-sweep`` (E6): fine-tune once per k with the first k layers frozen, and once
from scratch; accuracy and training time against k in ``freeze_sweep.json`` and a figure."""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import report as plots
from ..builder import resolve_model_kwargs
from ..config import Config
from ..contract import RunFiles, freeze_run
from ..data import PreparedData, load_view
from ..files import write_json
from ..models import create_model
from ..selection import pick_by_validation
from ..transfer import checkpoint_arguments, network_layers
from .evaluate import evaluate
from .train import train


def variant(config: Config, name: str, **transfer: Any) -> dict[str, Any]:
    run = dataclasses.replace(config, run=freeze_run(config.name, name),
                              transfer=dataclasses.replace(config.transfer, **transfer))
    print(f"== {run.name}", flush=True)
    trained = train(run)
    evaluation = evaluate(run)
    return {"test_accuracy": evaluation["test_accuracy"], "wall_seconds": trained.metrics["wall_seconds"],
            "trainable_parameters": trained.metrics["trainable_parameters"],
            "frozen_parameters": trained.metrics["frozen_parameters"],
            "best_val_accuracy": trained.metrics["best_val_accuracy"],
            "best_val_loss": trained.metrics["best_val_loss"], "run_id": trained.run_id}


def summarize_sweep(name: str, layers: int, runs: list[dict[str, Any]], scratch: dict[str, Any],
                    data: PreparedData) -> dict[str, Any]:
    """What freeze_sweep.json holds; k is chosen on validation (test accuracy is reported, never
    read to choose), and the labels that trained and that chose are counted."""
    best = pick_by_validation(runs, "best_val_accuracy", "best_val_loss")
    return {"experiment": name, "layers": layers, "runs": runs, "best_k": best["freeze_k"],
            "scratch_test_accuracy": scratch["test_accuracy"], "scratch": scratch,
            "train_samples": len(data.y_train), "val_samples": len(data.y_val),
            "labelled_images": len(data.y_train) + len(data.y_val), "classes": data.classes}


def freeze_sweep(config: Config) -> dict[str, Any]:
    files = RunFiles.of(config)
    data = load_view(files.prepared, config.data)
    kwargs = checkpoint_arguments(resolve_model_kwargs(config.model.name, config.model.kwargs, data))
    body = len(network_layers(create_model(config.model.name, **kwargs))) - 1  # layers before the head
    ks = config.transfer.sweep_k or list(range(body + 1))
    runs = [{"freeze_k": k, **variant(config, f"freeze{k}", policy="freeze_first_k", freeze_k=k)} for k in ks]
    scratch = variant(config, "scratch", policy="scratch")
    sweep = summarize_sweep(config.name, body + 1, runs, scratch, data)
    best = next(r for r in runs if r["freeze_k"] == sweep["best_k"])
    write_json(files.freeze_sweep, sweep)
    figure = plots.plot_freeze_sweep(sweep, files.freeze_sweep_figure)
    print(f"{config.name}: {sweep['train_samples']} training + {sweep['val_samples']} validation labelled images; "
          f"best k={best['freeze_k']} on validation ({best['best_val_accuracy']:.4f}), test accuracy "
          f"{best['test_accuracy']:.4f}; from scratch {scratch['test_accuracy']:.4f}; figure {figure}")
    return sweep

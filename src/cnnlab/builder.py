"""Where a run's network starts: architecture, pretrained weights, our own checkpoint, freeze
policy, or the state of an interrupted run. Built once, before ``fit``, which only trains it.

    start = build_model(config, data)
    result = fit(config, data, start)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .checkpoint import CheckpointError, load_checkpoint
from .config import Config
from .data import PreparedData
from .models import create_model, model_entry
from .runtime import seed_everything
from .transfer import (FreezePlan, apply_policy, checkpoint_arguments, init_from_checkpoint, model_arguments,
                       resolve_init_source)


@dataclass
class ModelStart:
    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]  # what a checkpoint rebuilds the architecture from
    plan: FreezePlan
    transfer: dict[str, Any] = field(default_factory=dict)  # what was loaded and frozen
    resumed: dict[str, Any] | None = None  # the interrupted run's last.pt, when train.resume_from is set

    @property
    def start_epoch(self) -> int:
        return self.resumed["epoch"] if self.resumed else 0


def resolve_model_kwargs(name: str, kwargs: dict[str, Any], data: PreparedData) -> dict[str, Any]:
    """Fill in_channels / num_classes / image_size from the data unless params set them."""
    accepted = inspect.signature(model_entry(name).builder).parameters
    derived = {"in_channels": data.input_shape[0], "num_classes": data.num_classes,
               "image_size": data.input_shape[1]}
    resolved = {k: v for k, v in derived.items() if k in accepted}
    resolved.update(kwargs)
    return resolved


def build_model(config: Config, data: PreparedData) -> ModelStart:
    """The network ``fit`` trains, its weights drawn from ``train.seed``."""
    seed_everything(config.train.seed)
    if config.train.resume_from:
        return resume_model(config)
    kwargs = model_arguments(resolve_model_kwargs(config.model.name, config.model.kwargs, data), config.transfer)
    model = create_model(config.model.name, **kwargs)
    transfer: dict[str, Any] = {"policy": config.transfer.policy}
    if getattr(model, "pretrained_report", None):
        transfer["pretrained"] = model.pretrained_report
    if config.transfer.init_from and config.transfer.policy != "scratch":
        source = resolve_init_source(config.transfer.init_from)
        transfer["init_from"] = init_from_checkpoint(model, config.model.name, load_checkpoint(source), str(source))
    return with_policy(ModelStart(model, config.model.name, checkpoint_arguments(kwargs), None, transfer), config)


def resume_model(config: Config) -> ModelStart:
    """The interrupted run's network and training state; ``train.epochs`` is the new total."""
    path, cfg = config.train.resume_from, config.train
    state = load_checkpoint(path)
    if "optimizer" not in state:
        raise CheckpointError(f"{path} holds no optimizer state; resume from a last.pt")
    saved_optimizer = state["config"]["train"]["optimizer"]
    if saved_optimizer != cfg.optimizer:
        raise ValueError(f"{path} was trained with {saved_optimizer}; resume with "
                         f"train.optimizer={saved_optimizer} (its state cannot seed {cfg.optimizer})")
    if cfg.epochs <= state["epoch"]:
        raise ValueError(f"{path} already has {state['epoch']} epochs; set train.epochs above that "
                         "(it is the new total)")
    model = create_model(state["model_name"], **state["model_kwargs"])
    model.load_state_dict(state["state_dict"])
    return with_policy(ModelStart(model, state["model_name"], state["model_kwargs"], None, {}, state), config)


def with_policy(start: ModelStart, config: Config) -> ModelStart:
    start.plan = apply_policy(start.model, config.transfer)
    start.transfer.update(plan=start.plan.describe(), frozen_parameters=start.plan.frozen_parameters)
    if start.plan.frozen or start.transfer.get("init_from") or config.transfer.policy != "train_all":
        print(f"transfer: {start.plan.describe()}", flush=True)  # silent for ordinary training
    return start

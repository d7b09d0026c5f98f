"""The training loop: ``fit(config, data, start, listener) -> FitResult``.

Whole datasets stay in memory as uint8 tensors; each step gathers a batch by index,
normalises and augments it as one tensor operation, and runs under bf16 autocast with
channels_last where the hardware does bf16 natively (see ``runtime.py``). Every epoch
writes ``last.pt`` and, when validation improves, ``best.pt``. ``last.pt`` holds all a resumed
run needs to end bit-identical on a CPU (optimizer, scheduler, data-order generator, global RNG
states) and the MLflow run it belongs to.

Run it through the CLI: ``cnnlab train -S train.epochs=1``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .builder import ModelStart
from .checkpoint import save_checkpoint, with_tta
from .config import Config, TrainConfig
from .data import PreparedData
from .models import total_parameters, trainable_parameters
from .runtime import Runtime, resolve_runtime, rng_state, seeded_generator, set_rng_state, set_threads
from .transfer import fit_linear_svm, set_head


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; earlier checkpoints are kept."""


class EpochListener(Protocol):
    def on_epoch_end(self, record: dict[str, float]) -> None: ...


@dataclass
class FitResult:
    history: list[dict[str, float]]
    batch_losses: list[float]
    best_epoch: int
    best_val_accuracy: float
    trainable_parameters: int
    total_parameters: int
    wall_seconds: float
    runtime: str
    best_path: Path
    last_path: Path
    transfer: dict[str, Any] = field(default_factory=dict)  # what was loaded and frozen (cnnlab.transfer)


class BatchTransform:
    """uint8 batch -> normalised float batch, with optional train-time augmentation."""

    def __init__(self, mean: list[float], std: list[float], runtime: Runtime, augment=None):
        shape = (1, len(mean), 1, 1)
        std_t = torch.tensor(std).view(shape)
        self.scale = (1.0 / (255.0 * std_t)).to(runtime.device)
        self.shift = (-torch.tensor(mean).view(shape) / std_t).to(runtime.device)
        self.runtime = runtime
        self.augment = augment
        # Named torchvision pipelines work on the uint8 images, before the tensor-side ops below.
        self.pipeline = None
        if augment is not None and augment.pipeline != "none":
            from .augment import build_pipeline

            self.pipeline = build_pipeline(augment.pipeline, augment.pipeline_p)

    def __call__(self, images: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        if train and self.pipeline is not None:
            images = self.pipeline(images, generator)
        x = images.to(self.runtime.device, non_blocking=True).float()
        if train and self.augment is not None:
            x = augment_batch(x, self.augment, generator)
        x = x * self.scale + self.shift
        if self.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def augment_batch(x: torch.Tensor, augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (after zero padding), horizontal flip and rotation, per sample, vectorised."""
    n, _, h, w = x.shape
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(dev)

    if augment.crop_padding:
        p = augment.crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy = (rand(n) * (2 * p + 1)).long().clamp_max(2 * p)
        dx = (rand(n) * (2 * p + 1)).long().clamp_max(2 * p)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]  # n, h, 1
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]  # n, 1, w
        batch = torch.arange(n, device=dev)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if augment.hflip:
        flip = rand(n) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if augment.rotation_degrees:
        angles = (rand(n) * 2 - 1) * math.radians(augment.rotation_degrees)
        cos, sin = angles.cos(), angles.sin()
        zeros = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    return x.contiguous()


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on every parameter, or only on names starting with weight_decay_layers."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.weight_decay_layers:
        layer_names = sorted({n.rsplit(".", 1)[0] for n, _ in named})
        unmatched = [pref for pref in cfg.weight_decay_layers if not any(n.startswith(pref) for n, _ in named)]
        if unmatched:
            raise ValueError(f"train.weight_decay_layers {unmatched} match no parameter; layers: {layer_names}")
        decayed = [p for n, p in named if any(n.startswith(pref) for pref in cfg.weight_decay_layers)]
        rest = [p for n, p in named if not any(n.startswith(pref) for pref in cfg.weight_decay_layers)]
        groups = [{"params": decayed, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    else:
        groups = [{"params": [p for _, p in named], "weight_decay": cfg.weight_decay}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)


def make_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Returns (scheduler or None, steps per batch?)."""
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma), False
    if cfg.scheduler == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, cfg.gamma), False
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs), False
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=cfg.epochs * steps_per_epoch), True
    return None, False


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, transform: BatchTransform, batch_size: int,
            tta: str = "none"):
    """(logits, features) for every image, in float32 on the CPU. ``tta="hflip"`` averages the
    logits of each image and its mirror image (features stay those of the image itself)."""
    model.eval()
    logits, features = [], []
    for start in range(0, len(images), batch_size):
        x = transform(images[start : start + batch_size], train=False)
        with transform.runtime.autocast():
            out, feat = model(x)
            out = with_tta(model, x, out, tta)
        logits.append(out.float().cpu())
        features.append(feat.float().cpu())
    return torch.cat(logits), torch.cat(features)


# Cross-entropy starts near ln(classes) (2.3 for 10); a loss a million times that means the
# logits have blown up even if fp32 has not overflowed to inf yet.
DIVERGED_LOSS = 1e6


def _check_finite(loss: torch.Tensor, epoch: int, step: int, cfg: TrainConfig, last_path: Path) -> None:
    if not torch.isfinite(loss) or loss.item() > DIVERGED_LOSS:
        kept = f"the last good checkpoint is kept at {last_path}" if last_path.exists() else "no checkpoint yet"
        raise TrainingDiverged(
            f"loss became {loss.item()} at epoch {epoch}, batch {step} (optimizer {cfg.optimizer}, lr {cfg.lr}); "
            f"{kept}. Fix: lower train.lr, add a scheduler, or check the data normalisation."
        )


def fit_svm_head(model: nn.Module, data: PreparedData, transform: BatchTransform, config: Config,
                 started: float) -> dict[str, float]:
    """transfer.policy=svm: frozen features -> a linear SVM that becomes the head; one history record."""
    _, train_features = predict(model, data.x_train, transform, config.train.eval_batch_size)
    weight, bias = fit_linear_svm(train_features, data.y_train, data.num_classes, config.transfer.svm_c,
                                  config.train.seed)
    set_head(model, weight, bias)
    train_logits, _ = predict(model, data.x_train, transform, config.train.eval_batch_size)
    val_logits, _ = predict(model, data.x_val, transform, config.train.eval_batch_size)
    seconds = time.perf_counter() - started
    record = {
        "epoch": 1, "train_loss": F.cross_entropy(train_logits, data.y_train).item(),
        "train_accuracy": (train_logits.argmax(1) == data.y_train).float().mean().item(),
        "val_loss": F.cross_entropy(val_logits, data.y_val).item(),
        "val_accuracy": (val_logits.argmax(1) == data.y_val).float().mean().item(),
        "lr": 0.0, "epoch_seconds": seconds, "train_images_per_second": len(data.y_train) / seconds,
        "hard_batches_refed": 0,
    }
    print(f"linear SVM head (C={config.transfer.svm_c}) on {train_features.shape[1]}-d frozen features: "
          f"train acc {record['train_accuracy']:.4f}, val acc {record['val_accuracy']:.4f}", flush=True)
    return record


def fit(config: Config, data: PreparedData, start: ModelStart, listener: EpochListener | None = None,
        run_id: str = "") -> FitResult:
    """Train ``start.model`` (built by ``builder.build_model``) under ``config.train``; ``run_id``
    is the MLflow run last.pt names, so that resuming from it continues that run."""
    cfg = config.train
    set_threads(cfg.threads)
    runtime = resolve_runtime(cfg.device, cfg.precision)
    # The global RNG was seeded when the network was built (builder.build_model) and now drives
    # dropout; the data order has a generator of its own.
    generator = seeded_generator(cfg.seed)
    model_dir = config.model_dir
    best_path, last_path = model_dir / "best.pt", model_dir / "last.pt"

    resumed = start.resumed or {}
    history: list[dict[str, float]] = list(resumed.get("history", []))
    batch_losses: list[float] = list(resumed.get("batch_losses", []))
    model_name, model_kwargs, transfer = start.model_name, start.model_kwargs, start.transfer
    model = start.model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(data.y_train) / cfg.batch_size)
    scheduler, per_batch = make_scheduler(optimizer, cfg, steps_per_epoch)
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        if scheduler is not None and resumed.get("scheduler"):
            scheduler.load_state_dict(resumed["scheduler"])
        generator.set_state(resumed["generator"])
    transform = BatchTransform(data.mean, data.std, runtime, cfg.augment)
    trainable = trainable_parameters(model)  # frozen layers are not counted
    best_val = max((h["val_accuracy"] for h in history), default=-1.0)
    best_epoch = max(history, key=lambda h: h["val_accuracy"])["epoch"] if history else 0

    def payload(epoch: int, **extra) -> dict[str, Any]:
        return {"config": config.to_dict(), "model_name": model_name, "model_kwargs": model_kwargs,
                "state_dict": model.state_dict(), "epoch": epoch, "classes": data.classes,
                "input_shape": list(data.input_shape), "normalization": {"mean": data.mean, "std": data.std},
                "trainable_parameters": trainable, "total_parameters": total_parameters(model),
                "data_sha256": data.provenance.get("content_sha256", ""),
                "transfer": transfer, **extra}

    started = time.perf_counter()
    if config.transfer.policy == "svm":
        history = [fit_svm_head(model, data, transform, config, started)]
        save_checkpoint(best_path, payload(1, val_accuracy=history[0]["val_accuracy"]))
        save_checkpoint(last_path, payload(1, val_accuracy=history[0]["val_accuracy"], history=history))
        if listener is not None:
            listener.on_epoch_end(history[0])
        return FitResult(history=history, batch_losses=[], best_epoch=1, best_val_accuracy=history[0]["val_accuracy"],
                         trainable_parameters=trainable, total_parameters=total_parameters(model),
                         wall_seconds=time.perf_counter() - started,
                         runtime=runtime.describe(), best_path=best_path, last_path=last_path, transfer=transfer)
    x_train, y_train = data.x_train, data.y_train
    mining = cfg.hard_batch_mining

    def train_step(idx: torch.Tensor, epoch: int, step: int, schedule: bool = True) -> tuple[float, int]:
        images = transform(x_train[idx], train=True, generator=generator)
        labels = y_train[idx].to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits, _ = model(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None and per_batch and schedule:
            scheduler.step()
        _check_finite(loss.detach(), epoch, step, cfg, last_path)
        loss_value = loss.item()
        batch_losses.append(loss_value)
        return loss_value, int((logits.argmax(1) == labels).sum())

    if resumed.get("rng"):  # last, so that building the network drew nothing from it
        set_rng_state(resumed["rng"])
    for epoch in range(start.start_epoch + 1, cfg.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        order = torch.randperm(len(y_train), generator=generator)
        loss_sum, correct, step_losses = 0.0, 0, []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, mininterval=1.0,
                   disable=None if cfg.progress else True)  # None: off when stderr is not a terminal
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            loss_value, batch_correct = train_step(idx, epoch, step)
            step_losses.append(loss_value)
            loss_sum += loss_value * len(idx)
            correct += batch_correct
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_value:.4f}")
        mined = 0
        if mining.start_epoch and epoch >= mining.start_epoch:
            # E4's hard-batch mining: feed the epoch's highest-loss batches once more.
            mined = max(1, round(mining.fraction * steps_per_epoch))
            hardest = sorted(range(steps_per_epoch), key=step_losses.__getitem__, reverse=True)[:mined]
            for step in hardest:
                # Extra steps leave a per-batch schedule (one-cycle) on its planned length.
                train_step(order[step * cfg.batch_size : (step + 1) * cfg.batch_size], epoch, step, schedule=False)
        train_seconds = time.perf_counter() - epoch_start
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None and not per_batch:
            scheduler.step()
        val_logits, _ = predict(model, data.x_val, transform, cfg.eval_batch_size, cfg.tta)
        val_loss = F.cross_entropy(val_logits, data.y_val).item()
        val_accuracy = (val_logits.argmax(1) == data.y_val).float().mean().item()
        record = {
            "epoch": epoch, "train_loss": loss_sum / len(y_train), "train_accuracy": correct / len(y_train),
            "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": lr,
            "epoch_seconds": time.perf_counter() - epoch_start,
            "train_images_per_second": len(y_train) / train_seconds,
            "hard_batches_refed": mined,
        }
        history.append(record)
        if val_accuracy > best_val:
            best_val, best_epoch = val_accuracy, epoch
            save_checkpoint(best_path, payload(epoch, val_accuracy=val_accuracy))
        save_checkpoint(last_path, payload(
            epoch, val_accuracy=val_accuracy, optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            generator=generator.get_state(), rng=rng_state(), history=history, batch_losses=batch_losses,
            mlflow_run_id=run_id))
        bar.close()
        print(f"epoch {epoch:3d}  train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}  "
              f"val loss {val_loss:.4f} acc {val_accuracy:.4f}  {record['epoch_seconds']:.1f}s "
              f"({record['train_images_per_second']:.0f} img/s)", flush=True)
        if listener is not None:
            listener.on_epoch_end(record)

    return FitResult(
        history=history, batch_losses=batch_losses, best_epoch=best_epoch, best_val_accuracy=best_val,
        trainable_parameters=trainable, total_parameters=total_parameters(model),
        wall_seconds=time.perf_counter() - started, runtime=runtime.describe(),
        best_path=best_path, last_path=last_path, transfer=transfer,
    )

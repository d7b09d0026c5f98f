"""The training loop: ``fit(config, data, start, listener) -> FitResult``.

Whole datasets stay in memory as uint8 tensors; each step gathers a batch by index,
normalises and augments it as one tensor operation, and runs under bf16 autocast with
channels_last where the hardware does bf16 natively (see ``runtime.py``). Every epoch
writes ``last.pt`` and, when validation improves, ``best.pt``. ``last.pt`` holds all a resumed
run needs to end bit-identical on a CPU (optimizer, scheduler, data-order generator, global RNG
states) and the MLflow run it belongs to.

Run it through the CLI: ``cnnlab train -S train.epochs=1``. Under torchrun the same loop runs
on every rank with DistributedDataParallel (``cnnlab.distributed`` says what each rank does).
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
from .distributed import SINGLE, Ranks, all_sum, data_parallel, rank_seed
from .ema import WeightAverage
from .lifecycle import raise_if_interrupted
from .models import total_parameters, trainable_parameters
from .parallel import threads_per_worker
from .runtime import Runtime, resolve_runtime, rng_state, seeded_generator, set_rng_state, set_threads
from .selection import improves, pick_by_validation
from .tensor_augment import augment_batch, cutout, mix_batch
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
        if train and self.augment is not None and self.augment.cutout:
            x = cutout(x, self.augment.cutout, generator)  # after normalising: the square gets the mean
        if self.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


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


def _check_finite(loss: float, epoch: int, step: int, cfg: TrainConfig, last_path: Path, bf16: bool) -> None:
    if not math.isfinite(loss) or loss > DIVERGED_LOSS:
        kept = f"the last good checkpoint is kept at {last_path}" if last_path.exists() else "no checkpoint yet"
        # bf16 keeps 8 bits of mantissa: some nets (E3's stride-3 MNIST convs on oneDNN) give NaN
        # in their first batches under it and train in fp32.
        precision = " (under bf16 autocast: try -S train.precision=fp32)" if bf16 else ""
        raise TrainingDiverged(
            f"loss became {loss} at epoch {epoch}, batch {step} (optimizer {cfg.optimizer}, lr {cfg.lr}); "
            f"{kept}. Fix: lower train.lr, add a scheduler, or check the data normalisation{precision}."
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


def validation_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, transform: BatchTransform,
                      batch_size: int, tta: str, ranks: Ranks = SINGLE) -> tuple[float, float]:
    """(loss, accuracy) on a validation set. Ranks take every world_size-th batch of
    ``batch_size`` (the batches one process evaluates) and sum their losses and correct counts,
    so the accuracy equals one process's; the loss does to float rounding."""
    if not ranks.launched:
        logits, _ = predict(model, images, transform, batch_size, tta)
        return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()
    loss_sum, correct = 0.0, 0
    for start in range(ranks.rank * batch_size, len(images), ranks.world_size * batch_size):
        logits, _ = predict(model, images[start : start + batch_size], transform, batch_size, tta)
        batch_labels = labels[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, batch_labels, reduction="sum").item()
        correct += int((logits.argmax(1) == batch_labels).sum())
    loss_sum, correct = all_sum([loss_sum, correct], ranks, transform.runtime.device)
    # float32 division, as the single-process mean of a float32 0/1 tensor: the same number.
    return loss_sum / len(labels), (torch.tensor(correct, dtype=torch.float32) / len(labels)).item()


def fit(config: Config, data: PreparedData, start: ModelStart, listener: EpochListener | None = None,
        run_id: str = "", ranks: Ranks = SINGLE) -> FitResult:
    """Train ``start.model`` (built by ``builder.build_model``) under ``config.train``; ``run_id``
    is the MLflow run last.pt names, so that resuming from it continues that run. Under torchrun
    (``ranks`` launched, process group joined) every rank calls it; only rank 0 writes."""
    cfg = config.train
    set_threads(threads_per_worker(ranks.local_world_size, cfg.threads))  # ranks on a machine share its cores
    runtime = resolve_runtime(cfg.device, cfg.precision)
    # The global RNG was seeded when the network was built (builder.build_model) and now drives
    # dropout; the data order has a generator of its own, seeded alike on every rank.
    generator = seeded_generator(cfg.seed)
    # Augmentation draws from the data-order generator in one process (as it always has); under
    # torchrun from one per rank, since ranks' batch shares (and so their draws) can differ in
    # size and the order generators must stay in step.
    augment_generator = generator
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
    # With ema_decay the average is what is validated and what best.pt holds; last.pt keeps the
    # trained weights (to go on training) and the average beside them.
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
    evaluated = average.module if average is not None else model
    trained = data_parallel(model, ranks, runtime.device)  # steps run through DDP; checkpoints hold `model`
    steps_per_epoch = math.ceil(len(data.y_train) / cfg.batch_size)
    if ranks.launched and 0 < len(data.y_train) % cfg.batch_size < ranks.world_size:
        steps_per_epoch -= 1  # a last batch smaller than the rank count would leave a rank without an image
    scheduler, per_batch = make_scheduler(optimizer, cfg, steps_per_epoch)
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        if scheduler is not None and resumed.get("scheduler"):
            scheduler.load_state_dict(resumed["scheduler"])
        generator.set_state(resumed["generator"])
        if average is not None and resumed.get("weight_average"):
            average.load_state_dict(resumed["weight_average"])
    transform = BatchTransform(data.mean, data.std, runtime, cfg.augment)
    trainable = trainable_parameters(model)  # frozen layers are not counted
    best = pick_by_validation(history) if history else None  # the epoch best.pt holds (validation only)

    def payload(epoch: int, weights: nn.Module = model, **extra) -> dict[str, Any]:
        return {"config": config.to_dict(), "model_name": model_name, "model_kwargs": model_kwargs,
                "state_dict": weights.state_dict(), "epoch": epoch, "classes": data.classes,
                "input_shape": list(data.input_shape), "normalization": {"mean": data.mean, "std": data.std},
                "trainable_parameters": trainable, "total_parameters": total_parameters(model),
                "data_sha256": data.provenance.get("content_sha256", ""),
                "transfer": transfer, **extra}

    started = time.perf_counter()
    if config.transfer.policy == "svm":  # one process only (distributed.check_config)
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

    def train_step(batch: torch.Tensor, epoch: int, step: int, schedule: bool = True) -> tuple[float, int]:
        """One optimizer step on the global batch ``batch`` (indices); its mean loss and correct count."""
        raise_if_interrupted()  # a signal's interruption dropped on its way (cnnlab.lifecycle)
        idx = ranks.share(batch)
        images = transform(x_train[idx], train=True, generator=augment_generator)
        labels = y_train[idx].to(runtime.device, non_blocking=True)
        if cfg.mixup_alpha:
            images, partner_labels, lam = mix_batch(images, labels, cfg.mixup_alpha, augment_generator)
        with runtime.autocast():
            logits, _ = trained(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
            if cfg.mixup_alpha:
                loss = lam * loss + (1.0 - lam) * F.cross_entropy(logits.float(), partner_labels,
                                                                  label_smoothing=cfg.label_smoothing)
        # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the
        # batch makes that the gradient of the whole batch's mean loss (the weight is 1 in one process).
        weighted = loss * (len(idx) * ranks.world_size / len(batch))
        optimizer.zero_grad(set_to_none=True)
        weighted.backward()
        optimizer.step()
        if average is not None:
            average.update()
        if scheduler is not None and per_batch and schedule:
            scheduler.step()
        correct = int((logits.argmax(1) == labels).sum())
        loss_value = loss.item()
        if ranks.launched:  # the batch's loss, the same on every rank: all decide alike whether it diverged
            loss_sum, correct = all_sum([weighted.item(), correct], ranks, runtime.device)
            loss_value, correct = loss_sum / ranks.world_size, int(correct)
        _check_finite(loss_value, epoch, step, cfg, last_path, runtime.bf16)
        batch_losses.append(loss_value)
        return loss_value, correct

    if ranks.launched:  # dropout and augmentation draw per rank (from the epoch it starts at)
        torch.manual_seed(rank_seed(cfg.seed, ranks.rank, start.start_epoch))
        augment_generator = seeded_generator(rank_seed(cfg.seed, ranks.rank, start.start_epoch))
    elif resumed.get("rng"):  # last, so that building the network drew nothing from it
        set_rng_state(resumed["rng"])
    for epoch in range(start.start_epoch + 1, cfg.epochs + 1):
        trained.train()
        epoch_start = time.perf_counter()
        order = torch.randperm(len(y_train), generator=generator)
        loss_sum, correct, step_losses = 0.0, 0, []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, mininterval=1.0,
                   disable=None if cfg.progress and ranks.is_main else True)  # None: off when stderr is not a terminal
        for step in bar:
            batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            loss_value, batch_correct = train_step(batch, epoch, step)
            step_losses.append(loss_value)
            loss_sum += loss_value * len(batch)
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
        # The module itself (or its weight average), not the DDP wrapper: ranks evaluate different
        # numbers of batches.
        val_loss, val_accuracy = validation_scores(evaluated, data.x_val, data.y_val, transform, cfg.eval_batch_size,
                                                   cfg.tta, ranks)
        record = {
            "epoch": epoch, "train_loss": loss_sum / len(y_train), "train_accuracy": correct / len(y_train),
            "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": lr,
            "epoch_seconds": time.perf_counter() - epoch_start,
            "train_images_per_second": len(y_train) / train_seconds,
            "hard_batches_refed": mined,
        }
        history.append(record)
        if improves(record, best):
            best = record
            if ranks.is_main:
                save_checkpoint(best_path, payload(epoch, evaluated, val_accuracy=val_accuracy))
        if ranks.is_main:
            save_checkpoint(last_path, payload(
                epoch, val_accuracy=val_accuracy, optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict() if scheduler is not None else None,
                generator=generator.get_state(), rng=rng_state(), history=history, batch_losses=batch_losses,
                mlflow_run_id=run_id, weight_average=average.state_dict() if average is not None else None))
        bar.close()
        if ranks.is_main:
            print(f"epoch {epoch:3d}  train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}  "
                  f"val loss {val_loss:.4f} acc {val_accuracy:.4f}  {record['epoch_seconds']:.1f}s "
                  f"({record['train_images_per_second']:.0f} img/s)", flush=True)
        if listener is not None:
            listener.on_epoch_end(record)

    return FitResult(
        history=history, batch_losses=batch_losses, best_epoch=best["epoch"] if best else 0,
        best_val_accuracy=best["val_accuracy"] if best else -1.0,
        trainable_parameters=trainable, total_parameters=total_parameters(model),
        wall_seconds=time.perf_counter() - started,
        runtime=runtime.describe() + (f", DDP on {ranks.describe()}" if ranks.launched else ""),
        best_path=best_path, last_path=last_path, transfer=transfer,
    )

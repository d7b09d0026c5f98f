"""Optuna architecture/hyper-parameter search under a hard parameter budget: the only
module that imports optuna.

    cnnlab search -S experiment=e5_search                      # resumes the study if it exists
    cnnlab search -S experiment=e5_search -S search.storage=postgresql://127.0.0.1:5432/test

Every candidate is built and counted before any training: over ``search.param_budget`` it
is shrunk to fit (``budget_mode: shrink``) or pruned at once (``reject``), costing no
training time. When the entry's own model is of the searched family (E5's hand-designed net),
it is the baseline, and a candidate that trains more than ``search.cost_cap`` times as slow per
image as it, timed here (cnnlab.training_cost, which allows for the timing's noise), is pruned at
once too: the winner must retrain in about the time the cap gives it.
Trials train on a stratified subset for ``trial_epochs`` epochs, report validation accuracy
per epoch to the pruner, and each is an MLflow child run of one parent run per study (parent
id passed explicitly, so it works across processes). Workers that share the storage share the
study; ``n_trials`` counts trials of every worker and of earlier invocations, so re-running the
same command resumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import torch

from .console import verbose
from .contract import stage, trials_name
from .config import Config, ConfigError, ModelConfig, SearchConfig, SearchSpaceConfig, TrainConfig, flatten
from .data import PreparedData
from .data.sampling import stratified_sample
from .files import sqlite_damage
from .hashing import content_sha256
from .lifecycle import FAILURE_TAG, interruption_behind, owner_tags
from .models.searchable import count_for, fit_to_budget
from .retry import retried
from .runtime import machine, project_root, resolve_runtime, set_threads
from .builder import build_model, resolve_model_kwargs
from .train import TrainingDiverged, fit
from .training_cost import TIMING_NOISE, cost_ceiling, relative_training_cost

log = logging.getLogger(__name__)

FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                   optuna.trial.TrialState.FAIL)
PARENT_RUN_ATTR = "mlflow_parent_run_id"
# How long a worker that found the study already created waits for its creator to store the
# MLflow parent run id (connecting to MLflow can be slow on a busy machine: generous on purpose).
PARENT_WAIT_S = 180
EPOCHS_ATTR = "epochs"  # epochs a trial trained (all of them, or up to where it was pruned)
STORAGE_STUDY_TAG = "optuna.storage_study"  # MLflow tag: the study's name in the storage (study_name)
CREATED_AT_ATTR = "created_at"  # unix time the study was created: how long its parent run may take to appear
SCHEMA_ATTEMPTS = 5  # opening a fresh RDB storage while another worker creates its schema
# Optuna writes a trial's end once; when the storage refuses that write (a SQLite file another
# process holds longer than SQLite waits, 5 s) the trial would stay RUNNING until a later
# invocation found its heartbeat stale. So it is written again, this many times, a second apart.
END_TRIAL_ATTEMPTS = 6


WIDTH_STEP = 4  # grown widths are rounded to a multiple of this (channel counts kernels handle well)


class OverBudget(optuna.TrialPruned):
    """The candidate has more trainable parameters than the budget allows, or trains slower than the baseline."""


SEARCHED_FAMILY = "search_cnn"
COST_ATTR = "relative_cost"  # the trial's seconds per training image over the baseline's
# What each trial ran on: a study resumed on another machine mixes them, and its wall time is
# then no measurement of one machine (search-compare adds it to a retraining's only on one).
MACHINE_ATTR = "machine"


def suggest(trial: optuna.Trial, space: SearchSpaceConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole search space in one place: (search_cnn kwargs, training recipe as train.* overrides)."""
    stages = trial.suggest_int("stages", *space.stages)
    model = {
        "block_style": trial.suggest_categorical("block_style", space.block_styles),
        "widths": suggest_widths(trial, space, stages),
        "convs_per_block": trial.suggest_int("convs_per_block", *space.convs_per_block),
        "blocks_per_stage": trial.suggest_int("blocks_per_stage", *space.blocks_per_stage),
        "batch_norm": trial.suggest_categorical("batch_norm", space.batch_norm),
        "pooling": trial.suggest_categorical("pooling", space.pooling),
        "head_width": trial.suggest_categorical("head_width", space.head_widths),
        "dropout": trial.suggest_float("dropout", *space.dropout),
    }
    # Pre-activation only means something for residual blocks; don't spend trials on it otherwise.
    model["preactivation"] = (trial.suggest_categorical("preactivation", space.preactivation)
                              if model["block_style"] == "residual" else False)
    optimizer = trial.suggest_categorical("optimizer", space.optimizers)
    training = {
        "optimizer": optimizer,
        # SGD's own range, under a name of its own: TPE models each range apart
        "lr": (trial.suggest_float("sgd_lr", *space.sgd_lr, log=True) if optimizer == "sgd"
               else trial.suggest_float("lr", *space.lr, log=True)),
        "batch_size": trial.suggest_categorical("batch_size", space.batch_sizes),
        "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
        "label_smoothing": trial.suggest_float("label_smoothing", *space.label_smoothing),
        "mixup_alpha": trial.suggest_categorical("mixup_alpha", space.mixup_alphas),
        "ema_decay": trial.suggest_categorical("ema_decay", space.ema_decays),
        "scheduler": trial.suggest_categorical("scheduler", space.schedulers),
        "augment": {"cutout": trial.suggest_categorical("cutout", space.cutouts)},
    }
    return model, training


def suggest_widths(trial: optuna.Trial, space: SearchSpaceConfig, stages: int) -> list[int]:
    """Each stage's width: drawn on its own, or grown from the first by ``space.width_growths``."""
    if not space.width_growths:
        return [trial.suggest_categorical(f"width_{i}", space.widths) for i in range(stages)]
    widths = [trial.suggest_categorical("width_0", space.widths)]
    for i in range(1, stages):
        grown = widths[-1] * trial.suggest_categorical(f"growth_{i}", space.width_growths)
        widths.append(max(widths[-1], WIDTH_STEP * round(grown / WIDTH_STEP)))
    return widths


def with_recipe(train: TrainConfig, recipe: dict[str, Any]) -> TrainConfig:
    """``train`` with a trial's recipe (``suggest``'s training overrides, ``augment`` nested)."""
    flat = {k: v for k, v in recipe.items() if k != "augment"}
    augment = dataclasses.replace(train.augment, **recipe.get("augment", {}))
    return dataclasses.replace(train, augment=augment, **flat)


def space_domains(space: SearchSpaceConfig) -> dict[str, tuple[str, list[Any]]]:
    """Each name `suggest` can draw, with ("choice", options) or ("range", [low, high])."""
    domains: dict[str, tuple[str, list[Any]]] = {
        "stages": ("range", space.stages), "convs_per_block": ("range", space.convs_per_block),
        "blocks_per_stage": ("range", space.blocks_per_stage),
        "dropout": ("range", space.dropout), "lr": ("range", space.lr), "sgd_lr": ("range", space.sgd_lr),
        "block_style": ("choice", space.block_styles), "batch_norm": ("choice", space.batch_norm),
        "pooling": ("choice", space.pooling), "head_width": ("choice", space.head_widths),
        "preactivation": ("choice", space.preactivation), "optimizer": ("choice", space.optimizers),
        "batch_size": ("choice", space.batch_sizes), "weight_decay": ("range", space.weight_decay),
        "label_smoothing": ("range", space.label_smoothing), "mixup_alpha": ("choice", space.mixup_alphas),
        "ema_decay": ("choice", space.ema_decays), "scheduler": ("choice", space.schedulers),
        "cutout": ("choice", space.cutouts),
    }
    if space.width_growths:
        domains["width_0"] = ("choice", space.widths)
        domains.update({f"growth_{i}": ("choice", space.width_growths) for i in range(1, space.stages[1])})
    else:
        domains.update({f"width_{i}": ("choice", space.widths) for i in range(space.stages[1])})
    return domains


def enqueue_candidates(study: optuna.Study, search: SearchConfig) -> None:
    """Put search.enqueue's candidates first in line, once per study (resumptions and workers skip them).

    Checked against the space here: Optuna itself would only fail the trial once it started.
    """
    domains = space_domains(search.space)
    for i, params in enumerate(search.enqueue):
        for name, value in params.items():
            if name not in domains:
                raise ConfigError(f"search.enqueue[{i}]: unknown parameter {name!r}; "
                                  f"the search space names {', '.join(sorted(domains))}")
            kind, domain = domains[name]
            if kind == "choice":
                inside = value in domain
            else:
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                inside = number and domain[0] <= value <= domain[1]
            if not inside:
                where = f"one of {domain}" if kind == "choice" else f"in [{domain[0]}, {domain[1]}]"
                raise ConfigError(f"search.enqueue[{i}].{name}={value!r} is outside the search space ({where}); "
                                  f"change the candidate, widen search.space, or drop it (search.enqueue=[])")
        if "optimizer" in params:  # suggest asks SGD for sgd_lr and the others for lr: the other is never read
            unread = "lr" if params["optimizer"] == "sgd" else "sgd_lr"
            if unread in params:
                raise ConfigError(f"search.enqueue[{i}]: with optimizer {params['optimizer']!r} the learning rate "
                                  f"is {'sgd_lr' if unread == 'lr' else 'lr'!r}, not {unread!r}; rename the key")
        study.enqueue_trial(params, skip_if_exists=True)


def fit_budget(model_kwargs: dict[str, Any], search: SearchConfig) -> tuple[dict[str, Any], int]:
    """Count before training; shrink or reject (OverBudget) a candidate over the budget."""
    count = count_for(model_kwargs)
    if count <= search.param_budget:
        return model_kwargs, count
    if search.budget_mode == "reject":
        raise OverBudget(f"{count:,d} parameters > budget {search.param_budget:,d}")
    try:
        return fit_to_budget(model_kwargs, search.param_budget)
    except ValueError as err:
        raise OverBudget(str(err)) from err


class StorageError(RuntimeError):
    """The Optuna storage cannot be read; the message names the file and the fix."""


def resolve_storage(url: str, search: SearchConfig):
    """Optuna storage from a URL; RDB storages get heartbeats + retry of a dead worker's trial.
    A SQLite file that is not a sound database is a StorageError before Optuna touches it."""
    if not url:
        folder = project_root() / ".optuna"
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{folder / 'optuna.db'}"
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        damage = sqlite_damage(path)
        if damage:
            raise StorageError(f"the Optuna storage {path} ({url}) is not a readable SQLite database ({damage}). "
                               f"Fix: move it aside (`mv {path} {path}.corrupt`; its studies are lost) and rerun "
                               "to start the study again, or set search.storage to another storage")
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return rdb_storage(url, search)


@contextmanager
def heartbeat_api():
    """Optuna marks its heartbeat machinery (RDB heartbeats, the stale-trial retry,
    fail_stale_trials) experimental; cnnlab relies on it on purpose, with Optuna pinned, so the
    warning, printed by every worker, shows only under --verbose."""
    with warnings.catch_warnings():
        if not verbose():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


class RDBStorageFailingUnstartedTrials(optuna.storages.RDBStorage):
    """An RDB storage whose stale trials include those that never recorded a heartbeat.

    Optuna's ``optimize`` stores a trial RUNNING in ``ask`` (which also samples, TPE's part
    taking a while) and only then starts the trial's heartbeat; its stale-trial check compares
    heartbeats and passes over a trial without one. So a worker killed in between left its
    trial RUNNING for good (a kill -9 of the coordinator right after a trial ended did). Such a
    trial is stale here once it is older than the grace period, and so is failed, and retried,
    like any trial whose worker died; a live worker's trial has its heartbeat long before."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        from optuna.storages._rdb import models  # the heartbeat table: no public reader (Optuna pinned)

        grace = timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)
        session = self.scoped_session()
        try:
            never_beat = [(trial.trial_id, trial.datetime_start)  # local time, as datetime.now()
                          for trial in session.query(models.TrialModel)
                          .filter(models.TrialModel.study_id == study_id,
                                  models.TrialModel.state == optuna.trial.TrialState.RUNNING,
                                  ~models.TrialModel.heartbeats.any())]
        finally:
            session.close()
        unstarted = [trial_id for trial_id, started in never_beat if started and datetime.now() - started > grace]
        return super()._get_stale_trial_ids(study_id) + unstarted


def rdb_storage(url: str, search: SearchConfig):
    """An RDB storage; the first one on an empty database creates the schema. Workers on several
    machines starting together race to create it: the loser's CREATE fails with a duplicate
    key, and once the winner's schema is committed a second try finds it there."""
    import sqlalchemy

    def open_storage():
        with heartbeat_api():
            return RDBStorageFailingUnstartedTrials(
                url, heartbeat_interval=search.heartbeat_seconds, grace_period=2 * search.heartbeat_seconds,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=search.max_retry),
            )

    return retried(open_storage, attempts=SCHEMA_ATTEMPTS, pause_s=lambda attempt: attempt,
                   retry_on=(sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError),
                   on_retry=lambda err: log.info("another worker is creating the Optuna schema in %s; "
                                                 "trying again", url))


def make_pruner(search: SearchConfig) -> optuna.pruners.BasePruner:
    if search.multi_objective or search.pruner == "none":
        return optuna.pruners.NopPruner()  # Optuna cannot prune multi-objective studies
    if search.pruner == "hyperband":  # epochs are the resource: rungs at min_trial_epochs * factor^k
        return optuna.pruners.HyperbandPruner(min_resource=min(search.min_trial_epochs, search.trial_epochs),
                                              max_resource=search.trial_epochs,
                                              reduction_factor=search.reduction_factor)
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


# Settings of the search stage (its DVC params) that do not change what any trial trains or
# scores: how long the study goes on and where and how fast it runs. A study resumed with more
# trials, a larger epoch budget or more workers is the same study; every other setting is part
# of its identity (study_name), so a setting added to the stage is one unless listed here.
NOT_STUDY_IDENTITY = (
    "search.study",  # the name's readable part
    "search.n_trials", "search.epoch_budget", "search.timeout_seconds",  # when it stops
    "search.workers", "search.storage", "search.heartbeat_seconds", "search.max_retry",  # where and how it runs
    "data.prepared_dir",  # where the prepared data lies (its settings are part of the identity)
    "train.epochs", "train.resume_from",  # trials train search.trial_epochs from scratch (Objective.trial_config)
    "tracking.log_model",
)


IDENTITY_MARK = "@"  # e5_search@1a2b3c4d: search.study, then the digest of the study's identity


def study_identity(config: Config) -> dict[str, Any]:
    """Every setting the study's trials depend on: the search stage's declared params
    (cnnlab.contract) but NOT_STUDY_IDENTITY, each section flattened to its values; under a
    compute budget also the timing's noise it allows for, which decides which trials train."""
    flat = flatten(config.to_dict())
    keys = [k for k in stage("search").params() if k not in NOT_STUDY_IDENTITY]
    identity = {name: value for name, value in flat.items() if any(name == k or name.startswith(k + ".") for k in keys)}
    return {**identity, "timing_noise": TIMING_NOISE} if baseline_model(config) else identity


def study_name(config: Config) -> str:
    """The study's name in the storage: ``search.study`` and a digest of its identity. A study
    is resumed only under the settings its trials ran with; changing one (``dvc exp run -S
    search.trial_epochs=4``) starts a study of its own rather than report the old trials as
    the new settings' result. Workers on any machine with the same settings share it."""
    return f"{config.search.study}{IDENTITY_MARK}{content_sha256(study_identity(config))[:8]}"


def searched_as(stored: str) -> str:
    """The ``search.study`` of a study's name in the storage (``e5_search@1a2b3c4d`` -> ``e5_search``)."""
    return stored.rpartition(IDENTITY_MARK)[0]


def studies_named(study: str, storage) -> list[str]:
    """The studies of one ``search.study`` in a storage (an Optuna storage or its URL): one per identity."""
    return [name for name in optuna.get_all_study_names(storage) if searched_as(name) == study]


def stored_study(study: str, storage) -> optuna.Study:
    """The one study of ``search.study`` = ``study`` in a storage; KeyError when there is none or several."""
    names = studies_named(study, storage)
    if len(names) != 1:
        raise KeyError(f"{len(names)} studies of {study!r} in the storage: {names}")
    return optuna.load_study(study_name=names[0], storage=storage)


def open_study(config: Config, worker: int = 0) -> optuna.Study:
    return open_or_create_study(config, worker)[0]


def open_or_create_study(config: Config, worker: int = 0) -> tuple[optuna.Study, bool]:
    """The study, and whether this call created it: the storage lets exactly one of the
    processes starting together create it (a unique name), and that one opens the MLflow parent run."""
    search = config.search
    directions = ["maximize", "minimize"] if search.multi_objective else ["maximize"]
    settings = dict(study_name=study_name(config), storage=resolve_storage(search.storage, search),
                    pruner=make_pruner(search), directions=directions)
    try:
        study, created = optuna.create_study(**settings), True
        study.set_user_attr(CREATED_AT_ATTR, time.time())
        earlier = [name for name in studies_named(search.study, settings["storage"]) if name != study.study_name]
        if earlier:
            log.info("study %s is new: %s in the same storage ran under other settings (a study resumes only "
                     "under its own), so its trials stay apart", study.study_name, ", ".join(earlier))
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.create_study(**settings, load_if_exists=True), False
    # Offset the seed by the trials already there: a resumed or later-started worker with the
    # plain seed would replay the first run's random start-up draws as duplicate trials. Workers
    # started together (``search.workers``) see the same count, so their index separates them.
    seed = search.sampler_seed + len(study.get_trials(deepcopy=False)) + 1000 * worker
    study.sampler = (optuna.samplers.RandomSampler(seed=seed) if search.sampler == "random"
                     else optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.startup_trials))
    return study, created


def trial_subset(data: PreparedData, size: int, seed: int) -> PreparedData:
    """A stratified share of the training split: the cheap fidelity trials train on."""
    if not size or size >= len(data.y_train):
        return data
    keep = torch.from_numpy(stratified_sample(data.y_train, size, seed))
    return dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])


class TrialReporter:
    """Per-epoch validation accuracy to Optuna (for the pruner) and to the trial's MLflow run; a
    trial still training when the study's ``epoch_budget`` runs out stops there (pruned), so a
    study spends at most its budget plus one epoch per other worker."""

    def __init__(self, trial: optuna.Trial, tracker, prune: bool, search: SearchConfig):
        self.trial, self.tracker, self.prune = trial, tracker, prune
        self.epoch_budget, self.trial_epochs = search.epoch_budget, search.trial_epochs

    def on_epoch_end(self, record: dict[str, float]) -> None:
        self.tracker.on_epoch_end(record)
        epoch = int(record["epoch"])
        self.trial.set_user_attr(EPOCHS_ATTR, epoch)  # the study's compute, for epoch_budget
        # A trial at its last epoch completes: stopping it then would only throw its result away.
        if self.epoch_budget and epoch < self.trial_epochs and epochs_spent(self.trial.study) >= self.epoch_budget:
            raise optuna.TrialPruned(f"stopped at epoch {epoch}: the study's epoch budget "
                                     f"({self.epoch_budget}) is spent")
        if self.prune:
            self.trial.report(record["val_accuracy"], int(record["epoch"]))
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {int(record['epoch'])} "
                                         f"(val accuracy {record['val_accuracy']:.4f})")


class Objective:
    def __init__(self, config: Config, data: PreparedData, parent_run_id: str):
        self.config, self.parent_run_id = config, parent_run_id
        self.search = config.search
        self.data = trial_subset(data, self.search.trial_train_subset, config.data.split_seed)
        self.base_kwargs = resolve_model_kwargs(SEARCHED_FAMILY, {}, data)
        baseline = baseline_model(config)
        self.baseline_kwargs = resolve_model_kwargs(SEARCHED_FAMILY, baseline.kwargs, data) if baseline else None
        self.trial_number: int | None = None  # the trial this process runs (or ran last)

    def trial_config(self, trial: optuna.Trial, model_kwargs: dict, training: dict) -> Config:
        train = dataclasses.replace(with_recipe(self.config.train, training), epochs=self.search.trial_epochs,
                                    progress=False, resume_from="")
        return dataclasses.replace(self.config, run=f"{trials_name(self.search.study)}/trial{trial.number:04d}",
                                   model=ModelConfig(SEARCHED_FAMILY, model_kwargs), train=train)

    def __call__(self, trial: optuna.Trial):
        from .tracking import RunTracker

        self.trial_number = trial.number
        trial.set_user_attr(MACHINE_ATTR, machine())
        model_kwargs, training = suggest(trial, self.search.space)
        model_kwargs = {**self.base_kwargs, **model_kwargs}
        try:
            model_kwargs, parameters = fit_budget(model_kwargs, self.search)
        except OverBudget as err:
            trial.set_user_attr("parameters", count_for(model_kwargs))
            trial.set_user_attr("reason", f"over budget: {err}")
            raise
        trial.set_user_attr("parameters", parameters)
        trial.set_user_attr("model_kwargs", model_kwargs)
        trial.set_user_attr("training", training)
        config = self.trial_config(trial, model_kwargs, training)
        self.check_training_cost(trial, config)
        tracker = RunTracker(config, run_name=f"trial-{trial.number}", parent_run_id=self.parent_run_id,
                             tags={"optuna.study": self.search.study, STORAGE_STUDY_TAG: trial.study.study_name,
                                   "optuna.trial": str(trial.number),
                                   **owner_tags()}, command="search")
        with tracker.running():  # any other error or an interruption ends the child run too
            trial.set_user_attr("mlflow_run_id", tracker.run_id)
            tracker.log_config(config, {"total_parameters": parameters})
            try:
                result = fit(config, self.data, build_model(config, self.data),
                             TrialReporter(trial, tracker, not self.search.multi_objective, self.search))
            except optuna.TrialPruned as err:
                self._close(trial, tracker, "PRUNED", str(err), "FINISHED")
                raise
            except TrainingDiverged as err:
                self._close(trial, tracker, "FAIL", str(err), "FAILED")
                raise
            tracker.log_metrics({"best_val_accuracy": result.best_val_accuracy, "parameters": parameters})
            self._close(trial, tracker, "COMPLETE", "", "FINISHED")
        if self.search.multi_objective:
            return result.best_val_accuracy, parameters
        return result.best_val_accuracy

    def check_training_cost(self, trial: optuna.Trial, config: Config) -> None:
        """Prune (OverBudget) a candidate that trains more than ``search.cost_cap`` times as slow
        per image as the baseline, before it trains; its relative cost is kept on the trial either way."""
        if self.baseline_kwargs is None:
            return
        runtime = resolve_runtime(config.train.device, config.train.precision)
        cost = relative_training_cost(SEARCHED_FAMILY, config.model.kwargs, self.baseline_kwargs,
                                      config.train.batch_size, runtime)
        trial.set_user_attr(COST_ATTR, round(cost, 3))
        cap = config.search.cost_cap
        ceiling = cost_ceiling(cap)
        if cost > ceiling:
            reason = (f"over budget: trains {cost:.2f}x as slow per image as the baseline "
                      f"(cap {cap:g}x, {ceiling:.2f}x with the timing's noise)")
            trial.set_user_attr("reason", reason)
            raise OverBudget(reason)

    @staticmethod
    def _close(trial: optuna.Trial, tracker, state: str, reason: str, status: str) -> None:
        if reason:
            trial.set_user_attr("reason", reason)
        tracker.set_tags({"optuna.state": state, **({"optuna.reason": reason} if reason else {})})
        tracker.set_terminated(status)


def baseline_model(config: Config) -> ModelConfig | None:
    """The entry's own model when it is of the searched family: the hand-designed net the search
    must beat, whose training speed is the candidates' compute budget. None: no compute budget."""
    return config.model if config.model.name == SEARCHED_FAMILY else None


def wait_for_parent_run(study: optuna.Study) -> str | None:
    """The parent run id the study's creator stores, once it is there; None when the study is
    older than PARENT_WAIT_S (its creator stopped before storing one) or none came in time."""
    # the creator stores created_at just after creating the study: missing, it is being created now
    deadline = float(study.user_attrs.get(CREATED_AT_ATTR, time.time())) + PARENT_WAIT_S
    if time.time() >= deadline:
        return None
    while time.time() < deadline:
        parent = study.user_attrs.get(PARENT_RUN_ATTR)  # read from the storage on every access
        if parent:
            return parent
        time.sleep(1)
    log.warning("study %s: its creator stored no MLflow parent run within %d s (did it die?); "
                "opening one here", study.study_name, PARENT_WAIT_S)
    return None


def ensure_parent_run(study: optuna.Study, config: Config, created: bool = True) -> str:
    """One MLflow parent run per study, its id kept in the study so every worker finds it: the
    process that ``created`` the study opens it; the others, on this machine or another,
    wait for its id rather than open a second one. Trial runs left RUNNING by a worker that
    died are marked FAILED first."""
    from .tracking import RunTracker, mark_dead_runs

    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent is None and not created:
        parent = wait_for_parent_run(study)
    tracker = RunTracker(config, run_id=parent, run_name=f"search-{config.search.study}",
                         tags={"optuna.study": config.search.study, STORAGE_STUDY_TAG: study.study_name,
                               "cnnlab.role": "search-parent", **owner_tags()},
                         command="search")
    if tracker.run_id != parent:
        study.set_user_attr(PARENT_RUN_ATTR, tracker.run_id)
        tracker.log_params({f"search.{k}": v for k, v in dataclasses.asdict(config.search).items() if k != "space"})
    else:  # a resumed study: its parent run ended with the last invocation and runs again
        mark_dead_runs(tracker.client, tracker.experiment_id, f"tags.mlflow.parentRunId = '{parent}'",
                       "cnnlab search")
        tracker.client.update_run(tracker.run_id, status="RUNNING")
    return tracker.run_id


def end_parent_run(config: Config, status: str, reason: str = "") -> None:
    """End the study's parent run with ``status`` when a `cnnlab search` invocation ends."""
    from .tracking import RunTracker, mark_dead_runs

    try:
        parent = open_study(config).user_attrs.get(PARENT_RUN_ATTR)
        if parent:
            tracker = RunTracker(config, run_id=parent)
            # A worker stopped between opening a trial's run and owning it leaves that run
            # RUNNING; its process is gone by now, so it is marked FAILED here, not later.
            mark_dead_runs(tracker.client, tracker.experiment_id, f"tags.mlflow.parentRunId = '{parent}'",
                           "cnnlab search")
            if reason:
                tracker.set_tags({FAILURE_TAG: reason[:1000]})
            tracker.set_terminated(status)
    except Exception as err:  # noqa: BLE001 - never hide the error that ended the search
        log.warning("could not end the parent run of study %s: %s", config.search.study, err)


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def epochs_spent(study: optuna.Study) -> int:
    """Epochs trained over every trial of the study, pruned and failed ones included. Not the
    WAITING ones: a stale trial's retry is queued with a copy of its user attributes, epochs too."""
    return sum(int(t.user_attrs.get(EPOCHS_ATTR, 0))
               for t in study.get_trials(deepcopy=False, states=(*FINISHED_STATES, optuna.trial.TrialState.RUNNING)))


def budget_left(study: optuna.Study, search: SearchConfig) -> bool:
    """Whether another trial may start: fewer than n_trials finished and epoch_budget not spent."""
    if finished_trials(study) >= search.n_trials:
        return False
    return not search.epoch_budget or epochs_spent(study) < search.epoch_budget


class StudyBudget:
    """Stops the study once ``n_trials`` trials finished or ``epoch_budget`` epochs are spent,
    over every worker (a trial still running on another worker stops after its current epoch:
    TrialReporter)."""

    def __init__(self, search: SearchConfig):
        self.search = search

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not budget_left(study, self.search):
            study.stop()


def run_search(config: Config, data: PreparedData, worker: int = 0) -> optuna.Study:
    """Run (or resume) the study until ``n_trials`` trials have finished across all workers."""
    search = config.search
    # This process's share of the cores before its first trial, not only once a trial trains:
    # a worker still on every core timed its candidates against the baseline oversubscribed
    # (the first trials of the last E5 study, the hand-designed shape read 0.82x of itself),
    # and recorded a thread count its trials did not train with.
    set_threads(config.train.threads)
    study, created = open_or_create_study(config, worker)
    enqueue_candidates(study, search)
    parent_run_id = ensure_parent_run(study, config, created)
    # A killed worker's trial is failed (and re-queued) here, not only by `optimize`: with the
    # study's trials all finished no `optimize` runs, and the trial would stay RUNNING for good.
    with heartbeat_api():
        optuna.storages.fail_stale_trials(study)
    if not budget_left(study, search):
        log.info("study %s already has %d finished trials, %d epochs spent", study.study_name,
                 finished_trials(study), epochs_spent(study))
        return study
    objective = Objective(config, data, parent_run_id)
    study.ask = asking_for(objective, study.ask)
    try:
        study.optimize(
            objective, n_trials=search.n_trials - finished_trials(study),
            timeout=search.timeout_seconds or None,
            catch=(TrainingDiverged,),  # a diverging trial is recorded as failed; the study goes on
            callbacks=[StudyBudget(search)],
            gc_after_trial=True,
        )
    except BaseException as err:  # an interruption or an error: the trial it stopped must not stay RUNNING
        end_unended_trial(study, objective.trial_number)
        # Optuna's own failed write of the trial's end raises over the interruption that
        # caused it; the command still ends as interrupted (exit 130/143, one line, no traceback)
        raise interruption_behind(err) or err
    finally:
        del study.ask  # the instance's wrapper: the class's own ask again
    return study


def asking_for(objective: Objective, ask):
    """``ask`` that notes the new trial's number on ``objective`` before an interruption can
    land. Optuna's optimize asks for a trial (a store write) and only then calls the objective
    and starts the trial's heartbeat: a SIGTERM or Ctrl-C in between left a trial RUNNING that
    no one would end (this process never learned its number, and no heartbeat goes stale)."""
    def ask_and_note(*args, **kwargs) -> optuna.Trial:
        with interruptions_deferred():
            trial = ask(*args, **kwargs)
            objective.trial_number = trial.number
        return trial
    return ask_and_note


@contextmanager
def interruptions_deferred():
    """Within the block a SIGTERM or SIGINT is only noted; as the block ends the first one noted
    is raised again, to the handler that was there before (signals_as_interrupts' in a command).
    Python handlers, not a signal mask: a masked signal still reaches any other thread that
    does not mask it (MLflow's and Optuna's), and Python then runs the handler at once."""
    if threading.current_thread() is not threading.main_thread():  # handlers are the main thread's
        yield
        return
    noted: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    for signum, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(signum, lambda number, frame: noted.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if noted:
            signal.raise_signal(noted[0])


def end_unended_trial(study: optuna.Study, number: int | None) -> None:
    """Fail trial ``number`` of this process if Optuna could not record its end (a no-op when it did)."""
    if number is None:
        return
    try:
        retried(lambda: study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True),
                attempts=END_TRIAL_ATTEMPTS, pause_s=lambda attempt: 1)
    except Exception as err:  # noqa: BLE001 - the storage is busy or gone: say so, the trial's owner is gone
        log.warning("study %s: trial %d stays RUNNING, its end could not be written (%s); in an RDB "
                    "storage (heartbeats) the next `cnnlab search` on the study fails and retries it",
                    study.study_name, number, err)


def _search_worker(config: Config, prepared: Path, worker: int) -> None:
    from .data import load_view

    run_search(config, load_view(prepared, config.data), worker)


def search_with_workers(config: Config, prepared: Path) -> optuna.Study:
    """``search.workers`` processes on one study, the cores split between them (1: this process)."""
    from .data import load_view
    from .data.prepare import require_prepared
    from .parallel import run_jobs, threads_per_worker

    search = config.search
    if search.workers <= 1:
        return run_search(config, load_view(prepared, config.data))
    require_prepared(prepared)  # before any worker starts or the study is created
    # Create the storage, enqueue the candidates and open the parent run once, here: workers
    # starting together would race to create the schema and could enqueue a candidate twice.
    study, created = open_or_create_study(config)
    enqueue_candidates(study, search)
    ensure_parent_run(study, config, created)
    threads = threads_per_worker(search.workers, config.train.threads)
    worker_config = dataclasses.replace(config, train=dataclasses.replace(config.train, threads=threads))
    log.info("study %s: %d workers of %d thread(s)", search.study, search.workers, threads)
    run_jobs(_search_worker, [(worker_config, prepared, w) for w in range(search.workers)], search.workers,
             describe=lambda job: f"search worker {job[2]} (finished trials stay in the study; "
                                  "run the same command again to resume)")
    return study  # reads the storage on every query, so it sees the workers' trials


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        values = trial.values or []
        rows.append({"number": trial.number, "state": trial.state.name,
                     "val_accuracy": values[0] if values else None,
                     "parameters": trial.user_attrs.get("parameters"), COST_ATTR: trial.user_attrs.get(COST_ATTR),
                     "reason": trial.user_attrs.get("reason", ""),
                     "params": trial.params, "model_kwargs": trial.user_attrs.get("model_kwargs"),
                     "training": trial.user_attrs.get("training"), "epochs": trial.user_attrs.get(EPOCHS_ATTR, 0),
                     "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"), "enqueued": enqueued(trial),
                     "seconds": trial.duration.total_seconds() if trial.duration else None,
                     "completed": trial.datetime_complete.isoformat() if trial.datetime_complete else None})
    return rows


def study_wall_seconds(study: optuna.Study) -> float:
    """Seconds during which at least one trial ran (all workers and resumptions): the union of
    the trials' intervals, so parallel trials count once and the idle gap before a resumption
    not at all."""
    intervals = sorted((t.datetime_start, t.datetime_complete) for t in study.get_trials(deepcopy=False)
                       if t.datetime_start and t.datetime_complete)
    seconds, covered_until = 0.0, None
    for start, end in intervals:
        if covered_until is not None and start < covered_until:
            start = covered_until
        if end > start:
            seconds += (end - start).total_seconds()
        covered_until = end if covered_until is None else max(covered_until, end)
    return seconds


def study_machines(study: optuna.Study) -> list[dict[str, Any]]:
    """The distinct machines the study's trials ran on, in the order they first appear."""
    seen: dict[str, dict[str, Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        if MACHINE_ATTR in trial.user_attrs:
            record = trial.user_attrs[MACHINE_ATTR]
            seen.setdefault(json.dumps(record, sort_keys=True), record)
    return list(seen.values())


def enqueued(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial is a search.enqueue candidate (Optuna marks its fixed parameters)."""
    return "fixed_params" in trial.system_attrs


def best_trials(study: optuna.Study) -> list[dict[str, Any]]:
    """The sampler's best trial (single objective) or its Pareto front (accuracy up, parameters
    down). Enqueued candidates are reference points, never the search's find."""
    found = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
             if not enqueued(t)]
    if len(study.directions) > 1:
        chosen = [t for t in found if not any(dominates(u.values, t.values) for u in found)]
    else:
        chosen = [max(found, key=lambda t: t.values[0])] if found else []
    return [{"number": t.number, "val_accuracy": t.values[0], "parameters": t.user_attrs["parameters"],
             "model_kwargs": t.user_attrs["model_kwargs"], "training": t.user_attrs["training"],
             "params": t.params} for t in chosen]


def dominates(a: list[float], b: list[float]) -> bool:
    """(accuracy, parameters) ``a`` is at least as good as ``b`` in both and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


IMPORTANCE_EVALUATOR = "PED-ANOVA on the negated validation accuracy (what leads to high accuracy)"
# Optuna warns whenever PED-ANOVA is given a target, negated or not; the target here is negated
# on purpose, and the warning's advice (negate it) would read as if the importances were wrong.
PED_ANOVA_TARGET_WARNING = "PedAnovaImportanceEvaluator computes the importances of params to achieve low"


def param_importances(study: optuna.Study) -> dict[str, float]:
    """PED-ANOVA importances of the searched parameters for *high* validation accuracy ({} if too
    few trials): how much each parameter's distribution among the best 10% of trials differs from
    its distribution over all of them. PED-ANOVA ranks what leads to *low* target values, so the
    target is the accuracy negated; given the accuracy itself it would explain the worst trials."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=PED_ANOVA_TARGET_WARNING)
            return dict(optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=lambda t: -t.values[0]))
    except (RuntimeError, ValueError) as err:  # e.g. every trial had the same parameters
        log.warning("parameter importances unavailable: %s", err)
        return {}


def write_summary(study: optuna.Study, path: Path, config: Config) -> dict[str, Any]:
    search = config.search
    baseline = baseline_model(config)
    compute_budget = {"model": baseline.name, "kwargs": baseline.kwargs, "cost_cap": search.cost_cap,
                      "timing_noise": TIMING_NOISE} if baseline else None
    summary = {"study": search.study, "storage_study": study.study_name, "param_budget": search.param_budget,
               "compute_budget": compute_budget, "sampler": search.sampler,
               "startup_trials": search.startup_trials if search.sampler == "tpe" else None, "pruner": search.pruner, "trial_epochs": search.trial_epochs, "epoch_budget": search.epoch_budget,
               "epochs_spent": epochs_spent(study), "wall_seconds": study_wall_seconds(study),
               "machines": study_machines(study),
               "mlflow_parent_run_id": study.user_attrs.get(PARENT_RUN_ATTR), "trials": trials_table(study),
               "best": best_trials(study), "importances": param_importances(study),
               "importance_evaluator": IMPORTANCE_EVALUATOR,
               "states": {s.name: len(study.get_trials(deepcopy=False, states=(s,)))
                          for s in optuna.trial.TrialState}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary

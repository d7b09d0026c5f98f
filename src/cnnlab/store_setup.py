"""Create an MLflow store's tables once, before any stage or worker process opens it.

MLflow creates a new SQLite or PostgreSQL store's tables (its alembic migrations) on a client's
first call. Two processes doing that at once interleave the migrations: each fails on a table or
column the other has just made ("duplicate column name: step", "table ... already exists") and
the store can be left half-migrated. On a fresh clone that is the first command that starts
workers (`cnnlab seeds` with seed_workers > 1: two of three seeds failed at once), or two
commands started together (`dvc exp run --queue -j 2`). So the CLI creates the store, holding the
store's lock (tracking.registry_lock), before it runs a stage that logs to MLflow.

The CLI's module, not a stage's: creating the tables changes no result, so it is no stage's DVC
dependency, and the stages' own code stays what the committed dvc.lock files record.
"""

from __future__ import annotations

from typing import Iterable

from .contract import SOURCE_PREFIX, stage
from .tracking import LOCKABLE_STORES, check_store, client_for, registry_lock, resolve_tracking_uri

TRACKING_SOURCE = f"{SOURCE_PREFIX}/tracking.py"  # a stage logs to MLflow when its code includes it


def logs_to_mlflow(stage_name: str) -> bool:
    """Whether the stage's code (its module's import closure, as dvc.yaml lists it) opens a store."""
    return TRACKING_SOURCE in stage(stage_name).code()


def create_store_for(stage_names: Iterable[str], configured_uri: str) -> None:
    """Before a command runs ``stage_names``: create the store they log to, if any of them logs."""
    if any(logs_to_mlflow(name) for name in stage_names):
        create_store_once(configured_uri)


def create_store_once(configured_uri: str) -> None:
    """Make the store at ``configured_uri`` (tracking.uri; empty: the local default) ready for
    several processes: its tables exist, at MLflow's current schema, when this returns."""
    uri = resolve_tracking_uri(configured_uri)
    if not uri.startswith(LOCKABLE_STORES):
        return  # a tracking server creates its own store's tables, once, before it serves
    check_store(uri)  # a missing folder or a corrupt file: the one-line error, before the lock file
    with registry_lock(uri):
        client = client_for(uri)  # inside the lock: MLflow's client opens the store when it is made
        client.search_experiments(max_results=1)  # the tracking tables
        client.search_registered_models(max_results=1)  # the model registry's

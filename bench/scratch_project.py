"""What the benches that run cnnlab's real commands share: an entry's settings with the datasets
directory, and a scratch project (models, outputs, prepared data, MLflow store) in a temporary
folder, so a measurement never touches the repository's results."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from mlflow import MlflowClient

from cnnlab.config import Config, load_config
from cnnlab.data import SourceContext, load_raw, prepare, prepared_path
from cnnlab.data.prepare import save_prepared

ROOT = Path(__file__).resolve().parents[1]


def entry_settings(experiment: str) -> tuple[list[str], Config] | None:
    """``-S`` settings selecting ``experiment`` with $CNNLAB_DATASETS, and its config; None (after
    saying why) when the datasets directory is not set."""
    datasets = os.environ.get("CNNLAB_DATASETS")
    if not datasets:
        print("set CNNLAB_DATASETS to the datasets directory (../shared/datasets)", file=sys.stderr)
        return None
    settings = [f"experiment={experiment}", f"data.datasets_dir={datasets}", "data.download=false"]
    return settings, load_config(ROOT / "params.yaml", settings)


def scratch_settings(workdir: Path) -> list[str]:
    """Every file a command writes goes under ``workdir``; no model logged, no progress bars."""
    return [f"models_dir={workdir / 'models'}", f"outputs_dir={workdir / 'outputs'}",
            f"data.prepared_dir={workdir / 'prepared'}", f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
            "tracking.log_model=false", "train.progress=false"]


def cli_command(step: str, settings: list[str]) -> list[str]:
    return [sys.executable, "-m", "cnnlab.cli", step, "--params", str(ROOT / "params.yaml"),
            *(word for setting in settings for word in ("-S", setting))]


def prepare_scratch(config: Config, workdir: Path, train_subset: int = 0, val_images: int = 0) -> int:
    """The entry's prepared data (optionally fewer images) and an MLflow store in ``workdir``;
    returns how many images a real epoch of the entry trains on."""
    ctx = SourceContext(raw_dir=workdir / "none", datasets_dir=Path(config.data.datasets_dir), download=False,
                        fallback="error")
    raw = load_raw(config.data.name, ctx)
    full = prepare(raw, config.data.val_fraction, config.data.split_seed)
    data = prepare(raw, config.data.val_fraction, config.data.split_seed, train_subset=train_subset) \
        if train_subset else full
    if val_images:
        data = dataclasses.replace(data, x_val=data.x_val[:val_images], y_val=data.y_val[:val_images])
    save_prepared(data, prepared_path(workdir / "prepared", config.data.name, config.data.image_size))
    # One process creates the MLflow store: several migrating a new SQLite file at once collide.
    MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}").search_experiments()
    return len(full.y_train)

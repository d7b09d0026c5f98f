"""`dvc exp run -S ...` of a tiny variant in a fresh copy of the project, listed by `dvc exp show`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT


def run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_dvc_exp_run_tiny_variant(tmp_path, datasets_dir, tracking_uri):
    repo = tmp_path / "project"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(PROJECT_ROOT / name, repo / name)
    shutil.copytree(PROJECT_ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": tracking_uri, "CNNLAB_DATASETS": str(datasets_dir),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "init"], repo, env)
    run(["dvc", "exp", "run", "-n", "tiny", "-S", "train.epochs=1", "-S", "data.train_subset=2000",
         "-S", "data.download=false", "-S", "tracking.experiment=dvc-test",
         "-S", "train.progress=false"], repo, env)

    show = json.loads(run(["dvc", "exp", "show", "--json"], repo, env))
    experiments = [exp for entry in show for exp in (entry.get("experiments") or [])]
    names = [exp.get("name") for exp in experiments]
    assert "tiny" in names, names
    tiny = next(exp for exp in experiments if exp.get("name") == "tiny")["revs"][0]["data"]
    params = tiny["params"]["params.yaml"]["data"]
    assert params["train"]["epochs"] == 1
    metrics = tiny["metrics"]
    test_accuracy = metrics["outputs/e1_mnist_simple_cnn/eval.json"]["data"]["test_accuracy"]
    assert test_accuracy > 0.6  # chance is 0.1
    assert metrics["outputs/e1_mnist_simple_cnn/onnx_parity.json"]["data"]["passed"] is True
    registered = json.loads((repo / "outputs/e1_mnist_simple_cnn/registered.json").read_text())
    assert registered["version"] >= 1

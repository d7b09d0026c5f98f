"""`dvc repro` and `dvc exp run -S ...` in a fresh copy of the project, on tiny MNIST: whatever
training reads, changed through DVC, retrains and changes the recorded metrics; so does an
edit of code training runs."""

import json
from pathlib import Path

import pytest

from .conftest import run

E1 = "outputs/e1_mnist_simple_cnn"


def recorded(repo: Path) -> tuple[float, float]:
    train = json.loads((repo / E1 / "train_metrics.json").read_text())
    evaluation = json.loads((repo / E1 / "eval.json").read_text())
    return train["best_val_accuracy"], evaluation["test_accuracy"]


@pytest.mark.slow
def test_what_training_reads_retrains_through_dvc(project):
    repo, env = project
    out = run(["dvc", "repro"], repo, env)  # the whole main pipeline, register included
    assert "Running stage 'register'" in out
    registered = json.loads((repo / E1 / "registered.json").read_text())
    assert registered["version"] >= 1
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "baseline"], repo, env)
    before = recorded(repo)

    for name, override in (("subset", "data.train_subset=1000"), ("frozen", "transfer.policy=last_layer"),
                           ("flip", "train.augment.hflip=true")):
        out = run(["dvc", "exp", "run", "evaluate", "-n", name, "-S", override], repo, env)
        assert "Running stage 'train'" in out, f"{override} did not retrain:\n{out[-2000:]}"
        after = recorded(repo)
        assert after != before, f"{override} retrained but recorded the same metrics {after}"
        before = after

    show = json.loads(run(["dvc", "exp", "show", "--json"], repo, env))
    experiments = {exp.get("name"): exp["revs"][0]["data"] for entry in show for exp in entry.get("experiments") or []}
    assert {"subset", "frozen", "flip"} <= set(experiments)
    assert experiments["subset"]["params"]["params.yaml"]["data"]["data"]["train_subset"] == 1000

    # A progress bar is no param: turning it off retrains nothing.
    out = run(["dvc", "exp", "run", "evaluate", "-n", "quiet", "-S", "train.progress=true"], repo, env)
    assert "Running stage 'train'" not in out

    # Code that training runs is a dependency: an edit re-runs train.
    augment = repo / "src" / "cnnlab" / "augment.py"
    augment.write_text(augment.read_text() + "\n# an edit\n")
    assert "src/cnnlab/augment.py" in run(["dvc", "status", "train"], repo, env)
    assert "Running stage 'train'" in run(["dvc", "repro", "evaluate"], repo, env)

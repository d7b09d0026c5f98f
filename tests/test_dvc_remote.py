"""DVC remote storage: a tiny `dvc repro` pushed to a real S3 endpoint (moto's server on loopback)
comes back in a fresh `git clone` with `dvc pull`, byte for byte, so nothing retrains there; and
`dvc push` with no remote named fills the default folder the committed .dvc/config names."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import S3_BUCKET, S3_ENV, dvc_project_copy, run

E1_MODEL = "models/e1_mnist_simple_cnn"
E1_OUTPUTS = "outputs/e1_mnist_simple_cnn"


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, tracking_uri):
    """A copy of the project (embedded digits, no model logged to MLflow: seconds saved) whose
    prepare → train → evaluate ran under `dvc repro` and is committed, dvc.lock included."""
    repo = tmp_path_factory.mktemp("remote") / "project"
    env = dvc_project_copy(repo, tracking_uri, "dvc-remote-test", tracking={"log_model": False})
    run(["dvc", "repro", "evaluate"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "E1, tiny"], repo, env)
    return repo, env


def add_s3_remote(repo: Path, env: dict, endpoint: str, *default: str) -> None:
    """The README's S3/MinIO set-up: the remote and its endpoint in .dvc/config.local (not in git)."""
    run(["dvc", "remote", "add", "--local", *default, "s3", f"s3://{S3_BUCKET}/cnnlab"], repo, env)
    run(["dvc", "remote", "modify", "--local", "s3", "endpointurl", endpoint], repo, env)


def lock_outs(repo: Path) -> dict[str, str]:
    """Every output dvc.lock records (path -> md5), cached or not."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


@pytest.mark.slow
def test_a_fresh_clone_pulls_what_was_pushed_and_retrains_nothing(reproduced, s3_endpoint, tmp_path):
    repo, env = reproduced
    env = env | S3_ENV
    add_s3_remote(repo, env, s3_endpoint)
    assert run(["git", "status", "--porcelain"], repo, env) == ""  # the remote stays out of git
    assert "files pushed" in run(["dvc", "push", "-r", "s3"], repo, env)

    # A second machine: a clone of the git repo, its own MLflow store, the same remote set up by hand.
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    clone_env = env | {"PYTHONPATH": str(clone / "src"),
                       "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow-machine2.db'}"}
    add_s3_remote(clone, clone_env, s3_endpoint, "-d")
    assert not (clone / E1_MODEL / "best.pt").exists()
    run(["dvc", "pull", "--with-deps", "evaluate"], clone, clone_env)  # what ran here; README: `dvc pull dvc.yaml`

    outs = lock_outs(repo)
    assert {"data/prepared/mnist.pt", f"{E1_MODEL}/best.pt", f"{E1_OUTPUTS}/eval.json"} <= set(outs)
    for path in outs:  # the model, the prepared data, the metrics: all byte for byte
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path
    out = run(["dvc", "repro", "evaluate"], clone, clone_env)
    assert "Running stage" not in out and "Data and pipelines are up to date." in out, out
    assert "Data and pipelines are up to date." in run(["dvc", "status", "evaluate"], clone, clone_env)

    # The pulled model scores what was recorded: evaluate it again (through DVC: it owns predictions.json).
    recorded = json.loads((repo / E1_OUTPUTS / "eval.json").read_text())
    out = run(["dvc", "repro", "--force", "--single-item", "evaluate"], clone, clone_env)
    assert "logging to a new run" in out  # this machine's MLflow store lacks the run run.json names
    again = json.loads((clone / E1_OUTPUTS / "eval.json").read_text())
    assert again["test_accuracy"] == recorded["test_accuracy"]
    assert again == recorded  # errors, confusion matrix, per-class accuracy too


@pytest.mark.slow
def test_push_with_no_remote_named_fills_the_default_folder(reproduced, tmp_path):
    repo, env = reproduced
    env = env | {"HOME": str(tmp_path)}  # the committed url is under ~: here, a fresh empty home
    config = dict(line.split("=", 1) for line in run(["dvc", "config", "--list"], repo, env).splitlines())
    name = config["core.remote"]
    storage = Path(config[f"remote.{name}.url"])  # as DVC resolves it: ~ expanded
    assert storage.is_relative_to(tmp_path) and not storage.exists()
    # A storage folder that does not exist yet is no error: everything is simply not pushed yet.
    assert "new:" in run(["dvc", "status", "--cloud"], repo, env)
    assert "files pushed" in run(["dvc", "push"], repo, env)
    assert f"Cache and remote '{name}' are in sync." in run(["dvc", "status", "--cloud"], repo, env)
    best = lock_outs(repo)[f"{E1_MODEL}/best.pt"]
    assert (storage / "files" / "md5" / best[:2] / best[2:]).is_file()


@pytest.mark.slow
def test_provenance_tells_a_stale_result_from_a_file_only_missing_in_a_fresh_clone(reproduced, tmp_path):
    """`dvc status` in a fresh clone lists the model and prepared data as not in cache; provenance
    calls the committed results current, and stale only once code, inputs or outputs change."""
    from cnnlab.provenance import provenance

    repo, env = reproduced
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    env = env | {"PYTHONPATH": str(clone / "src")}
    assert "not in cache" in run(["dvc", "status", "evaluate"], clone, env)

    def states() -> dict[str, tuple[str, ...]]:
        return {row.stage.split(":")[-1]: row.stale for row in provenance(clone)}

    fresh = states()
    assert fresh["prepare"] == fresh["train"] == fresh["evaluate"] == ()
    assert fresh["analyze"] == ("never ran under DVC (no dvc.lock entry)",)
    missing = {path for row in provenance(clone) for path in row.missing}
    assert {"data/prepared/mnist.pt", f"{E1_MODEL}/best.pt"} <= missing

    out = subprocess.run([sys.executable, "-m", "cnnlab.cli", "provenance", "--check"], cwd=clone, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "current  dvc.yaml:train" in out.stdout and "do not follow" in out.stderr

    # Code that only training runs changed: train is stale, and evaluate with it (it reads train's model).
    train_stage = clone / "src" / "cnnlab" / "stages" / "train.py"
    train_stage.write_text(train_stage.read_text() + "\n# an edit\n")
    edited = states()
    assert "src/cnnlab/stages/train.py modified" in edited["train"]
    assert edited["evaluate"] == ("upstream dvc.yaml:train is stale",) and edited["prepare"] == ()
    run(["git", "checkout", "--", "src"], clone, env)

    # A committed result that differs from what dvc.lock recorded; a lock whose chain does not hold.
    (clone / E1_OUTPUTS / "eval.json").write_text("{}")
    lock = clone / "dvc.lock"
    recorded = yaml.safe_load(lock.read_text())
    for dep in recorded["stages"]["train"]["deps"]:
        if dep["path"] == "data/prepared/mnist.pt":
            dep["md5"] = "0" * 32
    lock.write_text(yaml.safe_dump(recorded, sort_keys=False))
    broken = states()
    assert f"output {E1_OUTPUTS}/eval.json modified" in broken["evaluate"]
    assert "input data/prepared/mnist.pt is not what dvc.yaml:prepare recorded" in broken["train"]

"""No data loss through DVC: run directly, a command refuses to write a file a dvc.yaml stage
caches, before it does anything; under DVC, or as a run of its own name, it writes."""

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from cnnlab.cli import main, stages_of
from cnnlab.config import ConfigError, load_config, split_overrides
from cnnlab.contract import PIPELINE
from cnnlab.dvc_guard import refuse_uncached_writes

from .conftest import PROJECT_ROOT, run, settings_copy

RUN_FIX = "give this run its own name with `-S run=<name>`"


@pytest.fixture
def copy(tmp_path, monkeypatch):
    """The project's params, catalogue and dvc.yaml files in a folder that is the working
    directory, run outside DVC, with no datasets directory (MNIST is the embedded digits)."""
    settings_copy(tmp_path, monkeypatch)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    monkeypatch.delenv("CNNLAB_DATASETS", raising=False)
    return tmp_path


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("command, file, owner, repro, own_name", [
    ("train", "models/e1_mnist_simple_cnn/best.pt", "train", "dvc.yaml:train", RUN_FIX),
    ("prepare", "data/prepared/mnist.pt", "prepare", "dvc.yaml:prepare", "-S data.prepared_dir=<folder>"),
    ("pipeline", "data/prepared/mnist.pt", "prepare", "dvc.yaml:export",
     "`-S data.prepared_dir=<folder>` and give this run its own name with `-S run=<name>`"),
])
def test_a_cached_output_is_refused_outside_dvc(copy, capsys, command, file, owner, repro, own_name):
    before = files_under(copy)
    assert main([command, "--params", str(copy / "params.yaml"), "-S", "data.download=false"]) == 2
    err = capsys.readouterr().err
    assert f"cnnlab {command}: error: {file} is a cached output of stage `{owner}` in dvc.yaml" in err
    assert f"Run it through DVC so the file is cached: `dvc repro {repro}` (or `dvc exp run {repro}" in err
    assert own_name in err
    assert files_under(copy) == before  # nothing written, nothing changed


def test_catalogue_and_study_outputs_name_their_stage(copy):
    params = copy / "params.yaml"
    with pytest.raises(ConfigError, match=r"models/e1_resume/best.pt is a cached output of stage `train-e1_resume` "
                                          r"in experiments/dvc.yaml.*`dvc repro experiments/dvc.yaml:train-e1_resume`"):
        refuse_uncached_writes(stages_of("train"), load_config(params, ["experiment=e1_resume"]), params)
    # A folder out (the winner's models): the study name moves it.
    with pytest.raises(ConfigError, match=r"models/e5_search_winner is a cached output of stage "
                                          r"`retrain_best-e5_search`.*-S search.study=<name>"):
        refuse_uncached_writes(stages_of("retrain-best"), load_config(params, ["experiment=e5_search"]), params)
    # Each seed's checkpoints of a seeds stage: the run's name moves them.
    with pytest.raises(ConfigError, match=r"models/e5_search/seed0 is a cached output of stage "
                                          r"`seeds-e5_search`.*-S run=<name>"):
        refuse_uncached_writes(stages_of("seeds"), load_config(params, ["experiment=e5_search"]), params)


def test_runs_of_their_own_are_allowed(copy):
    params = copy / "params.yaml"
    refuse_uncached_writes(stages_of("train"), load_config(params, ["run=mine"]), params)
    refuse_uncached_writes(PIPELINE, load_config(params, ["run=mine", f"data.prepared_dir={copy / 'mine'}"]), params)
    for command in ("seeds", "search", "search-report", "freeze-sweep", "compare", "report"):  # nothing cached
        refuse_uncached_writes(stages_of(command), load_config(params, ["experiment=e4_base"]), params)
    for command in ("search", "search-report", "compare", "report"):
        refuse_uncached_writes(stages_of(command), load_config(params, ["experiment=e5_search"]), params)

    assert main(["prepare", "--params", str(params), "-S", "data.download=false",
                 "-S", f"data.prepared_dir={copy / 'mine'}"]) == 0
    assert (copy / "mine" / "mnist.pt").is_file()


def test_mlproject_default_run_is_its_own(copy):
    entry_points = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]
    for name, entry in entry_points.items():
        overrides = split_overrides([entry["parameters"]["overrides"]["default"]])
        config = load_config(copy / "params.yaml", overrides)
        refuse_uncached_writes(stages_of("pipeline" if name == "main" else name), config, copy / "params.yaml")


def test_under_dvc_the_check_passes(copy, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "prepare")  # what DVC sets for every stage command it runs
    assert main(["prepare", "--params", str(copy / "params.yaml"), "-S", "data.download=false"]) == 0
    assert (copy / "data" / "prepared" / "mnist.pt").is_file()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_the_issue_sequence_loses_nothing(project):
    """Issue 13: `cnnlab prepare` + `cnnlab train`, then a failing `dvc exp run`, lost the model
    and the prepared data. Now the direct commands refuse, `dvc repro` caches, and whatever a
    failing experiment deletes comes back with `dvc checkout`."""
    repo, env = project
    for command, file in (("prepare", "data/prepared/mnist.pt"), ("train", "models/e1_mnist_simple_cnn/best.pt")):
        result = subprocess.run(["cnnlab", command], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        assert f"{file} is a cached output of stage `{command}` in dvc.yaml" in result.stderr
        assert f"`dvc repro dvc.yaml:{command}`" in result.stderr
    assert not (repo / "data" / "prepared" / "mnist.pt").exists() and not (repo / "models").exists()

    run(["dvc", "repro", "train"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "trained"], repo, env)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    kept = {out["path"]: out["md5"] for name in ("prepare", "train") for out in lock[name]["outs"]}
    files = ("models/e1_mnist_simple_cnn/best.pt", "data/prepared/mnist.pt")

    failed = subprocess.run(["dvc", "exp", "run", "-S", "train.lr=-1"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=600)
    assert failed.returncode != 0 and "train.lr: -1.0 is not allowed" in failed.stdout + failed.stderr
    assert not (repo / files[0]).exists()  # DVC deleted the stage's outputs before running it

    run(["git", "checkout", "params.yaml"], repo, env)
    run(["dvc", "checkout", "--with-deps", "train"], repo, env)  # only these stages ran here
    for file in files:
        assert (repo / file).is_file(), f"{file} was not restored"
        assert md5(repo / file) == kept[file]

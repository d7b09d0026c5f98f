"""No run on data other than it records: a command refuses a prepared dataset made with other
split settings, or the embedded digits in place of MNIST once a datasets directory is set,
before it writes anything or opens the MLflow store; under DVC too."""

import pytest

from cnnlab.cli import main, stages_of
from cnnlab.config import ConfigError, load_config
from cnnlab.prepared_guard import prepared_provenance, refuse_mismatched_prepared

from .conftest import settings_copy


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The project's params, catalogue and dvc.yaml files in the working directory, MNIST prepared
    where dvc.yaml's `prepare` writes it (as DVC runs it) with no datasets directory: the embedded
    digits. The store a run would open is under tmp_path."""
    settings_copy(tmp_path, monkeypatch)
    monkeypatch.delenv("CNNLAB_DATASETS", raising=False)
    monkeypatch.setenv("DVC_STAGE", "prepare")
    assert main(["prepare", "--params", str(tmp_path / "params.yaml"), "-S", "data.download=false"]) == 0
    monkeypatch.delenv("DVC_STAGE")
    assert prepared_provenance(tmp_path / "data" / "prepared" / "mnist.pt")["embedded"] is True
    return tmp_path


def command(project, name: str, *overrides: str) -> list[str]:
    """``name`` as a run of its own name (so DVC's cached files are not what it writes)."""
    settings = ["run=mine", "data.download=false", "train.epochs=1", f"tracking.uri=sqlite:///{project / 'mlflow.db'}",
                *overrides]
    return [name, "--params", str(project / "params.yaml"), *[word for s in settings for word in ("-S", s)]]


@pytest.mark.parametrize("override, recorded, asked", [
    ("data.val_fraction=0.2", "data.val_fraction=0.1", "0.2"),
    ("data.split_seed=3", "data.split_seed=0", "3"),
])
def test_a_split_other_than_the_prepared_one_is_refused_before_anything_is_written(project, capsys, override,
                                                                                   recorded, asked):
    before = sorted(p for p in project.rglob("*"))
    assert main(command(project, "train", override)) == 2
    err = capsys.readouterr().err
    refused = f"cnnlab train: error: data/prepared/mnist.pt was prepared with {recorded} (this run asks for {asked})"
    assert refused in err
    assert "`-S data.prepared_dir=<folder>`" in err and "dvc exp run -S" in err
    assert sorted(p for p in project.rglob("*")) == before  # no checkpoint, no outputs, no MLflow store


def test_the_embedded_digits_are_refused_for_mnist_once_a_datasets_directory_is_set(project, monkeypatch, capsys):
    params = project / "params.yaml"
    refuse_mismatched_prepared(stages_of("train"), load_config(params, ["run=mine"]), params)  # none set: the digits

    monkeypatch.setenv("CNNLAB_DATASETS", str(project))  # set after the file was prepared
    monkeypatch.setenv("DVC_STAGE", "train")  # under DVC as well: it re-runs train, not the unchanged prepare
    assert main(command(project, "train")) == 2
    err = capsys.readouterr().err
    assert (f"data/prepared/mnist.pt holds the embedded 5,000 MNIST digits, prepared when no datasets directory was "
            f"set; one is set now ({project})") in err
    # DVC owns the file, and sees no change in it: the fix forces its stage.
    assert "`dvc repro --force --single-item dvc.yaml:prepare`, then `dvc repro`" in err
    assert not (project / "mlflow.db").exists()

    monkeypatch.delenv("CNNLAB_DATASETS")
    with pytest.raises(ConfigError, match="embedded 5,000 MNIST digits"):  # the setting, not only the variable
        refuse_mismatched_prepared(stages_of("evaluate"), load_config(params, [f"data.datasets_dir={project}"]),
                                   params)


def test_commands_that_prepare_first_or_read_no_prepared_data_pass(project):
    params = project / "params.yaml"
    other_split = load_config(params, ["run=mine", "data.val_fraction=0.2", f"data.prepared_dir={project / 'mine'}"])
    refuse_mismatched_prepared(stages_of("pipeline"), other_split, params)  # it prepares that split first
    refuse_mismatched_prepared(stages_of("prepare"), other_split, params)
    shifted = load_config(params, ["run=mine", "data.val_fraction=0.2"])
    for name in ("report", "register", "compare", "datasets"):  # they read results, or nothing prepared
        refuse_mismatched_prepared(stages_of(name), shifted, params)
    with pytest.raises(ConfigError, match="data.val_fraction=0.1"):
        refuse_mismatched_prepared(stages_of("search"), shifted, params)  # sweeps read it too
    # Not prepared yet: the stage itself says how to make it.
    refuse_mismatched_prepared(stages_of("train"), load_config(params, ["data.prepared_dir=nowhere"]), params)

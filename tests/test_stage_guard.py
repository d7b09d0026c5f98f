"""Under DVC, a stage of a dvc.yaml that the settings no longer generate is refused before it
runs: DVC would otherwise record the old declarations' results as the new experiment's."""

import pytest
import yaml

from cnnlab import stage_guard
from cnnlab.cli import stages_of
from cnnlab.config import ConfigError, load_config
from cnnlab.dvcgen import LAYOUT_KEYS, read_dvc_file
from cnnlab.stage_guard import VERIFIED_DIR, refuse_stale_pipeline

from .conftest import PROJECT_ROOT, settings_copy


@pytest.fixture
def copy(tmp_path, monkeypatch):
    """The project's settings and dvc.yaml files, as committed, in the working directory."""
    return settings_copy(tmp_path, monkeypatch)


def set_params(path, **top_level) -> None:
    params = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**params, **top_level}, sort_keys=False))


def check(copy, command: str, address: str, monkeypatch) -> None:
    monkeypatch.setenv("DVC_STAGE", address)
    params = copy / "params.yaml"
    refuse_stale_pipeline(stages_of(command), load_config(params), params)


def test_settings_that_move_the_outputs_or_the_entry_are_refused_under_dvc(copy, monkeypatch):
    check(copy, "train", "train", monkeypatch)  # as committed: the file is what they generate
    assert len(list((copy / VERIFIED_DIR).iterdir())) == 1

    set_params(copy / "params.yaml", outputs_dir="elsewhere")
    with pytest.raises(ConfigError, match=r"DVC runs stage `train` of dvc.yaml, which is not what params.yaml, "
                                          r"catalogue.yaml and the code generate now \(stage `train`: its outs, "
                                          r"metrics, plots differ\).*`cnnlab dvc-yaml`"):
        check(copy, "train", "train", monkeypatch)

    set_params(copy / "params.yaml", outputs_dir="outputs", experiment="e4_base")
    with pytest.raises(ConfigError, match=r"the settings no longer generate that file: params.yaml's experiment "
                                          r"e4_base must have `pipeline: main`.*e4_base runs from "
                                          r"experiments/dvc.yaml: `dvc exp run experiments/dvc.yaml:report-e4_base`"):
        check(copy, "prepare", "prepare", monkeypatch)

    monkeypatch.delenv("DVC_STAGE")  # outside DVC, nothing is declared to hold: cnnlab.dvc_guard's rules apply
    params = copy / "params.yaml"
    refuse_stale_pipeline(stages_of("train"), load_config(params), params)


def test_a_catalogue_edit_refuses_the_catalogue_pipeline_s_stages(copy, monkeypatch):
    catalogue = copy / "catalogue.yaml"
    catalogue.write_text(catalogue.read_text().replace("    train: {epochs: 5}\n", "    train: {epochs: 5}\n"
                                                       "    data: {image_size: 40}\n", 1))  # E4's base: a new size
    with pytest.raises(ConfigError, match=r"stage `train-e4_base` of experiments/dvc.yaml.*\(it has no stage "
                                          r"`prepare-cifar10_40px`\)"):
        check(copy, "train", "experiments/dvc.yaml:train-e4_base", monkeypatch)
    check(copy, "train", "demo/dvc.yaml:train", monkeypatch)  # the demo's file is as generated still


def test_the_check_runs_once_per_state_of_settings_file_and_code(copy, monkeypatch):
    generations = []
    generate = stage_guard.generated_file
    monkeypatch.setattr(stage_guard, "generated_file", lambda *a: generations.append(a) or generate(*a))
    for _ in range(3):
        check(copy, "evaluate", "evaluate", monkeypatch)
    assert len(generations) == 1
    set_params(copy / "params.yaml", seeds=[0, 1])  # any edit: checked again, and passes (no stage's layout)
    check(copy, "evaluate", "evaluate", monkeypatch)
    assert len(generations) == 2


def test_each_pipeline_s_root_stage_declares_the_layout_settings():
    """So that DVC re-runs something when one changes, and the check above gets to run."""
    for dvc_file, roots in (("dvc.yaml", ["prepare"]), ("demo/dvc.yaml", ["prepare"]),
                            ("experiments/dvc.yaml", ["prepare-cifar10", "prepare-alien_vs_predator_128px"])):
        stages = read_dvc_file(PROJECT_ROOT / dvc_file)["stages"]
        for root in roots:
            assert set(LAYOUT_KEYS) <= {p for p in stages[root]["params"] if isinstance(p, str)}, (dvc_file, root)
    # Only there: a later stage that declared them would re-run, and retrain, for a name.
    assert not set(LAYOUT_KEYS) & set(read_dvc_file(PROJECT_ROOT / "dvc.yaml")["stages"]["train"]["params"])

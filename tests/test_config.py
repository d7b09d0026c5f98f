import dataclasses
import typing
from typing import Annotated

import pytest
import yaml
from annotated_types import Ge, Gt, Interval, Le, Lt

from cnnlab.cli import main
from cnnlab.config import (Config, ConfigError, apply_overrides, catalogue_for, config_from_dict, flatten, load_config,
                           read_run_config, save_config)

from .conftest import PROJECT_ROOT


def test_project_params_load_and_match_defaults_shape():
    config = load_config(PROJECT_ROOT / "params.yaml")
    assert isinstance(config, Config)
    assert config.model.name == "simple_cnn"
    assert config.train.epochs == 10


def test_unknown_key_names_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(PROJECT_ROOT / "params.yaml", ["train.learning_rate=0.1"])
    message = str(err.value)
    assert "'learning_rate'" in message and "section 'train'" in message and "lr" in message


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="valid keys: experiment"):
        config_from_dict({"trian": {}})


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs=ten", "train.epochs: expected an integer"),
    ("train.epochs=1.5", "train.epochs: expected an integer"),
    ("train.lr=fast", "train.lr: expected a number"),
    ("train.progress=1", "train.progress: expected true or false"),
    ("train.optimizer=adagrad", "choose one of 'adam', 'adamw', 'sgd', 'rmsprop'"),
    ("train.weight_decay_layers=conv1", "expected a list"),
    ("train.augment=3", "expected a mapping"),
])
def test_wrong_types_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_config(PROJECT_ROOT / "params.yaml", [override])


def test_overrides_parse_yaml_values_like_dvc():
    config = load_config(PROJECT_ROOT / "params.yaml", [
        "train.lr=5e-4", "train.epochs=3", "train.weight_decay_layers=[fc1, conv2]",
        "model.kwargs.dropout=0.3", "train.augment.hflip=true",
    ])
    assert config.train.lr == pytest.approx(5e-4)
    assert config.train.epochs == 3
    assert config.train.weight_decay_layers == ["fc1", "conv2"]
    assert config.model.kwargs == {"dropout": 0.3}
    assert config.train.augment.hflip is True


def test_int_is_accepted_where_a_float_is_expected():
    assert load_config(PROJECT_ROOT / "params.yaml", ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize("bad", ["train.lr", "=3", "train.lr=[1,"])
def test_malformed_overrides(bad):
    with pytest.raises(ConfigError):
        apply_overrides({}, [bad])


def test_override_cannot_descend_into_a_value():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"train": {"lr": 1}}, ["train.lr.x=2"])


def test_resolved_config_round_trips(tmp_path):
    config = load_config(PROJECT_ROOT / "params.yaml", ["train.lr=0.01"])
    path = save_config(config, tmp_path / "config.yaml")
    assert read_run_config(path) == config
    assert flatten(yaml.safe_load(path.read_text()))["train.lr"] == 0.01


def test_a_run_saves_its_own_settings_only(tmp_path):
    config = load_config(PROJECT_ROOT / "params.yaml", ["experiment=e4_augment"])
    saved = yaml.safe_load(save_config(config, tmp_path / "config.yaml").read_text())
    assert set(saved) == {f.name for f in dataclasses.fields(Config)}
    assert not {"experiments", "bases", "reference", "transfer_experiments"} & set(flatten(saved))
    assert len(yaml.safe_dump(saved).splitlines()) < 200  # was 369 with the whole catalogue; server: and the recipe search space add ~35


def test_code_defaults_equal_params_yaml():
    """Defaults live in params.yaml; the dataclasses must not say otherwise."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    from_params = config_from_dict(params).to_dict()
    from_code = Config().to_dict()
    differing = {k: (from_code.get(k), v) for k, v in flatten(from_params).items() if flatten(from_code).get(k) != v}
    assert not differing
    assert set(flatten(from_code)) == set(flatten(from_params))  # every setting is in params.yaml


def test_missing_and_invalid_params_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_missing_section_is_an_error_naming_it(tmp_path):
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    del params["train"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="has no train section"):
        load_config(path)


def test_experiment_overlay_then_command_line():
    config = load_config(PROJECT_ROOT / "params.yaml", ["experiment=e2_cifar10_alexnet", "train.epochs=2"])
    assert config.data.name == "cifar10" and config.model.name == "reduced_alexnet"
    assert config.train.epochs == 2  # the command line wins over the overlay
    assert config.train.lr == 0.001  # inherited from the base section
    assert catalogue_for(PROJECT_ROOT / "params.yaml").reference("e2_cifar10_alexnet")["best_val_accuracy"] == [0.7065, 0.72]


def test_entries_extend_bases_and_each_other():
    config = load_config(PROJECT_ROOT / "params.yaml", ["experiment=e7_alexnet_cs_hf"])
    assert (config.data.name, config.data.val_fraction, config.model.name) == ("caltech101", 0.5, "alexnet")
    assert config.model.kwargs == {"pretrained": True} and config.transfer.policy == "freeze_conv"
    assert (config.train.epochs, config.train.step_size, config.train.lr) == (20, 10, 0.001)
    assert config.train.augment.pipeline == "cs_hf"
    fine = load_config(PROJECT_ROOT / "params.yaml", ["experiment=e8_finetune_aug"])  # extends e8_last_layer
    assert fine.transfer.policy == "last_layer" and fine.train.epochs == 25 and fine.train.batch_size == 32


def test_reference_and_bases_are_not_runs():
    catalogue = catalogue_for(PROJECT_ROOT / "params.yaml")
    assert "test_accuracy" not in catalogue.reference("e4_exp_decay")
    assert catalogue.reference("e3_mnist_k3_s1_none")["test_accuracy"] == 0.9754  # its own, not its parent's
    assert "caltech" not in catalogue.experiments()
    assert catalogue.pipeline("e7_resnet50_train_all") == "none"  # inherited from the caltech base
    with pytest.raises(ConfigError, match="not in"):
        load_config(PROJECT_ROOT / "params.yaml", ["experiment=caltech"])


def test_unknown_experiment_lists_defined_ones():
    with pytest.raises(ConfigError, match="defined: e1_mnist_simple_cnn, e1_resume, e1_fast, e2_cifar10_alexnet"):
        load_config(PROJECT_ROOT / "params.yaml", ["experiment=e9"])


def write_project(tmp_path, edit_catalogue) -> str:
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    catalogue = yaml.safe_load((PROJECT_ROOT / "catalogue.yaml").read_text())
    edit_catalogue(catalogue)
    (tmp_path / "catalogue.yaml").write_text(yaml.safe_dump(catalogue))
    return str(tmp_path / "params.yaml")


def test_a_typo_in_any_experiment_fails_at_load(tmp_path):
    params = write_project(tmp_path, lambda c: c["experiments"]["e4_sgd"]["train"].update(lrate=0.1))
    with pytest.raises(ConfigError, match=r"experiments.e4_sgd: unknown setting 'lrate'"):
        load_config(params)


@pytest.mark.parametrize("edit, fragment", [
    (lambda c: c["experiments"]["e4_sgd"].update(extends="e4_nope"), "extends 'e4_nope', which is not defined"),
    (lambda c: c["experiments"]["e4_sgd"]["train"].update(lr=-0.1),
     "experiments.e4_sgd: train.lr: -0.1 is not allowed; it must be > 0"),
    (lambda c: c["bases"]["cifar10"].update(extends="e3_cifar"), "loops"),
    (lambda c: c["experiments"]["e4_sgd"].update(run="x"), "cannot set `experiment` or `run`"),
])
def test_broken_catalogues_fail_with_the_entry_named(tmp_path, edit, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(write_project(tmp_path, edit))


def test_changing_the_dataset_on_the_command_line_names_another_run():
    params = PROJECT_ROOT / "params.yaml"
    e1 = load_config(params)
    fashion = load_config(params, ["data.name=fashion_mnist"])
    assert fashion.name == "e1_mnist_simple_cnn-fashion_mnist" and fashion.experiment == "e1_mnist_simple_cnn"
    assert fashion.output_dir != e1.output_dir and fashion.model_dir != e1.model_dir
    assert load_config(params, ["model.kwargs.kernel_size=5", "experiment=e3_mnist_k5_s1_same"]).name \
        == "e3_mnist_k5_s1_same-kernel_size5"
    assert load_config(params, ["data.name=fashion_mnist", "run=fashion"]).name == "fashion"
    assert load_config(params, ["train.epochs=1"]).name == "e1_mnist_simple_cnn"  # a recipe tweak stays the run


def test_run_cannot_be_set_in_params_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((PROJECT_ROOT / "params.yaml").read_text() + "run: mine\n")
    with pytest.raises(ConfigError, match="command line only"):
        load_config(path)


def test_one_string_of_overrides_as_mlflow_projects_pass_them():
    config = load_config(PROJECT_ROOT / "params.yaml", ["train.epochs=1 train.lr=0.01 experiment=e4_base",
                                                        "train.weight_decay_layers=[fc1, conv2]"])
    assert config.train.epochs == 1 and config.train.lr == 0.01 and config.experiment == "e4_base"
    assert config.train.weight_decay_layers == ["fc1", "conv2"]


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=-1", "train.batch_size: -1 is not allowed; it must be >= 1"),
    ("train.batch_size=0", "train.batch_size: 0 is not allowed; it must be >= 1"),
    ("train.epochs=0", "train.epochs: 0 is not allowed; it must be >= 1"),
    ("train.epochs=-3", "train.epochs: -3 is not allowed; it must be >= 1"),
    ("train.eval_batch_size=0", "train.eval_batch_size: 0 is not allowed; it must be >= 1"),
    ("train.lr=-1", "train.lr: -1.0 is not allowed; it must be > 0"),
    ("train.lr=0", "train.lr: 0.0 is not allowed; it must be > 0"),
    ("train.momentum=1", "train.momentum: 1.0 is not allowed; it must be in [0, 1)"),
    ("train.weight_decay=-1e-4", "train.weight_decay: -0.0001 is not allowed; it must be >= 0"),
    ("train.step_size=0", "train.step_size: 0 is not allowed; it must be >= 1"),
    ("train.gamma=0", "train.gamma: 0.0 is not allowed; it must be in (0, 1]"),
    ("train.gamma=1.5", "train.gamma: 1.5 is not allowed; it must be in (0, 1]"),
    ("train.seed=-1", "train.seed: -1 is not allowed; it must be in [0, 4294967296)"),
    ("train.threads=-4", "train.threads: -4 is not allowed; it must be >= 0"),
    ("train.label_smoothing=1", "train.label_smoothing: 1.0 is not allowed; it must be in [0, 1)"),
    ("train.augment.crop_padding=-2", "train.augment.crop_padding: -2 is not allowed; it must be >= 0"),
    ("train.augment.rotation_degrees=200", "train.augment.rotation_degrees: 200.0 is not allowed; it must be in [0, 180]"),
    ("train.augment.pipeline_p=1.5", "train.augment.pipeline_p: 1.5 is not allowed; it must be in [0, 1]"),
    ("train.hard_batch_mining.start_epoch=-1", "train.hard_batch_mining.start_epoch: -1 is not allowed; it must be >= 0"),
    ("train.hard_batch_mining.fraction=0", "train.hard_batch_mining.fraction: 0.0 is not allowed; it must be in (0, 1]"),
    ("data.val_fraction=1", "data.val_fraction: 1.0 is not allowed; it must be in (0, 1)"),
    ("data.val_fraction=0", "data.val_fraction: 0.0 is not allowed; it must be in (0, 1)"),
    ("data.train_subset=-1", "data.train_subset: -1 is not allowed; it must be >= 0"),
    ("data.image_size=-28", "data.image_size: -28 is not allowed; it must be >= 0"),
    ("transfer.freeze_k=-1", "transfer.freeze_k: -1 is not allowed; it must be >= 0"),
    ("transfer.sweep_k=[0, -2]", "transfer.sweep_k[1]: -2 is not allowed; it must be >= 0"),
    ("transfer.svm_c=0", "transfer.svm_c: 0.0 is not allowed; it must be > 0"),
    ("analysis.tsne_points=1", "analysis.tsne_points: 1 is not allowed; it must be >= 2"),
    ("analysis.histogram_bins=0", "analysis.histogram_bins: 0 is not allowed; it must be >= 1"),
    ("analysis.examples=-1", "analysis.examples: -1 is not allowed; it must be >= 0"),
    ("search.n_trials=0", "search.n_trials: 0 is not allowed; it must be >= 1"),
    ("search.workers=0", "search.workers: 0 is not allowed; it must be >= 1"),
    ("search.param_budget=0", "search.param_budget: 0 is not allowed; it must be >= 1"),
    ("search.trial_epochs=0", "search.trial_epochs: 0 is not allowed; it must be >= 1"),
    ("search.heartbeat_seconds=0", "search.heartbeat_seconds: 0 is not allowed; it must be >= 1"),
    ("search.max_retry=-1", "search.max_retry: -1 is not allowed; it must be >= 0"),
    ("search.timeout_seconds=-60", "search.timeout_seconds: -60 is not allowed; it must be >= 0"),
    ("search.sampler_seed=4294967296", "search.sampler_seed: 4294967296 is not allowed; it must be in [0, 4294967296)"),
    ("search.space.lr=[0.01, 0.001]", "search.space.lr: [0.01, 0.001] is not allowed; it must be [low, high] with low <= high"),
    ("search.space.lr=[0, 0.01]", "search.space.lr[0]: 0.0 is not allowed; it must be > 0"),
    ("search.space.stages=[2]", "search.space.stages: [2] is not allowed; it must be a list of 2 values"),
    ("search.space.stages=[4, 2]", "search.space.stages: [4, 2] is not allowed; it must be [low, high] with low <= high"),
    ("search.space.dropout=[0.0, 1.0]", "search.space.dropout[1]: 1.0 is not allowed; it must be in [0, 1)"),
    ("search.space.widths=[16, 0]", "search.space.widths[1]: 0 is not allowed; it must be >= 1"),
    ("search.space.batch_sizes=[]", "search.space.batch_sizes: [] is not allowed; it must be a list of 1 or more values"),
    ("export.opset=12", "export.opset: 12 is not allowed; it must be in [18, 23]"),
    ("export.max_abs_diff=0", "export.max_abs_diff: 0.0 is not allowed; it must be > 0"),
    ("export.min_argmax_agreement=1.5", "export.min_argmax_agreement: 1.5 is not allowed; it must be in [0, 1]"),
    ("seed_workers=0", "seed_workers: 0 is not allowed; it must be >= 1"),
    ("seeds=[0, -1]", "seeds[1]: -1 is not allowed; it must be in [0, 4294967296)"),
    ("seeds=[]", "seeds: [] is not allowed; it must be a list of 1 or more values"),
])
def test_a_value_outside_its_range_names_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(PROJECT_ROOT / "params.yaml", [override])
    assert str(err.value) == message


@pytest.mark.parametrize("override", [
    "train.momentum=0", "train.gamma=1", "train.threads=0", "data.val_fraction=0.5", "analysis.tsne_points=2",
    "train.augment.rotation_degrees=180", "search.space.lr=[0.01, 0.01]", "export.opset=23", "seeds=[4294967295]",
    "export.min_argmax_agreement=0",
])
def test_the_ends_of_a_range_are_allowed_where_it_says_so(override):
    load_config(PROJECT_ROOT / "params.yaml", [override])


def numeric_settings(tp, key=""):
    """(key, Annotated metadata) of every int or float setting under ``tp``, list items included."""
    metadata = []
    if typing.get_origin(tp) is Annotated:
        tp, *metadata = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        for name, hint in typing.get_type_hints(tp, include_extras=True).items():
            yield from numeric_settings(hint, f"{key}.{name}" if key else name)
    elif typing.get_origin(tp) is list:
        yield from numeric_settings(typing.get_args(tp)[0], f"{key}[]")
    elif tp in (int, float):
        yield key, metadata


def unbounded(tp) -> list[str]:
    return [key for key, metadata in numeric_settings(tp)
            if not any(isinstance(m, (Ge, Gt, Le, Lt, Interval)) for m in metadata)]


def test_every_numeric_setting_declares_its_range():
    keys = {key for key, _ in numeric_settings(Config)}  # the walk reaches nested sections and list items
    assert {"seeds[]", "train.batch_size", "train.augment.pipeline_p", "search.space.lr[]", "export.opset"} <= keys
    assert not unbounded(Config), "give these settings a range (Annotated[int, Ge(...)], config.py)"


def test_a_numeric_setting_without_a_range_is_caught():
    @dataclasses.dataclass
    class Section:
        bounded: Annotated[int, Ge(1)] = 1
        forgotten: int = 0
        forgotten_items: list[float] = dataclasses.field(default_factory=list)

    assert unbounded(Section) == ["forgotten", "forgotten_items[]"]


def test_the_classes_stay_plain_dataclasses():
    """contract.py and tests/stage_probe.py read the types without Annotated's extras."""
    hints = typing.get_type_hints(Config)
    assert typing.get_type_hints(hints["train"])["batch_size"] is int
    assert typing.get_type_hints(typing.get_type_hints(hints["search"])["space"])["lr"] == list[float]
    assert dataclasses.replace(Config().train, batch_size=7).batch_size == 7


def test_params_yaml_and_every_catalogue_entry_are_valid():
    params = PROJECT_ROOT / "params.yaml"
    tree = yaml.safe_load(params.read_text())
    config_from_dict(tree)
    catalogue = catalogue_for(params)
    for name in catalogue.experiments():
        assert load_config(params, [f"experiment={name}"]).experiment == name


@pytest.mark.parametrize("command, override, message", [
    ("train", "train.batch_size=-1", "train.batch_size: -1 is not allowed; it must be >= 1"),
    ("pipeline", "train.epochs=0", "train.epochs: 0 is not allowed; it must be >= 1"),
    ("search", "search.space.lr=[0.01, 0.001]", "search.space.lr: [0.01, 0.001] is not allowed"),
    ("seeds", "seed_workers=0", "seed_workers: 0 is not allowed; it must be >= 1"),
])
def test_the_cli_refuses_an_out_of_range_value_before_anything_starts(command, override, message, tmp_path,
                                                                        capsys, monkeypatch):
    monkeypatch.delenv("CNNLAB_DEBUG", raising=False)
    project = tmp_path / "project"
    code = main([command, "--params", str(PROJECT_ROOT / "params.yaml"), "-S", override,
                 "-S", f"models_dir={project / 'models'}", "-S", f"outputs_dir={project / 'outputs'}",
                 "-S", f"data.prepared_dir={project / 'prepared'}", "-S", f"data.raw_dir={project / 'raw'}",
                 "-S", f"tracking.uri=sqlite:///{project / 'mlflow.db'}",
                 "-S", f"search.storage=sqlite:///{project / 'optuna.db'}"])
    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.startswith(f"cnnlab {command}: error: {message}") and "Traceback" not in stderr
    assert not project.exists()  # no MLflow store or run, no study, no checkpoint or output file

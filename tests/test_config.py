import pytest
import yaml

from cnnlab.config import Config, ConfigError, apply_overrides, config_from_dict, flatten, load_config, save_config

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
    assert load_config(path) == config
    assert flatten(yaml.safe_load(path.read_text()))["train.lr"] == 0.01


def test_missing_and_invalid_params_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_experiment_overlay_then_command_line():
    config = load_config(PROJECT_ROOT / "params.yaml", ["experiment=e2_cifar10_alexnet", "train.epochs=2"])
    assert config.data.name == "cifar10" and config.model.name == "reduced_alexnet"
    assert config.train.epochs == 2  # the command line wins over the overlay
    assert config.train.lr == 0.001  # inherited from the base section
    assert config.reference["test_accuracy"] == 0.7065


def test_reference_is_not_inherited_from_the_base():
    config = load_config(PROJECT_ROOT / "params.yaml", ["experiment=e4_exp_decay"])
    assert "test_accuracy" not in config.reference


def test_unknown_experiment_lists_defined_ones():
    with pytest.raises(ConfigError, match="defined: e1_mnist_simple_cnn, e1_resume, e2_cifar10_alexnet"):
        load_config(PROJECT_ROOT / "params.yaml", ["experiment=e9"])


def test_a_typo_in_any_experiment_fails_at_load(tmp_path):
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["experiments"]["e4_sgd"]["train"]["lrate"] = 0.1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"in experiments.e4_sgd: unknown setting 'lrate'"):
        load_config(path)


def test_one_string_of_overrides_as_mlflow_projects_pass_them():
    config = load_config(PROJECT_ROOT / "params.yaml", ["train.epochs=1 train.lr=0.01 experiment=e4_base",
                                                        "train.weight_decay_layers=[fc1, conv2]"])
    assert config.train.epochs == 1 and config.train.lr == 0.01 and config.experiment == "e4_base"
    assert config.train.weight_decay_layers == ["fc1", "conv2"]

"""torchvision AlexNet / ResNet-18 / ResNet-50 backbones: features, the head, and loading weight files.

Real ImageNet weights cannot be downloaded here, so the weight files are torchvision's own
randomly initialised 1000-class models saved with ``torch.save(model.state_dict())``: the same
keys and shapes as the published ``.pth`` files, and values that differ from a fresh model's.
"""

import hashlib
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import AlexNet_Weights, ResNet18_Weights, ResNet50_Weights

from cnnlab.models import total_parameters, create_model
from cnnlab.models.torchvision_backbones import PretrainedWeightsError
from cnnlab.models.weights import WeightsError

# name -> (the torchvision module name of the head, feature width, the ImageNet weights used without weights_path)
BACKBONES = {
    "alexnet": ("classifier.6", 4096, AlexNet_Weights.IMAGENET1K_V1),
    "resnet18": ("fc", 512, ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": ("fc", 2048, ResNet50_Weights.IMAGENET1K_V2),
}
IMAGE = (3, 64, 64)  # the registered input size: AlexNet's smallest (torchvision's minimum is 63)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """name -> (path, state dict) of a saved torchvision 1000-class model, built on first use."""
    directory, files = tmp_path_factory.mktemp("weights"), {}

    def weight_file(name):
        if name not in files:
            torch.manual_seed(1)  # a different draw from the models under test (manual_seed(0) below)
            state = getattr(torchvision.models, name)(weights=None).state_dict()
            path = directory / f"{name}.pth"
            torch.save(state, path)
            files[name] = (path, state)
        return files[name]

    return weight_file


def head_of(model):
    return [module for module in model.modules() if isinstance(module, nn.Linear)][-1]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_another_class_count_loads_everything_but_the_head(name, weight_files):
    path, state = weight_files(name)
    head, width, _ = BACKBONES[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, pretrained=True, weights_path=str(path)).eval()
    report = model.pretrained_report
    assert report["skipped"] == [f"net.{head}.weight", f"net.{head}.bias"]
    assert report["loaded"] == len(state) - 2
    assert report["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and report["source"] == str(path)
    loaded = model.net.state_dict()
    for key, value in state.items():
        if not key.startswith(f"{head}."):
            assert torch.equal(loaded[key], value), key
    assert head_of(model) is model.net.get_submodule(head)  # the last Linear is the head
    assert head_of(model).weight.shape == (2, width)
    assert not torch.equal(head_of(model).weight, state[f"{head}.weight"][:2])  # freshly initialised
    with torch.no_grad():
        logits, features = model(torch.rand(2, *IMAGE))
        assert features.shape == (2, width) and logits.shape == (2, 2)
        assert torch.equal(logits, head_of(model)(features))  # features are exactly what the head sees


@pytest.mark.parametrize("name", list(BACKBONES))
def test_the_same_class_count_loads_the_head_too(name, weight_files):
    path, state = weight_files(name)
    head, _, imagenet = BACKBONES[name]
    model = create_model(name, pretrained=True, weights_path=str(path))
    assert model.pretrained_report["skipped"] == [] and model.pretrained_report["loaded"] == len(state)
    assert torch.equal(model.net.get_submodule(head).weight, state[f"{head}.weight"])
    assert total_parameters(model) == imagenet.meta["num_params"]  # torchvision's published count


def test_files_without_batchnorm_counters_load(weight_files, tmp_path):
    # Files saved before PyTorch 0.4.1 have no num_batches_tracked; they are counters, not weights.
    _, state = weight_files("resnet18")
    old_style = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old_style, tmp_path / "old.pth")
    model = create_model("resnet18", pretrained=True, weights_path=str(tmp_path / "old.pth"))
    assert model.pretrained_report["loaded"] == len(old_style) == len(state) - 20  # 20 BatchNorms


def test_a_matching_sha256_or_its_prefix_is_accepted_and_a_wrong_one_names_both(weight_files):
    path, _ = weight_files("resnet18")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    for expected in (actual, actual[:8].upper()):
        create_model("resnet18", pretrained=True, weights_path=str(path), weights_sha256=expected)
    wrong = "0" * 64
    with pytest.raises(PretrainedWeightsError, match=f"sha256 {actual} but weights_sha256 is {wrong}.*Re-download"):
        create_model("resnet18", pretrained=True, weights_path=str(path), weights_sha256=wrong)
    with pytest.raises(ValueError, match="at least its first 8 hex digits, got '.{4}'"):
        create_model("resnet18", pretrained=True, weights_path=str(path), weights_sha256=actual[:4])


def test_another_architecture_names_missing_and_mismatched_keys(weight_files):
    path, _ = weight_files("resnet18")
    with pytest.raises(WeightsError) as error:
        create_model("resnet50", num_classes=2, pretrained=True, weights_path=str(path))
    message = str(error.value)
    assert "is not a torchvision resnet50 state dict" in message
    assert "missing from the file" in message and "layer1.0.conv3.weight" in message  # bottlenecks only
    assert "layer1.0.conv1.weight: file (64, 64, 3, 3) vs model (64, 64, 1, 1)" in message
    assert "fc.weight: file (1000, 512) vs model (2, 2048)" in message  # not mistaken for a class-count change
    assert "... and" in message  # hundreds of keys are summarised, not dumped


def test_renamed_keys_are_unexpected_and_missing(weight_files, tmp_path):
    _, state = weight_files("resnet18")
    prefixed = {f"backbone.{k}": v for k, v in state.items()}
    torch.save(prefixed, tmp_path / "prefixed.pth")
    with pytest.raises(WeightsError, match=r"missing from the file \(102\).*unexpected \(122\): backbone\."):
        create_model("resnet18", pretrained=True, weights_path=str(tmp_path / "prefixed.pth"))


def test_unreadable_files_raise_a_clear_error(weight_files, tmp_path):
    path, state = weight_files("resnet18")
    (tmp_path / "truncated.pth").write_bytes(path.read_bytes()[:100_000])
    (tmp_path / "garbage.pth").write_bytes(b"not a weights file" * 100)
    for bad in ("truncated.pth", "garbage.pth"):
        with pytest.raises(PretrainedWeightsError, match=f"could not read .*{bad} as a PyTorch weights file"):
            create_model("resnet18", pretrained=True, weights_path=str(tmp_path / bad))
    torch.save({"model": state, "epoch": 3}, tmp_path / "checkpoint.pth")
    with pytest.raises(PretrainedWeightsError, match="not a state dict of tensors"):
        create_model("resnet18", pretrained=True, weights_path=str(tmp_path / "checkpoint.pth"))
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        create_model("resnet18", pretrained=True, weights_path=str(tmp_path / "absent.pth"))


def test_offline_imagenet_download_says_to_pass_weights_path(monkeypatch):
    calls = []

    def offline(weights, **kwargs):
        calls.append(weights)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(PretrainedWeightsError, match=r"resnet18-f37072fd\.pth.*model\.kwargs\.weights_path="
                                                     r".*weights_sha256=f37072fd"):
        create_model("resnet18", num_classes=2, pretrained=True)
    assert calls == [ResNet18_Weights.IMAGENET1K_V1]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_weights_come_from_the_right_torchvision_enum(name, weight_files, monkeypatch, tmp_path):
    _, state = weight_files(name)
    imagenet = BACKBONES[name][2]
    requested = []

    def cached(weights, **kwargs):  # stands in for the torch hub cache, without the network
        requested.append(weights)
        return state

    monkeypatch.setattr(type(imagenet), "get_state_dict", cached)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no cached file: source is the url
    report = create_model(name, num_classes=2, pretrained=True).pretrained_report
    assert requested == [imagenet]
    assert report["source"] == imagenet.url and report["loaded"] == len(state) - 2


def test_argument_errors_and_a_non_rgb_stem():
    with pytest.raises(ValueError, match="in_channels=3"):
        create_model("resnet18", pretrained=True, in_channels=1)
    with pytest.raises(ValueError, match="only with pretrained=True"):
        create_model("resnet18", weights_path="x.pth")
    with pytest.raises(ValueError, match="weights_sha256 checks weights_path"):
        create_model("resnet18", pretrained=True, weights_sha256="f37072fd")
    for name in ("resnet18", "alexnet"):
        logits, features = create_model(name, num_classes=5, in_channels=1).eval()(torch.rand(2, 1, *IMAGE[1:]))
        assert logits.shape == (2, 5) and features.shape == (2, BACKBONES[name][1])

"""The one weights loader (cnnlab.models.weights): strict on every tensor, a head of another class count skipped."""

import pytest
import torch
from torch import nn

from cnnlab.models.weights import PretrainedWeightsError, WeightsError, head_keys, load_weights, read_state_dict

HEAD = {"classifier.weight", "classifier.bias"}


class Net(nn.Module):
    def __init__(self, num_classes: int = 5, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)
        self.bn = nn.BatchNorm2d(width)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.classifier(self.bn(self.conv(x)).mean((2, 3)))


def trained(num_classes: int = 5, width: int = 4) -> dict[str, torch.Tensor]:
    """A state dict whose every tensor differs from a fresh Net's (random weights, moved BN statistics)."""
    torch.manual_seed(1)
    net = Net(num_classes, width).train()
    net(torch.randn(8, 1, 6, 6))  # running statistics and the batch counter move off their init
    return net.state_dict()


def load(model, state, head=HEAD):
    return load_weights(model, state, source="w.pth", head=head, expected="a Net state dict", fix="Save a Net.")


def test_a_matching_state_dict_loads_every_tensor():
    state, model = trained(), Net()
    report = load(model, state)
    assert report == {"loaded": len(state), "skipped": [], "source": "w.pth"}
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_a_head_of_another_class_count_is_skipped_and_keeps_its_fresh_values():
    state = trained(num_classes=10)
    torch.manual_seed(0)
    model = Net(num_classes=2)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load(model, state)
    assert report["skipped"] == ["classifier.weight", "classifier.bias"]  # the model's key order
    assert report["loaded"] == len(state) - 2
    after = model.state_dict()
    assert torch.equal(after["classifier.weight"], fresh["classifier.weight"])
    assert torch.equal(after["classifier.bias"], fresh["classifier.bias"])
    for key in set(state) - HEAD:
        assert torch.equal(after[key], state[key]), key


@pytest.mark.parametrize("change, kind, key", [
    (lambda s: s.pop("conv.weight"), r"missing from the file \(1\)", "conv.weight"),
    (lambda s: s.update({"conv2.weight": torch.zeros(1)}), r"unexpected \(1\)", "conv2.weight"),
    (lambda s: s.update({"bn.weight": torch.ones(3)}), r"shape mismatches \(1\)",
     r"bn.weight: file \(3,\) vs model \(4,\)"),
])
def test_every_other_difference_raises_naming_the_key_its_kind_and_the_fix(change, kind, key):
    state, model = trained(), Net()
    change(state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=rf"^w.pth is not a Net state dict: {kind}: {key}\. .*Save a Net\.$"):
        load(model, state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_a_head_with_another_input_width_is_a_mismatch_not_a_new_task():
    state = trained(num_classes=5, width=8)
    state = {k: v for k, v in state.items() if k.startswith("classifier.")} | {
        k: v for k, v in Net().state_dict().items() if not k.startswith("classifier.")}
    with pytest.raises(WeightsError, match=r"mismatches \(1\): classifier.weight: file \(5, 8\) vs model \(5, 4\)"):
        load(Net(), state)


def test_without_a_head_every_shape_must_match():
    with pytest.raises(WeightsError, match=r"shape mismatches \(2\): classifier.bias: .*classifier.weight: "):
        load(Net(num_classes=2), trained(num_classes=10), head=None)


def test_absent_batchnorm_counters_keep_their_fresh_value():
    state = {k: v for k, v in trained().items() if not k.endswith("num_batches_tracked")}
    model = Net()
    assert load(model, state)["loaded"] == len(state)
    assert model.bn.num_batches_tracked.item() == 0
    assert torch.equal(model.bn.running_mean, state["bn.running_mean"])


def test_long_key_lists_are_summarised():
    state = trained() | {f"extra.{i:02d}": torch.zeros(1) for i in range(25)}
    with pytest.raises(WeightsError, match=r"unexpected \(25\): extra.00, .*, extra.09, \.\.\. and 15 more"):
        load(Net(), state)


def test_the_head_is_the_last_linear_layer():
    assert head_keys(Net()) == HEAD
    assert head_keys(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))) == {"2.weight", "2.bias"}


def test_read_state_dict_names_what_is_wrong_with_the_file(tmp_path):
    state = trained()
    torch.save(state, tmp_path / "ok.pth")
    assert read_state_dict(tmp_path / "ok.pth").keys() == state.keys()
    (tmp_path / "garbage.pth").write_bytes(b"not a weights file")
    with pytest.raises(PretrainedWeightsError, match="could not read .*garbage.pth as a PyTorch weights file"):
        read_state_dict(tmp_path / "garbage.pth")
    # The CLI turns ValueErrors into clean messages.
    assert issubclass(PretrainedWeightsError, WeightsError) and issubclass(WeightsError, ValueError)

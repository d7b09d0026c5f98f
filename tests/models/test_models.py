"""Every registered model: forward shapes, exact parameter counts, clear errors."""

import pytest
import torch

from cnnlab.models import ModelError, total_parameters, create_model, list_models, model_entry

# Counted by hand from the layer definitions (conv: k*k*in*out + out; linear: in*out + out).
# E1 and E2 are the catalogue's exact figures.
EXPECTED_PARAMETERS = {
    "simple_cnn": 813_802,  # 320 + 9,248 + 802,944 + 1,290
    "reduced_alexnet": 6_199_498,
    "small_cnn_mnist": 55_018,  # 104 + 808 + 3,216 + 50,240 + 650
    "small_cnn_cifar": 295_402,  # 448 + 4,640 + 18,496 + 262,208 + 8,320 + 1,290
    "svhn_base": 26_346,  # 1,216 + 4,640 + 20,490
    "svhn_deep": 322_090,  # 1,216 + 4,640 + 51,264 + 262,400 + 2,570
    # residual pre-activation 32-64-128, 2 convs/block, BN (bias-free convs): stem 864 + blocks
    # 18,560 (2 BN-conv) + 57,536 (+ 1x1 projection) + 229,760 + final BN 256 + linear 1,290
    "search_cnn": 308_266,
    # stem 928 + 16 MBConv blocks 2,957,920 + head conv/BN 412,160 + linear 1,281,000 = the
    # ImageNet state dict's parameter count (tests/models/test_efficientnet.py checks the two agree)
    "efficientnet_lite0": 4_652_008,
    # torchvision's published counts at 1000 classes (its weights enums' meta["num_params"];
    # tests/models/test_backbones.py checks they agree): features 2,469,696 + FC 37,752,832
    # + FC 16,781,312 + head 4,097,000
    "alexnet": 61_100_840,
    # stem 9,536 + layer1-4 11,166,976 + fc 513,000
    "resnet18": 11_689_512,
    # stem 9,536 + bottleneck layer1-4 23,498,496 + fc 2,049,000
    "resnet50": 25_557_032,
}


def test_every_registered_model_has_an_expected_count():
    assert sorted(EXPECTED_PARAMETERS) == list_models()


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes_and_parameter_count(name):
    model = create_model(name).eval()
    entry = model_entry(name)
    logits, features = model(torch.rand(3, *entry.input_shape))
    assert logits.shape == (3, entry.num_classes)
    assert features.ndim == 2 and features.shape[0] == 3
    assert total_parameters(model) == EXPECTED_PARAMETERS[name]


def test_simple_cnn_features_are_the_first_linear_layer():
    _, features = create_model("simple_cnn").eval()(torch.rand(2, 1, 28, 28))
    assert features.shape == (2, 128)
    assert (features >= 0).all()  # after the ReLU


def test_reduced_alexnet_returns_flattened_512_features():
    _, features = create_model("reduced_alexnet").eval()(torch.rand(2, 3, 32, 32))
    assert features.shape == (2, 512)


@pytest.mark.parametrize("kernel, stride, padding, flat", [
    (5, 1, "same", 784), (3, 1, "none", 16 * 4 * 4), (7, 1, "same", 784), (5, 2, "same", 16),
    (3, 3, "same", 16),
])
def test_small_cnn_sweep_shapes(kernel, stride, padding, flat):
    model = create_model("small_cnn_mnist", kernel_size=kernel, stride=stride, padding=padding)
    assert model.hidden[0].in_features == flat
    logits, _ = model(torch.rand(2, 1, 28, 28))
    assert logits.shape == (2, 10)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError, match="registered models: .*simple_cnn"):
        create_model("resnet9000")


def test_unknown_argument_lists_valid_ones():
    with pytest.raises(ModelError, match="takes no argument width.*valid: in_channels"):
        create_model("simple_cnn", width=3)


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_fast_dropout_keeps_the_expected_fraction_and_scale(p):
    from cnnlab.models.layers import Dropout

    layer = Dropout(p).train()
    x = torch.ones(200_000)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert abs(y.mean().item() - 1.0) < 0.02  # unbiased, like nn.Dropout


def test_fast_dropout_is_identity_in_eval_and_routes_gradients_through_kept_units():
    from cnnlab.models.layers import Dropout

    layer = Dropout(0.5)
    x = torch.randn(64, 32, requires_grad=True)
    assert torch.equal(layer.eval()(x), x)
    y = layer.train()(x)
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_simple_cnn_pools_before_the_relu_without_changing_the_function():
    model = create_model("simple_cnn").eval()
    x = torch.randn(8, 1, 28, 28)
    reference = model.pool(torch.relu(model.conv2(torch.relu(model.conv1(x))))).flatten(1)
    reference = model.fc2(torch.relu(model.fc1(reference)))
    assert torch.allclose(model(x)[0], reference, atol=1e-6)

"""E5 ``search_cnn`` family: every block style's shapes, hand-counted parameters, real skips,
argument errors, shrink-to-fit under a budget, and ONNX parity."""

from itertools import product

import pytest
import torch

from cnnlab.checkpoint import InferenceModel
from cnnlab.export import export_onnx, onnx_parity
from cnnlab.models import create_model
from cnnlab.models.searchable import (
    BLOCK_STYLES, POOLINGS, InceptionModule, ResidualBlock, count_for, fit_to_budget, inception_branch_widths,
)

SMALL = {"widths": [8, 12], "convs_per_block": 2}  # every style in milliseconds


@pytest.mark.parametrize("block_style, preactivation, batch_norm, pooling",
                         list(product(BLOCK_STYLES, [True, False], [True, False], POOLINGS)))
def test_forward_shapes_for_every_combination(block_style, preactivation, batch_norm, pooling):
    model = create_model("search_cnn", block_style=block_style, preactivation=preactivation,
                         batch_norm=batch_norm, pooling=pooling, **SMALL).eval()
    logits, features = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert features.shape == (2, 12)  # the last stage's width after global average pooling
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == batch_norm


def test_hidden_head_gives_its_width_as_features_and_mnist_shapes_work():
    model = create_model("search_cnn", widths=[8, 8, 8, 8, 8], head_width=24, dropout=0.5, in_channels=1,
                         image_size=28).eval()
    logits, features = model(torch.rand(2, 1, 28, 28))  # 28 -> 14 -> 7 -> 3 -> 1
    assert logits.shape == (2, 10) and features.shape == (2, 24)
    assert (features >= 0).all()  # after the hidden ReLU


# Counted by hand (conv: k*k*in*out, + out when it has a bias; BatchNorm: 2*channels;
# linear: in*out + out).
HAND_COUNTS = [
    # Default: residual, pre-activation, BN (bias-free convs), widths 32-64-128, 2 convs/block.
    ({}, 864  # stem conv 3->32
     + 64 + 9_216 + 64 + 9_216  # stage 1: BN, conv 32->32, BN, conv; identity skip
     + 64 + 18_432 + 128 + 36_864 + 2_048  # stage 2: BN, conv 32->64, BN, conv 64->64, 1x1 projection
     + 128 + 73_728 + 256 + 147_456 + 8_192  # stage 3: same shape at 64->128
     + 256 + 1_290),  # final BN before pooling, linear 128->10
    # Post-activation: conv-BN units, BN after the stem and each projection, no final BN.
    ({"preactivation": False}, 864 + 64  # stem conv + BN
     + 9_216 + 64 + 9_216 + 64  # stage 1: conv-BN, conv-BN
     + 18_432 + 128 + 36_864 + 128 + 2_048 + 128  # stage 2, its 1x1 projection + BN
     + 73_728 + 256 + 147_456 + 256 + 8_192 + 256  # stage 3
     + 1_290),
    # Two residual blocks per stage (a ResNet-10 at 8-16): the second of each stage keeps the channels,
    # so it has no projection.
    ({"widths": [8, 16], "blocks_per_stage": 2}, 216  # stem conv 3->8
     + 2 * (16 + 576 + 16 + 576)  # stage 1: two blocks of BN, conv 8->8, BN, conv
     + 16 + 1_152 + 32 + 2_304 + 128  # stage 2, first block: conv 8->16, conv 16->16, 1x1 projection
     + 32 + 2_304 + 32 + 2_304  # stage 2, second block
     + 32 + 170),  # final BN, linear 16->10
    # Plain, no BN (convs with biases), one conv per block.
    ({"block_style": "plain", "widths": [8, 16], "convs_per_block": 1, "batch_norm": False},
     224 + 584 + 1_168 + 170),
    # Inception width 8 = branches 2 (1x1) + 4 (3x3) + 2 (1x1 to 2, then 3x3), each conv + BN.
    ({"block_style": "inception", "widths": [8], "convs_per_block": 1, "head_width": 16},
     216 + 16  # stem conv 3->8 + BN
     + 16 + 4 + 288 + 8 + 16 + 4 + 36 + 4  # 1x1 8->2 + BN, 3x3 8->4 + BN, 1x1 8->2 + BN, 3x3 2->2 + BN
     + 144 + 170),  # hidden linear 8->16, linear 16->10
]


@pytest.mark.parametrize("kwargs, expected", HAND_COUNTS)
def test_parameter_counts_match_hand_counts(kwargs, expected):
    assert count_for(kwargs) == expected


def zero_convs(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for conv in (m for m in module.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()


@pytest.mark.parametrize("batch_norm", [True, False])
def test_residual_block_with_zeroed_convs_passes_its_input_through(batch_norm):
    x = torch.randn(2, 8, 6, 6)
    preactivated = ResidualBlock(8, 8, convs=2, batch_norm=batch_norm, preactivation=True).eval()
    postactivated = ResidualBlock(8, 8, convs=2, batch_norm=batch_norm, preactivation=False).eval()
    zero_convs(preactivated)
    zero_convs(postactivated)
    assert torch.equal(preactivated(x), x)  # the identity path is untouched
    assert torch.equal(postactivated(x), torch.relu(x))  # ReLU after the addition


def test_residual_block_projects_the_skip_when_channels_change():
    block = ResidualBlock(8, 16, convs=2, batch_norm=False, preactivation=False).eval()
    zero_convs(block.body)
    x = torch.randn(2, 8, 6, 6)
    assert torch.allclose(block(x), torch.relu(block.projection(x)))


@pytest.mark.parametrize("width", [4, 5, 6, 7, 30, 64])
def test_inception_branches_sum_to_the_width(width):
    assert sum(inception_branch_widths(width)) == width and min(inception_branch_widths(width)) >= 1
    assert InceptionModule(3, width, batch_norm=True)(torch.rand(2, 3, 8, 8)).shape == (2, width, 8, 8)


@pytest.mark.parametrize("kwargs, argument", [
    ({"block_style": "dense"}, "block_style"),
    ({"pooling": "stride"}, "pooling"),
    ({"widths": []}, "widths"),
    ({"widths": [2, 8]}, "widths"),
    ({"widths": [8] * 7}, "widths"),  # 6 halvings of 32x32
    ({"convs_per_block": 0}, "convs_per_block"),
    ({"blocks_per_stage": 0}, "blocks_per_stage"),
    ({"head_width": -1}, "head_width"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
])
def test_invalid_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        create_model("search_cnn", **kwargs)


OVER_BUDGET = [
    {},  # the default, 308,266 parameters
    {"widths": [128, 256, 512], "head_width": 128},
    {"block_style": "inception", "widths": [96, 128, 128, 128], "convs_per_block": 3},
    {"block_style": "plain", "widths": [64, 128, 256, 512], "convs_per_block": 3, "batch_norm": False},
    {"widths": [32, 64, 128], "blocks_per_stage": 3},  # a ResNet-20
]


@pytest.mark.parametrize("kwargs", OVER_BUDGET)
@pytest.mark.parametrize("budget", [150_000, 50_000])
def test_fit_to_budget_shrinks_widths_under_the_budget(kwargs, budget):
    fitted, count = fit_to_budget(kwargs, budget)
    assert count == count_for(fitted) <= budget
    assert all(w % 4 == 0 and w >= 4 for w in fitted["widths"])
    scaled = ("widths", "head_width")
    assert {k: v for k, v in fitted.items() if k not in scaled} == {k: v for k, v in kwargs.items() if k not in scaled}


def test_fit_to_budget_lands_close_to_the_budget():
    fitted, count = fit_to_budget({"widths": [128, 256, 512], "head_width": 128}, 150_000)
    assert count >= 0.85 * 150_000
    assert fitted["head_width"] < 128


def test_fit_to_budget_leaves_fitting_kwargs_unchanged():
    kwargs = {"block_style": "plain", "widths": [16, 32]}
    assert fit_to_budget(kwargs, 150_000) == (kwargs, count_for(kwargs))


def test_fit_to_budget_respects_min_width():
    fitted, _ = fit_to_budget({"widths": [64, 128, 256]}, 20_000, min_width=8)
    assert min(fitted["widths"]) >= 8


def test_fit_to_budget_raises_when_even_the_minimum_is_over():
    with pytest.raises(ValueError, match=r"budget 1,000 .* minimum of [\d,]+ parameters"):
        fit_to_budget({"widths": [64, 64, 64, 64], "convs_per_block": 3}, 1_000)


@pytest.mark.parametrize("kwargs", [
    {"block_style": "residual", "widths": [8, 16], "preactivation": True, "head_width": 16},
    {"block_style": "inception", "widths": [8, 16], "pooling": "avg"},
])
def test_onnx_export_parity(kwargs, tmp_path):
    module = InferenceModel(create_model("search_cnn", **kwargs), [0.5] * 3, [0.25] * 3)
    path = export_onnx(module, (3, 32, 32), tmp_path / "search_cnn.onnx")
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert onnx_parity(module, path, images, 1e-4, 1.0).passed

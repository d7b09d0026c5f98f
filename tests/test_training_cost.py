"""cnnlab.training_cost: a network's training time per image, relative to another's, timed here."""

import torch

from cnnlab.runtime import resolve_runtime
from cnnlab.training_cost import relative_training_cost

IMAGES = {"in_channels": 3, "num_classes": 10, "image_size": 32}
NARROW = {**IMAGES, "widths": [8, 8], "convs_per_block": 1}
WIDE = {**IMAGES, "widths": [64, 128], "convs_per_block": 3}


def test_a_wider_net_costs_more_per_image_and_the_ratio_inverts():
    runtime = resolve_runtime("cpu")
    wide_over_narrow = relative_training_cost("search_cnn", WIDE, NARROW, 64, runtime)
    narrow_over_wide = relative_training_cost("search_cnn", NARROW, WIDE, 64, runtime)
    assert wide_over_narrow > 3 and narrow_over_wide < 1 / 3


def test_timing_leaves_the_global_random_state_as_it_was():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    relative_training_cost("search_cnn", NARROW, NARROW, 16, resolve_runtime("cpu"))
    assert torch.equal(torch.rand(3), expected)  # a trial seeds its own; timing it first changes nothing

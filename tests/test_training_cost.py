"""cnnlab.training_cost: a network's training time per image, relative to another's, timed here."""

import json

import torch

from cnnlab.runtime import resolve_runtime
from cnnlab.training_cost import TIMING_NOISE, cost_ceiling, relative_training_cost

from .conftest import PROJECT_ROOT

IMAGES = {"in_channels": 3, "num_classes": 10, "image_size": 32}
NARROW = {**IMAGES, "widths": [8, 8], "convs_per_block": 1}
WIDE = {**IMAGES, "widths": [64, 128], "convs_per_block": 3}


def test_a_wider_net_costs_more_per_image_and_the_ratio_inverts():
    runtime = resolve_runtime("cpu")
    # batches of 16: the wide net is over 30x the narrow one's cost at 16 as at 64, in a quarter of the time
    wide_over_narrow = relative_training_cost("search_cnn", WIDE, NARROW, 16, runtime)
    narrow_over_wide = relative_training_cost("search_cnn", NARROW, WIDE, 16, runtime)
    assert wide_over_narrow > 3 and narrow_over_wide < 1 / 3


def test_timing_leaves_the_global_random_state_as_it_was():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    relative_training_cost("search_cnn", NARROW, NARROW, 16, resolve_runtime("cpu"))
    assert torch.equal(torch.rand(3), expected)  # a trial seeds its own; timing it first changes nothing


def test_the_noise_the_compute_budget_allows_for_covers_the_committed_measurement():
    """The budget admits a candidate timed up to the cap plus TIMING_NOISE; bench/search_cost.json
    (`make bench-search-cost`) timed the E5 baseline against itself, with the allowance then in
    force. Every reading must lie within it either way, or a net as fast as the baseline could be
    pruned by chance, as one was at 1.001x under a cap of 1."""
    bench = json.loads((PROJECT_ROOT / "bench/search_cost.json").read_text())
    assert bench["timing_noise"] == TIMING_NOISE  # a changed allowance needs the bench run again
    assert len(bench["self_costs"]) >= 5
    assert all(1 / cost_ceiling(1) <= cost <= cost_ceiling(1) for cost in bench["self_costs"])

import math

import pytest
import torch

from nepenthe.errors import ConfigError
from nepenthe.pruning.budget import (
    global_magnitude_allocation,
    nepenthe_allocation,
    round_preserving_total,
    smallest_counts,
    uniform_allocation,
)


def test_nepenthe_allocation_without_capping_matches_hand_softmax():
    # E = [0.1, 0.05], T = 0.15, I = [1.5, 3.0]; softmax -> [1/(1+e^1.5), e^1.5/(1+e^1.5)] = [0.18243, 0.81757]
    # B = 0.5 * 2000 = 1000 -> shares 182.43 / 817.57 -> rounded so the total stays 1000.
    counts = nepenthe_allocation([1.0, 0.5], [0.1, 0.1], [1000, 1000], 0.5)
    assert 1000 / (1 + math.exp(1.5)) == pytest.approx(182.426, abs=1e-3)
    assert counts == [182, 818]


def test_nepenthe_allocation_caps_and_redistributes_twice():
    # B = 0.5 * 1200 = 600. E = [1, 0.25, 1], T = 2.25, I = [2.25, 9, 2.25]: unit 1 would get 598.6 > 100 -> capped.
    # Pool {0, 2}: B = 500, T = 2, I = [2, 2] -> 250 each; unit 0 has only 100 -> capped.
    # Pool {2}: B = 400 <= 1000 -> 400.
    assert nepenthe_allocation([1.0, 0.25, 1.0], [1.0, 1.0, 1.0], [100, 100, 1000], 0.5) == [100, 100, 400]


def test_nepenthe_allocation_everything_capped_stops_with_leftover_budget():
    # Two tiny units, one big low-entropy unit that alone would need more than it has.
    counts = nepenthe_allocation([0.1, 1.0], [1.0, 1.0], [10, 10], 0.9)
    assert counts == [10, 8]  # B = 18: unit 0 capped at 10, the remaining 8 go to unit 1


def test_nepenthe_allocation_rejects_zero_entropy_units():
    with pytest.raises(ValueError, match="entropy, mean"):
        nepenthe_allocation([0.0, 1.0], [1.0, 1.0], [10, 10], 0.5)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_open_unit_interval_is_refused(ratio):
    with pytest.raises(ConfigError, match=rf"pruning.ratio={ratio} must lie strictly between 0 and 1"):
        nepenthe_allocation([1.0], [1.0], [10], ratio)


def test_round_preserving_total():
    assert round_preserving_total([1.4, 1.4, 1.2], 4) == [2, 1, 1]
    assert sum(round_preserving_total([0.3] * 10, 3)) == 3


def test_smallest_counts_and_global_magnitude():
    mags = [torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.2, 0.3])]
    assert smallest_counts(mags, 3) == [1, 2]
    assert global_magnitude_allocation(mags, 0.6) == [1, 2]  # round(0.6 * 5) = 3 smallest: 0.1 | 0.2, 0.3
    assert global_magnitude_allocation(mags, 0.2) == [1, 0]


def test_uniform_allocation():
    assert uniform_allocation([10, 8, 0], 0.25) == [2, 2, 0]

"""nepenthe.max_sliced_wasserstein: equal to POT's with the same directions (value and gradient), and exact on
hand-computed cases."""

import math

import pytest
import torch

import nepenthe
from nepenthe.errors import ConfigError
from nepenthe.wasserstein import random_projections


def clouds(n, m, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    source = torch.randn(n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    target = (torch.randn(m, dim, generator=g, dtype=torch.float64) * 1.5 + 0.5).requires_grad_()
    return source, target


@pytest.mark.parametrize("n, m, p", [(64, 64, 2), (40, 29, 2), (32, 32, 1), (17, 23, 3)])
def test_equals_pot_value_and_gradient_with_the_same_directions(n, m, p):
    ot = pytest.importorskip("ot", reason="POT (pip install pot, in the dev extras) is the reference")
    source, target = clouds(n, m)
    directions = random_projections(12, 50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = nepenthe.max_sliced_wasserstein(source, target, projections=directions, p=p)
    theirs = ot.sliced.max_sliced_wasserstein_distance(source, target, projections=directions, p=p)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
    g_ours = torch.autograd.grad(ours, (source, target))
    g_theirs = torch.autograd.grad(theirs, (source, target))
    for a, b in zip(g_ours, g_theirs):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_identical_clouds_are_at_distance_zero():
    source, _ = clouds(30, 30)
    assert nepenthe.max_sliced_wasserstein(source, source.detach().clone()).item() == 0.0


def test_a_translation_by_v_gives_the_largest_projection_of_v():
    source, _ = clouds(25, 25)
    v = torch.tensor([3.0, -1.0] + [0.0] * 10, dtype=torch.float64)
    directions = random_projections(12, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    distance = nepenthe.max_sliced_wasserstein(source, source + v, projections=directions)
    assert distance.item() == pytest.approx((directions.T @ v).abs().max().item(), rel=1e-12)


def test_hand_computed_one_dimensional_case():
    # along the single direction: sorted gaps |0-1|, |1-3|, |2-5| -> W2^2 = (1 + 4 + 9) / 3
    source = torch.tensor([[2.0], [0.0], [1.0]])
    target = torch.tensor([[5.0], [1.0], [3.0]])
    distance = nepenthe.max_sliced_wasserstein(source, target, projections=torch.ones(1, 1))
    assert distance.item() == pytest.approx(math.sqrt(14 / 3), rel=1e-6)


def test_samples_are_flattened_to_points_and_random_directions_follow_the_generator():
    source = torch.randn(8, 3, 4, 4)
    target = torch.randn(8, 3, 4, 4)
    first = nepenthe.max_sliced_wasserstein(source, target, generator=torch.Generator().manual_seed(9))
    again = nepenthe.max_sliced_wasserstein(source, target, generator=torch.Generator().manual_seed(9))
    flat = nepenthe.max_sliced_wasserstein(source.flatten(1), target.flatten(1),
                                           generator=torch.Generator().manual_seed(9))
    assert float(first) == float(again) == float(flat) > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"p": 0.5}, "p=0.5 must be >= 1"),
    ({"projections": torch.ones(3, 2)}, "projections of shape (3, 2) do not match points with 4 coordinates"),
    ({"n_projections": 0}, "n_projections=0 must be >= 1"),
])
def test_bad_arguments_are_one_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        nepenthe.max_sliced_wasserstein(torch.randn(5, 4), torch.randn(5, 4), **kwargs)


def test_clouds_in_different_spaces_are_refused():
    with pytest.raises(ConfigError, match="5 coordinates and target points 4"):
        nepenthe.max_sliced_wasserstein(torch.randn(5, 5), torch.randn(5, 4))

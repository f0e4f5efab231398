import pytest
import torch
from torch import nn

from nepenthe.checkpoint import compact_state, load_compact_state
from nepenthe.entropy import LayerStats
from nepenthe.pruning.masks import overall_sparsity, prune_smallest, remaining, remaining_mask
from nepenthe.pruning.methods import GlobalMagnitude, Nepenthe, Uniform, apply_plan, create_method
from nepenthe.errors import ConfigError
from nepenthe.units import Unit


def test_prune_smallest_counts_among_the_remaining_weights():
    layer = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1, 101, dtype=torch.float32).view(10, 10))
    prune_smallest(layer, 30)
    assert remaining(layer) == 70
    first = remaining_mask(layer).clone()
    assert not first.flatten()[:30].any() and first.flatten()[30:].all()  # the 30 smallest went first
    prune_smallest(layer, 35)
    assert remaining(layer) == 35
    assert not (remaining_mask(layer) & ~first).any()  # pruned weights stay pruned
    assert remaining_mask(layer).flatten()[65:].all()
    assert (layer.weight == 0).sum().item() == 65


class TwoUnitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(4, 8), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(8, 8), nn.ReLU()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def units(self):
        return [Unit("act1", ("fc1",)), Unit("act2", ("fc2",))]


def stats(**entropy):
    return {name: LayerStats(name, torch.zeros(1), value, 1) for name, value in entropy.items()}


def set_weights(model, value1, value2):
    with torch.no_grad():
        model.fc1.weight.fill_(value1)
        model.fc2.weight.fill_(value2)


def test_nepenthe_plan_freezes_zero_entropy_units_and_prunes_exactly_as_planned():
    model = TwoUnitNet()
    plan = Nepenthe(0.5).plan(model, model.units(), stats(act1=0.0, act2=0.8))
    assert plan.frozen_units == ["act1"]
    assert plan.counts == {"fc2": 32}  # the whole budget, 0.5 of fc2's 64 weights
    apply_plan(model, plan)
    assert remaining(model.fc1) == 32 and remaining(model.fc2) == 32
    assert overall_sparsity(model, ["fc1", "fc2", "head"]) == pytest.approx(32 / (32 + 64 + 16))


def test_nepenthe_plan_follows_the_hand_computed_budget():
    model = TwoUnitNet()
    set_weights(model, 0.1, 0.1)
    # nnz = [32, 64], B = 48; E = [1*0.1, 0.5*0.1], I = [1.5, 3] -> shares 8.76 / 39.24: no cap.
    plan = Nepenthe(0.5).plan(model, model.units(), stats(act1=1.0, act2=0.5))
    assert plan.counts == {"fc1": 9, "fc2": 39}
    apply_plan(model, plan)
    assert (remaining(model.fc1), remaining(model.fc2)) == (23, 25)


def test_imp_ranges_over_every_layer_including_the_head():
    model = TwoUnitNet()
    with torch.no_grad():
        model.fc1.weight.fill_(1.0)
        model.fc2.weight.fill_(2.0)
        model.head.weight.fill_(0.5)
    plan = GlobalMagnitude(0.5).plan(model, model.units(), {})
    assert plan.counts == {"fc1": 32, "fc2": 8, "head": 16}  # 56 of 112: head (0.5) first, then fc1 (1.0)


def test_uniform_prunes_the_same_fraction_of_each_unit_layer():
    model = TwoUnitNet()
    plan = Uniform(0.25).plan(model, model.units(), {})
    assert plan.counts == {"fc1": 8, "fc2": 16}


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown pruning method 'magic'; known: easier, egp, imp, layerwise, nepenthe, none, uniform"):
        create_method("magic", 0.5)


def test_compact_checkpoint_state_round_trips_masks_and_outputs():
    model = TwoUnitNet()
    apply_plan(model, Uniform(0.5).plan(model, model.units(), {}))
    state, masks = compact_state(model)
    assert set(masks) == {"fc1", "fc2"} and masks["fc1"].dtype == torch.bool
    fresh = load_compact_state(TwoUnitNet(), state, masks)
    x = torch.randn(5, 4)
    assert torch.equal(fresh(x), model(x))
    assert remaining(fresh.fc2) == 32


def test_prune_smallest_works_on_channels_last_weights():
    conv = nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
    reference = nn.Conv2d(4, 8, 3)
    reference.load_state_dict(conv.state_dict())
    prune_smallest(conv, 100)
    prune_smallest(reference, 100)
    assert remaining(conv) == 288 - 100
    assert torch.equal(remaining_mask(conv), remaining_mask(reference))


def test_make_permanent_keeps_the_zeros_and_drops_the_reparametrisation():
    from nepenthe.pruning.masks import make_permanent, pruned_layer_names

    model = TwoUnitNet()
    apply_plan(model, Uniform(0.5).plan(model, model.units(), {}))
    x = torch.randn(3, 4)
    before = model(x)
    make_permanent(model)
    assert pruned_layer_names(model) == [] and not hasattr(model.fc1, "weight_orig")
    assert (model.fc1.weight == 0).sum().item() == 16 and torch.equal(model(x), before)


def test_egp_spends_the_same_budget_as_nepenthe():
    model = TwoUnitNet()
    set_weights(model, 0.5, 1.0)
    s = stats(act1=0.3, act2=0.9)
    plan = create_method("egp", 0.5).plan(model, model.units(), s)
    assert plan == Nepenthe(0.5).plan(model, model.units(), s)
    # by hand: B = 0.5·(32 + 64) = 48; E = (0.3·0.5, 0.9·1.0) = (0.15, 0.9), T = 1.05, I = (7, 7/6);
    # softmax(I) = (0.99705, 0.00295) → fc1 wants 47.86 > 32 weights: capped at 32, the other 16 go to fc2
    assert plan.counts == {"fc1": 32, "fc2": 16}


def test_easier_replaces_the_lowest_entropy_activation_each_round_and_prunes_nothing():
    from nepenthe.pruning.methods import linearized_units

    model = TwoUnitNet()
    easier = create_method("easier", 0.5)
    first = easier.plan(model, model.units(), stats(act1=0.7, act2=0.2))
    assert first.linearize == ["act2"] and first.total == 0 and not first.is_empty
    apply_plan(model, first)
    assert isinstance(model.act2, nn.Identity) and linearized_units(model, model.units()) == ["act2"]
    # act2 is gone: even with the lower value it cannot be picked again
    second = easier.plan(model, model.units(), stats(act1=0.7, act2=0.0))
    assert second.linearize == ["act1"]
    apply_plan(model, second)
    assert easier.plan(model, model.units(), stats(act1=0.0, act2=0.0)).is_empty
    x = torch.randn(3, 4)
    assert torch.equal(model(x), model.head(model.fc2(model.fc1(x))))


def test_layerwise_magnitude_prunes_the_same_ratio_of_every_layer_head_included():
    model = TwoUnitNet()
    plan = create_method("layerwise", 0.25).plan(model, model.units(), stats(act1=0.5, act2=0.5))
    assert plan.counts == {"fc1": 8, "fc2": 16, "head": 4}  # 0.25 of 32, 64 and 16 weights
    apply_plan(model, plan)
    second = create_method("layerwise", 0.25).plan(model, model.units(), stats(act1=0.5, act2=0.5))
    assert second.counts == {"fc1": 6, "fc2": 12, "head": 3}  # 0.25 of what is left

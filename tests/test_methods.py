"""Pruning methods and their plans (nepenthe/pruning/): each against numbers computed by hand, and each as its
reference code runs it (create_method("egp") is the EGP that pruning=egp configures)."""

import math

import pytest
import torch
from torch import nn

import train
from conftest import compose_config
from nepenthe.entropy import LayerStats
from nepenthe.errors import ConfigError
from nepenthe.pruning.budget import nepenthe_allocation
from nepenthe.pruning.masks import overall_sparsity, prune_smallest, remaining, remaining_mask
from nepenthe.pruning.methods import GlobalMagnitude, Nepenthe, ProbeSettings, PruningPlan, Uniform, apply_plan
from nepenthe.pruning.registry import create_method
from nepenthe.units import Unit, units_without_rectifier


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
    with pytest.raises(ConfigError, match="unknown pruning method 'magic'; known: easier, egp, imp, lacoot, layerwise, "
                                          "nepenthe, none, uniform"):
        create_method("magic", 0.5)




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
    model = TwoUnitNet()
    easier = create_method("easier", 0.5)
    first = easier.plan(model, model.units(), stats(act1=0.7, act2=0.2))
    assert first.identities == ["act2"] and first.total == 0 and not first.is_empty
    apply_plan(model, first)
    assert isinstance(model.act2, nn.Identity) and units_without_rectifier(model, model.units()) == ["act2"]
    # act2 is gone: even with the lower value it cannot be picked again
    second = easier.plan(model, model.units(), stats(act1=0.7, act2=0.0))
    assert second.identities == ["act1"]
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


def test_floor_rounding_truncates_each_share_like_the_egp_code():
    # E = [0.1, 0.05], T = 0.15, I = [1.5, 3.0]; softmax -> [0.182426, 0.817574]; B = 0.5 * 2000 = 1000 exactly
    # shares 182.426 / 817.574: floor -> int() each = [182, 817] (one weight short); nearest keeps the total, 1000
    assert nepenthe_allocation([1.0, 0.5], [0.1, 0.1], [1000, 1000], 0.5, rounding="floor") == [182, 817]
    assert nepenthe_allocation([1.0, 0.5], [0.1, 0.1], [1000, 1000], 0.5, rounding="nearest") == [182, 818]


def test_floor_and_nearest_can_cap_different_units():
    # nnz = [10, 23, 5], H = [2, 1, 2], mean|w| = 1, ratio 0.7: sum nnz = 38, B_real = 26.6, round(B) = 27.
    # E = [2, 1, 2], T = 5, I = [2.5, 5, 2.5]; softmax: pi_1 = 1 / (1 + 2 e^-2.5) = 0.858990, pi_0 = pi_2 = 0.070505.
    pi1 = 1 / (1 + 2 * math.exp(-2.5))
    # nearest: B = 27 -> unit 1 wants 27 * 0.858990 = 23.193 > 23 -> capped at 23; B = 4 left for units 0 and 2,
    # equal energies -> 2 and 2.
    assert 27 * pi1 == pytest.approx(23.193, abs=1e-3)
    assert nepenthe_allocation([2.0, 1.0, 2.0], [1.0] * 3, [10, 23, 5], 0.7, rounding="nearest") == [2, 23, 2]
    # floor: B = 26.6 -> unit 1 wants 22.849 <= 23, nobody is capped; int(1.8754), int(22.849), int(1.8754)
    assert 26.6 * pi1 == pytest.approx(22.849, abs=1e-3)
    assert nepenthe_allocation([2.0, 1.0, 2.0], [1.0] * 3, [10, 23, 5], 0.7, rounding="floor") == [1, 22, 1]


def test_a_unit_whose_alive_weights_are_all_zero_is_skipped_not_an_error():
    model = TwoUnitNet()
    set_weights(model, 0.5, 1.0)
    with torch.no_grad():
        model.fc1.weight.zero_()  # alive (no mask) but exactly zero: the EGP code counts w != 0 and skips it
    plan = Nepenthe(0.5).plan(model, model.units(), stats(act1=0.3, act2=0.9))
    # fc2 alone is prunable: B = 0.5 * 64 = 32, all of it to fc2
    assert plan.counts == {"fc2": 32} and plan.frozen_units == []


def test_floor_rounding_reaches_the_method_from_the_config_and_is_refused_elsewhere():
    egp = train.to_run_config(compose_config(["pruning=egp"]))
    assert egp.pruning.rounding == "floor"
    assert create_method("egp", 0.5, rounding="floor").rounding == "floor"
    with pytest.raises(ConfigError, match=r"pruning.rounding='floor' applies to nepenthe, egp only; "
                                          r"pruning.method='imp' has no such option"):
        train.to_run_config(compose_config(["pruning=imp", "pruning.rounding=floor"]))
    with pytest.raises(ConfigError, match=r"pruning.rounding='up' is not valid; choose one of nearest, floor"):
        train.to_run_config(compose_config(["pruning.rounding=up"]))


def test_egp_and_easier_presets_probe_like_their_codes():
    egp = train.to_run_config(compose_config(["pruning=egp", "train.batch_size=128"]))
    assert (egp.entropy.pooling, egp.entropy.split, egp.entropy.batch_size) == ("batch", "train_aug", 128)
    egp64 = train.to_run_config(compose_config(["pruning=egp", "train.batch_size=64"]))
    assert egp64.entropy.batch_size == 64  # per-batch pooling at the training loader's batch size, as the code
    easier = train.to_run_config(compose_config(["pruning=easier", "protocol=cifar", "model=resnet18_cifar",
                                                 "dataset=cifar10"]))
    assert (easier.entropy.pooling, easier.entropy.zero_state, easier.entropy.layer_mean) == ("batch", "on", "all")
    assert easier.entropy.batch_size == easier.train.batch_size == 128


def test_easier_turns_every_zero_entropy_activation_into_identity_in_one_round():
    model = TwoUnitNet()
    easier = create_method("easier", 0.5)
    assert easier.plan(model, model.units(), stats(act1=0.0, act2=0.0)).identities == ["act1", "act2"]
    assert easier.plan(model, model.units(), stats(act1=0.0, act2=0.4)).identities == ["act1"]
    assert easier.plan(model, model.units(), stats(act1=0.6, act2=0.4)).identities == ["act2"]  # lowest, as before

@pytest.mark.parametrize("method", ["nepenthe", "egp", "easier"])
def test_the_library_method_is_the_one_its_preset_configures(method):
    """create_method(name) carries the probe settings and rounding that pruning=<name> puts in the config."""
    cfg = train.to_run_config(compose_config([f"pruning={method}", "train.batch_size=96"]))
    made = create_method(method)
    expected = ProbeSettings(zero_state=cfg.entropy.zero_state, layer_mean=cfg.entropy.layer_mean,
                             pooling=cfg.entropy.pooling, split=cfg.entropy.split,
                             batch_size=None if cfg.entropy.batch_size == cfg.train.batch_size else cfg.entropy.batch_size)
    if method == "nepenthe":  # its probe has its own batch size (512): not the training one
        expected = ProbeSettings(zero_state=cfg.entropy.zero_state, layer_mean=cfg.entropy.layer_mean,
                                 pooling=cfg.entropy.pooling, split=cfg.entropy.split)
    assert made.probe == expected
    if method != "easier":
        assert made.rounding == cfg.pruning.rounding
    assert create_method("egp").probe == ProbeSettings("off", "nonconstant", "batch", "train_aug", None)
    assert create_method("egp").rounding == "floor" and create_method("nepenthe").rounding == "nearest"


def test_an_option_a_method_lacks_is_named_with_the_ones_it_has():
    with pytest.raises(ConfigError, match="pruning method 'imp' has no option rounding; its options: none"):
        create_method("imp", 0.5, rounding="floor")
    with pytest.raises(ConfigError, match="pruning method 'egp' has no option lambda_reg; its options: rounding"):
        create_method("egp", lambda_reg=1.0)
    with pytest.raises(ConfigError, match=r"pruning.lambda_reg=3.0 applies to lacoot only; "
                                          r"pruning.method='nepenthe' has no such option"):
        train.to_run_config(compose_config(["pruning.lambda_reg=3"]))


class WeightPassedToAFunction(nn.Module):
    """Uses ``proj.weight`` without calling ``proj``, as torchvision's Swin hands ``attn.qkv.weight`` to
    ``shifted_window_attention``."""

    def __init__(self):
        super().__init__()
        self.proj, self.head = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.nn.functional.linear(x, self.proj.weight, self.proj.bias).relu())


@pytest.mark.parametrize("restored", [False, True], ids=["pruned", "restored from a checkpoint"])
def test_a_pruned_weight_used_without_calling_its_layer_keeps_training(restored):
    """``torch.nn.utils.prune`` recomputes weight = weight_orig * weight_mask only when the layer is called: without
    the model's own refresh a functionally used layer kept its weight of the moment of pruning and the second
    backward pass failed (IMP on Swin-T)."""
    from nepenthe.store import compact_state, load_compact_state

    torch.manual_seed(0)
    model = WeightPassedToAFunction()
    apply_plan(model, PruningPlan(counts={"proj": 18, "head": 9}))
    if restored:
        model = load_compact_state(WeightPassedToAFunction(), *compact_state(model))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.proj.weight.detach().clone()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    for _ in range(3):  # the second step is where the stale graph failed
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model(x)
    for layer in (model.proj, model.head):
        assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)  # the trained weights, masked
        assert int((layer.weight == 0).sum()) == {6: 18, 3: 9}[layer.out_features]
    assert float((model.proj.weight.detach() - before).abs().max()) > 1e-3  # the functionally used weight learned

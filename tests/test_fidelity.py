"""Issue 13's reference-code gaps, each against numbers computed by hand."""

import math

import pytest
import torch

import train
from conftest import compose_config
from nepenthe.errors import ConfigError
from nepenthe.pruning.budget import nepenthe_allocation
from nepenthe.pruning.methods import Nepenthe, create_method
from test_pruning import TwoUnitNet, set_weights, stats


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
    with pytest.raises(ConfigError, match=r"pruning.rounding='floor' applies to the entropy budget only "
                                          r"\(nepenthe, egp\); pruning.method='imp' has none"):
        train.to_run_config(compose_config(["pruning=imp", "pruning.rounding=floor"]))
    with pytest.raises(ConfigError, match=r"pruning.rounding='up' is not valid; choose one of nearest, floor"):
        train.to_run_config(compose_config(["pruning.rounding=up"]))


def test_egp_and_easier_presets_probe_like_their_codes():
    egp = train.to_run_config(compose_config(["pruning=egp", "train.batch_size=128"]))
    assert (egp.entropy.pooling, egp.entropy.split, egp.entropy.batch_size) == ("batch", "train_aug", 128)
    egp64 = train.to_run_config(compose_config(["pruning=egp", "train.batch_size=64"]))
    assert egp64.entropy.batch_size == 64  # per-batch pooling at the training loader's batch size, as the code
    easier = train.to_run_config(compose_config(["pruning=easier", "experiment=resnet18_cifar10"]))
    assert (easier.entropy.pooling, easier.entropy.zero_state, easier.entropy.layer_mean) == ("batch", "on", "all")
    assert easier.entropy.batch_size == easier.train.batch_size == 128


def test_easier_turns_every_zero_entropy_activation_into_identity_in_one_round():
    model = TwoUnitNet()
    easier = create_method("easier", 0.5)
    assert easier.plan(model, model.units(), stats(act1=0.0, act2=0.0)).linearize == ["act1", "act2"]
    assert easier.plan(model, model.units(), stats(act1=0.0, act2=0.4)).linearize == ["act1"]
    assert easier.plan(model, model.units(), stats(act1=0.6, act2=0.4)).linearize == ["act2"]  # lowest, as before

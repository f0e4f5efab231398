import math

import pytest
import torch
from torch import nn

from nepenthe.entropy import (EntropyProbe, ProbeSettings, binary_entropy, layer_entropy, measure_entropy,
                              on_probability)
from nepenthe.errors import ConfigError


def h(p):
    return 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def probe_stats(z, *, layout="auto", act=None, **options):
    act = act or nn.ReLU()
    with EntropyProbe({"a": act}, ProbeSettings(**options), layouts={"a": layout}) as probe:
        act(z)
    return probe.stats()["a"]


def test_binary_entropy_exact_at_the_ends_and_one_bit_at_half():
    p = torch.tensor([0.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    bits = binary_entropy(p)
    assert bits[0].item() == 0.0 and bits[1].item() == 0.0
    assert bits[2].item() == pytest.approx(1.0, abs=1e-15)
    assert bits[3].item() == pytest.approx(h(0.25), abs=1e-12)  # 0.8112781244591328


def channels_first_tensor():
    # 2 images x 3 channels x 2x2 positions = 8 values per channel.
    z = torch.zeros(2, 3, 2, 2)
    z[:, 0] = 1.0  # channel 0: always ON
    z[:, 1] = -1.0  # channel 1: always OFF
    z[0, 2] = torch.tensor([[1.0, 2.0], [-1.0, 0.0]])  # channel 2: 4 ON, 3 OFF, 1 exact zero
    z[1, 2] = torch.tensor([[3.0, -2.0], [1.0, -1.0]])
    return z


@pytest.mark.parametrize(
    "zero_state,p2", [("off", 4 / 8), ("on", 5 / 8), ("drop", 4 / 7)]
)
def test_channels_first_counts_and_zero_state(zero_state, p2):
    stats = probe_stats(channels_first_tensor(), zero_state=zero_state)
    assert stats.p_on.tolist() == pytest.approx([1.0, 0.0, p2])
    assert (stats.always_on, stats.always_off, stats.switching) == (1, 1, 1)
    assert stats.positions == 8
    # nonconstant: only channel 2 is averaged
    assert stats.entropy == pytest.approx(h(p2), abs=1e-12)


def test_layer_mean_all_averages_every_neuron():
    stats = probe_stats(channels_first_tensor(), zero_state="drop", layer_mean="all")
    assert stats.entropy == pytest.approx(h(4 / 7) / 3, abs=1e-12)


@pytest.mark.parametrize("layout,shape_fn", [
    ("channels_last", lambda z: z.permute(0, 2, 3, 1).contiguous()),  # [B,H,W,C] (Swin)
    ("auto", lambda z: z.permute(0, 2, 3, 1).reshape(2, 4, 3)),  # tokens [B,T,C]
    ("auto", lambda z: z.permute(0, 2, 3, 1).reshape(8, 3)),  # plain [B,C] (8 rows)
])
def test_other_layouts_give_the_same_per_neuron_probabilities(layout, shape_fn):
    stats = probe_stats(shape_fn(channels_first_tensor()), layout=layout, zero_state="off")
    assert stats.p_on.tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert stats.entropy == pytest.approx(1.0, abs=1e-12)


def test_all_constant_layer_has_exactly_zero_entropy_with_nonconstant_mean():
    z = torch.tensor([[1.0, -1.0], [2.0, -3.0]])
    stats = probe_stats(z)
    assert stats.entropy == 0.0 and stats.is_zero_entropy
    assert not stats.identity_on_probe  # neuron 1 is always OFF


def test_all_zero_input_with_drop_counts_nothing_and_is_identity():
    stats = probe_stats(torch.zeros(4, 3), zero_state="drop")
    assert stats.never_counted == 3 and stats.entropy == 0.0 and stats.identity_on_probe


def test_batch_pooling_averages_per_batch_layer_values():
    act = nn.ReLU()
    with EntropyProbe({"a": act}, ProbeSettings(pooling="batch")) as probe:
        act(torch.tensor([[1.0, 1.0], [-1.0, 1.0]]))  # batch 1: neuron0 p=1/2 (1 bit), neuron1 constant
        act(torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, -1.0], [1.0, -1.0]]))  # neuron1 p=1/4
    stats = probe.stats()["a"]
    assert stats.entropy == pytest.approx((1.0 + h(0.25)) / 2, abs=1e-12)
    # dataset-level counts are still kept: neuron0 5/6 ON, neuron1 3/6 ON
    assert stats.p_on.tolist() == pytest.approx([5 / 6, 3 / 6])
    with EntropyProbe({"a": act}, ProbeSettings(pooling="dataset")) as probe:
        act(torch.tensor([[1.0, 1.0], [-1.0, 1.0]]))
        act(torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, -1.0], [1.0, -1.0]]))
    assert probe.stats()["a"].entropy == pytest.approx((h(5 / 6) + 1.0) / 2, abs=1e-12)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), nn.GELU()])
def test_every_rectifier_is_probed_on_its_input(act):
    z = torch.tensor([[-2.0, 3.0], [-1.0, -4.0], [5.0, 6.0]])  # neuron0 1/3 ON, neuron1 2/3 ON
    stats = probe_stats(z, act=act)
    assert stats.p_on.tolist() == pytest.approx([1 / 3, 2 / 3])
    assert stats.entropy == pytest.approx(h(1 / 3), abs=1e-12)


def test_measure_entropy_restores_mode_and_removes_hooks():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    model.train()
    batches = [(torch.tensor([[1.0, -1.0], [2.0, 1.0]]), torch.zeros(2))]
    stats = measure_entropy(model, {"1": model[1]}, batches)
    assert model.training
    assert len(model[1]._forward_hooks) == 0
    assert stats["1"].p_on.tolist() == [1.0, 0.5]


def test_on_probability_is_nan_only_without_counted_states():
    p = on_probability(torch.tensor([0, 2]), torch.tensor([0, 2]), torch.tensor([3, 0]), "drop")
    assert math.isnan(p[0].item()) and p[1].item() == 0.5
    assert layer_entropy(p, "all").item() == pytest.approx(0.5)


def test_bad_option_names_the_value_and_the_choices():
    with pytest.raises(ConfigError, match=r"entropy.zero_state='maybe'.*off, on, drop"):
        EntropyProbe({}, ProbeSettings(zero_state="maybe"))


def test_probe_never_called_is_an_error():
    with EntropyProbe({"a": nn.ReLU()}) as probe:
        pass
    with pytest.raises(ConfigError, match="never called"):
        probe.stats()

"""nepenthe.collapse.verify and the guards around it: collapse never returns a wrong model. Each test compares
against outputs computed here from the original layers (never through collapse), asserting equality (relative
≤ 1e-5) or a specific CollapseError."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from nepenthe.collapse import CollapseError, collapse, save_collapsed
from nepenthe.collapse.verify import check_step
from nepenthe.entropy import EntropyProbe, LayerStats, binary_entropy
from nepenthe.models.blocks import BasicBlock
from nepenthe.records import CollapseResult
from nepenthe.report import format_collapse


def stats_of(p_on) -> LayerStats:
    p = torch.as_tensor(p_on, dtype=torch.float64)
    switching = (p > 0) & (p < 1)
    return LayerStats("unit", p, float(binary_entropy(p)[switching].mean()) if switching.any() else 0.0, 100)


def assert_same(got, expected, rtol=1e-5):
    assert got.shape == expected.shape and got.dtype == expected.dtype
    scale = float(expected.detach().abs().max())
    torch.testing.assert_close(got, expected, rtol=0, atol=rtol * scale)


def ops(report, name):
    return [op for op in report.operations if op["op"] == name]


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


# 1. shared parameters ------------------------------------------------------------------------------------------------

class TiedLayers(nn.Module):
    """fc1's weight is also ``side``'s weight (tied), or read directly with F.linear."""

    def __init__(self, direct: bool):
        super().__init__()
        self.direct = direct
        self.fc1, self.act, self.fc2, self.side = nn.Linear(6, 6), nn.LeakyReLU(0.1), nn.Linear(6, 6), nn.Linear(6, 6)
        self.side.weight = self.fc1.weight

    def forward(self, x):
        other = F.linear(x, self.fc1.weight) if self.direct else self.side(x)
        return self.fc2(self.act(self.fc1(x))) + other


@pytest.mark.parametrize("direct", [False, True])
def test_a_scale_is_never_folded_into_a_weight_that_is_also_used_elsewhere(direct):
    model = TiedLayers(direct).eval()
    x = torch.randn(32, 6)
    scale = torch.tensor([1.0, 0.1, 1.0, 0.1, 1.0, 0.1])  # a non-switching LeakyReLU: ON, OFF, ON, ...
    w1, b1 = model.fc1.weight.detach().clone(), model.fc1.bias.detach().clone()
    other = x @ w1.T + (0 if direct else model.side.bias.detach())
    expected = model.fc2((x @ w1.T + b1) * scale) + other
    small, report = collapse(model, {"act": stats_of([1.0, 0.0] * 3)}, x)
    assert report.units[0]["action"] == "scale"  # a multiply node, not a rewritten fc1
    assert "fc1" in report.shared_layers
    assert_same(small(x), expected)
    assert torch.equal(model.fc1.weight, w1)


# 2. output shapes ----------------------------------------------------------------------------------------------------

class PrunedPlusGate(nn.Module):
    """A fully pruned conv (a constant, the larger operand) plus a gate computed on the pooled input."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.gate = nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x) + self.gate(self.pool(x))


def test_a_folded_constant_keeps_the_output_shape_when_it_is_the_larger_operand():
    model = PrunedPlusGate().eval()
    prune.l1_unstructured(model.conv, "weight", amount=1.0)
    x = torch.randn(2, 3, 6, 6)
    gate = model.gate(x.mean((2, 3), keepdim=True))
    expected = (model.conv.bias.detach().view(1, 4, 1, 1) + gate).expand(2, 4, 6, 6)
    small, report = collapse(model, {}, x)
    assert small(x).shape == (2, 4, 6, 6)
    assert_same(small(x), expected)
    assert ops(report, "fold_constant")[0]["shape"] == [1, 4, 6, 6]


def test_verification_compares_shapes_and_dtypes_never_broadcasts():
    expected = ([torch.ones(4, 3)], None)
    with pytest.raises(CollapseError, match=r"step 'fold_constant' \(at conv\) .* output 0 is \(1, 3\) torch.float32 "
                                            r"instead of \(4, 3\) torch.float32"):
        check_step("fold_constant", ["conv"], ([torch.ones(1, 3)], None), expected, 1e-4)
    with pytest.raises(CollapseError, match=r"torch.float64 instead of \(4, 3\) torch.float32"):
        check_step("merge", [], ([torch.ones(4, 3, dtype=torch.float64)], None), expected, 1e-4)


# 3. torch.add(..., alpha=...) --------------------------------------------------------------------------------------

class ShiftedChain(nn.Module):
    def __init__(self, shift_first: bool):
        super().__init__()
        self.shift_first = shift_first
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.register_buffer("shift", torch.randn(1, 8, 5, 5))

    def forward(self, x):
        z = self.conv1(x)
        z = torch.add(self.shift, z, alpha=0.5) if self.shift_first else torch.add(z, self.shift, alpha=0.5)
        return self.conv2(z)


def test_add_with_alpha_in_a_chain_is_merged_exactly_or_left_alone():
    x = torch.randn(3, 3, 5, 5)
    model = ShiftedChain(shift_first=False).eval()
    expected = model.conv2(model.conv1(x) + 0.5 * model.shift)
    small, report = collapse(model, {}, x)
    (merge,) = ops(report, "merge")  # conv2(conv1(x) + 0.5·shift): one 1×1 conv and a per-position map
    assert merge["exact"] and merge["layers"] == ["conv1", "conv2"]
    assert len([m for m in small.modules() if isinstance(m, nn.Conv2d)]) == 1
    assert_same(small(x), expected)

    model = ShiftedChain(shift_first=True).eval()  # shift + 0.5·conv1(x): scales the layer, not modelled
    expected = model.conv2(model.shift + 0.5 * model.conv1(x))
    small, report = collapse(model, {}, x)
    assert not ops(report, "merge")
    assert_same(small(x), expected)


# 4. a relative bound -----------------------------------------------------------------------------------------------

def test_small_outputs_are_verified_relative_to_their_own_size(monkeypatch):
    import nepenthe.collapse.pipeline as pipeline

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.mul_(1e-4)
        model[0].bias.mul_(1e-4)
    x = torch.randn(2, 3, 8, 8)
    small, report = collapse(model, {}, x)  # outputs of size ~1e-4 are still reproduced to 1e-5 of their size
    assert report.output_scale < 1e-3 and report.relative_diff <= 1e-5
    assert_same(small(x), model(x))

    def shift_bias(gm):  # changes the output by 3e-5 absolute: tiny, but a large fraction of these outputs
        gm.get_submodule("0").bias.data += 3e-5
        return [{"op": "remove_channels", "layer": "0"}]

    monkeypatch.setattr(pipeline, "remove_dead_channels", shift_bias)
    with pytest.raises(CollapseError, match=r"step 'remove_channels' \(at 0\) does not reproduce the model"):
        collapse(model, {}, x)


# 5. merge=cost only exact merges (MobileNetV2 with linearised ReLU6 blocks) ------------------------------------------

def linear_front_mobilenet():
    """The stem and first two blocks of torchvision's MobileNetV2 (random weights and BN statistics), and its ReLU6
    units, which a probe found always ON (so the front is linear)."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(num_classes=10).features[:3].eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    widths = {"0.2": 32, "1.conv.0.2": 32, "2.conv.0.2": 96, "2.conv.1.2": 96}
    return model, {name: stats_of([1.0] * n) for name, n in widths.items()}


def test_default_merges_on_mobilenet_v2_are_exact_and_approximate_ones_report_their_error():
    model, stats = linear_front_mobilenet()
    x = torch.randn(2, 3, 32, 32)
    reference = copy.deepcopy(model)  # the front with those units replaced by identities, built by hand
    for name in stats:
        reference.set_submodule(name, nn.Identity())
    expected = reference(x).detach()
    small, report = collapse(model, stats, x, approximate_activations=True)
    assert ops(report, "merge") and all(m["exact"] for m in ops(report, "merge"))
    assert_same(small(x), expected)
    # the opt-in takes the cheaper 11×11 stride-4 merge of stem and block 1, exact only away from the border ring
    approx, areport = collapse(model, stats, x, merge="approximate", approximate_activations=True)
    inexact = [m for m in ops(areport, "merge") if not m["exact"]]
    assert [m["kernel"] for m in inexact] == [[11, 11]] and areport.after.macs < report.after.macs
    diff = (approx(x).detach() - expected).abs()
    ring = inexact[0]["border_width"][0]
    scale = float(expected.abs().max())
    assert float(diff.max()) > 1e-2 * scale  # really different, and said so:
    assert areport.border_diff == pytest.approx(float(diff.max()), rel=1e-4)
    assert areport.border_relative_diff == pytest.approx(float(diff.max()) / scale, rel=1e-4)
    assert float(diff[..., ring:-ring, ring:-ring].max()) < 1e-5 * scale and inexact[0]["interior_relative_diff"] < 1e-5


# 6. activations that are not the identity where ON -------------------------------------------------------------------

def test_relu6_above_six_stays_unless_asked_and_then_reports_its_error():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU6(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].bias.fill_(5.0)  # every neuron ON on these inputs, several above 6
    x = torch.randn(64, 4)
    z = model[0](x).detach()
    assert bool((z > 0).all()) and bool((z > 6).any())
    small, report = collapse(model, {"1": stats_of([1.0] * 8)}, x)
    assert report.units[0]["action"] == "kept" and "ReLU6" in report.units[0]["reason"]
    assert report.units[0]["approximation_declined"] and report.removed_layers == []
    assert_same(small(x), model[2](F.relu6(z)))
    section = CollapseResult(**vars(report), test_acc=50.0)
    assert "  left in place (not the identity where ON; collapse.approximate_activations=true replaces them): 1" in \
        format_collapse(section, 50.0)

    small, report = collapse(model, {"1": stats_of([1.0] * 8)}, x, approximate_activations=True)
    assert report.units[0]["action"] == "identity" and report.units[0]["exact_on_probe"] is False
    assert report.units[0]["approximation_error"] == pytest.approx(
        float((F.relu6(z) - z).abs().max() / F.relu6(z).abs().max()), rel=1e-6)
    assert any(line.startswith("  approximate activations (relative error at the unit): 1 0.")
               for line in format_collapse(CollapseResult(**vars(report), test_acc=50.0), 50.0))
    linear = model[2](z).detach()
    assert_same(small(x), linear)  # a single linear layer now, equal to the model with the identity
    assert report.linearization_relative_diff == pytest.approx(
        float((linear - model(x).detach()).abs().max() / model(x).detach().abs().max()), rel=1e-5)


def test_relu6_always_off_neurons_are_still_removed_exactly():
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU6(), nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(4, 3, 5, 5)
    with torch.no_grad():  # neurons 0 and 3 can never be ON
        model[0].weight[[0, 3]] = 0
        model[0].bias[[0, 3]] = -1.0
    small, report = collapse(model, {"1": stats_of([0.0, 0.5, 0.5, 0.0, 0.5, 0.5])}, x)
    assert report.units[0]["action"] == "dead_channels_zeroed"
    assert ops(report, "remove_channels")[0]["removed"] == 2
    assert_same(small(x), model(x))


def test_activations_that_are_not_units_are_left_alone():
    for act in (nn.SiLU(), nn.Hardtanh(-1.0, 1.0)):
        model = nn.Sequential(nn.Linear(4, 8), act, nn.Linear(8, 3)).eval()
        x = torch.randn(16, 4)
        small, report = collapse(model, {"1": stats_of([1.0] * 8)}, x)
        assert report.units == [] and not ops(report, "merge")
        assert_same(small(x), model(x))


# 7. constants that are not batch-first -------------------------------------------------------------------------------

class Tokens(nn.Module):
    """Token features through a fully pruned linear, either sequence-first or with batch and tokens flattened."""

    def __init__(self, layout: str):
        super().__init__()
        self.layout = layout
        self.pruned, self.live = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):  # x: (B, T, 4)
        if self.layout == "sequence_first":
            h = x.transpose(0, 1)
            return torch.cat([self.pruned(h), self.live(h)], -1).transpose(0, 1)
        h = x.flatten(0, 1)
        return torch.cat([self.pruned(h), self.live(h)], -1).view(x.shape[0], x.shape[1], 6)


@pytest.mark.parametrize("layout,dims", [("sequence_first", r"\(5, 2, 3\)"), ("flattened", r"\(10, 3\)")])
def test_constants_whose_batch_is_not_dim_0_are_refused_clearly(layout, dims):
    model = Tokens(layout).eval()
    prune.l1_unstructured(model.pruned, "weight", amount=1.0)
    with pytest.raises(CollapseError, match=rf"constant at node 'pruned': its shape {dims} holds the batch in a "
                                            r"dimension other than 0"):
        collapse(model, {}, torch.randn(4, 5, 4))


# 8. layouts ----------------------------------------------------------------------------------------------------------

def test_the_probe_layout_is_used_and_a_contradicting_or_impossible_one_is_refused():
    # [B, H, W, C] with H == C == 8: neurons sit in the last dim; channels 4..7 always negative (OFF)
    model = nn.Sequential(nn.LeakyReLU(0.25), nn.Linear(8, 3)).eval()
    x = torch.rand(4, 8, 5, 8) + 0.1
    x[..., 4:] *= -1
    with EntropyProbe({"0": model[0]}, layouts={"0": "channels_last"}) as probe:
        model(x)
    stats = probe.stats()
    assert stats["0"].neuron_dim == 3 and stats["0"].always_on == 4 and stats["0"].always_off == 4
    expected = model[1](x * torch.tensor([1.0] * 4 + [0.25] * 4))
    small, report = collapse(model, stats, x)  # no layouts given: the probe's record decides
    assert report.units[0]["neuron_dim"] == 3
    assert_same(small(x), expected)
    with pytest.raises(CollapseError, match=r"unit '0' was probed with its neurons in dim 3 but layouts says "
                                            r"'channels_first' \(dim 1\)"):
        collapse(model, stats, x, layouts={"0": "channels_first"})
    with pytest.raises(CollapseError, match=r"unit '0' has 5 neurons in its statistics but 8 along dim 1"):
        collapse(model, {"0": stats_of([1.0] * 5)}, x)


# 9. other input sizes ------------------------------------------------------------------------------------------------

def test_a_collapsed_model_refuses_an_input_size_it_was_not_built_for(tmp_path):
    block = BasicBlock(4, 8, stride=2).eval()
    prune.l1_unstructured(block.conv1, "weight", amount=1.0)  # per-position constant maps
    x = torch.randn(3, 4, 8, 8)
    small, _ = collapse(block, {}, x)
    y = torch.randn(5, 4, 8, 8)
    assert_same(small(y), block(y))  # any batch size
    with pytest.raises(CollapseError, match=r"built and verified for inputs of shape \(batch, 4, 8, 8\) and got "
                                            r"\(3, 4, 10, 10\)"):
        small(torch.randn(3, 4, 10, 10))

    # a dead unit makes the output constant: it must not silently answer for another size either
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.randn(2, 3, 9, 9)
    small, report = collapse(model, {"1": stats_of([0.0] * 4)}, x)
    assert report.units[0]["action"] == "zero"
    assert_same(small(x), model[4].bias.detach().expand(2, 2))
    with pytest.raises(CollapseError, match=r"\(batch, 3, 9, 9\) and got \(2, 3, 12, 12\)"):
        small(torch.randn(2, 3, 12, 12))
    loaded = torch.export.load(str(save_collapsed(small, x, tmp_path / "c.pt2"))).module()
    assert_same(loaded(torch.randn(6, 3, 9, 9)), model[4].bias.detach().expand(6, 2))

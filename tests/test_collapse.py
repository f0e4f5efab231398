"""Collapse: every operation on small randomized modules, outputs compared with the model it must reproduce."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from nepenthe.collapse import CollapseError, collapse, load_collapsed, save_collapsed
from nepenthe.entropy import LayerStats, binary_entropy
from nepenthe.metrics import weight_layers_on_longest_path
from nepenthe.models.blocks import BasicBlock


def stats_of(p_on) -> LayerStats:
    p = torch.as_tensor(p_on, dtype=torch.float64)
    h = binary_entropy(p)
    switching = (p > 0) & (p < 1)
    entropy = float(h[switching].mean()) if switching.any() else 0.0
    return LayerStats("unit", p, entropy, 100)


def all_on(n):
    return stats_of([1.0] * n)


def randomize_norms(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def assert_same(got, expected, rtol=1e-5):
    scale = float(expected.detach().abs().max())
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * scale)


def ops(report, name):
    return [op for op in report.operations if op["op"] == name]


def with_identity(model, *paths):
    """The linearized model collapse must reproduce: the named activations replaced by identities."""
    reference = copy.deepcopy(model)
    for path in paths:
        reference.set_submodule(path, nn.Identity())
    return reference.eval()


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_batchnorm_folds_into_conv_exactly_and_input_model_is_untouched():
    model = randomize_norms(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 10, 10)
    small, report = collapse(model, {}, x)
    assert [op["op"] for op in report.operations] == ["fold_batchnorm"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in small.modules())
    assert_same(small(x), model(x))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model[1], nn.BatchNorm2d)


def test_always_on_relu_becomes_identity_and_1x1_chain_merges_exactly():
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(4, 3, 9, 9)
    small, report = collapse(model, {"1": all_on(16)}, x)
    assert report.units[0]["action"] == "identity"
    merged = ops(report, "merge")
    assert len(merged) == 1 and merged[0]["exact"] and merged[0]["macs_after"] < merged[0]["macs_before"]
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].weight.shape == (4, 3, 1, 1)
    assert_same(small(x), with_identity(model, "1")(x))
    assert report.removed_weight_layers == 1


def test_always_off_relu_channels_are_removed_from_producer_and_reader():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1)).eval()
    x = torch.randn(4, 3, 8, 8)
    # channels 1 and 6 never switched ON on the probe; the rest switch
    p_on = [0.5, 0.0, 0.3, 0.7, 0.5, 0.2, 0.0, 0.9]
    reference = copy.deepcopy(model)
    reference[0].weight.data[[1, 6]] = 0
    reference[0].bias.data[[1, 6]] = 0  # what the probe decided: those neurons emit 0
    small, report = collapse(model, {"1": stats_of(p_on)}, x)
    assert report.units[0]["action"] == "dead_channels_zeroed"
    removed = ops(report, "remove_channels")
    assert removed == [{"op": "remove_channels", "layer": "0", "removed": 2, "kept": 6, "readers": ["2"],
                        "exact": True}]
    first, second = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert first.out_channels == 6 and second.in_channels == 6
    assert_same(small(x), reference(x))


def test_leaky_relu_off_neurons_are_linear_not_dead():
    model = nn.Sequential(nn.Linear(6, 4), nn.LeakyReLU(0.1), nn.Linear(4, 3)).eval()
    x = torch.randn(16, 6)
    small, report = collapse(model, {"1": stats_of([1.0, 0.0, 1.0, 0.0])}, x)
    assert report.units[0]["action"] == "scale_folded"
    # the unit is linear (scale 1, 0.1, 1, 0.1), so the two linears merge into one 6 -> 3 map
    layers = [m for m in small.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 1 and layers[0].weight.shape == (3, 6)
    scale = torch.tensor([1.0, 0.1, 1.0, 0.1])
    expected = model[2](model[0](x) * scale)
    assert_same(small(x), expected)
    assert not ops(report, "remove_channels")


def test_switching_leaky_relu_keeps_its_off_neurons():
    model = nn.Sequential(nn.Linear(6, 4), nn.LeakyReLU(0.1), nn.Linear(4, 3)).eval()
    x = torch.randn(16, 6)
    small, report = collapse(model, {"1": stats_of([0.5, 0.0, 0.5, 0.0])}, x)
    assert report.units[0]["action"] == "kept"
    assert [m.out_features for m in small.modules() if isinstance(m, nn.Linear)] == [4, 3]
    assert_same(small(x), model(x))


def test_dead_unit_becomes_a_constant_and_its_layers_disappear():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x = torch.randn(16, 6)
    small, report = collapse(model, {"1": stats_of([0.0] * 4)}, x)
    assert report.units[0]["action"] == "zero"
    assert not [m for m in small.modules() if isinstance(m, nn.Linear)]
    expected = model[2].bias.expand(16, 3)  # a dead unit leaves only the next layer's bias
    assert_same(small(x), expected)
    assert small(torch.randn(5, 6)).shape == (5, 3)


def test_fully_pruned_conv1_in_resnet_block_leaves_a_per_position_bias_map():
    block = randomize_norms(BasicBlock(8, 16, stride=2))
    prune.l1_unstructured(block.conv1, "weight", amount=1.0)
    x = torch.randn(4, 8, 12, 12)
    small, report = collapse(block, {}, x)
    folded = ops(report, "fold_constant")
    assert len(folded) == 1 and folded[0]["removed_layers"] == ["conv1", "conv2"]
    assert folded[0]["shape"] == [1, 16, 6, 6]  # zero padding makes conv2's constant position-dependent
    assert report.removed_layers == ["conv1", "conv2"]
    assert report.before.weight_layers_on_longest_path == 2 and report.after.weight_layers_on_longest_path == 1
    assert report.after.macs < report.before.macs / 3
    assert_same(small(x), block(x))
    assert "conv1" in dict(block.named_modules())  # the input model keeps its layers


def test_constant_that_is_uniform_per_channel_becomes_a_bias():
    block = randomize_norms(BasicBlock(8, 16, stride=2))
    prune.l1_unstructured(block.conv2, "weight", amount=1.0)  # conv2 emits its (folded) bias: per channel only
    x = torch.randn(4, 8, 12, 12)
    small, report = collapse(block, {}, x)
    assert ops(report, "fold_constant")[0]["shape"] == [1, 16, 1, 1]
    assert [op["layer"] for op in ops(report, "fold_constant_into_bias")] == ["shortcut.0"]
    assert not [b for name, b in small.named_buffers() if name.startswith("collapsed_")]
    assert_same(small(x), block(x))


def test_resnet18_cifar_block_with_conv1_pruned_collapses_with_equal_outputs():
    from nepenthe.models import create_model

    model = randomize_norms(create_model("resnet18_cifar", num_classes=10, in_chans=3))
    prune.l1_unstructured(model.layers[2][1].conv1, "weight", amount=1.0)
    x = torch.randn(2, 3, 32, 32)
    small, report = collapse(model, {}, x)
    # an identity-shortcut block: both of its convs leave the main path, 18 -> 16 weight layers
    assert weight_layers_on_longest_path(model) == 18 and weight_layers_on_longest_path(small) == 16
    assert report.removed_weight_layers == 2
    removed = ops(report, "fold_constant")[0]["removed_layers"]
    assert removed == ["layers.2.1.conv1", "layers.2.1.conv2"]
    assert_same(small(x), model(x), rtol=1e-4)
    assert report.max_abs_diff <= 1e-4 * max(report.output_scale, 1.0)


def test_3x3_after_3x3_merges_to_5x5_only_when_asked_with_a_measured_border_ring():
    # a bottleneck (wide middle): one 5×5 4→4 conv costs fewer MACs than 3×3 4→32 + 3×3 32→4, but it sees real values
    # where the chain saw zero padding, so only merge='approximate' takes it
    model = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 4, 3, padding=1)).eval()
    x = torch.randn(2, 4, 10, 10)
    stats = {"1": all_on(32)}
    linear = with_identity(model, "1")
    for exact_only in ("cost", "always", "never"):
        small, report = collapse(model, stats, x, merge=exact_only)
        assert not ops(report, "merge") and report.border_diff == 0.0
        assert_same(small(x), linear(x))
    small, report = collapse(model, stats, x, merge="approximate")
    (merge,) = ops(report, "merge")
    assert merge["kernel"] == [5, 5] and merge["padding"] == [2, 2] and not merge["exact"]
    assert merge["macs_after"] == 25 * 4 * 4 * 100 < merge["macs_before"] == 2 * 9 * 4 * 32 * 100
    diff = (small(x) - linear(x)).detach().abs()
    scale = float(linear(x).detach().abs().max())
    assert merge["max_abs_diff"] == pytest.approx(float(diff.max()), rel=1e-4)
    assert float(diff[..., 1:-1, 1:-1].max()) < 1e-5 * scale  # exact away from the one-pixel ring
    assert float(diff.max()) > 1e-2 * scale  # the ring really differs, and the report says so
    assert merge["interior_relative_diff"] < 1e-5
    assert report.border_diff == pytest.approx(float(diff.max()), rel=1e-4)
    assert report.border_relative_diff == pytest.approx(float(diff.max()) / scale, rel=1e-4)


@pytest.mark.parametrize("first,second", [
    (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=1)),   # strided k×k then pointwise: exact
    (dict(kernel_size=1), dict(kernel_size=3, stride=2, padding=1)),   # pointwise then strided k×k: exact + bias map
    (dict(kernel_size=2, stride=2), dict(kernel_size=3, stride=1)),    # patchify then valid conv: exact
])
def test_strided_conv_compositions_are_exact(first, second):
    model = nn.Sequential(nn.Conv2d(3, 6, **first), nn.ReLU(), nn.Conv2d(6, 5, **second)).eval()
    x = torch.randn(2, 3, 11, 11)
    small, report = collapse(model, {"1": all_on(6)}, x, merge="always")
    (merge,) = ops(report, "merge")
    assert merge["exact"]
    assert_same(small(x), with_identity(model, "1")(x))


def test_inverted_residual_with_linear_activations_merges_exactly():
    class InvertedResidual(nn.Module):
        def __init__(self, c=8, expand=6):
            super().__init__()
            h = c * expand
            self.expand, self.bn1, self.act1 = nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6()
            self.dw, self.bn2, self.act2 = nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6()
            self.project, self.bn3 = nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            y = self.act1(self.bn1(self.expand(x)))
            y = self.act2(self.bn2(self.dw(y)))
            return x + self.bn3(self.project(y))

    block = randomize_norms(InvertedResidual())
    x = torch.randn(2, 8, 9, 9)
    stats = {"act1": all_on(48), "act2": all_on(48)}
    _, default = collapse(block, stats, x)  # ReLU6 is not the identity above 6: left in place unless asked
    assert [u["action"] for u in default.units] == ["kept", "kept"] and not ops(default, "merge")
    small, report = collapse(block, stats, x, approximate_activations=True)
    # the error is measured at each unit on the verification batch, in the kept (uncollapsed) model
    with torch.no_grad():
        z1 = block.bn1(block.expand(x))
        z2 = block.bn2(block.dw(F.relu6(z1)))
    expected = [float((F.relu6(z) - z).abs().max() / F.relu6(z).abs().max()) for z in (z1, z2)]
    assert [u["approximation_error"] for u in report.units] == pytest.approx(expected, rel=1e-6)
    (merge,) = ops(report, "merge")
    assert merge["layers"] == ["expand", "dw", "project"] and merge["exact"] and merge["kernel"] == [3, 3]
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].weight.shape == (8, 8, 3, 3)
    assert_same(small(x), with_identity(block, "act1", "act2")(x))
    assert report.after.macs < report.before.macs


def test_transformer_mlp_with_gelu_replaced_becomes_one_linear():
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.drop, self.fc2 = nn.Linear(16, 64), nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 16)

        def forward(self, x):
            return self.fc2(self.drop(self.act(self.fc1(x))))

    mlp = MLP().eval()
    x = torch.randn(2, 7, 16)  # tokens: the neurons are the last dimension
    kept, default = collapse(mlp, {"act": all_on(64)}, x)
    assert default.units[0]["action"] == "kept" and "approximate_activations=True" in default.units[0]["reason"]
    assert_same(kept(x), mlp(x))
    small, report = collapse(mlp, {"act": all_on(64)}, x, approximate_activations=True)
    assert report.units[0]["action"] == "identity" and report.units[0]["exact_on_probe"] is False
    h = mlp.fc1(x).detach()
    expected_error = float((F.gelu(h) - h).abs().max() / F.gelu(h).abs().max())
    assert report.units[0]["approximation_error"] == pytest.approx(expected_error, rel=1e-5)
    layers = [m for m in small.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 1 and layers[0].weight.shape == (16, 16)
    assert_same(small(x), mlp.fc2(mlp.fc1(x)))


def test_never_merges_across_a_residual_add_and_identity_after_add_disappears():
    block = randomize_norms(BasicBlock(8, 8))
    x = torch.randn(2, 8, 6, 6)
    small, report = collapse(block, {"relu2": all_on(8)}, x, merge="always")
    assert not ops(report, "merge")
    assert not any(isinstance(m, nn.ReLU) and name == "relu2" for name, m in small.named_modules())
    assert_same(small(x), with_identity(block, "relu2")(x))


def test_saved_collapsed_model_reloads_with_plain_torch_for_any_batch(tmp_path):
    block = randomize_norms(BasicBlock(4, 8, stride=2))
    prune.l1_unstructured(block.conv1, "weight", amount=1.0)
    x = torch.randn(3, 4, 8, 8)
    small, _ = collapse(block, {}, x)
    path = save_collapsed(small, x, tmp_path / "collapsed.pt2")
    loaded = torch.export.load(str(path)).module()
    for batch in (1, 5):
        y = torch.randn(batch, 4, 8, 8)
        assert_same(loaded(y), block(y))
    assert_same(load_collapsed(path)(x), small(x))


def test_bad_merge_value_and_untraceable_model_give_one_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(CollapseError, match=r"merge='sometimes' is not valid; choose one of cost, depth, always, latency, never, approximate"):
        collapse(nn.Linear(4, 4), {}, torch.randn(2, 4), merge="sometimes")
    with pytest.raises(CollapseError, match="torch.fx cannot trace Branchy"):
        collapse(Branchy(), {}, torch.randn(2, 4))


def test_a_step_that_changes_the_output_stops_collapse(monkeypatch):
    import nepenthe.collapse.pipeline as pipeline

    def corrupt(gm):
        for m in gm.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.data += 1.0
        return []

    monkeypatch.setattr(pipeline, "remove_dead_channels", corrupt)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with pytest.raises(CollapseError, match=r"step 'remove_channels' does not reproduce the model .* the output "
                                             r"moved by 0\.\d+ of its size"):
        collapse(model, {}, torch.randn(2, 3, 8, 8))


def test_cost_merge_counts_macs_from_the_merged_kernel():
    # 1×1 expand 4→32 then 3×3 32→4 : 4·32 + 9·32·4 = 1280 MACs/position; merged 3×3 4→4: 144 → merged
    model = nn.Sequential(nn.Conv2d(4, 32, 1), nn.ReLU(), nn.Conv2d(32, 4, 3, padding=1)).eval()
    x = torch.randn(1, 4, 6, 6)
    _, report = collapse(model, {"1": all_on(32)}, x)
    (merge,) = ops(report, "merge")
    assert merge["macs_before"] == (4 * 32 + 9 * 32 * 4) * 36 and merge["macs_after"] == 9 * 4 * 4 * 36
    assert report.after.macs == 9 * 4 * 4 * 36
    assert math.isclose(report.before.macs, merge["macs_before"])


def test_channels_last_tokens_fold_into_the_linear_before_and_merge():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    x = torch.randn(2, 5, 5, 8)  # [B, H, W, C] as in Swin: the neurons are the last dimension
    on = torch.arange(16) % 2 == 0
    small, report = collapse(model, {"1": stats_of(on.double())}, x, layouts={"1": "channels_last"})
    assert report.units[0]["action"] == "scale_folded"
    layers = [m for m in small.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 1 and layers[0].weight.shape == (8, 8)
    assert_same(small(x), model[2](model[0](x) * on))


@pytest.mark.parametrize("first,second,exact", [
    (dict(stride=1), dict(stride=1), False),  # two 3×3 → one 5×5: the ring differs
    # strided first conv → 7×7, stride 2, padding 3. Exact: outside its output range the first conv would read only
    # zero padding (k1 − 1 − p1 < s1 and s1·H_z − p1 ≥ H_x for 13×13), so the merged conv sees zeros there too
    (dict(stride=2), dict(stride=1), True),
    (dict(stride=1), dict(stride=2), False),  # strided second conv: 5×5, stride 2
])
def test_kxk_compositions_are_exact_inside_and_report_their_border_ring(first, second, exact):
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, **first), nn.ReLU(),
                          nn.Conv2d(6, 5, 3, padding=1, **second)).eval()
    x = torch.randn(2, 3, 13, 13)
    # the exact one costs more MACs (merge='always' takes it), the inexact ones fewer (merge='approximate' takes them)
    small, report = collapse(model, {"1": all_on(6)}, x, merge="always" if exact else "approximate")
    (merge,) = ops(report, "merge")
    _, strict = collapse(model, {"1": all_on(6)}, x, merge="always")
    assert bool(ops(strict, "merge")) is exact  # an inexact merge is never taken without the opt-in
    s1, s2 = first["stride"], second["stride"]
    assert merge["kernel"] == [3 + s1 * 2] * 2 and merge["stride"] == [s1 * s2] * 2
    assert merge["padding"] == [1 + s1] * 2 and merge["exact"] is exact
    diff = (small(x) - with_identity(model, "1")(x)).detach().abs()
    ring = merge["border_width"][0]
    assert float(diff[..., ring:-ring, ring:-ring].max()) < 1e-5  # composition is right away from the border
    assert merge["interior_max_abs_diff"] < 1e-5
    if exact:
        assert float(diff.max()) < 1e-5 and merge["max_abs_diff"] < 1e-5
    else:
        assert merge["max_abs_diff"] > 1e-3  # the ring really differs, and the report says so


def test_one_chain_can_merge_into_several_segments_each_measured():
    # two linear expand -> depthwise -> project stacks back to back: one 5×5 for all six convs would cost more
    # (25 vs 2·9 MACs per channel pair) and be inexact, so the cheapest split is two exact 3×3 convs
    def stack():
        return [nn.Conv2d(4, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                nn.Conv2d(16, 4, 1)]

    model = nn.Sequential(*stack(), nn.ReLU(), *stack()).eval()
    x = torch.randn(2, 4, 7, 7)
    stats = {str(i): all_on(16 if i in (1, 3, 7, 9) else 4) for i in (1, 3, 5, 7, 9)}
    small, report = collapse(model, stats, x)
    merges = ops(report, "merge")
    assert [m["layers"] for m in merges] == [["0", "2", "4"], ["6", "8", "10"]]
    assert all(m["exact"] and m["kernel"] == [3, 3] and m["max_abs_diff"] < 1e-5 for m in merges)
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(4, 4, 3, 3), (4, 4, 3, 3)]
    assert_same(small(x), with_identity(model, "1", "3", "5", "7", "9")(x))


def test_swin_blocks_whose_gelu_was_replaced_merge_fc2_with_fc1_exactly():
    """EASIER's replacement (the GELU module swapped for an identity) leaves fc1 → identity → dropout → fc2 in each
    replaced block of the study's Swin-T; collapse composes the two into one d × d map: 8× fewer MLP MACs."""
    from nepenthe.models import create_model
    from nepenthe.units import replace_by_identity

    swin = create_model("swin_t", 10, 1, embed_dim=24, num_heads=[1, 2, 4, 8], patch_size=4, window_size=4).eval()
    replaced = ["features.1.0.mlp.1", "features.5.3.mlp.1"]  # stage 1 (d = 24) and stage 3 (d = 96)
    replace_by_identity(swin, replaced)
    x = torch.randn(4, 1, 28, 28)
    small, report = collapse(swin, {}, x)
    merges = ops(report, "merge")
    assert [m["layers"] for m in merges] == [["features.1.0.mlp.0", "features.1.0.mlp.3"],
                                             ["features.5.3.mlp.0", "features.5.3.mlp.3"]]
    tokens = [7 * 7, 2 * 2]  # 28 / 4 = 7 tokens a side, halved twice by patch merging (7 → 4 → 2)
    for merge, d, n in zip(merges, [24, 96], tokens):
        assert merge["exact"] and merge["macs_before"] == 2 * n * d * 4 * d and merge["macs_after"] == n * d * d
    assert report.before.weight_layers_on_longest_path - report.after.weight_layers_on_longest_path == 2
    assert report.before.macs - report.after.macs == sum(7 * n * d * d for d, n in zip([24, 96], tokens))
    assert_same(small(x), swin(x))


class ScriptedTimer:
    """A SegmentTimer whose measurements are given: {layers merged: (unmerged median, merged median)}, spread 0.01."""

    runtime = "scripted"

    def __init__(self, medians):
        self.medians, self.asked = medians, []

    def compare(self, unmerged, merged, example):
        names = tuple(n for n, m in merged.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        assert names == ("layers.0",)  # the merged span is one layer; the unmerged one holds the chain's layers
        key = len(unmerged.layers)
        self.asked.append(key)
        before, after = self.medians[key]
        return {"unmerged": {"median": before, "p25": before - 0.005, "p75": before + 0.005, "n": 10},
                "merged": {"median": after, "p25": after - 0.005, "p75": after + 0.005, "n": 10}}


def _three_linear_chain():
    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 16)

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    return Chain().eval()


@pytest.mark.parametrize("medians,merged", [
    ({2: (1.0, 0.5), 3: (1.5, 0.4)}, [["a", "b", "c"]]),  # the whole chain gains most
    ({2: (1.0, 0.5), 3: (1.5, 1.45)}, [["a", "b"]]),  # the triple is within the spread: a pair is taken
    ({2: (1.0, 0.99), 3: (1.5, 1.49)}, []),  # nothing beats the spread: the layers stay as they were
])
def test_latency_merges_keep_only_what_is_measured_faster_beyond_the_spread(medians, merged):
    from nepenthe.collapse.graph import record_shapes, tidy, trace
    from nepenthe.collapse.merge import merge_chains

    chain = _three_linear_chain()
    x = torch.randn(8, 16)
    gm = trace(copy.deepcopy(chain))
    record_shapes(gm, x)
    timer = ScriptedTimer(medians)
    records = merge_chains(gm, "latency", exact_only=True, example=x, timer=timer)
    assert sorted(timer.asked) == [2, 2, 3]  # a+b, b+c, a+b+c: every exact candidate timed once
    taken = [r for r in records if r["op"] == "merge"]
    assert [r["layers"] for r in taken] == merged
    for r in taken:  # each kept merge carries its decision and both timings
        assert r["latency_ms"]["merged"]["median"] < r["latency_ms"]["unmerged"]["median"] - 0.02
        assert r["decision"] == "faster than the unmerged layers beyond the spread"
    declined = [r for r in records if r["op"] == "merge_declined"]
    assert len(declined) == 3 - len(taken) and all("latency_ms" in r and r["reason"] for r in declined)
    assert_same(tidy(gm)(x), chain(x))


@pytest.mark.slow  # make test-all: two ONNX exports and ~1 s of timing
def test_latency_merges_are_timed_in_onnx_runtime_and_verified():
    """The real timer: a wide 1×1 → 1×1 pair (32 → 1024 → 32 channels) merges into one 32 × 32 conv with 64× fewer
    MACs, a gap no machine load hides; merge=latency takes it, records both timings, and the output is unchanged."""
    pytest.importorskip("onnxruntime")

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Conv2d(32, 1024, 1), nn.ReLU(), nn.Conv2d(1024, 32, 1)

        def forward(self, x):
            return self.b(self.act(self.a(x)))

    pair = Pair().eval()
    x = torch.randn(4, 32, 16, 16)
    small, report = collapse(pair, {"act": all_on(1024)}, x, "latency")
    (merge,) = ops(report, "merge")
    timings = merge["latency_ms"]
    assert merge["layers"] == ["a", "b"] and timings["merged"]["median"] < timings["unmerged"]["median"]
    assert timings["merged"]["n"] >= 3 and timings["unmerged"]["n"] >= 3
    assert_same(small(x), pair.b(pair.a(x)))
    with pytest.raises(CollapseError, match="merge=latency takes exact merges only"):
        collapse(pair, {"act": all_on(1024)}, x, "latency", approximate_merges=True)

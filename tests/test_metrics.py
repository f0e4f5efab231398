import pytest
import torch
from torch import nn

from nepenthe.errors import NepentheError
from nepenthe.metrics import (
    cost_report,
    macs_by_module,
    nonzero_macs,
    parameter_counts,
    weight_layers_on_longest_path,
)
from nepenthe.models import create_model
from nepenthe.pruning.masks import prune_smallest


def test_linear_and_conv_macs_match_the_formula():
    fc = nn.Linear(4, 3)
    assert macs_by_module(fc, torch.randn(1, 4)) == (12, {"": 12})  # 4 * 3
    conv = nn.Conv2d(2, 3, 3, padding=1)
    total, _ = macs_by_module(conv, torch.randn(1, 2, 5, 5))
    assert total == 5 * 5 * 3 * 2 * 9  # output positions * out channels * in channels * kernel


def test_resnet18_cifar_has_the_papers_140_19_million_macs():
    total, per_layer = macs_by_module(create_model("resnet18_cifar", 10, 3), torch.randn(1, 3, 32, 32))
    assert round(total / 1e6, 2) == 140.19
    assert per_layer["fc"] == 512 * 10


def test_nonzero_macs_and_params_follow_the_masks():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.copy_(torch.arange(1, layer.weight.numel() + 1, dtype=torch.float32).view_as(layer.weight))
            layer.bias.fill_(1.0)
    prune_smallest(net[0], 6)  # half of the first layer's 12 weights
    assert nonzero_macs(net, torch.randn(1, 4)) == 6 + 6
    assert parameter_counts(net) == {"dense": 12 + 3 + 6 + 2, "nonzero": 6 + 3 + 6 + 2}


def test_weight_layers_on_the_longest_path():
    assert weight_layers_on_longest_path(create_model("compact_cnn", 10, 1)) == 1 + 2 * 3 + 1
    assert weight_layers_on_longest_path(create_model("resnet18_cifar", 10, 3)) == 1 + 2 * 8 + 1


def test_untraceable_model_names_what_blocked_tracing():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(NepentheError, match="torch.fx cannot trace DataDependent"):
        weight_layers_on_longest_path(DataDependent())


def test_cost_report_of_a_pruned_compact_cnn():
    model = create_model("compact_cnn", 10, 1)
    dense = cost_report(model, torch.randn(1, 1, 28, 28))
    conv = model.layers[2][0].conv2
    prune_smallest(conv, conv.weight.numel())
    pruned = cost_report(model, torch.randn(1, 1, 28, 28))
    assert pruned.macs == dense.macs == 9_345_920
    assert dense.macs - pruned.macs_nonzero == 7 * 7 * 64 * 64 * 9  # the removed layer's MACs
    assert dense.params_nonzero - pruned.params_nonzero == 64 * 64 * 9




def test_batchnorm_folded_baseline_has_no_batchnorm_and_the_same_outputs():
    from nepenthe.collapse import fold_batchnorm_only

    model = create_model("compact_cnn", 10, 1, width=8).eval()
    for m in model.modules():  # BN statistics away from the identity, so that folding changes the weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
    x = torch.randn(4, 1, 28, 28)
    folded = fold_batchnorm_only(model, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the input model is left alone
    reference = model(x)
    assert (folded(x) - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert weight_layers_on_longest_path(folded) == weight_layers_on_longest_path(model)

import pytest
import torch
from torch import nn

from nepenthe.errors import ConfigError
from nepenthe.collapse import collapse
from nepenthe.entropy import measure_entropy
from nepenthe.models import create_model
from nepenthe.pruning.masks import prune_smallest
from nepenthe.discovery import model_units
from nepenthe.units import activation_modules

# Every registered model is exercised (units, probe, training step, collapse) in tests/test_zoo.py.


def test_unit_counts_match_the_paper_family():
    assert len(model_units(create_model("resnet18_cifar", 10, 3))) == 17  # stem + 2 per BasicBlock
    assert len(model_units(create_model("compact_cnn", 10, 1))) == 7
    assert len(model_units(create_model("compact_cnn", 10, 1, blocks=2))) == 13


def test_resnet18_in_chans_and_maxpool_flag():
    model = create_model("resnet18_cifar", 100, 1, maxpool=False)
    assert model.conv1.in_channels == 1 and isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 100)


def test_unknown_model_lists_the_registry():
    with pytest.raises(ConfigError, match="unknown model 'resnet1000'; known: compact_cnn, mobilenetv2_cifar, mobilenetv2_imagenet, resnet18_cifar, resnet18_imagenet, swin_t, timm, vgg16_bn"):
        create_model("resnet1000", 10, 3)


def test_shared_or_inplace_rectifiers_are_refused():
    class Shared(nn.Module):
        def __init__(self, inplace=False):
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.a = nn.ReLU(inplace=inplace)
            self.b = self.a

        def units(self):
            from nepenthe.units import Unit
            return [Unit("a", ("fc",))]

    with pytest.raises(ConfigError, match="reused at several places: a=b"):
        model_units(Shared())


def test_fully_pruned_conv_makes_relu1_zero_entropy_and_collapse_removes_the_block_main_path():
    model = create_model("compact_cnn", 10, 1).eval()
    block = model.layers[0][0]
    prune_smallest(block.conv1, block.conv1.weight.numel())  # conv1 outputs 0 -> bn1 emits its shift
    with torch.no_grad():
        block.bn1.bias.fill_(0.5)  # eval BN of an all-zero input emits its shift: +0.5, always ON
        block.bn1.running_mean.zero_()
    x = torch.randn(8, 1, 28, 28)
    units = model_units(model)
    stats = measure_entropy(model, activation_modules(model, units), [x])
    s = stats["layers.0.0.relu1"]
    assert s.entropy == 0.0 and s.always_on == 16
    small, report = collapse(model, stats, x)
    (unit,) = [u for u in report.units if u["unit"] == "layers.0.0.relu1"]
    assert unit["action"] == "identity" and unit["exact_on_probe"]
    assert report.removed_layers == ["layers.0.0.conv1", "layers.0.0.conv2"]  # a constant: the main path is gone
    assert isinstance(model.layers[0][0].relu1, nn.ReLU)  # the input model is untouched
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5 * float(model(x).detach().abs().max()))


def test_unknown_builder_option_is_named():
    with pytest.raises(ConfigError, match="model 'compact_cnn' has no option 'depth'; valid: width, blocks"):
        create_model("compact_cnn", 10, 1, depth=3)

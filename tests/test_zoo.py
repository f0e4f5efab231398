"""Every registered model: units cover each rectifier once, the probe gives one entropy per unit, a training step
runs, and collapse keeps the outputs of a model with a fully pruned layer."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from nepenthe.collapse import collapse
from nepenthe.discovery import discover_units, distinct_activations
from nepenthe.entropy import measure_entropy
from nepenthe.errors import ConfigError
from nepenthe.models import create_model, list_models
from nepenthe.models.weights import load_local_weights
from nepenthe.discovery import model_units
from nepenthe.units import RECTIFIERS, Unit, activation_modules, unit_layouts

SWIN_STUDY = {"embed_dim": 24, "num_heads": [1, 2, 4, 8], "patch_size": 4, "window_size": 4}

# name, kwargs, input (C, H, W), rectifier units the paper family counts (EASIER appendix N) where it counts them
ZOO = [
    ("compact_cnn", {"width": 8}, (1, 28, 28), 7),
    ("resnet18_cifar", {}, (3, 32, 32), 17),
    ("resnet18_cifar", {"width": 16}, (3, 32, 32), 17),  # the 17-unit study's quarter width: the same units
    ("resnet18_imagenet", {}, (3, 64, 64), 17),
    ("mobilenetv2_cifar", {}, (3, 32, 32), 35),
    ("mobilenetv2_imagenet", {}, (3, 64, 64), 35),
    ("mobilenetv2_cifar", {"width_mult": 0.25}, (1, 28, 28), 35),  # the study's width: the same 35 units
    ("swin_t", SWIN_STUDY, (1, 28, 28), 12),  # the study's width: the same 12 blocks
    pytest.param("swin_t", {}, (3, 64, 64), 12, marks=pytest.mark.slow),  # 28 M params: 5 s on 2 cores
    pytest.param("vgg16_bn", {}, (3, 32, 32), 15, marks=pytest.mark.slow),  # 138 M params: 13 s on 2 cores
    ("timm", {"arch": "resnet18"}, (3, 32, 32), 17),
    ("timm/convnext_atto", {}, (3, 32, 32), 12),
]


def test_zoo_lists_every_registered_model():
    names = {(z.values if hasattr(z, "values") else z)[0] for z in ZOO}  # pytest.param wraps the slow ones
    assert {name for name in names if not name.startswith("timm/")} == set(list_models())


IDS = ["compact_cnn", "resnet18_cifar", "resnet18_cifar/width16", "resnet18_imagenet", "mobilenetv2_cifar",
       "mobilenetv2_imagenet", "mobilenetv2_cifar/width0.25", "swin_t/study", "swin_t", "vgg16_bn", "timm",
       "timm/convnext_atto"]


@pytest.mark.parametrize("name,kwargs,shape,expected_units", ZOO, ids=IDS)
def test_registered_model_units_probe_train_step_and_collapse(name, kwargs, shape, expected_units):
    torch.manual_seed(0)
    model = create_model(name, 10, shape[0], **kwargs)
    units = model_units(model)
    rectifier_calls = [n for n, m in model.named_modules() if isinstance(m, RECTIFIERS)]
    assert len(units) == expected_units
    assert sorted(u.name for u in units) == sorted(rectifier_calls)  # each rectifier exactly once
    assert not any(getattr(m, "inplace", False) for m in model.modules() if isinstance(m, RECTIFIERS))
    weights = [w for u in units for w in u.weights]
    assert len(weights) == len(set(weights)) and all(u.weights for u in units)

    x, y = torch.randn(4, *shape), torch.arange(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if v.is_floating_point())

    model.eval()
    stats = measure_entropy(model, activation_modules(model, units), [x], layouts=unit_layouts(units))
    assert set(stats) == {u.name for u in units}
    assert all(0.0 <= s.entropy <= 1.0 for s in stats.values())

    # the last unit's layer pruned to 100 %: collapse must drop it and reproduce the model's outputs
    last = units[-1].weights[0]
    prune.l1_unstructured(model.get_submodule(last), "weight", amount=1.0)
    small, report = collapse(model, {}, x)
    assert last in report.removed_layers
    expected = model(x)
    torch.testing.assert_close(small(x), expected, rtol=1e-4, atol=1e-4 * float(expected.detach().abs().max()))
    assert small(torch.randn(2, *shape)).shape == (2, 10)


def test_reused_relu_is_split_per_call_site_and_made_non_inplace():
    import torchvision

    model = distinct_activations(torchvision.models.resnet18(num_classes=10))
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert "layer1.0.relu" in names and "layer1.0.relu_1" in names and len(names) == 17
    units = {u.name: u.weights for u in model_units(model)}
    assert units["layer1.0.relu"] == ("layer1.0.conv1",) and units["layer1.0.relu_1"] == ("layer1.0.conv2",)
    assert units["layer2.0.relu_1"] == ("layer2.0.conv2",)  # main path, not the downsample conv


def test_discovery_walks_back_through_norms_and_adds_and_names_weightless_rectifiers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.act_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
            self.b, self.act_b = nn.Conv2d(4, 4, 1), nn.ReLU()
            self.act_cat = nn.ReLU()
            self.fc, self.drop, self.act_fc = nn.Linear(8, 5), nn.Dropout(), nn.GELU()

        def forward(self, x):
            h = self.act_a(self.bn(self.a(x)))
            h = self.act_b(self.b(h) + h)  # after the add: the first operand's conv
            c = self.act_cat(torch.cat([h, h], dim=1))  # no layer of its own
            return self.act_fc(self.drop(self.fc(c.mean((2, 3)))))

    units = discover_units(Net())
    assert units == [Unit("act_a", ("a",), "channels_first"), Unit("act_b", ("b",), "channels_first"),
                     Unit("act_cat", ()), Unit("act_fc", ("fc",), "channels_last")]


def test_untraceable_model_without_units_gets_one_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(4, 4), nn.ReLU()

        def forward(self, x):
            return self.act(self.fc(x)) if x.sum() > 0 else x

    with pytest.raises(ConfigError, match="Branchy declares no units\\(\\) and torch.fx cannot trace it"):
        model_units(Branchy())


def test_local_weights_load_matching_tensors_and_report_the_rest(tmp_path):
    source = create_model("resnet18_cifar", 100, 3)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = create_model("resnet18_cifar", 10, 3)
    left = load_local_weights(target, path)
    assert left == ["fc.bias", "fc.weight"]  # another number of classes: the classifier stays fresh
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    with pytest.raises(ConfigError, match="is not a file"):
        create_model("resnet18_imagenet", 10, 3, weights=str(tmp_path / "missing.pt"))
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="has no tensor matching"):
        load_local_weights(target, tmp_path / "other.pt")


def test_timm_needs_a_known_architecture():
    with pytest.raises(ConfigError, match="model=timm needs model.kwargs.arch"):
        create_model("timm", 10, 3)
    with pytest.raises(ConfigError, match="timm has no model 'resnet_nonexistent'"):
        create_model("timm/resnet_nonexistent", 10, 3)


def test_model_timm_with_a_timm_name_builds_that_architecture():
    from conftest import compose_config
    import train

    cfg = train.to_run_config(compose_config(["model=timm", "model.name=resnet34"]))
    model = create_model(cfg.model.name, 10, 3, **cfg.model.kwargs)  # the group's default arch is resnet18
    assert sum(p.numel() for p in model.parameters()) == 21_289_802  # timm resnet34 with a 10-class head
    assert len(model_units(model)) == 33  # stem + 2 per basic block (3 + 4 + 6 + 3 blocks)


def test_mobilenetv2_cifar_variant_keeps_resolution_where_the_imagenet_one_downsamples():
    x = torch.randn(1, 3, 32, 32)
    cifar = create_model("mobilenetv2_cifar", 10, 3).eval()
    imagenet = create_model("mobilenetv2_imagenet", 10, 3).eval()
    assert cifar.features(x).shape[-2:] == (4, 4)  # stride-1 stem and stage 2: 32 / 8
    assert imagenet.features(x).shape[-2:] == (1, 1)  # 32 / 32


def test_width_reduced_variants_keep_the_papers_depth_with_fewer_channels():
    import torchvision

    swin = create_model("swin_t", 10, 1, **SWIN_STUDY)
    stages = [m for m in swin.features if isinstance(m, nn.Sequential) and
              isinstance(m[0], torchvision.models.swin_transformer.SwinTransformerBlock)]
    assert [len(s) for s in stages] == [2, 2, 6, 2]  # Swin-T's depths, 12 GELUs
    assert [s[0].attn.num_heads for s in stages] == [1, 2, 4, 8] and swin.norm.normalized_shape == (192,)
    assert swin.features[0][0].kernel_size == (4, 4) and stages[0][0].attn.window_size == [4, 4]
    assert [(s[0].mlp[0].in_features, s[0].mlp[0].out_features) for s in stages] == [(24, 96), (48, 192),
                                                                                      (96, 384), (192, 768)]
    mobile = create_model("mobilenetv2_cifar", 10, 1, width_mult=0.25)
    assert mobile.features[1].conv[0][0].out_channels == 8  # 32 x 0.25, rounded to a multiple of 8
    assert mobile.features[0][0].stride == (1, 1) and mobile.features[-1][0].out_channels == 1280
    assert mobile.features[-2].conv[2].out_channels == 80  # 320 x 0.25
    with pytest.raises(ConfigError, match=r"model.kwargs.num_heads=\[3, 6, 12, 24\] does not fit embed_dim=20"):
        create_model("swin_t", 10, 1, embed_dim=20)
    with pytest.raises(ConfigError, match="model.kwargs.width_mult=0 is not valid; use a positive number"):
        create_model("mobilenetv2_cifar", 10, 1, width_mult=0)

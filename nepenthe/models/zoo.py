"""The paper family's other networks, from torchvision, and any timm model by name.

None of them declares units: they are found on the fx graph (``nepenthe.discovery``), after every rectifier has been
made non-inplace and given one module per call site. Weights come only from a local file (``weights=PATH``).
"""

from __future__ import annotations

from typing import cast

import torchvision
from torch import nn

from ..discovery import distinct_activations
from ..errors import ConfigError
from .registry import register_model
from .weights import load_local_weights


def _with_in_chans(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    if conv.in_channels == in_chans:
        return conv
    return nn.Conv2d(in_chans, conv.out_channels, cast(tuple[int, int], conv.kernel_size),
                     cast(tuple[int, int], conv.stride), cast(tuple[int, int], conv.padding),
                     bias=conv.bias is not None)


def _finish(model: nn.Module, weights: str | None) -> nn.Module:
    if weights:
        load_local_weights(model, weights)
    return distinct_activations(model)


class TwoReluBasicBlock(torchvision.models.resnet.BasicBlock):
    """torchvision's BasicBlock with its second ReLU call on a module of its own (``relu2``), as the family's codes
    write the block: each ReLU is one unit, and the block stays a module that LaCoOT can replace by an identity (an fx
    split of the shared ReLU would turn the network into a graph whose blocks cannot be swapped). Same state dict."""

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


@register_model("resnet18_imagenet")
def resnet18_imagenet(num_classes: int = 1000, in_chans: int = 3, weights: str | None = None) -> nn.Module:
    """torchvision ResNet-18: 7×7 stride-2 stem and max-pool (the family's Tiny-ImageNet and ImageNet network)."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = _with_in_chans(model.conv1, in_chans)
    for module in model.modules():
        if type(module) is torchvision.models.resnet.BasicBlock:
            module.__class__ = TwoReluBasicBlock
            module.relu2 = nn.ReLU()
    return _finish(model, weights)


def _mobilenet_v2(num_classes: int, in_chans: int, cifar: bool, width_mult: float = 1.0) -> nn.Module:
    if not (isinstance(width_mult, (int, float)) and width_mult > 0):
        raise ConfigError(f"model.kwargs.width_mult={width_mult!r} is not valid; use a positive number (1.0: the "
                          f"published width, 0.25: a quarter of the channels, rounded to multiples of 8)")
    model = torchvision.models.mobilenet_v2(num_classes=num_classes, width_mult=width_mult)
    model.features[0][0] = _with_in_chans(model.features[0][0], in_chans)
    if cifar:  # the CIFAR variant keeps resolution: stride-1 stem and stride-1 first block of stage 2
        model.features[0][0].stride = (1, 1)
        model.features[2].conv[1][0].stride = (1, 1)
    return model


@register_model("mobilenetv2_cifar")
def mobilenetv2_cifar(num_classes: int = 10, in_chans: int = 3, weights: str | None = None,
                      width_mult: float = 1.0) -> nn.Module:
    """MobileNetV2 for 32×32 inputs: stride-1 stem and stage 2 (35 ReLU6 units at any ``width_mult``: torchvision's
    width multiplier, channels rounded to multiples of 8; the last 1×1 conv keeps 1280 channels below 1.0)."""
    return _finish(_mobilenet_v2(num_classes, in_chans, cifar=True, width_mult=width_mult), weights)


@register_model("mobilenetv2_imagenet")
def mobilenetv2_imagenet(num_classes: int = 1000, in_chans: int = 3, weights: str | None = None,
                         width_mult: float = 1.0) -> nn.Module:
    """torchvision MobileNetV2 (35 ReLU6 units)."""
    return _finish(_mobilenet_v2(num_classes, in_chans, cifar=False, width_mult=width_mult), weights)


SWIN_T_DEPTHS = [2, 2, 6, 2]  # 12 blocks, one GELU each: the units the papers count


@register_model("swin_t")
def swin_t(num_classes: int = 1000, in_chans: int = 3, weights: str | None = None, embed_dim: int = 96,
           num_heads: list[int] | None = None, patch_size: int = 4, window_size: int = 7,
           stochastic_depth_prob: float = 0.2) -> nn.Module:
    """Swin-T: 12 GELU units (one per block's MLP, depths 2-2-6-2) on channels-last ``[B, H, W, C]`` tokens. The
    defaults are torchvision's ``swin_t``; ``embed_dim`` (stage widths ×1, 2, 4, 8), ``num_heads`` (per stage,
    default ``[3, 6, 12, 24]``), ``patch_size`` and ``window_size`` shrink it for small inputs at the same depth."""
    heads = list(num_heads) if num_heads is not None else [3, 6, 12, 24]
    widths = [embed_dim * 2 ** i for i in range(len(SWIN_T_DEPTHS))]
    if len(heads) != len(SWIN_T_DEPTHS) or any(h < 1 or w % h for w, h in zip(widths, heads, strict=True)):
        raise ConfigError(f"model.kwargs.num_heads={heads} does not fit embed_dim={embed_dim}: give 4 head counts "
                          f"that divide the stage widths {widths}")
    for key, value in (("embed_dim", embed_dim), ("patch_size", patch_size), ("window_size", window_size)):
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"model.kwargs.{key}={value!r} is not valid; use a positive integer")
    model = torchvision.models.SwinTransformer(
        patch_size=[patch_size, patch_size], embed_dim=embed_dim, depths=SWIN_T_DEPTHS, num_heads=heads,
        window_size=[window_size, window_size], stochastic_depth_prob=stochastic_depth_prob, num_classes=num_classes)
    model.features[0][0] = _with_in_chans(model.features[0][0], in_chans)
    return _finish(model, weights)


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int = 1000, in_chans: int = 3, weights: str | None = None) -> nn.Module:
    """torchvision VGG-16 with batch norm: 13 conv ReLUs + 2 classifier ReLUs (15 units)."""
    model = torchvision.models.vgg16_bn(num_classes=num_classes)
    model.features[0] = _with_in_chans(model.features[0], in_chans)
    return _finish(model, weights)


@register_model("timm")
def timm_model(num_classes: int = 1000, in_chans: int = 3, arch: str | None = None, weights: str | None = None,
               **timm_kwargs) -> nn.Module:
    """Any timm architecture (``model=timm model.kwargs.arch=resnet34``, or ``model.name=timm/resnet34``); extra
    ``model.kwargs`` go to ``timm.create_model``; never downloads weights."""
    import timm

    if not arch:
        raise ConfigError("model=timm needs model.kwargs.arch (a timm architecture, e.g. resnet34)")
    if arch not in timm.list_models():
        close = timm.list_models(f"*{arch}*")[:8]
        raise ConfigError(f"timm has no model {arch!r}" + (f"; close: {', '.join(close)}" if close else ""))
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **timm_kwargs)
    return _finish(torch_gelus(model), weights)


def torch_gelus(model: nn.Module) -> nn.Module:
    """timm wraps GELU in its own classes; the same function as ``nn.GELU``, which the probe and collapse know."""
    from timm.layers.activations import GELU, GELUTanh

    for name, module in list(model.named_modules()):
        if isinstance(module, (GELU, GELUTanh)):
            approximate = "tanh" if isinstance(module, GELUTanh) else getattr(module, "approximate", "none")
            model.set_submodule(name, nn.GELU(approximate=approximate))
    return model

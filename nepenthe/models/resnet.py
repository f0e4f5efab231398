"""Residual CNNs: the family's CIFAR ResNet-18 and a compact residual CNN that trains on 2 CPU cores."""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from ..errors import ConfigError
from ..units import Unit
from .blocks import BasicBlock, conv3x3
from .registry import register_model
from .weights import load_local_weights


class ResidualCNN(nn.Module):
    """3×3 stem (+ optional max-pool), stages of :class:`BasicBlock`, global pooling, linear classifier."""

    def __init__(self, widths, blocks_per_stage, strides, num_classes: int, in_chans: int, maxpool: bool):
        super().__init__()
        self.conv1 = conv3x3(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if maxpool else nn.Identity()
        stages, in_ch = [], widths[0]
        for width, count, stride in zip(widths, blocks_per_stage, strides):
            blocks = []
            for i in range(count):
                blocks.append(BasicBlock(in_ch, width, stride if i == 0 else 1))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.layers:
            x = stage(x)
        return self.fc(self.avgpool(x).flatten(1))

    def stages(self) -> list[nn.Sequential]:
        return [cast(nn.Sequential, stage) for stage in self.layers]

    def units(self) -> list[Unit]:
        units = [Unit("relu", ("conv1",))]
        for s, stage in enumerate(self.stages()):
            for b, block in enumerate(stage):
                units += cast(BasicBlock, block).units(f"layers.{s}.{b}.")
        return units

    def transport_units(self) -> list[str]:
        """LaCoOT's units (nepenthe.pruning.lacoot): the blocks after the first of each stage, as the reference's
        ResNet-18 (``layerX.1``); a stage of one block offers that block when its shortcut is the identity. The same
        list once units are replaced by identities (a removed one-block stage was a unit: only those are removed)."""
        paths = []
        for s, stage in enumerate(self.stages()):
            later = [f"layers.{s}.{b}" for b in range(1, len(stage))]
            first = stage[0]
            if not later and (isinstance(first, nn.Identity) or not len(cast(BasicBlock, first).shortcut)):
                later = [f"layers.{s}.0"]
            paths += later
        return paths


@register_model("resnet18_cifar")
def resnet18_cifar(num_classes: int = 10, in_chans: int = 3, maxpool: bool = True, width: int = 64,
                   weights: str | None = None) -> ResidualCNN:
    """The paper family's CIFAR ResNet-18: 3×3 stride-1 stem, max-pool kept by default (≈140 M MACs at 32×32).
    ``width`` is the first stage's channels (the papers' 64; stages double it): a narrower network has the same
    architecture, unit names and 17 units (width 16, a quarter: ≈8.8 M MACs at 32×32)."""
    if not (isinstance(width, int) and width >= 1):
        raise ConfigError(f"model.kwargs.width={width!r} must be a positive integer (the papers' ResNet-18: 64)")
    model = ResidualCNN((width, 2 * width, 4 * width, 8 * width), (2, 2, 2, 2), (1, 2, 2, 2), num_classes, in_chans,
                        maxpool)
    if weights:
        load_local_weights(model, weights)
    return model


@register_model("compact_cnn")
def compact_cnn(num_classes: int = 10, in_chans: int = 1, width: int = 16, blocks: int = 1) -> ResidualCNN:
    """A small residual CNN for CPU quickstarts on 28×28 images: 3 stages of ``blocks`` basic blocks with
    ``width``, 2·``width``, 4·``width`` channels (width 16, 1 block: 7 rectifier units, 78 k weights, 9.3 M MACs)."""
    return ResidualCNN((width, 2 * width, 4 * width), (blocks,) * 3, (1, 2, 2), num_classes, in_chans, maxpool=False)

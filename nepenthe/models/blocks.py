"""Building blocks shared by the model families; every rectifier is its own non-inplace module."""

from __future__ import annotations

from torch import Tensor, nn

from ..units import Unit


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block with two separate ReLUs: ``relu1`` inside, ``relu2`` after the residual add."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))

    def units(self, prefix: str) -> list[Unit]:
        # relu2 is fed by conv2 and the shortcut; like the family's codes we prune only the main path.
        return [Unit(f"{prefix}relu1", (f"{prefix}conv1",)), Unit(f"{prefix}relu2", (f"{prefix}conv2",))]

"""ResNet-45 (ABINet-style BasicBlock, SPEC §3.2): the glyph network's F0, F1, F2 and the visual sequence X."""
from __future__ import annotations

import torch
import torch.nn as nn

from modules.features import BackboneFeatures


class BasicBlock(nn.Module):
    """1×1 conv → 3×3 conv (carrying the stride) with a projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def conv_bn_relu(in_channels: int, out_channels: int, kernel, stride, padding) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class ResNet45(nn.Module):
    """ResNet-45 for 32×W inputs: stem, seven residual stages and the height-collapsing tail.

    ``channels`` = (stem, layer1, …, layer5); layer6/7 and the tail keep layer5's width.
    ``blocks`` = blocks per layer1..layer7 (paper: 3, 4, 6, 6, 3, 2, 1). Levels: F0 [B,c0,H,W] (stem),
    F1 [B,c2,H/2,W/2] (layer2), F2 [B,c4,H/4,W/4] (layer4); the sequence X [B,W/4,c5] is the final map
    V [B,c5,1,W/4] averaged over its height (SPEC §3.3).
    """

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = (32, 32, 64, 128, 256, 512),
                 blocks: tuple[int, ...] = (3, 4, 6, 6, 3, 2, 1)):
        super().__init__()
        stem, *stage_widths = channels
        last = stage_widths[-1]
        widths = [*stage_widths, last, last]
        strides = [2, 1, 2, 1, 1, 1, 1]
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        previous = stem
        for index, (width, count, stride) in enumerate(zip(widths, blocks, strides), start=1):
            layer = [BasicBlock(previous, width, stride)] + [BasicBlock(width, width) for _ in range(count - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layer))
            previous = width
            if index == 5:
                self.maxpool6 = nn.MaxPool2d((2, 3), (2, 1), (0, 1))
            if index == 6:
                self.conv6 = nn.Sequential(*conv_bn_relu(last, last, 3, 1, 1))
        self.conv7_1 = nn.Sequential(*conv_bn_relu(last, last, (2, 3), (2, 1), (0, 1)))
        self.conv7_2 = nn.Sequential(*conv_bn_relu(last, last, (2, 3), 1, (0, 1)))
        self.out_channels = last
        self.feature_channels = (stem, widths[1], widths[3])

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer2(self.layer1(f0))
        f2 = self.layer4(self.layer3(f1))
        x = self.maxpool6(self.layer5(f2))
        x = self.layer7(self.conv6(self.layer6(x)))
        v = self.conv7_2(self.conv7_1(x))  # [B, C, 1, W/4]
        return BackboneFeatures((f0, f1, f2), v.mean(2).transpose(1, 2))

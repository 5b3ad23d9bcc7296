"""Beauty regressor: aligned face image -> one score on the 1..10 rating scale.

A ResNet (configurable depth/width; ``resnet18`` layout at 224 px for the full-size preset) with a linear
head; the head's bias starts at the middle of the rating scale. Input: RGB NCHW, normalised as the
manifest records (ImageNet mean/std on [0,1]).
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class BeautyRegressor(nn.Module):
    def __init__(
        self,
        resolution: int = 224,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        stem_stride: int = 4,
        score_mid: float = 5.5,
    ):
        super().__init__()
        self.resolution = resolution
        stem = [
            nn.Conv2d(
                3,
                widths[0],
                7 if stem_stride == 4 else 3,
                2 if stem_stride >= 2 else 1,
                3 if stem_stride == 4 else 1,
                bias=False,
            ),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        ]
        if stem_stride == 4:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 1)
        nn.init.normal_(self.head.weight, std=4.0 / cin**0.5)  # random-weight presets: scores spread ~±1
        nn.init.constant_(self.head.bias, score_mid)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        assert img.ndim == 4 and img.shape[1] == 3, f"image must be [B,3,H,W], got {list(img.shape)}"
        x = self.layers(self.stem(img))
        return self.head(x.mean(dim=[2, 3]))[:, 0]

"""Identity embedder in the insightface iresnet style: aligned face -> unit-length embedding.

IResNet blocks (BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus a projected shortcut), an
output BN -> dropout-free flatten -> FC -> BN head, then L2 normalisation so that cosine similarity is a
dot product. ``layers=(3, 4, 14, 3)`` with widths (64, 128, 256, 512) at 112 px is iresnet50.
Input: RGB NCHW, (pixel/255 - 0.5) / 0.5 as the manifest records.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    def __init__(
        self,
        resolution: int = 112,
        layers: tuple[int, ...] = (3, 4, 14, 3),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        embedding_dim: int = 512,
    ):
        super().__init__()
        self.resolution, self.embedding_dim = resolution, embedding_dim
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.prelu = nn.PReLU(widths[0])
        blocks, cin = [], widths[0]
        for w, n in zip(widths, layers):
            for j in range(n):
                blocks.append(IBasicBlock(cin, w, 2 if j == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn2 = nn.BatchNorm2d(cin)
        spatial = resolution // (2 ** len(widths))
        self.fc = nn.Linear(cin * spatial * spatial, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        assert img.ndim == 4 and img.shape[1] == 3 and img.shape[2] == self.resolution, (
            f"image must be [B,3,{self.resolution},{self.resolution}], got {list(img.shape)}"
        )
        x = self.prelu(self.bn1(self.conv1(img)))
        x = self.bn2(self.blocks(x))
        x = self.features(self.fc(torch.flatten(x, 1)))
        return F.normalize(x, dim=1)

"""A compact e4e-style encoder: aligned face image -> W+ (as offsets from ``w_avg``).

Structure (after e4e's GradualStyleEncoder, much smaller): a strided residual CNN backbone gives three
feature maps (fine at 1/4, middle at 1/8, coarse at 1/16 of the input); each W+ row has a "map2style"
head on the feature map of its layer group (coarse rows <- deepest features, fine rows <- shallowest) that
reduces to 1x1 and projects to ``w_dim``. Output = ``w_avg + delta`` so an untrained encoder starts at
the average face. Input: RGB NCHW in [-1, 1] at ``resolution``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .stylegan2 import layer_groups


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.LeakyReLU(0.2)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + (x if self.short is None else self.short(x)))


class Map2Style(nn.Module):
    def __init__(self, cin: int, w_dim: int, spatial: int):
        super().__init__()
        layers = []
        c = cin
        for _ in range(max(0, int(math.log2(spatial)))):
            layers += [nn.Conv2d(c, w_dim, 3, 2, 1), nn.LeakyReLU(0.2)]
            c = w_dim
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(c, w_dim)
        nn.init.normal_(self.linear.weight, std=0.1 / c**0.5)  # small: an untrained encoder stays near w_avg
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        x = self.convs(x)
        return self.linear(x.mean(dim=[2, 3]))


class Encoder(nn.Module):
    def __init__(
        self, resolution: int, num_ws: int, w_dim: int, channels: tuple[int, int, int, int] = (32, 64, 128, 256)
    ):
        super().__init__()
        assert resolution >= 16 and resolution & (resolution - 1) == 0, "resolution must be a power of two >= 16"
        self.resolution, self.num_ws, self.w_dim = resolution, num_ws, w_dim
        c0, c1, c2, c3 = channels
        self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, 2, 1, bias=False), nn.BatchNorm2d(c0), nn.LeakyReLU(0.2))
        self.stage1 = ResBlock(c0, c1, 2)  # 1/4  -> fine
        self.stage2 = ResBlock(c1, c2, 2)  # 1/8  -> middle
        self.stage3 = ResBlock(c2, c3, 2)  # 1/16 -> coarse
        groups = layer_groups(num_ws)
        self.group_of = []
        for name in ("coarse", "middle", "fine"):
            self.group_of += [name] * len(groups[name])
        feat = {"fine": (c1, resolution // 4), "middle": (c2, resolution // 8), "coarse": (c3, resolution // 16)}
        self.heads = nn.ModuleList([Map2Style(feat[g][0], w_dim, feat[g][1]) for g in self.group_of])
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        assert img.ndim == 4 and img.shape[1] == 3 and img.shape[2] == self.resolution, (
            f"image must be [B,3,{self.resolution},{self.resolution}], got {list(img.shape)}"
        )
        x = self.stem(img)
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        feats = {"fine": f1, "middle": f2, "coarse": f3}
        deltas = [head(feats[g]) for head, g in zip(self.heads, self.group_of)]
        return self.w_avg.reshape(1, 1, -1) + torch.stack(deltas, dim=1)

"""pSp / e4e encoders and the IR-SE50 ArcFace backbone, beautyrt's own implementation.

Module names, nesting and arithmetic follow the published pixel2style2pixel (pSp) and encoder4editing
(e4e) code bases, so their checkpoints map onto these modules key by key (after stripping ``encoder.``):

* ``input_layer`` = conv3x3(no bias) -> BN -> PReLU;
* ``body.N`` = IR-SE bottleneck units: ``shortcut_layer`` (MaxPool2d(1, stride) when the width is
  unchanged, else conv1x1(stride)+BN) plus ``res_layer`` = BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN ->
  squeeze-excitation (``fc1``/``fc2`` 1x1 convs without bias, ReLU, sigmoid);
* the style heads ``styles.i`` (``GradualStyleBlock``: log2(spatial) stride-2 conv3x3 + LeakyReLU(0.01),
  then an equalised linear layer) read the deepest feature map (coarse rows), an FPN sum with ``latlayer1``
  (middle rows) or with ``latlayer2`` (fine rows); up-sampling is bilinear with ``align_corners=True``.

``GradualStyleEncoder`` (pSp) predicts every W+ row directly; ``Encoder4Editing`` (e4e) predicts row 0 and
adds per-row deltas to it. :class:`StyleEncoder` adds the checkpoint's ``latent_avg`` as both projects do
(``start_from_latent_avg``), so its output is W+ ready for the generator.

Full-size models: ``widths=(64, 128, 256, 512)``, ``units=(3, 4, 14, 3)`` (IR-SE50), ``w_dim=512``, input
256 px (encoders, RGB in [-1, 1]) or 112 px (ArcFace). Tests use reduced widths/units.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

IRSE50_UNITS = (3, 4, 14, 3)
IRSE50_WIDTHS = (64, 128, 256, 512)


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        s = x.mean(dim=[2, 3], keepdim=True)  # == AdaptiveAvgPool2d(1), exports as ReduceMean
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(s))))


class BottleneckIRSE(nn.Module):
    def __init__(self, in_channel: int, depth: int, stride: int, se_reduction: int = 16, use_se: bool = True):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if use_se:
            layers.append(SEModule(depth, se_reduction))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_body(
    widths: Sequence[int], units: Sequence[int], in_channel: int, se_reduction: int = 16, use_se: bool = True
) -> tuple[nn.Sequential, list[int]]:
    """The residual body of IR(-SE) nets: per stage one stride-2 unit then stride-1 units.
    Returns the Sequential and the index of each stage's last unit."""
    mods, ends, cin = [], [], in_channel
    for w, n in zip(widths, units):
        for j in range(n):
            mods.append(BottleneckIRSE(cin, w, 2 if j == 0 else 1, se_reduction, use_se))
            cin = w
        ends.append(len(mods) - 1)
    return nn.Sequential(*mods), ends


class EqualLinear(nn.Module):
    """rosinality's EqualLinear without activation: y = x (W * lr/sqrt(in))^T + b * lr."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_dim], float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class GradualStyleBlock(nn.Module):
    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        self.out_c = out_c
        num_pools = int(math.log2(spatial))
        mods: list[nn.Module] = [nn.Conv2d(in_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(num_pools - 1):
            mods += [nn.Conv2d(out_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*mods)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x):
        x = self.convs(x)
        return self.linear(x.reshape(x.shape[0], self.out_c))


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class _FPNStyleEncoder(nn.Module):
    """Shared structure of pSp's GradualStyleEncoder and e4e's Encoder4Editing."""

    coarse_ind, middle_ind = 3, 7

    def __init__(
        self,
        n_styles: int,
        resolution: int = 256,
        w_dim: int = 512,
        input_nc: int = 3,
        widths: Sequence[int] = IRSE50_WIDTHS,
        units: Sequence[int] = IRSE50_UNITS,
        se_reduction: int = 16,
        use_se: bool = True,
    ):
        super().__init__()
        assert len(widths) == 4 and len(units) == 4, "IR backbones have four stages"
        self.n_styles, self.resolution, self.w_dim = n_styles, resolution, w_dim
        self.input_layer = nn.Sequential(
            nn.Conv2d(input_nc, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0])
        )
        self.body, ends = ir_body(widths, units, widths[0], se_reduction, use_se)
        self.tap_fine, self.tap_middle, self.tap_coarse = ends[1], ends[2], ends[3]  # pSp's 6 / 20 / 23 for IR-SE50
        s = resolution // 16  # spatial size of the deepest map
        self.styles = nn.ModuleList()
        for i in range(n_styles):
            spatial = s if i < self.coarse_ind else (2 * s if i < self.middle_ind else 4 * s)
            self.styles.append(GradualStyleBlock(widths[3], w_dim, spatial))
        self.latlayer1 = nn.Conv2d(widths[2], w_dim, 1, 1, 0)
        self.latlayer2 = nn.Conv2d(widths[1], w_dim, 1, 1, 0)
        if widths[3] != w_dim:
            raise ValueError(f"the FPN adds the last stage ({widths[3]}) to w_dim ({w_dim}) maps: they must be equal")

    def features(self, x: torch.Tensor):
        assert x.ndim == 4 and x.shape[2] == self.resolution and x.shape[3] == self.resolution, (
            f"image must be [B,3,{self.resolution},{self.resolution}], got {list(x.shape)}"
        )
        x = self.input_layer(x)
        c1 = c2 = c3 = None
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i == self.tap_fine:
                c1 = x
            elif i == self.tap_middle:
                c2 = x
            elif i == self.tap_coarse:
                c3 = x
        return c1, c2, c3


class GradualStyleEncoder(_FPNStyleEncoder):
    """pSp: every W+ row from its own head (coarse <- c3, middle <- c3+c2, fine <- that+c1)."""

    def forward(self, x):
        c1, c2, c3 = self.features(x)
        lat = [self.styles[j](c3) for j in range(self.coarse_ind)]
        p2 = _upsample_add(c3, self.latlayer1(c2))
        lat += [self.styles[j](p2) for j in range(self.coarse_ind, min(self.middle_ind, self.n_styles))]
        p1 = _upsample_add(p2, self.latlayer2(c1))
        lat += [self.styles[j](p1) for j in range(self.middle_ind, self.n_styles)]
        return torch.stack(lat, dim=1)


class Encoder4Editing(_FPNStyleEncoder):
    """e4e: row 0 from the coarse head, repeated; rows i >= 1 add their head's delta (inference stage = all)."""

    def forward(self, x):
        c1, c2, c3 = self.features(x)
        w0 = self.styles[0](c3)
        rows = [w0]
        feats = c3
        p2 = None
        for i in range(1, self.n_styles):
            if i == self.coarse_ind:
                p2 = _upsample_add(c3, self.latlayer1(c2))
                feats = p2
            elif i == self.middle_ind:
                feats = _upsample_add(p2, self.latlayer2(c1))
            rows.append(w0 + self.styles[i](feats))
        return torch.stack(rows, dim=1)


class StyleEncoder(nn.Module):
    """image [B,3,R,R] in [-1,1] -> W+ = latent_avg + encoder(image), as pSp/e4e with start_from_latent_avg."""

    def __init__(self, encoder: _FPNStyleEncoder, latent_avg: Optional[torch.Tensor] = None):
        super().__init__()
        self.encoder = encoder
        self.resolution, self.num_ws, self.w_dim = encoder.resolution, encoder.n_styles, encoder.w_dim
        la = torch.zeros(self.num_ws, self.w_dim) if latent_avg is None else latent_avg.reshape(-1, self.w_dim).float()
        self.register_buffer("latent_avg", la.expand(self.num_ws, self.w_dim).clone())

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.encoder(img) + self.latent_avg.unsqueeze(0)


def adaptive_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] averaging matrix equal to AdaptiveAvgPool1d's windows (exact for any ratio)."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        a = (i * n_in) // n_out
        b = -((-(i + 1) * n_in) // n_out)  # ceil
        m[i, a:b] = 1.0 / (b - a)
    return m


class IRSEBackbone(nn.Module):
    """pSp/e4e's ``Backbone(input_size, 50, 'ir_se')`` (ArcFace IR-SE50): face -> L2-normalised embedding.

    ``input_size`` is the backbone's own size (112 or 224). With ``crop`` = (top, bottom, left, right) in
    pixels of an ``in_resolution`` input, the module first crops and adaptive-average-pools to
    ``input_size``, as pSp's ID loss does on 256 px FFHQ-aligned images (crop 35:223, 32:220).
    """

    def __init__(
        self,
        input_size: int = 112,
        widths: Sequence[int] = IRSE50_WIDTHS,
        units: Sequence[int] = IRSE50_UNITS,
        embedding_dim: int = 512,
        se_reduction: int = 16,
        in_resolution: Optional[int] = None,
        crop: Optional[Sequence[int]] = None,
        affine: bool = True,
        use_se: bool = True,
    ):
        super().__init__()
        self.input_size, self.embedding_dim = input_size, embedding_dim
        self.resolution = in_resolution or input_size
        self.crop = tuple(int(c) for c in crop) if crop else None
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0])
        )
        self.body, _ = ir_body(widths, units, widths[0], se_reduction, use_se)
        s = input_size // 16
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(widths[3]),
            nn.Dropout(0.4),
            nn.Flatten(),
            nn.Linear(widths[3] * s * s, embedding_dim),
            nn.BatchNorm1d(embedding_dim, affine=affine),
        )
        if self.crop:
            t, b, l, r = self.crop
            self.register_buffer("pool_h", adaptive_pool_matrix(b - t, input_size), persistent=False)
            self.register_buffer("pool_w", adaptive_pool_matrix(r - l, input_size), persistent=False)
        elif self.resolution != input_size:
            raise ValueError("in_resolution differs from input_size: give a crop")

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        assert (
            img.ndim == 4 and img.shape[1] == 3 and img.shape[2] == self.resolution and img.shape[3] == self.resolution
        ), f"image must be [B,3,{self.resolution},{self.resolution}], got {list(img.shape)}"
        if self.crop:
            t, b, l, r = self.crop
            img = self.pool_h @ img[:, :, t:b, l:r] @ self.pool_w.t()
        x = self.output_layer(self.body(self.input_layer(img)))
        return F.normalize(x, dim=1)

"""StyleGAN2 generator (mapping + synthesis), beautyrt's own implementation.

The layer structure, parameter names and arithmetic follow NVIDIA's stylegan2-ada-pytorch "skip"
generator (equalised learning rate, modulated/demodulated 3x3 convs, [1,3,3,1] FIR up-sampling, ToRGB
skips, constant noise buffers), so a state dict from that code base maps onto this module key by key.

Two deliberate differences make it export to ONNX with a dynamic batch axis:
* modulated convolutions use the per-activation form (scale the input by the styles, convolve with the
  shared weight, scale the output by the demodulation coefficients) instead of the grouped convolution
  over the batch ("fused_modconv"); the two are mathematically identical;
* noise is always the stored ``noise_const`` buffer ("noise_mode=const"): the runtime is deterministic.
Custom CUDA kernels are not used; FIR filtering is a depthwise convolution.

Shapes at the module boundary are asserted: ``ws`` is ``[batch, num_ws, w_dim]``, images are
``[batch, img_channels, resolution, resolution]`` in [-1, 1] (not clamped).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def fir_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """Separable 2-D FIR filter normalised to unit sum (NVIDIA's ``upfirdn2d.setup_filter``)."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def _depthwise(x: torch.Tensor, f: torch.Tensor, gain: float) -> torch.Tensor:
    """Weight of shape [C,1,kh,kw] applying filter ``f`` * gain to each channel (f is symmetric)."""
    c = x.shape[1]
    return (f * gain).to(x.dtype)[None, None].expand(c, 1, f.shape[0], f.shape[1])


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """Zero-insertion up-sampling followed by the FIR filter, padded so that H -> H*up (gain up**2).

    Written as a depthwise transposed convolution: inserting zeros, padding by (2, 1) and filtering with
    a 4-tap kernel is exactly ``conv_transpose2d(stride=2, padding=1)`` with that kernel.
    """
    assert f.shape[0] == 4 and up == 2, "only the [1,3,3,1] x2 filter is supported"
    return F.conv_transpose2d(x, _depthwise(x, f, up * up), stride=2, padding=1, groups=x.shape[1])


def fir2d(x: torch.Tensor, f: torch.Tensor, pad: int, gain: float) -> torch.Tensor:
    """``upfirdn2d`` with up=down=1 and symmetric padding: a depthwise convolution."""
    return F.conv2d(x, _depthwise(x, f, gain), padding=pad, groups=x.shape[1])


def bias_act(
    x: torch.Tensor, b: Optional[torch.Tensor], act: str = "linear", gain: float = 1.0, clamp: Optional[float] = None
) -> torch.Tensor:
    if b is not None:
        x = x + (b.reshape(1, -1, 1, 1) if x.ndim == 4 else b.reshape(1, -1))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2) * SQRT2
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = F.hardtanh(x, -clamp, clamp)  # == clamp; Clip nodes from .clamp() trip the onnxscript optimizer
    return x


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer (weights stored unscaled, scaled at run time)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        x = x.matmul(w.t())
        b = None if self.bias is None else self.bias * self.bias_gain
        return bias_act(x, b, self.activation)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z [B, z_dim] -> ws [B, num_ws, w_dim]; keeps ``w_avg`` (the centre of W) as a buffer."""

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        num_ws: int,
        num_layers: int = 8,
        lr_multiplier: float = 0.01,
        layer_features: Optional[int] = None,
    ):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        feats = [z_dim] + [layer_features or w_dim] * (num_layers - 1) + [w_dim]
        for idx in range(num_layers):
            setattr(
                self,
                f"fc{idx}",
                FullyConnectedLayer(feats[idx], feats[idx + 1], activation="lrelu", lr_multiplier=lr_multiplier),
            )
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [B,{self.z_dim}], got {list(z.shape)}"
        x = normalize_2nd_moment(z)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    up: int = 1,
    padding: int = 0,
    resample_filter: Optional[torch.Tensor] = None,
    demodulate: bool = True,
) -> torch.Tensor:
    """Per-activation modulated convolution (batch stays a free axis for ONNX).

    x [B,I,H,W], weight [O,I,k,k], styles [B,I]. Equivalent to NVIDIA's modulated_conv2d with
    fused_modconv=False and flip_weight=(up == 1).
    """
    x = x * styles.reshape(styles.shape[0], -1, 1, 1)
    if up == 1:
        x = F.conv2d(x, weight, padding=padding)
    else:
        # transposed conv (stride 2, no padding) then FIR with the padding NVIDIA's conv2d_resample uses:
        # for k=3, padding=1 the filter pads by 1 on each side and the result is exactly 2H x 2W.
        k = weight.shape[-1]
        x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=up)
        p = padding + (4 + up - 1) // 2 - (k - 1)  # = 1 for k=3, padding=1
        x = fir2d(x, resample_filter, p, gain=up * up)
    if demodulate:
        # dcoefs[b, o] = rsqrt(sum_i,kh,kw (w[o,i,kh,kw] * s[b,i])^2)
        wsq = weight.square().sum(dim=[2, 3])  # [O, I]
        dcoefs = (styles.square().matmul(wsq.t()) + 1e-8).rsqrt()  # [B, O]
        x = x * dcoefs.reshape(dcoefs.shape[0], -1, 1, 1)
    return x


class SynthesisLayer(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        conv_clamp: Optional[float] = None,
        resample_filter: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", resample_filter if resample_filter is not None else fir_filter())
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(
            x, self.weight, styles, up=self.up, padding=self.padding, resample_filter=self.resample_filter
        )
        x = x + self.noise_const * self.noise_strength
        return bias_act(x, self.bias, "lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: Optional[float] = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (const | up-conv) -> conv -> ToRGB, image skip up-sampled."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        conv_clamp: Optional[float] = None,
    ):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.register_buffer("resample_filter", fir_filter())
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp, resample_filter=fir_filter()
            )
        self.conv1 = SynthesisLayer(
            out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp, resample_filter=fir_filter()
        )
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws: torch.Tensor):
        # ws: [B, num_conv + num_torgb, w_dim]
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0])
        else:
            x = self.conv0(x, ws[:, 0])
            x = self.conv1(x, ws[:, 1])
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, ws[:, self.num_conv])
        img = y if img is None else img + y
        return x, img


def channels_for(resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    log2 = int(math.log2(resolution))
    return {2**i: min(channel_base // (2**i), channel_max) for i in range(2, log2 + 1)}


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> image [B, img_channels, R, R].

    ``forward(ws, stop_at=r)`` stops after the block of resolution ``r`` and returns that block's image
    (the skip sum so far): an early exit for scoring candidates at a lower resolution.
    """

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int = 3,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: Optional[float] = None,
    ):
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if 2**log2 != img_resolution or not 8 <= img_resolution <= 1024:
            raise ValueError(f"resolution must be a power of two in 8..1024, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        ch = channels_for(img_resolution, channel_base, channel_max)
        self.num_ws = 0
        self.block_ws: list[tuple[int, int]] = []  # (first w index, count) per block
        for res in self.block_resolutions:
            in_ch = ch[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_ch, ch[res], w_dim, res, img_channels, conv_clamp=conv_clamp)
            setattr(self, f"b{res}", block)
            self.block_ws.append((self.num_ws, block.num_conv + block.num_torgb))
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last block's ToRGB

    def forward(self, ws: torch.Tensor, stop_at: Optional[int] = None) -> torch.Tensor:
        assert ws.ndim == 3 and ws.shape[1] == self.num_ws and ws.shape[2] == self.w_dim, (
            f"ws must be [B,{self.num_ws},{self.w_dim}], got {list(ws.shape)}"
        )
        x = img = None
        for res, (start, count) in zip(self.block_resolutions, self.block_ws):
            x, img = getattr(self, f"b{res}")(x, img, ws[:, start : start + count])
            if stop_at is not None and res == stop_at:
                break
        return img

    def ws_used_until(self, res: int) -> int:
        """Number of leading ws that influence the image at resolution ``res`` (for early exit)."""
        for r, (start, count) in zip(self.block_resolutions, self.block_ws):
            if r == res:
                return start + count
        raise ValueError(f"{res} is not a block resolution of this generator {self.block_resolutions}")


class Generator(nn.Module):
    """Mapping + synthesis with NVIDIA's constructor arguments (a subset)."""

    def __init__(
        self,
        z_dim: int = 512,
        w_dim: int = 512,
        img_resolution: int = 256,
        img_channels: int = 3,
        channel_base: int = 32768,
        channel_max: int = 512,
        mapping_layers: int = 8,
        conv_clamp: Optional[float] = None,
    ):
        super().__init__()
        self.z_dim, self.w_dim, self.img_resolution, self.img_channels = z_dim, w_dim, img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base, channel_max, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, num_layers=mapping_layers)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation_psi))

    @torch.no_grad()
    def latent_stats(self, n: int = 2000, seed: int = 0, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """Mean and per-dimension std of W estimated from ``n`` mapped z samples (seeded)."""
        g = torch.Generator().manual_seed(seed)
        chunks = []
        for i in range(0, n, batch):
            z = torch.randn([min(batch, n - i), self.z_dim], generator=g)
            chunks.append(self.mapping(z)[:, 0])
        w = torch.cat(chunks)
        return w.mean(0).numpy().astype(np.float32), w.std(0).numpy().astype(np.float32)


def layer_groups(num_ws: int) -> dict[str, list[int]]:
    """Coarse / middle / fine split of the ws indices (StyleGAN's 4-8 / 16-32 / 64+ convention)."""
    coarse = list(range(0, min(4, num_ws)))
    middle = list(range(len(coarse), min(8, num_ws)))
    fine = list(range(len(coarse) + len(middle), num_ws))
    return {"coarse": coarse, "middle": middle, "fine": fine}

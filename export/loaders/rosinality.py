"""rosinality stylegan2-pytorch checkpoints (``g_ema`` state dict, optional ``latent_avg``) -> Generator.

Key map (rosinality -> beautyrt/NVIDIA names):
  style.{i+1}.{weight,bias}                    -> mapping.fc{i}.{weight,bias}   (EqualLinear lr_mul 0.01 ==
                                                  NVIDIA's FC with lr_multiplier 0.01; same stored values)
  input.input [1,C,4,4]                        -> synthesis.b4.const [C,4,4]
  conv1 / convs.{2j} / convs.{2j+1}            -> b4.conv1 / b{2^(j+3)}.conv0 / .conv1
     .conv.weight [1,O,I,k,k] -> .weight;  .conv.modulation.{weight,bias} -> .affine.*;
     .activate.bias -> .bias;  .noise.weight [1] -> .noise_strength []
  to_rgb1 / to_rgbs.{j}                        -> b4.torgb / b{2^(j+3)}.torgb  (.bias [1,3,1,1] -> [3])
  noises.noise_{k} [1,1,R,R]                   -> the k-th conv's noise_const [R,R]
The arithmetic is the same: rosinality scales the weight by 1/sqrt(fan_in) before demodulation (which
cancels it) and ToRGB's weight by 1/sqrt(in) (NVIDIA scales ToRGB's styles by the same factor); the
transposed conv + [1,3,3,1] blur with pads (1,1), and the skip up-sampling with pads (2,1), equal
NVIDIA's conv2d_resample / upsample2d. The tests check this numerically against a direct
re-implementation of rosinality's forward.

rosinality hard-codes channels {4..32: 512, 64: 256*m, ...}; they are read from the weights and expressed
as (channel_base, channel_max) so that any channel multiplier (and reduced test sizes) load.
"""

from __future__ import annotations

import logging
import math
import re

import torch

from ..errors import CheckpointError
from ..nets.stylegan2 import Generator, channels_for
from .common import Checkpoint, assign_state, tensor_dict

log = logging.getLogger("beautyrt")


def _need(sd: dict, key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{where}: missing key '{key}' in g_ema")
    return sd[key]


def infer_config(sd: dict, where: str) -> tuple[dict, dict]:
    style_ids = sorted({int(m.group(1)) for k in sd if (m := re.match(r"style\.(\d+)\.weight$", k))})
    if not style_ids or style_ids != list(range(1, len(style_ids) + 1)):
        raise CheckpointError(f"{where}: g_ema mapping layers style.1..N not found (got {style_ids[:10]})")
    n_mlp = len(style_ids)
    style_dim = int(_need(sd, "style.1.weight", where).shape[1])
    n_rgbs = len({int(m.group(1)) for k in sd if (m := re.match(r"to_rgbs\.(\d+)\.", k))})
    size = 2 ** (n_rgbs + 2)
    ch = {4: int(_need(sd, "input.input", where).shape[1])}
    for j in range(n_rgbs):
        ch[2 ** (j + 3)] = int(_need(sd, f"convs.{2 * j}.conv.weight", where).shape[1])
    img_channels = int(_need(sd, "to_rgb1.conv.weight", where).shape[1])
    cmax = max(ch.values())
    cands = sorted({c * r for r, c in ch.items() if c < cmax} | {cmax * size})
    for base in cands:
        if channels_for(size, base, cmax) == ch:
            break
    else:
        raise CheckpointError(f"{where}: channel layout {ch} cannot be expressed as (channel_base, channel_max)")
    cfg = dict(
        z_dim=style_dim,
        w_dim=style_dim,
        img_resolution=size,
        img_channels=img_channels,
        channel_base=base,
        channel_max=cmax,
        mapping_layers=n_mlp,
        conv_clamp=None,
    )
    return cfg, ch


def convert_state(sd: dict, cfg: dict, where: str) -> dict:
    """rosinality g_ema state dict -> beautyrt Generator state dict (every rosinality key consumed)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(k: str) -> torch.Tensor:
        used.add(k)
        return _need(sd, k, where)

    for i in range(cfg["mapping_layers"]):
        out[f"mapping.fc{i}.weight"] = take(f"style.{i + 1}.weight")
        out[f"mapping.fc{i}.bias"] = take(f"style.{i + 1}.bias")

    def styled(src: str, dst: str, noise_idx: int) -> None:
        w = take(f"{src}.conv.weight")
        if w.ndim != 5 or w.shape[0] != 1:
            raise CheckpointError(f"{where}: {src}.conv.weight has shape {list(w.shape)}, expected [1,O,I,k,k]")
        out[f"{dst}.weight"] = w[0]
        out[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        out[f"{dst}.bias"] = take(f"{src}.activate.bias").reshape(-1)
        out[f"{dst}.noise_strength"] = take(f"{src}.noise.weight").reshape([])
        out[f"{dst}.noise_const"] = take(f"noises.noise_{noise_idx}")[0, 0]

    def torgb(src: str, dst: str) -> None:
        w = take(f"{src}.conv.weight")
        out[f"{dst}.weight"] = w[0]
        out[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        out[f"{dst}.bias"] = take(f"{src}.bias").reshape(-1)

    out["synthesis.b4.const"] = take("input.input")[0]
    styled("conv1", "synthesis.b4.conv1", 0)
    torgb("to_rgb1", "synthesis.b4.torgb")
    n_blocks = int(math.log2(cfg["img_resolution"])) - 2
    for j in range(n_blocks):
        r = 2 ** (j + 3)
        styled(f"convs.{2 * j}", f"synthesis.b{r}.conv0", 2 * j + 1)
        styled(f"convs.{2 * j + 1}", f"synthesis.b{r}.conv1", 2 * j + 2)
        torgb(f"to_rgbs.{j}", f"synthesis.b{r}.torgb")
    # rosinality's blur/upsample kernels are fixed buffers; check they are the [1,3,3,1] ones we use
    ignorable = re.compile(r"(.*\.blur\.kernel|.*upsample\.kernel|noises\.noise_\d+)$")
    for k in sd:
        if k in used:
            continue
        if k.endswith("kernel"):
            kern = sd[k]
            f = torch.tensor([1.0, 3, 3, 1])
            f = torch.outer(f, f)
            f = f / f.sum()
            ok = kern.shape == (4, 4) and (torch.allclose(kern / kern.sum(), f, atol=1e-6))
            if not ok:
                raise CheckpointError(f"{where}: {k} is not the [1,3,3,1] blur kernel; unsupported blur_kernel")
        elif not ignorable.match(k):
            raise CheckpointError(f"{where}: unexpected key '{k}' in g_ema")
    return out


def load_rosinality(path, ckpt) -> Checkpoint:
    where = str(path)
    sd = tensor_dict(ckpt["g_ema"], f"{where} g_ema")
    return generator_from_rosinality(sd, where, ckpt.get("latent_avg"), kind="stylegan2-rosinality")


def generator_from_rosinality(sd: dict, where: str, latent_avg=None, kind: str = "stylegan2-rosinality") -> Checkpoint:
    cfg, ch = infer_config(sd, where)
    gen = Generator(**cfg)
    # resample_filter buffers are the fixed [1,3,3,1] FIR (rosinality's kernels are checked in convert_state);
    # w_avg comes from latent_avg below
    assign_state(
        gen, convert_state(sd, cfg, where), f"{where} (g_ema)", ignore_missing=("resample_filter", "mapping.w_avg")
    )
    w_avg = None
    if isinstance(latent_avg, torch.Tensor):
        la = latent_avg.float().reshape(-1, cfg["w_dim"])
        w_avg = la.mean(0)  # [w_dim] or rows of a repeated [n, w_dim] average
        with torch.no_grad():
            gen.mapping.w_avg.copy_(w_avg)
        w_avg = w_avg.numpy().copy()
    else:
        m, _ = gen.latent_stats(n=4096, seed=0)
        with torch.no_grad():
            gen.mapping.w_avg.copy_(torch.from_numpy(m))
        w_avg = m
        log.info("%s: no latent_avg in the checkpoint; w_avg estimated from 4096 mapped samples", where)
    log.info("loaded rosinality StyleGAN2 %s: %s", where, cfg)
    return Checkpoint(
        kind=kind,
        path=where,
        generator=gen,
        w_avg=w_avg,
        info={
            "format": "rosinality stylegan2-pytorch g_ema",
            "config": cfg,
            "latent_avg": "checkpoint" if isinstance(latent_avg, torch.Tensor) else "estimated",
        },
    )

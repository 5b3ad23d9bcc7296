"""NVIDIA stylegan2-ada-pytorch network pickles (``G_ema``) -> beautyrt's Generator.

The pickle is read by :mod:`.safe_pickle` (no code from it runs). ``G_ema`` is a persistence-wrapped
``training.networks.Generator``; its ``_init_kwargs`` give the configuration (``z_dim``, ``c_dim``,
``w_dim``, ``img_resolution``, ``img_channels``, ``mapping_kwargs.num_layers``,
``synthesis_kwargs.{channel_base, channel_max, conv_clamp, architecture}``) and its parameters/buffers
have the same dotted names as beautyrt's Generator.
"""

from __future__ import annotations

import logging

from ..errors import CheckpointError
from ..nets.stylegan2 import Generator
from .common import Checkpoint, assign_state
from .safe_pickle import PersistentObject, safe_load

log = logging.getLogger("beautyrt")

# stylegan2-ada-pytorch defaults (training/networks.py) for arguments a pickle may omit
DEFAULTS = {"channel_base": 32768, "channel_max": 512, "num_layers": 8, "conv_clamp": None, "architecture": "skip"}


def is_stylegan3(g: PersistentObject) -> bool:
    syn = g.modules.get("synthesis")
    if isinstance(syn, PersistentObject):
        names = syn.modules
        if "input" in names or any(k.startswith("L0_") for k in names):
            return True
    return "class SynthesisInput" in g.module_src


def generator_config(g: PersistentObject, where: str) -> dict:
    kw = g.init_kwargs
    if g.init_args:
        raise CheckpointError(f"{where}: G_ema was built with positional arguments; cannot read its configuration")
    for k in ("z_dim", "w_dim", "img_resolution", "img_channels"):
        if k not in kw:
            raise CheckpointError(f"{where}: G_ema init kwargs lack '{k}' (have: {', '.join(sorted(kw))})")
    if int(kw.get("c_dim", 0) or 0) != 0:
        raise CheckpointError(f"{where}: conditional generators (c_dim={kw['c_dim']}) are not supported yet")
    mk = dict(kw.get("mapping_kwargs") or {})
    sk = dict(kw.get("synthesis_kwargs") or {})
    arch = sk.get("architecture", DEFAULTS["architecture"])
    if arch != "skip":
        raise CheckpointError(
            f"{where}: synthesis architecture {arch!r} is not supported yet (only 'skip', the FFHQ configs)"
        )
    for k in ("layer_features", "embed_features"):
        if mk.get(k) not in (None, kw["w_dim"], kw["z_dim"]):
            raise CheckpointError(f"{where}: mapping_kwargs.{k}={mk[k]} is not supported yet")
    lr = mk.get("lr_multiplier", 0.01)
    if lr != 0.01:
        raise CheckpointError(f"{where}: mapping lr_multiplier {lr} is not supported yet (0.01 expected)")
    cfg = dict(
        z_dim=int(kw["z_dim"]),
        w_dim=int(kw["w_dim"]),
        img_resolution=int(kw["img_resolution"]),
        img_channels=int(kw["img_channels"]),
        channel_base=int(sk.get("channel_base", DEFAULTS["channel_base"])),
        channel_max=int(sk.get("channel_max", DEFAULTS["channel_max"])),
        mapping_layers=int(mk.get("num_layers", DEFAULTS["num_layers"])),
        conv_clamp=sk.get("conv_clamp", DEFAULTS["conv_clamp"]),
    )
    return cfg


def load_nvidia_pickle(path, data=None) -> Checkpoint:
    where = str(path)
    if data is None:
        data = safe_load(path)
    if not isinstance(data, dict) or "G_ema" not in data:
        keys = ", ".join(sorted(map(str, data))) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{where}: not a stylegan2-ada-pytorch network pickle (no 'G_ema'; found: {keys})")
    g = data["G_ema"]
    if not isinstance(g, PersistentObject):
        raise CheckpointError(f"{where}: G_ema is a {type(g).__name__}, not a persistence-wrapped network")
    if is_stylegan3(g):
        raise CheckpointError(
            f"{where}: StyleGAN3 (alias-free) network pickles are not supported yet; "
            f"use a StyleGAN2 (stylegan2-ada-pytorch) pickle"
        )
    cfg = generator_config(g, where)
    gen = Generator(**cfg)
    state = g.named_tensors()
    assign_state(gen, state, f"{where} (G_ema)")
    log.info("loaded NVIDIA StyleGAN2 pickle %s: %s", path, cfg)
    return Checkpoint(
        kind="stylegan2-nvidia",
        path=where,
        generator=gen,
        w_avg=gen.mapping.w_avg.numpy().copy(),
        info={
            "format": "stylegan2-ada-pytorch network pickle",
            "config": cfg,
            "class": g.class_name,
            "module_src_sha256": g.src_sha256,
        },
    )

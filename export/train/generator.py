"""Joint training of the demo generator (beautyrt's StyleGAN2 ``Generator``) and its W+ encoder.

Why 64 px: on 2 shared CPU cores a 64 px StyleGAN2 decoder + encoder step costs ~1 s at batch 16, so the
~30-45 min budget buys a few thousand steps; every doubling of the resolution costs ~4x per step for the
top block. The runtime never pastes the generator's pixels: it transfers the low-frequency EDIT
G(w_best) - G(w_start) onto the photo's own crop, which a 64 px generator carries well.

Recipe (after DESIGN's probe): autoencoder (encoder -> RMS-normalised W+ rows -> synthesis), L1 at 64 and
32 px, Adam lr 1e-3 with linear warm-up, gradient clipping, latent noise (``latent_noise`` x per-dimension
std of the batch's W) on half of each batch -- one offset shared by all rows (a move in W, as the search
makes) for a quarter, independent per-row offsets for another quarter -- so perturbed latents still decode
to faces. Optional:
an identity loss through dlib's face descriptor (``id_weight``; costly on CPU). The MEBeauty val split is
held out (it is what ``beautyrt evaluate`` runs on).

The pack's W statistics are those of ENCODED training faces (``encoded_stats``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..nets.demo import NormalisedEncoder
from ..nets.encoder import Encoder
from ..nets.stylegan2 import Generator
from .common import LossLog, batch, seed_all, to_tensor

log = logging.getLogger("beautyrt")


@dataclass
class GenConfig:
    resolution: int = 64
    z_dim: int = 128
    w_dim: int = 128
    channel_base: int = 2048
    channel_max: int = 128
    mapping_layers: int = 2
    enc_channels: tuple = (16, 32, 64, 128)
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 200
    clip: float = 1.0
    latent_noise: float = 0.4
    l1_low_weight: float = 1.0
    id_weight: float = 0.0
    minutes: float = 30.0
    max_steps: int = 1_000_000
    seed: int = 0
    ckpt_every_s: float = 120.0
    val_every: int = 200
    log_every: int = 25
    threads: Optional[int] = None

    def generator_kwargs(self) -> dict:
        return dict(
            z_dim=self.z_dim,
            w_dim=self.w_dim,
            img_resolution=self.resolution,
            channel_base=self.channel_base,
            channel_max=self.channel_max,
            mapping_layers=self.mapping_layers,
        )


def build(cfg: GenConfig) -> tuple[Generator, NormalisedEncoder]:
    G = Generator(**cfg.generator_kwargs())
    E = NormalisedEncoder(Encoder(cfg.resolution, G.num_ws, G.w_dim, channels=tuple(cfg.enc_channels)))
    return G, E


def _split_faces(data: dict, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    imgs = to_tensor(data[f"images_{res}"])
    split = torch.from_numpy(data["split"].astype(np.int64))
    return imgs[split != 1], imgs[split == 1]


def train_generator(
    data: dict, out: str | Path, cfg: GenConfig = GenConfig(), resume: bool = False, identity=None
) -> dict:
    """Train; writes ``out/generator.pt`` (checkpoint: G, E state dicts, config, stats) and ``out/gen_log.jsonl``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gen = seed_all(cfg.seed)
    G, E = build(cfg)
    train, val = _split_faces(data, cfg.resolution)
    if len(val) == 0:
        val = train[: min(64, len(train))]
    val = val[:64]
    params = list(G.synthesis.parameters()) + list(E.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.99))
    step = 0
    ckpt = out / "generator.pt"
    if resume and ckpt.is_file():
        st = torch.load(ckpt, weights_only=True)
        G.load_state_dict(st["G"]), E.load_state_dict(st["E"]), opt.load_state_dict(st["opt"])
        step = st["step"]
    lossl = LossLog(out / "gen_log.jsonl")
    t_ckpt = time.time()
    deadline = time.time() + cfg.minutes * 60
    G.train(), E.train()
    run = []
    while step < cfg.max_steps and time.time() < deadline:
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(train), (cfg.batch,), generator=gen)
        x = batch(train, idx, gen)
        ws = E(x)
        if cfg.latent_noise > 0:
            # half the batch: clean; a quarter: one W offset shared by all rows (how the search moves);
            # a quarter: independent per-row offsets (W+); both latent_noise x the batch's per-dim std
            std = ws.detach().std(dim=0, keepdim=True)
            shared = torch.randn(ws.shape[0], 1, ws.shape[2], generator=gen).expand_as(ws)
            per_row = torch.randn(ws.shape, generator=gen)
            q = cfg.batch // 4
            noise = torch.zeros_like(ws)
            noise[2 * q : 3 * q] = shared[2 * q : 3 * q]
            noise[3 * q :] = per_row[3 * q :]
            ws = ws + noise * std * cfg.latent_noise
        y = G.synthesis(ws)
        l1 = (y - x).abs().mean()
        l1_low = (F.avg_pool2d(y, 2) - F.avg_pool2d(x, 2)).abs().mean()
        loss = l1 + cfg.l1_low_weight * l1_low
        lid = torch.zeros(())
        if cfg.id_weight > 0 and identity is not None:
            k = max(2, cfg.batch // 4)
            ey = identity((y[:k].clamp(-1, 1) + 1) * 127.5)
            with torch.no_grad():
                ex = identity((x[:k] + 1) * 127.5)
            lid = (1 - F.cosine_similarity(ey, ex, dim=1)).mean()
            loss = loss + cfg.id_weight * lid
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        step += 1
        if not torch.isfinite(loss):
            raise FloatingPointError(f"generator training diverged at step {step}")
        run.append((l1.item(), lid.item()))
        if step % cfg.log_every == 0:
            a = np.mean(run, axis=0)
            rec = dict(step=step, l1=float(a[0]), id=float(a[1]), gnorm=float(gn), lr=lr)
            run = []
            if step % cfg.val_every == 0:
                rec["val_l1"] = evaluate_l1(G, E, val)
            lossl(**rec)
        if time.time() - t_ckpt > cfg.ckpt_every_s:
            _save(ckpt, G, E, opt, step, cfg)
            t_ckpt = time.time()
    val_l1 = evaluate_l1(G, E, val)
    lossl(step=step, final_val_l1=val_l1)
    E.eval()
    w_avg, w_std = encoded_stats(encode_all(E, train))  # the search's units: statistics of encoded faces
    E.train()
    _save(ckpt, G, E, opt, step, cfg, w_stats=(w_avg, w_std))
    return {"steps": step, "val_l1": val_l1, "seconds": lossl.elapsed, "checkpoint": str(ckpt)}


@torch.no_grad()
def evaluate_l1(G, E, val: torch.Tensor) -> float:
    G.eval(), E.eval()
    y = G.synthesis(E(val))
    G.train(), E.train()
    return float((y - val).abs().mean())


def _save(path: Path, G, E, opt, step: int, cfg: GenConfig, w_stats=None) -> None:
    """The checkpoint ``beautyrt export --stylegan`` reads (kind ``beautyrt-generator``): G and E state dicts,
    the config, and -- once training ends -- ``w_avg``/``w_std`` of the encoded training faces."""
    tmp = path.with_suffix(".tmp")
    st = {"G": G.state_dict(), "E": E.state_dict(), "opt": opt.state_dict(), "step": step, "config": asdict(cfg)}
    if w_stats is not None:
        st["w_avg"], st["w_std"] = (torch.from_numpy(np.asarray(a, np.float32)) for a in w_stats)
    torch.save(st, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> tuple[Generator, NormalisedEncoder, GenConfig]:
    st = torch.load(path, weights_only=True)
    cfg = GenConfig(**{**st["config"], "enc_channels": tuple(st["config"]["enc_channels"])})
    G, E = build(cfg)
    G.load_state_dict(st["G"]), E.load_state_dict(st["E"])
    return G.eval().requires_grad_(False), E.eval().requires_grad_(False), cfg


@torch.no_grad()
def encode_all(E, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([E(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def encoded_stats(ws: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """w_avg, w_std (each [w_dim]) over all encoded faces and rows: the units the search moves in."""
    flat = ws.reshape(-1, ws.shape[-1])
    return flat.mean(0).numpy().astype(np.float32), flat.std(0).numpy().astype(np.float32)

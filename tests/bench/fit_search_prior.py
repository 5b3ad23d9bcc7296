"""Fit a bundle's search prior: the mean edit today's search finds on MEBeauty TRAIN faces.

    python tests/bench/fit_search_prior.py --bundle DIR --data ../shared/data [--n 320] [--scale 2.0]
        [--write-pack export/demo_pack]

Runs the origin-start search (CMA-ES in W from the encoder's latent, ``--generations``/``--popsize`` as given,
today's defaults 30 x 16) on ``--n`` aligned MEBeauty train crops (``split == 0`` of the training cache that
``beautyrt train`` builds; never val), takes each best latent's offset x = (w_best - w_start) / w_std (one vector in
W, space ``w``), and reports the mean, its norm, and how consistent the edits are (cosine of each to the mean).
The prior is ``--scale`` x the mean: where ``--start prior`` begins. ``--write-pack`` stores it (and the fit's
statistics) in the pack's config.json (``search_prior``, ``search_prior_info``), from where ``beautyrt export``
writes the bundle role ``search_prior``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from beautyrt.runtime.api import Beautifier, Settings  # noqa: E402
from beautyrt.runtime.stages import align, decode, invert, search  # noqa: E402


def train_crops(data: Path, n: int, seed: int, size: int, skip: int = 0) -> list[np.ndarray]:
    """``n`` aligned MEBeauty train crops (after ``skip`` others, for a disjoint selection set) at ``size`` px."""
    from beautyrt.export.train.data import DEFAULT_CACHE, load_aligned, prepare

    z = load_aligned(prepare(data, sizes=(256,), cache=DEFAULT_CACHE, include_omi=False))
    idx = np.random.default_rng(seed).permutation(np.flatnonzero(z["split"] == 0))[skip : skip + n]
    return [np.asarray(Image.fromarray(z["images_256"][i]).resize((size, size), Image.Resampling.LANCZOS)) for i in idx]


def edits(bf: Beautifier, crops: list[np.ndarray], settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    s = bf.resolve(settings)
    xs, gains = [], []
    for c in crops:
        a = align.aligned_input(decode.decode(c), bf.resolution)
        inv = invert.invert(bf.models, a)
        o = search.search(bf.models, a, inv, s)
        xs.append(((o.w_best - inv.w_start)[0, 0] / bf.w_std).astype(np.float64))
        gains.append(o.gain)
    return np.array(xs), np.array(gains)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True, help="the shared data folder (mebeauty/)")
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generations", type=int, default=30)
    ap.add_argument("--popsize", type=int, default=16)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--write-pack", default=None, help="pack folder whose config.json gets the prior")
    a = ap.parse_args(argv)
    t0, load = time.time(), os.getloadavg()
    with Beautifier(a.bundle, device="cpu") as bf:
        crops = train_crops(Path(a.data), a.n, a.seed, bf.resolution)
        base = Settings(
            generations=a.generations, popsize=a.popsize, start="origin", mirrored=False, covariance="auto", space="w"
        )
        X, gains = edits(bf, crops, base)
    m = X.mean(0)
    cos = X @ m / (np.linalg.norm(X, axis=1) * np.linalg.norm(m))
    info = {
        "fitted_on": f"{len(X)} MEBeauty train faces (split 0), origin-start search {a.generations} x {a.popsize}",
        "scale": a.scale,
        "mean_norm": float(np.linalg.norm(m)),
        "edit_norm_mean": float(np.linalg.norm(X, axis=1).mean()),
        "cosine_to_mean": float(cos.mean()),
        "search_gain_mean": float(gains.mean()),
        "units": "w_std",
        "space": "w",
    }
    print(json.dumps({**info, "seconds": time.time() - t0, "loadavg": load}, indent=1))
    if a.write_pack:
        p = Path(a.write_pack) / "config.json"
        cfg = json.loads(p.read_text())
        cfg["search_prior"] = [float(v) for v in a.scale * m]
        cfg["search_prior_info"] = info
        p.write_text(json.dumps(cfg, indent=1))
        print(f"wrote search_prior into {p}")


if __name__ == "__main__":
    main()

"""Train and measure the FaceRes beauty regressor (issue 17 part 2) from the cached 256 px aligned faces.

    python tests/bench/faceres_beauty.py OUT [--cache ~/.cache/beautyrt/train/aligned_256.npz] [--res 64]

The crops at ``--res`` (the demo generator's 64 px) are the 256 px crops area-averaged by 256/res, the
landmarks scaled with them. Feature set, OMI weight and ridge lambda are chosen by cross-validation on
MEBeauty train (``beauty.train_beauty_faceres``); MEBeauty val is only measured. Prints the metrics JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np


def downsample(data: dict, res: int) -> dict:
    src = data["images_256"]
    f = 256 // res
    imgs = src.reshape(len(src), res, f, res, f, 3).astype(np.float32).mean((2, 4))
    out = {k: v for k, v in data.items() if not k.endswith("_256")}
    out[f"images_{res}"] = np.clip(np.rint(imgs), 0, 255).astype(np.uint8)
    out[f"lm_{res}"] = ((data["lm_256"] + 0.5) / f - 0.5).astype(np.float32)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--cache", default=str(Path("~/.cache/beautyrt/train/aligned_256.npz").expanduser()))
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", default="", help="comma-separated feature sets (default: all)")
    ap.add_argument("--omi", default="0,0.5,1", help="OMI weights to cross-validate")
    ap.add_argument("--lambdas", default="0.1,0.3,1,3,10,30")
    ap.add_argument("--mirror", default="0,1", help="test-time mirror averaging: 0, 1 or both (chosen by CV)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    from beautyrt.export.train.beauty import FACERES_FEATURE_SETS, train_beauty_faceres
    from beautyrt.export.train.data import load_aligned

    torch.set_num_threads(a.threads)
    t0 = time.time()
    data = downsample(load_aligned(a.cache), a.res)
    sets = tuple(a.sets.split(",")) if a.sets else tuple(FACERES_FEATURE_SETS)
    res = train_beauty_faceres(
        data,
        a.out,
        feature_sets=sets,
        res=a.res,
        omi_weights=tuple(float(v) for v in a.omi.split(",")),
        lambdas=tuple(float(v) for v in a.lambdas.split(",")),
        mirror=tuple(bool(int(v)) for v in a.mirror.split(",")),
    )
    res["seconds"] = round(time.time() - t0, 1)
    sys.stdout.write(json.dumps({k: v for k, v in res.items() if k != "cv_pearson_r_train"}, indent=1) + "\n")


if __name__ == "__main__":
    main()

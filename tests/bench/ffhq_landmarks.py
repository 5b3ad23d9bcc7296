"""Measure where beautyrt's 5 MTCNN landmarks land, on average, inside the FFHQ-style crop.

The mean positions (in units of the crop side) define the fixed affine that takes the generator's FFHQ crop
to another model's template crop (e.g. dlib's 150 px chip) inside the fused scorer. Usage:
    python tests/bench/ffhq_landmarks.py --bundle BUNDLE_WITH_DETECTOR [--data ../shared/data] [--limit 224]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from beautyrt.engines import load_manifest, open_engine
from beautyrt.runtime.ops.geometry import ffhq_alignment
from beautyrt.runtime.ops.imageio import load_image
from beautyrt.runtime.ops.mtcnn import MTCNNDetector


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    ap.add_argument("--limit", type=int, default=224)
    a = ap.parse_args()
    m = load_manifest(a.bundle)
    nets = [open_engine(m, f"detector_{n}", device="cpu") for n in ("pnet", "rnet", "onet")]
    det = MTCNNDetector(*nets, min_face=40, normalisation=m.model("detector_pnet").normalisation)
    root = Path(a.data) / "mebeauty"
    rows = list(csv.DictReader(open(root / "val.csv")))[: a.limit]
    pts = []
    for row in rows:
        faces = det.detect(load_image(root / row["image"]))
        if faces:
            al = ffhq_alignment(faces[0].landmarks, 1000)
            pts.append(al.landmarks_in_crop() / 1000.0)
    p = np.stack(pts)
    print(f"faces: {len(p)} of {len(rows)}")
    print("mean (x, y) per landmark, in units of the crop side:")
    print(np.array2string(p.mean(0), precision=5, separator=", "))
    print("std:")
    print(np.array2string(p.std(0), precision=5, separator=", "))
    return 0


if __name__ == "__main__":
    sys.exit(main())

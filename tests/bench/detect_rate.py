"""Detection rate of beautyrt's MTCNN on every photo of MEBeauty's val.csv.

Usage (from the repository root):

    .venv/bin/python tests/bench/detect_rate.py [--data ../shared/data/mebeauty] [--onnx-dir DIR]
                                                 [--cache ~/.cache/beautyrt/mtcnn] [--min-face 20] [--limit N]

Without ``--onnx-dir`` the three nets are exported (needs torch + the facenet-pytorch wheel) into a
temporary folder first. Prints: photos, detection rate (>= 1 face), fraction of first faces whose 5
landmarks lie inside their box, eyes-above-mouth rate, faces per photo, mean / median / p95 detection time.
Photos are decoded with EXIF orientation applied, as RGB.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[2]


class OrtNet:
    """Minimal Engine-like adapter (``.inputs[0].name``, ``.run(feeds) -> dict``) over onnxruntime."""

    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()
        self._names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds):
        return dict(zip(self._names, self.session.run(None, dict(feeds))))


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mebeauty")
    ap.add_argument("--onnx-dir", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None, help="facenet-pytorch wheel cache")
    ap.add_argument("--min-face", type=float, default=20)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--show-misses", action="store_true")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))  # noqa  (script convenience; the package is normally installed)
    from beautyrt.runtime.ops.mtcnn import MTCNNDetector

    csv_path = args.data / "val.csv"
    if not csv_path.is_file():
        print(f"no {csv_path}: nothing to measure")
        return 2
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if args.limit:
        rows = rows[: args.limit]

    tmp = None
    onnx_dir = args.onnx_dir
    if onnx_dir is None:
        from beautyrt.export.mtcnn_export import export_mtcnn

        tmp = tempfile.TemporaryDirectory(prefix="beautyrt-mtcnn-")
        onnx_dir = Path(tmp.name)
        export_mtcnn(onnx_dir, args.cache)
    det = MTCNNDetector(*(OrtNet(onnx_dir / f"{n}.onnx") for n in ("pnet", "rnet", "onet")), min_face=args.min_face)
    det.detect(np.zeros((64, 64, 3), np.uint8))  # warm-up

    found = inside = eyes_ok = faces_total = 0
    times, misses, sizes = [], [], []
    for row in rows:
        img = load_rgb(args.data / row["image"])
        t = time.perf_counter()
        faces = det.detect(img)
        times.append(time.perf_counter() - t)
        sizes.append(max(img.shape[:2]))
        faces_total += len(faces)
        if not faces:
            misses.append(row["image"])
            continue
        found += 1
        f = faces[0]
        inside += f.landmarks_inside_box()
        lm = f.landmarks
        eyes_ok += bool(max(lm[0, 1], lm[1, 1]) < min(lm[3, 1], lm[4, 1]))
    n = len(rows)
    print(f"photos: {n} (long side median {int(statistics.median(sizes))} px), min_face {args.min_face}")
    print(f"detection rate: {found}/{n} = {found / n:.4f}")
    print(f"landmarks inside box (first face): {inside}/{found} = {inside / max(found, 1):.4f}")
    print(f"eyes above mouth (first face): {eyes_ok}/{found} = {eyes_ok / max(found, 1):.4f}")
    print(f"faces per photo: {faces_total / n:.3f}")
    ms = sorted(1000 * t for t in times)
    print(
        f"time per photo: mean {statistics.mean(ms):.1f} ms, median {statistics.median(ms):.1f} ms, "
        f"p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms"
    )
    if args.show_misses:
        for m in misses:
            print("miss:", m)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure beautyrt's port of dlib's face descriptor on real photos (MEBeauty, ../shared/data).

    .venv/bin/python tests/bench/dlib_verification.py [--n 40] [--dlib-python /tmp/dlibenv/bin/python]

For ~40 photos (one per file, spread over the 12 gender/ethnicity folders; each file is assumed to be a
different person) it computes descriptors of the aligned face and of 4 augmented views (horizontal flip, two
small crops, colour jitter). "same" pairs = a photo vs its own views, "different" pairs = photos vs each other.
It prints Euclidean (dlib's metric, threshold 0.6) and cosine distance distributions and the verification
accuracy at the best threshold.

Faces: with ``--dlib-python`` (or env BEAUTYRT_DLIB_PYTHON) pointing at an interpreter that has ``dlib``
(``pip install dlib-bin`` in a throwaway venv; never a beautyrt dependency), dlib's HOG detector and 68/5-point
shape predictors locate the face; beautyrt's 5 MTCNN-order points are derived from the 68 (eye-contour centres,
nose tip 30, mouth corners 48/54) and the chip is cut with DLIB_CHIP_TEMPLATE_5PT. The script then also reports
(a) ours vs dlib's own descriptor on dlib's own chips (max abs difference), and (b) how close our template chip
is to dlib's get_face_chip (chip-corner displacement in pixels, descriptor distance). Without dlib it falls back
to centre crops (the upper-middle square of each photo) and says so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
IMAGES = SHARED / "data" / "mebeauty" / "images"
HELPER = Path(__file__).resolve().parent / "dlib_ref_helper.py"


def select_photos(n: int) -> list:
    """n files spread evenly over the 12 sub-folders, deterministic."""
    folders = sorted(p for p in IMAGES.glob("*/*") if p.is_dir())
    per = -(-n // len(folders)) + 1  # a spare per folder for photos without a detected face
    picks = []
    for f in folders:
        files = sorted(p for p in f.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        step = max(1, len(files) // per)
        picks.append(files[::step][:per])
    out = []
    for i in range(per):  # interleave so that the first n cover every folder
        out.extend(group[i] for group in picks if i < len(group))
    return out


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def centre_chip(img: np.ndarray, size: int = 150) -> np.ndarray:
    h, w = img.shape[:2]
    s = int(0.6 * min(h, w))
    y0 = max(0, int(0.42 * h) - s // 2)
    x0 = (w - s) // 2
    crop = Image.fromarray(img[y0 : y0 + s, x0 : x0 + s])
    return np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.float32)


def mtcnn_points_from_68(p68: np.ndarray) -> np.ndarray:
    return np.array([p68[36:42].mean(0), p68[42:48].mean(0), p68[30], p68[48], p68[54]])


def augment(chip: np.ndarray, rng: np.random.Generator) -> list:
    """4 views of a 150x150 float chip: flip, two small crops (88-95 %, shifted), colour jitter."""
    im = Image.fromarray(np.clip(chip, 0, 255).astype(np.uint8))
    size = im.size[0]
    views = [np.asarray(im.transpose(Image.FLIP_LEFT_RIGHT), np.float32)]
    for _ in range(2):
        s = int(size * rng.uniform(0.88, 0.95))
        x0, y0 = rng.integers(0, size - s + 1, size=2)
        views.append(np.asarray(im.crop((x0, y0, x0 + s, y0 + s)).resize((size, size), Image.BILINEAR), np.float32))
    j = ImageEnhance.Brightness(im).enhance(rng.uniform(0.85, 1.15))
    j = ImageEnhance.Contrast(j).enhance(rng.uniform(0.85, 1.15))
    j = ImageEnhance.Color(j).enhance(rng.uniform(0.8, 1.2))
    views.append(np.asarray(j, np.float32))
    return views


def describe(model, chips) -> np.ndarray:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(np.asarray(chips, np.float32).transpose(0, 3, 1, 2)))
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 32):
            out.append(model(x[i : i + 32]).numpy())
    return np.concatenate(out).astype(np.float64)


def pair_distances(emb: np.ndarray, views: np.ndarray):
    """emb (P, D) originals, views (P, V, D). Returns dict metric -> (same, different) arrays."""
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    same_e = np.linalg.norm(views - emb[:, None], axis=-1).ravel()
    same_c = (1 - (unit(views) * unit(emb)[:, None]).sum(-1)).ravel()
    iu = np.triu_indices(len(emb), 1)
    diff_e = np.linalg.norm(emb[:, None] - emb[None], axis=-1)[iu]
    diff_c = (1 - unit(emb) @ unit(emb).T)[iu]
    return {"euclidean": (same_e, diff_e), "cosine": (same_c, diff_c)}


def best_threshold(same: np.ndarray, diff: np.ndarray):
    """Threshold maximising balanced accuracy (mean of same-recall and different-recall); also plain accuracy."""
    cands = np.unique(np.concatenate([same, diff]))
    best = (0.0, 0.0, 0.0)
    for t in cands:
        bal = 0.5 * ((same <= t).mean() + (diff > t).mean())
        if bal > best[0]:
            acc = ((same <= t).sum() + (diff > t).sum()) / (len(same) + len(diff))
            best = (bal, float(t), acc)
    return best


def describe_dist(name: str, a: np.ndarray) -> str:
    p = np.percentile(a, [5, 25, 50, 75, 95])
    return (
        f"  {name:9s} n={len(a):4d} mean={a.mean():.4f} std={a.std():.4f} "
        f"p5={p[0]:.4f} p25={p[1]:.4f} p50={p[2]:.4f} p75={p[3]:.4f} p95={p[4]:.4f}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dlib-python", default=os.environ.get("BEAUTYRT_DLIB_PYTHON"))
    args = ap.parse_args(argv)
    if not IMAGES.is_dir():
        print(f"no photos at {IMAGES}; nothing to measure")
        return 0

    from beautyrt.export.dlib_dat import (
        _DLIB_5PT_UNIT,
        CHIP_PADDING,
        CHIP_SIZE,
        DLIB_CHIP_TEMPLATE_5PT,
        extract_face_chip,
        load_dlib_resnet,
        packaged_models_dir,
        similarity_from_points,
    )
    from beautyrt.export.nets.dlib_resnet import build_dlib_resnet

    model = build_dlib_resnet(load_dlib_resnet())
    rng = np.random.default_rng(args.seed)
    paths = select_photos(args.n)
    t0 = time.time()

    chips, names = [], []
    if args.dlib_python:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ref.npz"
            subprocess.run(
                [args.dlib_python, str(HELPER), "detect", str(packaged_models_dir()), str(out), *map(str, paths)],
                check=True,
            )
            ref = dict(np.load(out))
        print(f"face finding: dlib {ref['dlib_version']} HOG detector + shape predictors (via {args.dlib_python})")
        ok = np.flatnonzero(ref["found"])[: args.n]
        print(f"faces found in {ref['found'].sum()}/{len(paths)} candidate photos; using {len(ok)}")

        # (a) same chips in, ours vs dlib out
        ours_on_dlib_chips = describe(model, ref["chips"][ok])
        d_chip = np.abs(ours_on_dlib_chips - ref["desc"][ok]).max()
        d_img = np.abs(ours_on_dlib_chips - ref["desc_img"][ok]).max()
        print(
            f"(a) ours vs dlib.compute_face_descriptor on dlib's own chips: max abs diff {d_chip:.3g} "
            f"(vs the descriptor dlib computes from image+shape: {d_img:.3g})"
        )

        # (b) our 5-point template vs dlib's own 5-point chip
        tmpl_dlib = (CHIP_PADDING + _DLIB_5PT_UNIT) / (1 + 2 * CHIP_PADDING) * CHIP_SIZE
        corners = np.array([[0, 0], [149, 0], [0, 149], [149, 149]], float)
        disp, mapped = [], []
        for i in ok:
            img = load_rgb(paths[i])
            p5 = mtcnn_points_from_68(ref["pts68"][i])
            m_ours = similarity_from_points(p5, DLIB_CHIP_TEMPLATE_5PT)
            m_dlib = similarity_from_points(ref["pts5"][i], tmpl_dlib)
            inv = np.linalg.inv(np.vstack([m_ours, [0, 0, 1]]))[:2]
            in_img = corners @ inv[:, :2].T + inv[:, 2]
            back = in_img @ m_dlib[:, :2].T + m_dlib[:, 2]
            disp.append(np.linalg.norm(back - corners, axis=1).mean())
            mapped.append(p5 @ m_dlib[:, :2].T + m_dlib[:, 2])  # our 5 points inside dlib's own chip
            chip = extract_face_chip(img, p5)
            chips.append(chip)
            names.append(paths[i].name)
        ours_tmpl_desc = describe(model, chips)
        e = np.linalg.norm(ours_tmpl_desc - ref["desc"][ok], axis=1)
        disp = np.array(disp)
        print(
            f"(b) template chip vs dlib.get_face_chip: corner displacement mean {disp.mean():.2f} px "
            f"(median {np.median(disp):.2f}, max {disp.max():.2f}) of 150; descriptor distance ours-chip vs "
            f"dlib-chip mean {e.mean():.4f} max {e.max():.4f} (Euclidean; same-person threshold 0.6)"
        )
        mapped = np.array(mapped)
        dev = np.linalg.norm(mapped.mean(0) - DLIB_CHIP_TEMPLATE_5PT, axis=1)
        print(
            "    our 5 points inside dlib's chip, mean over faces (x, y) vs DLIB_CHIP_TEMPLATE_5PT: "
            + "; ".join(
                f"{m[0]:.1f},{m[1]:.1f} vs {t[0]:.1f},{t[1]:.1f}"
                for m, t in zip(mapped.mean(0), DLIB_CHIP_TEMPLATE_5PT)
            )
            + f"; max deviation {dev.max():.2f} px; per-face spread (std) "
            + ", ".join(f"{v:.1f}" for v in np.linalg.norm(mapped.std(0), axis=1))
            + " px"
        )
    else:
        print("face finding: NO detector available -> centre crops (upper-middle 60 % square of each photo)")
        for p in paths[: args.n]:
            chips.append(centre_chip(load_rgb(p)))
            names.append(p.name)

    chips = np.asarray(chips, np.float32)
    views = np.asarray([augment(c, rng) for c in chips], np.float32)  # (P, 4, 150, 150, 3)
    emb = describe(model, chips)
    vemb = describe(model, views.reshape(-1, *views.shape[2:])).reshape(len(chips), views.shape[1], -1)
    print(
        f"\n{len(chips)} photos x {views.shape[1]} augmented views (flip, 2 crops 88-95 %, colour jitter); "
        f"descriptor norms mean {np.linalg.norm(emb, axis=1).mean():.3f}"
    )
    for metric, (same, diff) in pair_distances(emb, vemb).items():
        bal, thr, acc = best_threshold(same, diff)
        print(f"{metric} distance:")
        print(describe_dist("same", same))
        print(describe_dist("different", diff))
        print(f"  best threshold {thr:.4f}: balanced accuracy {bal:.4f}, accuracy {acc:.4f}")
        if metric == "euclidean":
            print(
                f"  at dlib's 0.6: same accepted {(same < 0.6).mean():.4f}, "
                f"different rejected {(diff >= 0.6).mean():.4f}"
            )
    print(f"\ntime {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

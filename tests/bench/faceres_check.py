"""Check FaceRes preprocessing on real labelled faces, and measure its cost.

Gender accuracy of ``faceres`` and ``faceres-deep`` on MEBeauty's labelled folders
(``images/<female|male>/<ethnicity>/``), every photo aligned with beautyrt's own MTCNN + FFHQ aligner
(:func:`beautyrt.export.train.data.prepare`, cached in ~/.cache/beautyrt/train), for each crop of
:data:`beautyrt.export.nets.faceres.CROPS` and each input spec of ``PREPROCESSING`` (the human library's RGB
0..255 and HSE's BGR minus the ImageNet mean). The models run as the ONNX files beautyrt exports from the
TF.js graphs (onnxruntime, CPU). Also: ms per image at batch 16 (onnxruntime and torch eager) and GFLOPs.
Usage:
    python tests/bench/faceres_check.py [--data ../shared/data] [--limit N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from beautyrt.export.nets.faceres import CROPS, MODELS, PREPROCESSING, load_faceres, preprocess
from beautyrt.export.onnx_export import export_onnx
from beautyrt.export.train.data import load_aligned, prepare


def auc(score: np.ndarray, y: np.ndarray) -> float:
    r = np.argsort(np.argsort(score, kind="stable"), kind="stable") + 1.0
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    ap.add_argument("--limit", type=int, default=0, help="use only the first N aligned photos")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cost-only", action="store_true", help="skip the gender grid; time and count only")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    z = (
        load_aligned(prepare(a.data, sizes=(256,), include_omi=False))
        if not a.cost_only
        else {"images_256": np.zeros((0, 256, 256, 3), np.uint8), "names": np.array([], str), "missed": np.array([])}
    )
    images, names = z["images_256"], [str(n) for n in z["names"]]
    if a.limit:
        images, names = images[: a.limit], names[: a.limit]
    male = np.array(["/male/" in n for n in names], dtype=bool)
    eth = np.array([n.split("/")[3] for n in names])
    print(
        f"faces: {len(names)} aligned ({int(male.sum())} male, {int((~male).sum())} female), "
        f"missed by the detector: {len(z['missed'])}",
        flush=True,
    )

    tmp = Path(tempfile.mkdtemp(prefix="beautyrt-faceres-"))
    nets, sess = {}, {}
    for m in MODELS:
        nets[m] = load_faceres(m)
        export_onnx(
            nets[m], (torch.rand(2, 3, 224, 224) * 255,), tmp / f"{m}.onnx", ["image"], ["feature", "gender", "age"]
        )
        sess[m] = session(tmp / f"{m}.onnx", a.threads)

    results = []
    t0 = time.time()
    for crop in [] if a.cost_only else CROPS:
        for spec in PREPROCESSING:
            p = {m: [] for m in MODELS}
            for i in range(0, len(images), 64):
                x = preprocess(images[i : i + 64], crop=crop, preprocessing=spec)
                for m in MODELS:
                    p[m].append(sess[m].run(["gender"], {"image": x})[0][:, 0])
            for m in MODELS:
                g = np.concatenate(p[m])
                pred = g > 0.5
                row = {
                    "model": m,
                    "crop": crop,
                    "preprocessing": spec,
                    "n": len(g),
                    "accuracy": float(np.mean(pred == male)),
                    "accuracy_t0.6": float(np.mean((g >= 0.6) == male)),
                    "auc": auc(g, male),
                    "female_acc": float(np.mean(~pred[~male])),
                    "male_acc": float(np.mean(pred[male])),
                    "by_ethnicity": {e: float(np.mean(pred[eth == e] == male[eth == e])) for e in sorted(set(eth))},
                }
                se = np.sqrt(row["accuracy"] * (1 - row["accuracy"]) / len(g))
                print(
                    f"{m:13s} crop={crop:6s} input={spec:6s} acc {row['accuracy']:.4f} (±{1.96 * se:.4f}) "
                    f"auc {row['auc']:.4f} female {row['female_acc']:.3f} male {row['male_acc']:.3f} "
                    f"acc@0.6 {row['accuracy_t0.6']:.4f}",
                    flush=True,
                )
                results.append(row)
    print(f"gender grid: {time.time() - t0:.0f} s", flush=True)

    # cost: ms per image at batch 16, GFLOPs per image
    from torch.utils.flop_counter import FlopCounterMode

    x16 = np.random.default_rng(0).uniform(0, 255, (16, 3, 224, 224)).astype(np.float32)
    cost = {}
    for m in MODELS:
        s = sess[m]
        for _ in range(3):
            s.run(None, {"image": x16})
        ort_t = []
        for _ in range(7):
            t = time.perf_counter()
            s.run(None, {"image": x16})
            ort_t.append(time.perf_counter() - t)
        with torch.no_grad():
            xt = torch.from_numpy(x16)
            nets[m](xt)
            tt = []
            for _ in range(3):
                t = time.perf_counter()
                nets[m](xt)
                tt.append(time.perf_counter() - t)
            fc = FlopCounterMode(display=False)
            with fc:
                nets[m](xt[:1])
        cost[m] = {
            "onnxruntime_ms_per_image_b16": 1000 * float(np.median(ort_t)) / 16,
            "torch_eager_ms_per_image_b16": 1000 * float(np.median(tt)) / 16,
            "gflops_per_image": fc.get_total_flops() / 1e9,
            "threads": a.threads,
            "onnx_mb": (tmp / f"{m}.onnx").stat().st_size / 1e6,
            "parameters": int(sum(b.numel() for b in nets[m].buffers() if b.is_floating_point())),
        }
        print(m, json.dumps(cost[m]), flush=True)
    if results:
        best = max(results, key=lambda r: (r["accuracy"], r["auc"]))
        print(f"best: {best['model']} crop={best['crop']} input={best['preprocessing']} acc {best['accuracy']:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"gender": results, "cost": cost}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Early exit: how well do candidates scored at a lower synthesis resolution agree with full-resolution scoring?

Usage: .venv/bin/python tests/bench/early_exit.py --preset stylegan2-256 [--seed 0] [--n 48] [--res 128 64]
                                                  [--onnx] [--batch 16] [--json]

Draws ``n`` candidates the way the search does (w_start = a mapped z; x ~ N(0, sigma0^2) in units of W's
std, added to every layer: space "w"), scores them with the fused Scorer at full resolution and stopped at
each ``--res``, and reports per resolution: Pearson / Spearman of the beauty scores, of the identity cosine
to the start (what the objective uses), the mean cosine between the embeddings, the agreement of the top-μ
sets (the CMA-ES recombination parents, μ = λ/2), and the torch time per candidate. With ``--onnx`` each
scorer is exported (dynamo, as the bundle does) and timed in onnxruntime at ``--batch``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from beautyrt.export.bundle import build_preset
from beautyrt.export.nets.scorer import Scorer
from beautyrt.export.presets import get_preset


def _rank(a):
    r = np.empty(len(a))
    r[np.argsort(a)] = np.arange(len(a))
    return r


def pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b):
    return pearson(_rank(a), _rank(b))


def _cos(ref, emb):
    return (emb @ ref) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="stylegan2-256")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--res", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--onnx", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    ms = build_preset(get_preset(a.preset), seed=a.seed)
    G = ms.generator
    full = G.img_resolution
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        w0 = G.mapping(torch.randn(1, G.z_dim, generator=g))
        x = torch.randn(a.n, 1, G.w_dim, generator=g) * a.sigma
        ws = w0 + x * torch.from_numpy(ms.w_std)
    out = {
        "preset": a.preset,
        "n": a.n,
        "sigma": a.sigma,
        "full_resolution": full,
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "by_resolution": {},
    }
    ref = None
    for res in [full] + [r for r in a.res if r < full]:
        sc = Scorer(G.synthesis, ms.beauty, ms.beauty_norm, ms.identity, ms.identity_norm, res).eval()
        with torch.no_grad():
            s0, e0 = sc(w0)
            t0 = time.perf_counter()
            chunks = [sc(ws[i : i + a.batch]) for i in range(0, a.n, a.batch)]
            dt = (time.perf_counter() - t0) / a.n
        score = torch.cat([c[0] for c in chunks]).numpy().astype(np.float64)
        emb = torch.cat([c[1] for c in chunks]).numpy().astype(np.float64)
        cos = _cos(e0.numpy()[0].astype(np.float64), emb)
        row = {"torch_s_per_candidate": dt, "score_std": float(score.std()), "cos_mean": float(cos.mean())}
        if ref is None:
            ref = (score, emb, cos)
        else:
            mu = a.n // 2
            row.update(
                {
                    "score_pearson": pearson(ref[0], score),
                    "score_spearman": spearman(ref[0], score),
                    "identity_cos_pearson": pearson(ref[2], cos),
                    "identity_cos_spearman": spearman(ref[2], cos),
                    "embedding_cosine_mean": float(
                        np.mean(
                            np.sum(ref[1] * emb, 1) / (np.linalg.norm(ref[1], axis=1) * np.linalg.norm(emb, axis=1))
                        )
                    ),
                    "top_half_overlap": len(set(np.argsort(-ref[0])[:mu]) & set(np.argsort(-score)[:mu])) / mu,
                }
            )
        if a.onnx:
            import onnxruntime as ort

            from beautyrt.export.onnx_export import export_onnx

            with tempfile.TemporaryDirectory() as d:
                p = Path(d) / "scorer.onnx"
                t0 = time.perf_counter()
                export_onnx(sc, (ws[:2],), p, ["ws"], ["score", "embedding"])
                row["export_s"] = time.perf_counter() - t0
                so = ort.SessionOptions()
                so.intra_op_num_threads = os.cpu_count()
                sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
                feed = {"ws": ws[: a.batch].numpy()}
                sess.run(None, feed)
                ts = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    sess.run(None, feed)
                    ts.append(time.perf_counter() - t0)
                row["ort_s_per_candidate"] = float(np.median(ts)) / a.batch
        out["by_resolution"][str(res)] = row
        print(json.dumps({res: row}), flush=True) if not a.json else None
    if a.json:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

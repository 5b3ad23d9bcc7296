"""Cost per candidate of a beauty checkpoint inside the fused crop_scorer (onnxruntime, CPU).

    python tests/bench/crop_scorer_cost.py RUN/beauty.pt [RUN2/beauty.pt ...] [--batch 8] [--threads 2]

For each checkpoint: the demo pack's identity (dlib, centred) and the checkpoint's beauty head (loaded as the
pack loader loads it, :func:`beautyrt.export.demo_pack.beauty_module`) fused as
:class:`~beautyrt.export.nets.scorer.CropScorer` exactly as the pack builds it (``PIXELS`` norms at the
generator's size), exported to ONNX (dynamo, as the bundle writer prefers), checked against torch, then timed:
median of 20 calls at ``--batch`` after 3 warm-up calls, divided by the batch. Prints one JSON line each."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=20)
    a = ap.parse_args()
    import onnxruntime as ort
    import torch

    from beautyrt.export.demo_pack import beauty_config, beauty_module, load_pack
    from beautyrt.export.nets.demo import PIXELS
    from beautyrt.export.nets.scorer import CropScorer

    torch.set_num_threads(a.threads)
    G, _, ident, _, _ = load_pack()
    R = G.img_resolution
    for ck in a.ckpts:
        bst = torch.load(ck, weights_only=True)
        beauty = beauty_module(ident, beauty_config(bst), bst, bst["head"]).eval().requires_grad_(False)
        norm = {"size": R, **PIXELS}
        cs = CropScorer(beauty, norm, ident, norm).eval()
        x = torch.rand(a.batch, 3, R, R) * 2 - 1
        with tempfile.TemporaryDirectory() as d:
            path = str(Path(d) / "crop_scorer.onnx")
            torch.onnx.export(
                cs,
                (x,),
                path,
                input_names=["crop"],
                output_names=["score", "embedding"],
                dynamic_axes={"crop": {0: "n"}},
                dynamo=False,
            )
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            feed = {"crop": x.numpy()}
            with torch.no_grad():
                ref = cs(x)[0].numpy()
            got = sess.run(None, feed)[0]
            for _ in range(3):
                sess.run(None, feed)
            ts = []
            for _ in range(a.calls):
                t0 = time.perf_counter()
                sess.run(None, feed)
                ts.append(time.perf_counter() - t0)
        cfg = beauty_config(bst)
        rec = {
            "ckpt": ck,
            "beauty": {k: cfg[k] for k in cfg if k in ("kind", "faceres", "faceres_blocks", "mirror", "dim")},
            "batch": a.batch,
            "threads": a.threads,
            "ms_per_candidate": round(1000 * float(np.median(ts)) / a.batch, 2),
            "score_max_abs_err_vs_torch": float(np.abs(got - ref).max()),
        }
        sys.stdout.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()

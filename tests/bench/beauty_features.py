"""Rich features of the beauty networks for the regressor search (issue 17 part 2), cached per view.

    python tests/bench/beauty_features.py extract OUT --cache ~/.cache/beautyrt/train/aligned_256_omi.npz \
        [--res 64] [--nets faceres-deep,dlib,faceres]

For every face of the cache (at ``--res``, the 256 px crops area-averaged as tests/bench/faceres_beauty.py
does) and three views -- ``real`` (every face), ``flip`` (every face mirrored: the fitting faces' augmentation
and the test-time mirror of val) and ``aug`` (the fitting faces blurred + noised, the trainer's
``_blur_noise`` with the same seed) -- writes ``OUT/<net>_<view>.npy`` (float32, N x D) and
``OUT/<net>_layout.json`` (name, offset, width of each block of columns):

* FaceRes (``faceres``, ``faceres-deep``): spatial mean and std of the ReLU6 output of pointwise blocks
  3..13 (``pw<k>_mean``/``pw<k>_std``; ``pw13_mean`` is the 1024-d ``global_pooling/Mean``), the 256-d
  ``feats`` layer, P(male) and the 100 age bins;
* dlib: spatial mean of the ReLU of every residual block (``b<k>_mean``), std of blocks 7.. and the 128-d
  raw descriptor (``desc``); ``b7_mean``..``b13_mean`` + ``desc`` is the pack's ridge feature set.

The networks run as ONNX in onnxruntime (1 thread), ~2x faster than torch eager here. Not part of the
library: the trainer computes only the features its chosen head needs (export/train/beauty.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from faceres_beauty import downsample  # noqa: E402

log = logging.getLogger("beautyrt")


def _stats(x, layout: str):
    import torch

    dims = (1, 2) if layout == "nhwc" else (2, 3)
    m = x.mean(dim=dims)
    s = torch.sqrt(torch.clamp((x * x).mean(dim=dims) - m * m, min=0.0) + 1e-8)
    return m, s


def faceres_probe(name: str, crop: str = "face"):
    import torch
    from torch import nn

    from beautyrt.export.human_models import model_path
    from beautyrt.export.loaders.tfjs import load_tfjs_graph
    from beautyrt.export.nets.faceres import FaceResFromCrop

    blocks = list(range(3, 14))
    outs = [f"conv_pw_{k}_relu/clip_by_value" for k in blocks] + [
        "feats/Relu",
        "gender_pred/Sigmoid",
        "age_pred/Softmax",
    ]
    net = load_tfjs_graph(model_path(name), outputs=outs).eval().requires_grad_(False)
    front = FaceResFromCrop(net, crop)

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.front = front

        def forward(self, img):  # [0,255] RGB crop
            x01 = img / 255.0
            n = x01.shape[0]
            f = self.front
            grid = torch.nn.functional.affine_grid(f.theta.expand(n, 2, 3), [n, 3, f.size, f.size], align_corners=False)
            x = torch.nn.functional.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False)
            if f.bgr:
                x = x.flip(1)
            x = x * f.scale - f.shift
            o = f.net(x)
            parts = []
            for t in o[: len(blocks)]:
                parts.extend(_stats(t, "nhwc"))
            parts.extend([o[-3], o[-2], o[-1]])
            return torch.cat(parts, dim=1)

    layout, off = [], 0
    widths = {3: 128, 4: 256, 5: 256, 6: 512, 7: 512, 8: 512, 9: 512, 10: 512, 11: 512, 12: 1024, 13: 1024}
    for k in blocks:
        for st in ("mean", "std"):
            layout.append((f"pw{k}_{st}", off, widths[k]))
            off += widths[k]
    for nm, w in (("feats", 256), ("gender", 1), ("age", 100)):
        layout.append((nm, off, w))
        off += w
    return Probe().eval(), layout


def dlib_probe(lm: np.ndarray, res: int):
    import torch
    from torch import nn

    from beautyrt.export.train.beauty import build_identity

    ident = build_identity(lm, res).eval()

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.identity = ident

        def forward(self, img):
            blocks, desc = self.identity.dlib.blocks_and_descriptor(self.identity.chip(img))
            means, stds = [], []
            for k, b in enumerate(blocks):
                m, s = _stats(torch.relu(b), "nchw")
                means.append(m)
                if k >= 7:
                    stds.append(s)
            return torch.cat([*means, *stds, desc], dim=1)

    p = Probe().eval()
    with torch.no_grad():
        blocks, _ = ident.dlib.blocks_and_descriptor(ident.chip(torch.zeros(1, 3, res, res)))
    layout, off = [], 0
    for k, b in enumerate(blocks):
        layout.append((f"b{k}_mean", off, b.shape[1]))
        off += b.shape[1]
    for k, b in enumerate(blocks):
        if k >= 7:
            layout.append((f"b{k}_std", off, b.shape[1]))
            off += b.shape[1]
    layout.append(("desc", off, 128))
    return p, layout


def to_session(module, res: int, path: Path):
    import onnxruntime as ort
    import torch

    x = torch.rand(2, 3, res, res) * 255
    torch.onnx.export(
        module, (x,), str(path), input_names=["img"], output_names=["f"], dynamic_axes={"img": {0: "n"}}, dynamo=False
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = module(x).numpy()
    got = sess.run(None, {"img": x.numpy()})[0]
    err = float(np.abs(got - ref).max() / (np.abs(ref).max() + 1e-9))
    log.info("%s: onnxruntime vs torch max rel err %.2e", path.name, err)
    if err > 1e-3:
        raise RuntimeError(f"{path.name}: onnxruntime disagrees with torch ({err:.2e})")
    return sess


def extract(a) -> None:
    import torch

    from beautyrt.export.train.beauty import _blur_noise
    from beautyrt.export.train.common import to_tensor
    from beautyrt.export.train.data import load_aligned

    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = downsample(load_aligned(a.cache), a.res)
    split = data["split"]
    np.savez(out / "meta.npz", split=split, score=data["score"], names=data["names"])
    imgs = to_tensor(data[f"images_{a.res}"])
    fit_idx = np.flatnonzero(split != 1)
    for name in a.nets.split(","):
        if name == "dlib":
            probe, layout = dlib_probe(data[f"lm_{a.res}"], a.res)
        else:
            net, _, crop = name.partition("@")  # e.g. faceres-deep@ffhq: another crop of the aligned face
            probe, layout = faceres_probe(net, crop or "face")
        (out / f"{name}_layout.json").write_text(json.dumps(layout))
        sess = to_session(probe, a.res, out / f"{name}_probe.onnx")
        gen = torch.Generator().manual_seed(a.seed)  # the trainer's per-network generator: same noise for every net
        views = {
            "real": lambda: imgs,
            "flip": lambda: imgs.flip(-1),
            "aug": lambda: _blur_noise(imgs[fit_idx], gen),
        }
        for view in ("real", "flip", "aug"):
            path = out / f"{name}_{view}.npy"
            x = views[view]()  # always built, so that the aug noise does not depend on what was cached
            if path.is_file():
                continue
            px = ((x.clamp(-1, 1) + 1) * 127.5).numpy().astype(np.float32)
            res, t0 = [], time.time()
            for i in range(0, len(px), 16):
                res.append(sess.run(None, {"img": px[i : i + 16]})[0])
                if (i // 16) % 40 == 0:
                    log.info("%s %s %d/%d (%.0fs)", name, view, i, len(px), time.time() - t0)
            np.save(path.with_suffix(".tmp.npy"), np.concatenate(res).astype(np.float32))
            path.with_suffix(".tmp.npy").replace(path)
            log.info("%s %s done in %.0fs", name, view, time.time() - t0)


def seed_trainer(a) -> None:
    """Write the trainer's feature caches (``RUN/features_<source>.npz``, export/train/beauty.py
    ``train_beauty_faceres``) from an extraction, so that the trainer does not recompute them in torch (the
    same networks; onnxruntime agrees with torch to ~1e-5 relative, checked at extraction)."""
    feats = Path(a.feats)
    run = Path(a.run)
    run.mkdir(parents=True, exist_ok=True)
    meta = np.load(feats / "meta.npz")
    split = meta["split"]
    fit_idx = np.flatnonzero(split != 1)
    key = np.asarray([len(split), a.res, int(fit_idx.sum()), a.seed, 2])
    for spec in a.sources.split(","):
        src, _, blocks = spec.partition(":")
        lay = {n: (o, w) for n, o, w in json.loads((feats / f"{src}_layout.json").read_text())}
        if src == "dlib":
            names = [f"b{k}_mean" for k in range(7, 14)] + ["desc"]  # BlockFeatureBeauty.features, first_block 7
            tag = ""
        else:
            names = blocks.split("+") if blocks else ["pw13_mean"]
            tag = "+".join(names)
        arrs = {}
        for v in ("real", "flip", "aug"):
            x = np.load(feats / f"{src}_{v}.npy", mmap_mode="r")
            arrs[v] = np.hstack([np.asarray(x[:, lay[n][0] : lay[n][0] + lay[n][1]], np.float64) for n in names])
        np.savez(run / f"features_{src}.npz", key=key, blocks=np.asarray(tag), **arrs)
        log.info("%s: %s -> %s", src, tag or "dlib blocks 7.. + descriptor", run / f"features_{src}.npz")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("out")
    e.add_argument("--cache", default=str(Path("~/.cache/beautyrt/train/aligned_256_omi.npz").expanduser()))
    e.add_argument("--res", type=int, default=64)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--nets", default="faceres-deep,dlib,faceres", help="net[@crop] list (crops: nets/faceres.py CROPS)")
    t = sub.add_parser("seed-trainer")
    t.add_argument("feats")
    t.add_argument("run")
    t.add_argument("--sources", required=True, help="comma-separated source[:block+block] (dlib, faceres-deep:...)")
    t.add_argument("--res", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.cmd == "extract":
        extract(a)
    else:
        seed_trainer(a)


if __name__ == "__main__":
    main()

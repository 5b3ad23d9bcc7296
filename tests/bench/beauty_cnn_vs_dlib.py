"""Bench: beauty regressor on MEBeauty val -- a small CNN on the 64 px crop vs the MLP head on dlib's
descriptor vs both (CNN features + descriptor). Needs ../shared/data aligned by ``beautyrt train`` and the
descriptor cache of a beauty run. Usage: python tests/bench/beauty_cnn_vs_dlib.py ALIGNED.npz DESCRIPTORS.npz [minutes]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from beautyrt.export.nets.beauty import BeautyRegressor
from beautyrt.export.train.beauty import metrics
from beautyrt.export.train.common import to_tensor


def main(aligned: str, desc: str, minutes: float = 4.0) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = dict(np.load(aligned))
    f = dict(np.load(desc))
    sp, y = d["split"], d["score"].astype(np.float32)
    tr, va = np.flatnonzero(sp == 0), np.flatnonzero(sp == 1)
    imgs = to_tensor(d["images_64"])
    centre = f["real"][sp != 1].mean(0)
    D = torch.from_numpy(f["real"] - centre).float()
    dm, ds = D[tr].mean(0), D[tr].std(0) + 1e-6
    D = (D - dm) / ds
    mean_rgb = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std_rgb = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    norm = lambda x: ((x + 1) / 2 - mean_rgb) / std_rgb  # noqa: E731
    results = {}
    for kind in ("cnn", "cnn+dlib"):
        net = BeautyRegressor(
            resolution=64, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), stem_stride=1, score_mid=float(y[tr].mean())
        )
        feat_dim = 128
        fuse = torch.nn.Linear(feat_dim + (128 if kind == "cnn+dlib" else 0), 1)
        torch.nn.init.zeros_(fuse.weight)
        torch.nn.init.constant_(fuse.bias, float(y[tr].mean()))
        params = list(net.parameters()) + list(fuse.parameters())
        opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-3)

        def forward(idx, train):
            x = imgs[idx]
            if train:
                flip = torch.rand(len(idx)) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                x = x + 0.03 * torch.randn_like(x)
            h = net.layers(net.stem(norm(x))).mean(dim=[2, 3])
            if kind == "cnn+dlib":
                h = torch.cat([h, D[idx]], 1)
            return fuse(h)[:, 0]

        t0, step = time.time(), 0
        while time.time() - t0 < minutes * 60 / 2:
            net.train()
            idx = torch.from_numpy(np.random.default_rng(step).choice(tr, 32))
            loss = ((forward(idx, True) - torch.from_numpy(y[idx.numpy()])) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        net.eval()
        with torch.no_grad():
            p = torch.cat([forward(torch.from_numpy(va[i : i + 64]), False) for i in range(0, len(va), 64)]).numpy()
        results[kind] = {**metrics(p, y[va]), "steps": step}
        print(kind, results[kind], flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 4.0)

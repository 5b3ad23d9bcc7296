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

FACERES_FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "faceres": ("faceres",),
    "faceres-deep": ("faceres-deep",),
    "faceres+faceres-deep": ("faceres", "faceres-deep"),
    "faceres+dlib": ("faceres", "dlib"),
    "faceres-deep+dlib": ("faceres-deep", "dlib"),
}
# judge heads (issue 17 part 3): networks NOT trained for recognition; chosen only when asked for (not in the
# default grid above), e.g. ``train_beauty_faceres(data, out, feature_sets=("gear",))``
JUDGE_FEATURE_SETS: dict[str, tuple[str, ...]] = {"gear": ("gear",)}


def _view_features(fn, imgs: torch.Tensor, fit_idx: np.ndarray, gen: torch.Generator, label: str) -> dict:
    """``fn`` ([0,255] crops -> features) on the three views the ridge heads train on: every real crop, and
    the fitting faces mirrored and blurred+noised (the generator's softness)."""
    run = lambda x, what: _batched_pixels(fn, x, 32, f"{label} {what}", 10).astype(np.float64)  # noqa: E731
    return {
        "real": run(imgs, "real"),
        "flip": run(imgs[fit_idx].flip(-1), "flip"),
        "aug": run(_blur_noise(imgs[fit_idx], gen), "blur+noise"),
    }


def _ridge_path(X: np.ndarray, y: np.ndarray, w: np.ndarray, lambdas) -> list:
    """:func:`_ridge` for several lambdas from one eigendecomposition of the weighted Gram matrix."""
    mu = np.average(X, axis=0, weights=w)
    sd = np.sqrt(np.average((X - mu) ** 2, axis=0, weights=w)) + 1e-6
    Z = (X - mu) / sd
    ym = float(np.average(y, weights=w))
    G = Z.T @ (Z * w[:, None])
    b = Z.T @ (w * (y - ym))
    ev, V = np.linalg.eigh(G)
    Vb = V.T @ b
    return [(V @ (Vb / (ev + lam * w.sum())), ym, mu, sd) for lam in lambdas]


def train_beauty_faceres(
    data: dict,
    out: str | Path,
    feature_sets=tuple(FACERES_FEATURE_SETS),
    omi_weights=(0.0, 0.5),
    lambdas=(0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
    folds: int = 5,
    seed: int = 0,
    res: int = 64,
    first_block: int = 7,
    batch_check: bool = True,
) -> dict:
    """A ridge head on FaceRes features (``faceres``/``faceres-deep``, alone, together or with dlib's block
    features), at the generator's crop size ``res`` (the search's domain: the crop is upsampled to 224 in the
    graph, :class:`~beautyrt.export.nets.faceres.FaceResFromCrop`).

    The feature set, the OMI weight (when the data has OMI faces, ``split == 2``) and the ridge lambda are
    chosen together by ``folds``-fold cross-validation over MEBeauty train faces (a face's three views stay in
    one fold; OMI always fits); MEBeauty val is only measured. Writes ``out/beauty.pt`` (``kind:
    ridge_faceres``; the FaceRes weights are not in it: the exporter fetches them from npm like the trainer)
    and ``out/beauty_metrics.json``. Features are cached in ``out/features_<net>.npz``."""
    from ..nets.demo import BlockFeatureBeauty
    from ..nets.faceres import DEFAULT_CROP, DEFAULT_PREPROCESSING, FaceResBeauty
    from ..nets.human import net_from_crop

    known_sets = {**FACERES_FEATURE_SETS, **JUDGE_FEATURE_SETS}
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
    # dlib always: its descriptor centre is the bundle identity's (the pack's identity role), as for the dlib heads
    nets_needed = sorted({"dlib", *(n for f in feature_sets for n in known_sets[f])})
    modules: dict[str, torch.nn.Module] = {}
    feats: dict[str, dict] = {}
    for name in nets_needed:
        if name == "dlib":
            mod = BlockFeatureBeauty(build_identity(data[f"lm_{res}"], res), first_block=first_block, dim=1).eval()
            fn = mod.features
        else:
            mod = net_from_crop(name)
            fn = lambda x, m=mod: m(x / 255.0)[0]  # noqa: E731
        modules[name] = mod
        cache = out / f"features_{name}.npz"
        key = np.asarray([len(split), res, int(fit_idx.sum()), seed])
        if cache.is_file():
            with np.load(cache) as z:
                if np.array_equal(z["key"], key):
                    feats[name] = {k: z[k] for k in ("real", "flip", "aug")}
        if name not in feats:
            feats[name] = _view_features(fn, imgs, fit_idx, torch.Generator().manual_seed(seed), name)
            np.savez(cache, key=key, **feats[name])
    meb = np.flatnonzero(split == 0)
    order = np.random.default_rng(seed).permutation(meb)
    fold_of = np.full(len(split), -1)
    fold_of[order] = np.arange(len(order)) % folds
    face = np.tile(fit_idx, 3)
    fold = fold_of[face]
    y = np.tile(score[fit_idx], 3)
    is_omi = np.tile(split[fit_idx] == 2, 3)
    va = np.flatnonzero(split == 1)

    def stack(fs: str) -> tuple[np.ndarray, np.ndarray]:
        nets = known_sets[fs]
        real = np.hstack([feats[n]["real"] for n in nets])
        X = np.vstack([real[fit_idx], *(np.hstack([feats[n][v] for n in nets]) for v in ("flip", "aug"))])
        return real, X

    cv: dict[str, float] = {}
    for fs in feature_sets:
        real, X = stack(fs)
        for ow in omi_weights:
            w = np.where(is_omi, ow, 1.0)
            pred = np.zeros((len(lambdas), len(split)))
            for k in range(folds):
                fit = (fold != k) & (w > 0)
                held = np.flatnonzero(fold_of == k)
                for j, (coef, ym, mu, sd) in enumerate(_ridge_path(X[fit], y[fit], w[fit], lambdas)):
                    pred[j, held] = ((real[held] - mu) / sd) @ coef + ym
            for j, lam in enumerate(lambdas):
                r = float(np.corrcoef(pred[j, meb], score[meb])[0, 1])
                cv[f"{fs}|omi={ow:g}|lambda={lam:g}"] = r
                log.info("faceres ridge %s omi %g lambda %g: cross-validated r on MEBeauty train %.4f", fs, ow, lam, r)
    best = max(cv, key=lambda k: cv[k])
    fs, ow_s, lam_s = best.split("|")
    ow, lam = float(ow_s.split("=")[1]), float(lam_s.split("=")[1])
    real, X = stack(fs)
    w = np.where(is_omi, ow, 1.0)
    keep = w > 0
    ((coef, ym, mu, sd),) = _ridge_path(X[keep], y[keep], w[keep], (lam,))
    nets = known_sets[fs]
    fr_nets = [n for n in nets if n != "dlib"]
    dlib_mod = modules["dlib"] if "dlib" in nets else None
    model = FaceResBeauty([modules[n] for n in fr_nets], dim=len(mu), dlib=dlib_mod, feat_mean=mu, feat_std=sd).eval()
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(coef).float()[None])
        model.head.bias.fill_(ym)
    pred_va = ((real[va] - mu) / sd) @ coef + ym
    res_m: dict = {
        "head": f"ridge on {fs}",
        "feature_set": fs,
        "dim": int(len(mu)),
        "lambda": lam,
        "omi_weight": ow,
        "omi_available": has_omi,
        "cv_pearson_r_train": cv,
        "val_real": metrics(pred_va, score[va]),
    }
    if batch_check:  # the module that gets exported, end to end, must agree with the fitted features
        with torch.no_grad():
            tv = torch.cat([model((imgs[va][i : i + 32].clamp(-1, 1) + 1) * 127.5) for i in range(0, len(va), 32)])
        res_m["val_real_torch"] = metrics(tv.numpy(), score[va])
    log.info(
        "faceres beauty: %s, omi %g, lambda %g, val r %.3f, MAE %.3f",
        fs,
        ow,
        lam,
        res_m["val_real"]["pearson_r"],
        res_m["val_real"]["mae"],
    )
    ckpt = {
        "kind": "ridge_faceres",
        "faceres": ",".join(fr_nets),
        "crop": DEFAULT_CROP,
        "preprocessing": DEFAULT_PREPROCESSING,
        "head": model.head.state_dict(),
        "dim": torch.tensor(len(mu)),
        "feat_mean": torch.from_numpy(mu).float(),
        "feat_std": torch.from_numpy(sd).float(),
        "crop_size": torch.tensor(res),
    }
    if "gear" in fr_nets:  # the crop GEAR read (FaceRes' crop/preprocessing are the keys above)
        ckpt["gear_crop"] = str(modules["gear"].crop)
    ckpt.update(
        first_block=torch.tensor(first_block if dlib_mod is not None else -1),
        matrix=torch.from_numpy(identity_matrix(data, res)),
        centre=torch.from_numpy(feats["dlib"]["real"][split != 1, -128:].mean(0)).float(),
    )
    torch.save(ckpt, out / "beauty.pt")
    (out / "beauty_metrics.json").write_text(json.dumps(res_m, indent=1))
    return res_m

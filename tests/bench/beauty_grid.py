"""Cross-validated search over beauty-regressor candidates on cached features (issue 17 part 2).

    python tests/bench/beauty_grid.py FEATS [--only NAME,...] [--json OUT.json]

FEATS is what ``tests/bench/beauty_features.py extract`` wrote. Every candidate (a list of feature blocks,
per-set weights, OMI weights, ridge lambdas, optional test-time mirror averaging) is scored by the trainer's
protocol (export/train/beauty.py ``train_beauty_faceres``): 5 folds over MEBeauty *train* faces (seed 0),
each fold's faces (all three views) held out, the rest of train + OMI (weight ``omi``, three views) fitted;
the cross-validated Pearson r over all train faces. The best (OMI weight, lambda) of a candidate by CV is then
fitted on everything but val, and MEBeauty val is *measured* (r, MAE, RMSE) -- never used to choose.

The ridge is :func:`beautyrt.export.train.beauty._ridge` (weighted, standardised, lambda per unit weight),
solved from per-fold sums of x x^T so that one pass over the rows serves every fold and OMI weight."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from beautyrt.export.train.beauty import cv_groups

log = logging.getLogger("beautyrt")


class Feats:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta = np.load(self.root / "meta.npz")
        self.split, self.score = meta["split"], meta["score"].astype(np.float64)
        self.fit_idx = np.flatnonzero(self.split != 1)
        self._layout: dict[str, dict] = {}
        self._arr: dict[tuple[str, str], np.ndarray] = {}

    def layout(self, net: str) -> dict:
        if net not in self._layout:
            lay = json.loads((self.root / f"{net}_layout.json").read_text())
            self._layout[net] = {n: (o, w) for n, o, w in lay}
        return self._layout[net]

    def view(self, net: str, view: str) -> np.ndarray:
        if (net, view) not in self._arr:
            self._arr[(net, view)] = np.load(self.root / f"{net}_{view}.npy", mmap_mode="r")
        return self._arr[(net, view)]

    def block(self, spec: str, view: str) -> np.ndarray:
        """``net:block`` (e.g. ``faceres-deep:pw13_mean``) or ``net:block+block`` columns of one view."""
        net, names = spec.split(":")
        lay = self.layout(net)
        a = self.view(net, view)
        return np.hstack([np.asarray(a[:, lay[n][0] : lay[n][0] + lay[n][1]], np.float64) for n in names.split("+")])


FACERES_BASE = "pw13_mean"
DLIB_BASE = "b7_mean+b8_mean+b9_mean+b10_mean+b11_mean+b12_mean+b13_mean+desc"


def design(F: Feats, blocks: list[str], weights: list[float] | None = None):
    """(real [N, D], fit rows [3 * len(fit_idx), D], flip [N, D], per-column weight)."""
    real = np.hstack([F.block(b, "real") for b in blocks])
    flip = np.hstack([F.block(b, "flip") for b in blocks])
    aug = np.hstack([F.block(b, "aug") for b in blocks])
    X = np.vstack([real[F.fit_idx], flip[F.fit_idx], aug])
    ws = weights or [1.0] * len(blocks)
    cw = np.concatenate([np.full(_width(F, b), w) for b, w in zip(blocks, ws)])
    return real, X, flip, cw


def _width(F: Feats, spec: str) -> int:
    net, names = spec.split(":")
    lay = F.layout(net)
    return int(sum(lay[n][1] for n in names.split("+")))


class Sums:
    """Weighted sums per row group (fold 0..k-1 of train faces, OMI) for the ridge normal equations."""

    def __init__(self, X: np.ndarray, y: np.ndarray, group: np.ndarray, groups: int):
        self.S2, self.S1, self.Sy, self.Sxy, self.Syy, self.N = [], [], [], [], [], []
        for g in range(groups):
            Xg, yg = X[group == g], y[group == g]
            self.S2.append(Xg.T @ Xg)
            self.S1.append(Xg.sum(0))
            self.Sy.append(yg.sum())
            self.Sxy.append(Xg.T @ yg)
            self.N.append(len(yg))

    def solve(self, gw: list[float], lambdas, cw: np.ndarray):
        """Ridge on the groups weighted ``gw`` (0 = left out); lambdas per unit weight; per-column weight cw
        applied after standardisation. Returns [(coef, ym, mu, sd)] in raw feature units (coef includes cw)."""
        W = sum(w * n for w, n in zip(gw, self.N))
        S2 = sum(w * s for w, s in zip(gw, self.S2) if w)
        S1 = sum(w * s for w, s in zip(gw, self.S1) if w)
        Sy = sum(w * s for w, s in zip(gw, self.Sy) if w)
        Sxy = sum(w * s for w, s in zip(gw, self.Sxy) if w)
        mu, ym = S1 / W, Sy / W
        C = S2 - W * np.outer(mu, mu)
        sd = np.sqrt(np.maximum(np.diag(C) / W, 0)) + 1e-6
        b = Sxy - mu * Sy
        s = cw / sd
        G = C * np.outer(s, s)
        bb = b * s
        out = []
        if len(lambdas) > 8:
            ev, V = np.linalg.eigh(G)
            Vb = V.T @ bb
            for lam in lambdas:
                out.append((V @ (Vb / (ev + lam * W)), ym, mu, sd / cw))
        else:
            for lam in lambdas:
                coef = np.linalg.solve(G + lam * W * np.eye(len(G)), bb)
                out.append((coef, ym, mu, sd / cw))
        return out


def predict(x: np.ndarray, m) -> np.ndarray:
    coef, ym, mu, sd = m
    return ((x - mu) / sd) @ coef + ym


def metrics(pred, y) -> dict:
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    return {
        "r": round(float(np.corrcoef(pred, y)[0, 1]), 4),
        "mae": round(float(np.abs(pred - y).mean()), 4),
        "rmse": round(float(np.sqrt(((pred - y) ** 2).mean())), 4),
    }


def run_candidate(
    F: Feats,
    blocks: list[str],
    weights=None,
    omi=(0.0, 0.5, 1.0),
    lambdas=(0.3, 1.0, 3.0, 10.0),
    folds: int = 5,
    seed: int = 0,
    basis=None,
) -> dict:
    t0 = time.time()
    real, X, flip, cw = design(F, blocks, weights)
    if basis is not None:  # a nonlinear expansion (e.g. RBF features of centres), fn(raw) -> extra columns
        real, X, flip, cw = basis(real, X, flip, cw)
    split, score, fit_idx = F.split, F.score, F.fit_idx
    meb, fold_of, face, y, group = cv_groups(split, score, fit_idx, folds, seed)
    sums = Sums(X, y, group, folds + 1)
    cv, cv_mirror = {}, {}
    preds = {}
    for ow in omi:
        pr = np.zeros((len(lambdas), len(split)))
        pm = np.zeros((len(lambdas), len(split)))
        for k in range(folds):
            gw = [0.0 if g == k else 1.0 for g in range(folds)] + [ow]
            held = np.flatnonzero(fold_of == k)
            for j, m in enumerate(sums.solve(gw, lambdas, cw)):
                pr[j, held] = predict(real[held], m)
                pm[j, held] = 0.5 * (pr[j, held] + predict(flip[held], m))
        for j, lam in enumerate(lambdas):
            key = f"omi={ow:g}|lambda={lam:g}"
            cv[key] = float(np.corrcoef(pr[j, meb], score[meb])[0, 1])
            cv_mirror[key] = float(np.corrcoef(pm[j, meb], score[meb])[0, 1])
            preds[key] = pr[j]
    res: dict = {"blocks": blocks, "weights": weights, "dim": int(real.shape[1])}
    va = np.flatnonzero(split == 1)
    for tag, table in (("single", cv), ("mirror", cv_mirror)):
        best = max(table, key=lambda k: table[k])
        ow = float(best.split("|")[0].split("=")[1])
        lam = float(best.split("|")[1].split("=")[1])
        (m,) = sums.solve([1.0] * folds + [ow], (lam,), cw)
        pv = predict(real[va], m)
        if tag == "mirror":
            pv = 0.5 * (pv + predict(flip[va], m))
        res[tag] = {"choice": best, "cv_r": round(table[best], 4), "val": metrics(pv, score[va])}
    res["cv"] = {k: round(v, 4) for k, v in cv.items()}
    res["seconds"] = round(time.time() - t0, 1)
    log.info(
        "%s w=%s dim %d: CV %.4f (%s) val r %.4f MAE %.3f | mirror CV %.4f val r %.4f MAE %.3f (%.0fs)",
        "+".join(blocks),
        weights,
        res["dim"],
        res["single"]["cv_r"],
        res["single"]["choice"],
        res["single"]["val"]["r"],
        res["single"]["val"]["mae"],
        res["mirror"]["cv_r"],
        res["mirror"]["val"]["r"],
        res["mirror"]["val"]["mae"],
        res["seconds"],
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("feats")
    ap.add_argument("--blocks", action="append", default=[], help="comma-separated net:block specs (repeatable)")
    ap.add_argument("--weights", action="append", default=[])
    ap.add_argument("--omi", default="0,0.5,1")
    ap.add_argument("--lambdas", default="0.3,1,3,10")
    ap.add_argument("--json")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    F = Feats(a.feats)
    out = []
    for i, b in enumerate(a.blocks):
        w = [float(v) for v in a.weights[i].split(",")] if i < len(a.weights) and a.weights[i] else None
        out.append(
            run_candidate(
                F,
                b.split(","),
                w,
                omi=tuple(float(v) for v in a.omi.split(",")),
                lambdas=tuple(float(v) for v in a.lambdas.split(",")),
            )
        )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()


def rbf_basis(F: Feats, centres: int = 1000, gamma: float = 1.0, keep_linear: bool = True, weight: float = 1.0, seed=0):
    """A Nystroem-style RBF expansion: exp(-gamma * |z - c|^2 / median) over ``centres`` fitting faces (z: the
    features standardised by the non-val rows' mean/std), appended to (or replacing) the linear features."""

    def fn(real, X, flip, cw):
        mu, sd = X.mean(0), X.std(0) + 1e-6
        rng = np.random.default_rng(seed)
        pick = rng.choice(F.fit_idx, size=min(centres, len(F.fit_idx)), replace=False)
        C = (real[pick] - mu) / sd

        def phi(A):
            Z = (A - mu) / sd
            d2 = (Z * Z).sum(1)[:, None] - 2 * Z @ C.T + (C * C).sum(1)[None]
            return d2

        d_real, d_X, d_flip = phi(real), phi(X), phi(flip)
        scale = float(np.median(d_X[:: max(1, len(d_X) // 2000)]))
        e = [np.exp(-gamma * d / scale) for d in (d_real, d_X, d_flip)]
        if keep_linear:
            return (
                np.hstack([real, e[0]]),
                np.hstack([X, e[1]]),
                np.hstack([flip, e[2]]),
                np.concatenate([cw, np.full(len(pick), weight)]),
            )
        return e[0], e[1], e[2], np.full(len(pick), weight)

    return fn


def gender_basis(F: Feats, net: str = "faceres-deep", weight: float = 1.0):
    """Gender interactions: the features times s = 2 P(male) - 1 (``net``'s gender head) appended, so that
    the linear head's weights can differ between female and male faces (plus s itself)."""

    def fn(real, X, flip, cw):
        g = {v: F.block(f"{net}:gender", v)[:, 0] for v in ("real", "flip", "aug")}
        s_real, s_flip = 2 * g["real"] - 1, 2 * g["flip"] - 1
        s_X = np.concatenate([s_real[F.fit_idx], s_flip[F.fit_idx], 2 * g["aug"] - 1])
        mu = X.mean(0)
        ext = [np.hstack([A, (A - mu) * s[:, None], s[:, None]]) for A, s in ((real, s_real), (X, s_X), (flip, s_flip))]
        return ext[0], ext[1], ext[2], np.concatenate([cw, np.full(X.shape[1] + 1, weight)])

    return fn

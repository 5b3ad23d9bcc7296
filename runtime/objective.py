"""The objective: maximise beauty while keeping identity, and the latent parametrisation of the search.

For a candidate x (search coordinates, in units of the per-dimension std of W):
    ws(x)   = w_start + expand(x) * w_std            (expand: W / layer groups / W+, see ``LatentSpace``)
    cos(x)  = cosine(embedding(ws(x)), embedding(w_start))
    J(x)    = score(ws(x))
              - identity_weight * max(0, identity_target - cos(x))     soft identity penalty
              - latent_weight * mean(x**2)                              stay near the start
              - naturalness_weight * edit_cost(x)                       what the edit costs the photo
              - INFEASIBLE - 100 * (identity_floor - cos(x))            only when cos(x) < identity_floor
``edit_cost`` (with ``score_on=output``) is the delivered edit's RMS over the face mask in units of 10 grey levels,
with its broad and its fine part's added (:func:`edit_cost`): a search that buys score with patches of light or
shade (e.g. the face lit up inside the mask) or fine smudges pays for them, so at the same score it prefers the
edit that changes the photo least and most locally.
CMA-ES minimises -J. The result is the feasible candidate (cos >= identity_floor) with the highest beauty score
seen; the start itself is feasible, so the result never scores below the start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from beautyrt.engines.files import printable

from .errors import UsageError

INFEASIBLE = 1000.0
SPACES = ("w", "groups", "wplus")


DEFAULT_WEIGHTS = {
    "identity_floor": 0.6,
    "identity_target": 0.8,
    "identity_weight": 5.0,
    "latent_weight": 0.1,
    "naturalness_weight": 0.0,
}
FINE_SIGMA = 1.0 / 64.0  # edit_cost: the fine part is the edit minus its Gaussian blur of this fraction of the side
BROAD_SIGMA = 1.0 / 16.0  # edit_cost: the broad part is its blur at this fraction (the detail transfer's scale)


@dataclass(frozen=True)
class ObjectiveWeights:
    """Objective settings; a field left None takes the bundle's recommendation (manifest
    ``objective_defaults``, which fits its identity network), else ``DEFAULT_WEIGHTS``."""

    identity_floor: Optional[float] = None  # hard: candidates below this cosine are never chosen
    identity_target: Optional[float] = None  # soft: below this, the penalty grows linearly
    identity_weight: Optional[float] = None  # score points per unit of cosine below the target
    latent_weight: Optional[float] = None  # score points per unit of mean squared step (in W std units)
    naturalness_weight: Optional[float] = None  # score points per unit of edit_cost (10 grey levels RMS)

    def resolved(self, bundle_defaults: Optional[Mapping[str, float]] = None) -> "ObjectiveWeights":
        base = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in (bundle_defaults or {}).items() if k in DEFAULT_WEIGHTS}}
        return ObjectiveWeights(
            **{k: (base[k] if getattr(self, k) is None else float(getattr(self, k))) for k in DEFAULT_WEIGHTS}
        ).validate()

    def validate(self) -> "ObjectiveWeights":
        """These weights checked (finite, ranged) and returned as plain floats."""
        from .settings import check_float

        vals = {}
        for k in DEFAULT_WEIGHTS:
            v = getattr(self, k)
            lo, hi = (-1.0, 1.0) if k in ("identity_floor", "identity_target") else (0.0, 1e6)
            vals[k] = None if v is None else check_float(k.replace("_", "-"), v, lo, hi)
        return ObjectiveWeights(**vals)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ObjectiveWeights":
        if not isinstance(d, Mapping):
            raise UsageError(f"weights must be a mapping, got {type(d).__name__}")
        unknown = sorted(printable(repr(k)) for k in set(d) - set(DEFAULT_WEIGHTS))
        if unknown:
            raise UsageError(f"unknown objective weight(s): {', '.join(unknown)}")
        return cls(**{k: d[k] for k in d}).validate()


class LatentSpace:
    """Maps search vectors x (λ, D) to W+ offsets (λ, num_ws, w_dim) scaled by w_std.

    * ``w``: one w_dim vector added to every layer (D = w_dim);
    * ``groups``: one vector per coarse / middle / fine group of layers (D = 3 * w_dim, empty groups skipped);
    * ``wplus``: every layer on its own (D = num_ws * w_dim).
    """

    def __init__(
        self,
        space: str,
        num_ws: int,
        w_dim: int,
        w_std: "Sequence[float] | np.ndarray",
        groups: Mapping[str, Sequence[int]],
    ):
        if space not in SPACES:
            raise UsageError(f"unknown search space {space!r}; choose one of {', '.join(SPACES)}")
        self.space, self.num_ws, self.w_dim = space, num_ws, w_dim
        self.w_std = np.asarray(w_std, dtype=np.float32).reshape(1, 1, w_dim)
        if space == "w":
            self.rows = np.zeros(num_ws, dtype=np.int64)
        elif space == "groups":
            names = [g for g in ("coarse", "middle", "fine") if len(groups.get(g, ())) > 0]
            self.rows = np.zeros(num_ws, dtype=np.int64)
            for gi, g in enumerate(names):
                self.rows[list(groups[g])] = gi
        else:
            self.rows = np.arange(num_ws)
        self.n_vectors = int(self.rows.max()) + 1
        self.dim = self.n_vectors * w_dim

    def from_w_direction(self, d: np.ndarray) -> np.ndarray:
        """The search vector (D,) whose offset is ``d`` (w_dim,) on every layer (a direction in W)."""
        d = np.asarray(d, dtype=np.float64).reshape(self.w_dim)
        return np.tile(d, self.n_vectors)

    def offsets(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32).reshape(-1, self.n_vectors, self.w_dim)
        return X[:, self.rows, :] * self.w_std


def cosine_to(ref: np.ndarray, emb: np.ndarray) -> np.ndarray:
    ref = ref / max(float(np.linalg.norm(ref)), 1e-12)
    norms = np.maximum(np.linalg.norm(emb, axis=1), 1e-12)
    return (emb @ ref) / norms


def edit_cost(edits: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """(n, C, H, W) delivered edits in [-1, 1] units -> (n,) their naturalness cost, in units of 10 grey levels
    RMS over the face ``mask`` (H, W; the whole frame when None): the edit's energy (RMS), plus its broad part's
    (its blur at ``BROAD_SIGMA`` of the side: patches of light or shade wider than a feature, e.g. the face's oval
    lit up inside the mask), plus its fine part's (the edit minus its blur at ``FINE_SIGMA``: grain, smudge)."""
    from .ops.imaging import blur_matrix

    e = np.asarray(edits, np.float32) * np.float32(127.5 / 10.0)
    h, w = e.shape[-2:]
    m = np.ones((h, w), np.float32) if mask is None else np.asarray(mask, np.float32)
    tot = max(float(m.sum()) * e.shape[1], 1e-6)

    def rms(x: np.ndarray) -> np.ndarray:
        return np.sqrt((x * x * m).sum(axis=(1, 2, 3), dtype=np.float64) / tot)

    def blur(x: np.ndarray, sigma: float) -> np.ndarray:
        return blur_matrix(h, sigma * h) @ x @ blur_matrix(w, sigma * w).T

    return rms(e) + rms(blur(e, BROAD_SIGMA)) + rms(e - blur(e, FINE_SIGMA))


def objective(
    score: np.ndarray, cos: np.ndarray, X: np.ndarray, w: ObjectiveWeights, cost: Optional[np.ndarray] = None
) -> np.ndarray:
    """J for each candidate (to be maximised); ``cost``: each candidate's :func:`edit_cost` (None: not measured,
    e.g. ``score_on=generated``, no naturalness term)."""
    J = score.astype(np.float64)
    J = J - w.identity_weight * np.maximum(0.0, w.identity_target - cos)
    J = J - w.latent_weight * np.mean(np.asarray(X, dtype=np.float64) ** 2, axis=1)
    if cost is not None and w.naturalness_weight:
        J = J - w.naturalness_weight * np.asarray(cost, np.float64)
    infeasible = cos < w.identity_floor
    J = np.where(infeasible, J - INFEASIBLE - 100.0 * (w.identity_floor - cos), J)
    bad = ~np.isfinite(J)  # a NaN/inf score or embedding from the model: never chosen, ranked last
    if bad.any():
        if bad.all():
            from beautyrt.engines.errors import EngineRuntimeError

            raise EngineRuntimeError("every candidate's score or identity is NaN/inf: the scoring model is broken")
        J = np.where(bad, J[~bad].min() - INFEASIBLE, J)
    return J

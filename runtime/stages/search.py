"""search: move the latent so the face scores higher while it stays the same person.

For a candidate x (search coordinates, units of W's std) ``ws = w_start + space.offsets(x)``. Each generation
the strategy asks λ candidates, ONE batched scorer call scores all of them, the objective (numpy) ranks them
and the strategy is told. What is scored (``settings.score_on``):

* ``output``: the image the user gets -- the photo's aligned crop plus each candidate's edit
  ``G(ws) - G(w_start)`` through the transfer, as compose delivers it (``ops.blend.edits_as_delivered``: inside
  the face mask, seam offset removed; edit outside the mask is never pasted, so it is never scored) -- with
  identity measured against the photo's crop (one synthesis call + one crop_scorer call per generation);
* ``generated``: the generated face ``G(ws)`` itself with the fused scorer (one call), identity against
  ``G(w_start)``.

The result is the feasible candidate (identity >= the floor) with the highest score seen; the start itself is
feasible, so the result never scores below the start. With ``settings.finalists = K > 1`` the K best feasible
candidates seen (the start among them) are kept too, for ``stages.rerank`` to choose from on the delivered photo.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from .. import strategies
from ..bundle import Models
from ..errors import Cancelled
from ..objective import LatentSpace, cosine_to, edit_cost, objective
from ..ops.blend import delivery_mask, edits_as_delivered
from ..ops.imaging import crop_to_unit, edit_delta
from ..settings import Settings
from ..timing import StageTimer
from ..types import AlignedFace, Inversion, SearchOutcome

Progress = Callable[[int, int, float], None]  # (generation, total generations, best score so far)
CancelCheck = Callable[[], bool]  # True: stop now (raises Cancelled)
ScoreFn = Callable[[Optional[np.ndarray]], dict]  # ws (n, num_ws, w_dim) or None (the start) -> score, embedding
# (and "edit_cost" (n,) when the naturalness term is on)


def scorer(models: Models, aligned: AlignedFace, inversion: Inversion, settings: Settings) -> ScoreFn:
    """The candidate scorer for ``settings.score_on`` (already resolved to output / generated)."""
    if settings.score_on == "output":
        base = crop_to_unit(aligned.crop, models.resolution)  # (1, 3, R, R) in [-1, 1]
        g0 = inversion.g_start[None]
        mask = delivery_mask(aligned.alignment, models.resolution)
        natural = bool(settings.weights.naturalness_weight)

        def on_output(ws: Optional[np.ndarray]) -> dict:
            if ws is None:
                return models.score_crops(base)
            edit = edit_delta(models.synthesize(ws) - g0, settings.transfer)
            if mask is not None:
                edit = edits_as_delivered(edit, mask)
            out = models.score_crops(np.clip(base + edit, -1.0, 1.0))
            return {**out, "edit_cost": edit_cost(edit, mask)} if natural else out

        return on_output

    def on_generated(ws: Optional[np.ndarray]) -> dict:
        return models.score_latents(inversion.w_start if ws is None else ws)

    return on_generated


def latent_space(models: Models, settings: Settings) -> LatentSpace:
    g = models.generator
    return LatentSpace(settings.space, g.num_ws, g.w_dim, g.w_std, g.groups)


def search(
    models: Models,
    aligned: AlignedFace,
    inversion: Inversion,
    settings: Settings,
    *,
    timer: Optional[StageTimer] = None,
    progress: Optional[Progress] = None,
    cancel: Optional[CancelCheck] = None,
    score_fn: Optional[ScoreFn] = None,
) -> SearchOutcome:
    """Run ``settings.strategy`` (resolved settings: see ``Beautifier.resolve``)."""
    s = settings
    timer = timer or StageTimer()
    space = latent_space(models, s)
    score_fn = score_fn or scorer(models, aligned, inversion, s)
    w_start = inversion.w_start
    with timer("score_start"):
        r0 = score_fn(None)
    score0 = float(r0["score"][0])
    e_ref = r0["embedding"][0].astype(np.float64)
    direction = None if models.direction is None else space.from_w_direction(models.direction)
    x0 = space.from_w_direction(models.prior) if s.start == "prior" and models.prior is not None else None
    es = strategies.create(s.strategy, strategies.SearchProblem(dim=space.dim, direction=direction, x0=x0), s)
    best_score, best_identity, best_ws, best_generation = score0, 1.0, w_start.copy(), 0
    keep = s.finalists if s.finalists and s.finalists > 1 else 0
    finalists = [{"ws": w_start.copy(), "score": score0, "identity": 1.0, "generation": 0}] if keep else []
    history: list[dict] = []
    eval_t = overhead_t = 0.0
    stop, g, evaluations = "generations", 0, 0
    assert s.generations is not None
    for g in range(1, s.generations + 1):
        if cancel is not None and cancel():
            raise Cancelled(f"search cancelled at generation {g - 1} of {s.generations}")
        t0 = time.perf_counter()
        X = es.ask()
        ws = (w_start + space.offsets(X)).astype(np.float32)
        t1 = time.perf_counter()
        out = score_fn(ws)
        t2 = time.perf_counter()
        evaluations += len(X)
        score = out["score"].astype(np.float64)
        cos = cosine_to(e_ref, out["embedding"].astype(np.float64))
        J = objective(score, cos, X, s.weights, out.get("edit_cost"))
        es.tell(X, -J)
        feasible = np.flatnonzero(cos >= s.weights.identity_floor)
        if feasible.size:
            i = int(feasible[np.argmax(score[feasible])])
            if score[i] > best_score:
                best_score, best_identity, best_ws, best_generation = (
                    float(score[i]),
                    float(cos[i]),
                    ws[i : i + 1].copy(),
                    g,
                )
            if keep:
                finalists = _keep_best(finalists, ws, score, cos, feasible, g, keep)
        t3 = time.perf_counter()
        eval_t += t2 - t1
        overhead_t += (t1 - t0) + (t3 - t2)
        history.append(
            {
                "generation": g,
                "best_score": best_score,
                "best_identity": best_identity,
                "gen_best_score": float(score.max()),
                "gen_mean_score": float(score.mean()),
                "gen_mean_identity": float(cos.mean()),
                "feasible": int(feasible.size),
                "sigma": es.sigma,
                "seconds": t3 - t0,
            }
        )
        if progress:
            progress(g, s.generations, best_score)
        reasons = es.stop()
        if reasons:
            stop = ",".join(sorted(reasons))
            break
    timer.add("search", eval_t + overhead_t)
    timer.add("search_eval", eval_t)
    timer.add("search_overhead", overhead_t)
    return SearchOutcome(
        w_best=best_ws,
        score_before=score0,
        score_after=best_score,
        identity=best_identity,
        history=history,
        generations=g,
        stop=stop,
        best_generation=best_generation,
        strategy=s.strategy,
        evaluations=evaluations,
        finalists=tuple(finalists),
    )


def _keep_best(finalists: list, ws, score, cos, feasible, generation: int, k: int) -> list:
    """The ``k`` highest-scoring of ``finalists`` and this generation's feasible candidates, best first (ties:
    the earlier one, as the search's own best)."""
    top = feasible[np.argsort(-score[feasible], kind="stable")[:k]]
    new = [
        {"ws": ws[i : i + 1].copy(), "score": float(score[i]), "identity": float(cos[i]), "generation": generation}
        for i in top
    ]
    return sorted(finalists + new, key=lambda f: -f["score"])[:k]

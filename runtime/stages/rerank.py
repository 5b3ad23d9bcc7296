"""rerank: pick the search's result by what the delivered photo scores (issue 17 part 5).

The search scores each candidate on the photo's crop as *it* aligned it. The file the user gets is measured
afresh: detected again, re-aligned, scored (``stages.rescore``). An edit that darkens the eyes or lights the
cheeks moves the detector's landmarks, so the re-aligned crop differs from the search's, and the search's
best candidate -- the maximum over hundreds of scores, tuned to its own crop -- loses most on re-detection
(report - delivered +0.11 on MEBeauty val with the demo pack).

With ``settings.finalists = K > 1`` the search keeps its K best feasible candidates (``SearchOutcome.
finalists``); this stage renders their K edits in one synthesis call, composes each onto the photo at the
settings' strength, re-detects and re-aligns each delivered photo exactly as ``rescore`` will, scores all K
crops together with the photo's own crop in one crop_scorer call, and keeps the finalist whose delivered photo
scores highest with its delivered identity at or above the floor. Where none is, or the face is not found
again in any of them, the search's own best stays. An aligned input has no re-detection (the output crop is
what is delivered), so the stage leaves it alone.

Cost: one synthesis call of K, K composes, K detections and one crop_scorer call of K + 1 crops.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..bundle import Models
from ..objective import cosine_to
from ..ops.imaging import crop_to_unit
from ..settings import Settings
from ..types import AlignedFace, Inversion, Photo, SearchOutcome
from . import compose as compose_stage
from . import rescore as rescore_stage

log = logging.getLogger("beautyrt")


def applies(models: Models, aligned: AlignedFace, outcome: SearchOutcome, settings: Settings) -> bool:
    """Whether reranking can change anything: finalists to choose from, a re-detected photo to score them on."""
    return (
        (settings.finalists or 0) > 1
        and len(outcome.finalists) > 1
        and models.can_score_crops
        and aligned.alignment is not None
        and settings.output_mode == "transfer"
    )


def rerank(
    models: Models, photo: Photo, aligned: AlignedFace, inversion: Inversion, outcome: SearchOutcome, s: Settings
) -> SearchOutcome:
    """``outcome`` with its best replaced by the finalist whose delivered photo scores highest (see module)."""
    if not applies(models, aligned, outcome, s):
        return outcome
    fin = outcome.finalists
    g = models.synthesize(np.concatenate([f["ws"] for f in fin]).astype(np.float32))
    crops, kept = [], []
    for i, gi in enumerate(g):
        image = compose_stage.compose_photo(photo, [(aligned, compose_stage.edit_of(inversion, gi, s))], s.strength)
        found = rescore_stage.delivered_crop(models, image, aligned, s.min_face)
        if found is not None:
            crops.append(crop_to_unit(found[0], models.resolution))
            kept.append(i)
    table = [{"search_score": f["score"], "search_identity": f["identity"], "generation": f["generation"]} for f in fin]
    choice = 0
    if kept:
        res = models.score_crops(np.concatenate([crop_to_unit(aligned.crop, models.resolution), *crops]))
        score = res["score"].astype(np.float64)
        cos = cosine_to(res["embedding"][0].astype(np.float64), res["embedding"][1:].astype(np.float64))
        for j, i in enumerate(kept):
            table[i].update(delivered_score=float(score[j + 1]), delivered_identity=float(cos[j]))
        ok = [j for j in range(len(kept)) if cos[j] >= s.weights.identity_floor and np.isfinite(score[j + 1])]
        if ok:
            choice = kept[max(ok, key=lambda j: score[j + 1])]
    else:
        log.warning("rerank: the face was not detected again in any finalist's photo; the search's best stays")
    best = fin[choice]
    return dataclasses.replace(
        outcome,
        w_best=best["ws"],
        score_after=float(best["score"]),
        identity=float(best["identity"]),
        best_generation=int(best["generation"]),
        rerank={"chosen": choice, "finalists": table},
    )

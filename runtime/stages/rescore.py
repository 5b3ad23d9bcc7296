"""Score the delivered photo (issue 17 part 5): what the report's ``delivered`` numbers describe.

The search scores candidate crops in the generator's frame (the photo's crop plus the edit as compose delivers it:
masked, seam-corrected); the photo the user gets is that edit composed back at ``strength`` at the photo's own
resolution, rounded to uint8. ``rescore`` measures *that* photo as a
fresh input would be measured: the composed image is detected again (the face matched to the edited one by
box overlap), re-aligned, and scored with the same crop_scorer as the search, in one call together with the
original photo's crop (so the identity is the cosine between the two crops' embeddings). Its time is the
report's ``timings["rescore"]`` (kept out of the block so that reports stay reproducible minus timings).
With an aligned input the delivered crop is the output itself. Costs one detection and one crop_scorer call
of two images.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from ..bundle import Models
from ..objective import cosine_to
from ..ops.imaging import crop_to_unit
from ..types import AlignedFace, Face, FaceEdit, Photo
from . import align as align_stage
from . import detect as detect_stage

log = logging.getLogger("beautyrt")

MIN_IOU = 0.3  # a re-detected face must overlap the edited face's box this much to be the same face


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_face(faces: list[Face], box) -> Optional[Face]:
    """The detection overlapping ``box`` most (at least :data:`MIN_IOU`), else None."""
    best = max(faces, key=lambda f: box_iou(f.box, box), default=None)
    return best if best is not None and box_iou(best.box, box) >= MIN_IOU else None


def delivered_crop(models: Models, image: np.ndarray, aligned: AlignedFace, min_face: float) -> Optional[tuple]:
    """(crop, how) of the face ``aligned`` found in the photo, in the delivered photo ``image``: re-detected and
    re-aligned (the output crop itself for an aligned input); None when the face is not detected again."""
    R = models.resolution
    out_photo = Photo(np.ascontiguousarray(image))
    if aligned.face is None:  # aligned input: the output is the delivered crop
        return align_stage.aligned_input(out_photo, R).crop, "output crop (aligned input)"
    match = match_face(detect_stage.detect(models, out_photo, min_face), aligned.face.box)
    if match is None:
        return None
    return align_stage.align(out_photo, match, R).crop, "re-detected and re-aligned"


def rescore(models: Models, image: np.ndarray, face: FaceEdit, min_face: float) -> Optional[dict]:
    """The delivered photo's numbers for ``face`` (None when the bundle cannot score crops)."""
    if not models.can_score_crops:
        return None
    R = models.resolution
    found = delivered_crop(models, image, face.aligned, min_face)
    if found is None:
        log.warning("delivered photo: the edited face was not detected again; no delivered score")
        return {"detected": False}
    crop, how = found
    res = models.score_crops(np.concatenate([crop_to_unit(face.aligned.crop, R), crop_to_unit(crop, R)]))
    score = res["score"].astype(np.float64)
    emb = res["embedding"].astype(np.float64)
    return {
        "detected": True,
        "score_before": float(score[0]),
        "score_after": float(score[1]),
        "gain": float(score[1] - score[0]),
        "identity": float(cosine_to(emb[0], emb[1:])[0]),
        "how": how,
    }

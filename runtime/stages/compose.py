"""compose: the search's best latent -> an :class:`Edit`, and edits -> the delivered photo at a strength.

``render_edit`` synthesises G(w_best) and, in the transfer mode, turns G(best) - G(start) into the edit
through ``settings.transfer`` (the very edit the search scored). ``compose_photo`` adds every face's edit to
the decoded photo at the photo's own resolution (``ops.blend.add_edits``: warped once, masked, added in float,
rounded once; the photo's pixels are never resampled), or for an aligned input to the crop itself. Changing
the strength re-runs only ``compose_photo``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from ..bundle import Models
from ..ops.blend import add_edits, paste_back
from ..ops.imaging import add_edit, edit_in_grey_levels, to_uint8
from ..settings import Settings
from ..types import AlignedFace, Edit, Inversion, Photo, SearchOutcome


def render_edit(models: Models, inversion: Inversion, outcome: SearchOutcome, settings: Settings) -> Edit:
    return edit_of(inversion, models.synthesize(outcome.w_best)[0], settings)


def edit_of(inversion: Inversion, g_best: np.ndarray, settings: Settings) -> Edit:
    """The :class:`Edit` of one rendered candidate ``g_best`` (3, R, R) for ``settings.output_mode``."""
    if settings.output_mode == "generated":
        return Edit(mode="generated", g_best=g_best, generated=to_uint8(g_best))
    return Edit(mode="transfer", g_best=g_best, delta=edit_in_grey_levels(inversion.g_start, g_best, settings.transfer))


def compose_photo(photo: Photo, faces: Sequence[tuple[AlignedFace, Edit]], strength: float = 1.0) -> np.ndarray:
    """The delivered image: the photo plus ``strength`` x each face's edit (an aligned input: the crop itself)."""
    rgb = photo.rgb
    transfer = [(a.alignment, e.delta) for a, e in faces if e.mode == "transfer" and a.alignment is not None]
    out = add_edits(rgb, transfer, strength=strength) if transfer else rgb.copy()
    for a, e in faces:
        if e.mode == "transfer" and a.alignment is None and e.delta is not None:  # aligned input: at its own size
            out = add_edit(out, e.delta, strength)
        elif e.mode == "generated":
            out = _blend_generated(out, a, e, strength)
    return out


def _blend_generated(rgb: np.ndarray, a: AlignedFace, e: Edit, strength: float) -> np.ndarray:
    """``generated`` mode: the generated face itself pasted over the photo's face, blended by ``strength``."""
    assert e.generated is not None
    if a.alignment is None:
        h, w = rgb.shape[:2]
        pasted = np.asarray(Image.fromarray(e.generated).resize((w, h), Image.Resampling.BICUBIC))
    else:
        pasted = paste_back(rgb, e.generated, a.alignment)
    if strength == 1.0:
        return pasted
    mix = rgb.astype(np.float32) + np.float32(strength) * (pasted.astype(np.float32) - rgb.astype(np.float32))
    return np.clip(np.rint(mix), 0, 255).astype(np.uint8)

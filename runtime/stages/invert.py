"""invert: the encoder's W+ for an aligned crop, and the generator's rendering of it (the search's start)."""

from __future__ import annotations

import numpy as np

from ..bundle import Models
from ..ops.imaging import model_input
from ..types import AlignedFace, Inversion


def invert(models: Models, aligned: AlignedFace) -> Inversion:
    out = models.engines["encoder"].run({"image": model_input(aligned.crop, models.encoder_norm)})
    w_start = np.ascontiguousarray(out["ws"], dtype=np.float32)
    return Inversion(w_start=w_start, g_start=models.synthesize(w_start)[0])

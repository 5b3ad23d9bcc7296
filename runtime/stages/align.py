"""align: a detected face -> its FFHQ-style crop in the generator's frame, keeping the alignment that cut it
(compose maps the edit back through it)."""

from __future__ import annotations

from typing import Optional

from ..errors import UsageError
from ..ops.geometry import ffhq_alignment, warp
from ..ops.imaging import resize_u8
from ..types import AlignedFace, Face, Photo


def align(photo: Photo, face: Face, resolution: int, index: Optional[int] = None) -> AlignedFace:
    a = ffhq_alignment(face.landmarks, resolution)
    return AlignedFace(crop=warp(photo.rgb, a.matrix, resolution), alignment=a, index=index, face=face)


def aligned_input(photo: Photo, resolution: int) -> AlignedFace:
    """The photo is already an aligned square face crop (``--aligned``): it is the crop, resized."""
    h, w = photo.rgb.shape[:2]
    if h != w:
        raise UsageError(f"--aligned input must be a square face crop, got {w}x{h}")
    return AlignedFace(crop=resize_u8(photo.rgb, resolution))

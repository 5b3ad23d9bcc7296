"""detect: faces in a :class:`Photo` (largest first) with the bundle's detector, and which of them to edit."""

from __future__ import annotations

import logging

from ..bundle import Models
from ..errors import NoFaceError
from ..settings import Settings
from ..types import Face, Photo

log = logging.getLogger("beautyrt")

MAX_FACES = 16  # --all-faces edits at most this many faces per photo (the largest): bounds time and memory


def detect(models: Models, photo: Photo, min_face: float = 40.0) -> list[Face]:
    """Every face of at least ``min_face`` pixels, largest first (UsageError if the bundle has no detector)."""
    return models.detector(min_face).detect(photo.rgb)


def choose(faces: list[Face], settings: Settings) -> list[int]:
    """Indices of the faces to edit: all (``all_faces``), the one asked for (``face``), else the largest."""
    if not faces:
        raise NoFaceError("no face found in the image")
    if settings.all_faces:
        if len(faces) > MAX_FACES:
            log.warning("%d faces found; --all-faces edits the %d largest (the per-photo limit)", len(faces), MAX_FACES)
        return list(range(min(len(faces), MAX_FACES)))
    idx = 0 if settings.face is None else settings.face
    if idx >= len(faces):
        raise NoFaceError(f"face {idx} asked for, but only {len(faces)} face(s) found (indices 0..{len(faces) - 1})")
    return [idx]

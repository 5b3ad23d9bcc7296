"""``Beautifier``: load a bundle once, then run the stages on photos (from any number of threads).

It is a thin composition of ``runtime.stages``: decode -> detect -> align -> invert -> search -> compose
(encode is the caller's: ``api.optimize_file`` or the HTTP service). With ``aligned=True`` the input is taken as
an already aligned face crop and the edited crop is returned.

Threading model: a ``Beautifier`` holds only immutable configuration and its engines; onnxruntime sessions may
be run from several threads at once, so one instance can serve many threads. Every call keeps its state
(search, RNG, buffers) local, and the search RNG is seeded from ``Settings.seed``, so a given input and seed give
the same result in any thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from beautyrt.engines import DEFAULT_BACKEND

from .bundle import Models
from .ops.imageio import ImageLike
from .settings import MIN_FACE_RANGE, STRENGTH_RANGE, Settings, as_settings, check_float, resolve
from .stages import align as align_stage
from .stages import compose as compose_stage
from .stages import decode as decode_stage
from .stages import detect as detect_stage
from .stages import invert as invert_stage
from .stages import rerank as rerank_stage
from .stages import rescore as rescore_stage
from .stages import search as search_stage
from .stages.search import CancelCheck, Progress
from .timing import StageTimer
from .types import AlignedFace, Face, FaceEdit, Photo, Result

log = logging.getLogger("beautyrt")


class Beautifier:
    """Load a bundle once; call :meth:`optimize` on photos, :meth:`compose` to re-render at another strength."""

    def __init__(
        self,
        bundle: str | Path,
        *,
        backend: str = DEFAULT_BACKEND,
        device: str = "auto",
        device_id: int = 0,
        threads: Optional[int] = None,
        cache_dir: Optional[str | Path] = None,
        engine_batch: Optional[int] = None,
    ):
        """``engine_batch``: candidates per backend call of the image-sized engines (a generation's λ
        candidates are still one engine call, run in chunks of this size); default: by the generator's
        resolution and the device (all of λ=16 up to 256 px on a CPU, 2 at a time at 1024 px)."""
        self.models = Models(
            bundle,
            backend=backend,
            device=device,
            device_id=device_id,
            threads=threads,
            cache_dir=cache_dir,
            engine_batch=engine_batch,
        )
        g = self.models.generator
        self.manifest = self.models.manifest
        self.resolution, self.num_ws, self.w_dim = g.resolution, g.num_ws, g.w_dim
        self.w_avg, self.w_std = g.w_avg, g.w_std
        self.load_seconds = self.models.load_seconds

    @property
    def engines(self) -> dict:
        return self.models.engines

    @property
    def bundle_hash(self) -> str:
        return self.models.bundle_hash

    @property
    def has_detector(self) -> bool:
        return self.models.has_detector

    @property
    def can_score_output(self) -> bool:
        return self.models.can_score_crops

    def close(self) -> None:
        self.models.close()

    def __enter__(self) -> "Beautifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------
    def resolve(self, settings: Optional[Settings] = None) -> Settings:
        """Settings with every ``None`` filled in from the bundle's recommendations (see ``settings.resolve``)."""
        return resolve(
            as_settings(settings),
            search_defaults=self.models.search_defaults,
            objective_defaults=self.models.objective_defaults,
            can_score_output=self.models.can_score_crops,
            has_prior=self.models.prior is not None,
        )

    def detect(self, rgb, min_face: float = 40.0) -> list[Face]:
        """Faces in ``rgb`` (an image or a decoded photo), largest first."""
        min_face = check_float("min_face", min_face, *MIN_FACE_RANGE)
        return detect_stage.detect(self.models, decode_stage.decode(rgb), min_face)

    def faces_to_edit(
        self, photo, settings: Settings, aligned: bool, timer: StageTimer
    ) -> tuple[list[AlignedFace], int]:
        """The aligned faces the settings ask for, and how many faces were found (decode -> detect -> align)."""
        if aligned:
            return [align_stage.aligned_input(photo, self.resolution)], 0
        with timer("detect"):
            faces = detect_stage.detect(self.models, photo, settings.min_face)
        chosen = detect_stage.choose(faces, settings)
        with timer("align"):
            return [align_stage.align(photo, faces[i], self.resolution, index=i) for i in chosen], len(faces)

    def edit_face(
        self,
        aligned: AlignedFace,
        settings: Settings,
        timer: StageTimer,
        *,
        progress: Optional[Progress] = None,
        cancel: Optional[CancelCheck] = None,
        photo: Optional[Photo] = None,
    ) -> FaceEdit:
        """invert -> search (-> rerank, given the ``photo`` the face is in) -> the face's edit (``settings``
        resolved)."""
        with timer("invert"):
            inv = invert_stage.invert(self.models, aligned)
        outcome = search_stage.search(
            self.models, aligned, inv, settings, timer=timer, progress=progress, cancel=cancel
        )
        if photo is not None and rerank_stage.applies(self.models, aligned, outcome, settings):
            with timer("rerank"):
                outcome = rerank_stage.rerank(self.models, photo, aligned, inv, outcome, settings)
        with timer("synthesize"):
            edit = compose_stage.render_edit(self.models, inv, outcome, settings)
        return FaceEdit(aligned=aligned, inversion=inv, outcome=outcome, edit=edit)

    def optimize(
        self,
        image: ImageLike,
        settings: Optional[Settings] = None,
        *,
        aligned: bool = False,
        progress: Optional[Progress] = None,
        cancel: Optional[CancelCheck] = None,
    ) -> Result:
        """Beautify the face (faces, with ``all_faces``) of ``image``. ``progress(generation, total, best)`` is
        called after each generation; ``cancel()`` before each one (True raises ``Cancelled``)."""
        s = self.resolve(settings)
        if not isinstance(aligned, (bool, np.bool_)):
            from .errors import UsageError

            raise UsageError(f"aligned must be true or false, got {type(aligned).__name__}")
        for name, fn in (("progress", progress), ("cancel", cancel)):
            if fn is not None and not callable(fn):
                from .errors import UsageError

                raise UsageError(f"{name} must be callable, got {type(fn).__name__}")
        timer = StageTimer()
        with timer("decode"):
            photo = decode_stage.decode(image)
        faces, found = self.faces_to_edit(photo, s, aligned, timer)
        edits = [self.edit_face(a, s, timer, progress=progress, cancel=cancel, photo=photo) for a in faces]
        with timer("compose"):
            image_out = compose_stage.compose_photo(photo, [(f.aligned, f.edit) for f in edits], s.strength)
        with timer("rescore"):
            extra = self._delivered(image_out, edits, s)
        timings = timer.summary()
        timings["load_bundle"] = self.load_seconds
        return Result(
            extra=extra,
            image=image_out,
            photo=photo,
            faces=edits,
            settings=s,
            bundle_hash=self.bundle_hash,
            timings=timings,
            faces_found=found,
            result_id=result_id(self.bundle_hash, s, photo.rgb),
        )

    def compose(self, result: Result, strength: float) -> Result:
        """The same result re-rendered at ``strength`` (0..2) without searching again: only the compose stage runs."""
        from .errors import UsageError

        if not isinstance(result, Result):
            raise UsageError(f"compose() needs a Result from optimize(), got {type(result).__name__}")
        strength = check_float("strength", strength, *STRENGTH_RANGE)
        if result.bundle_hash != self.bundle_hash:
            raise UsageError("this result was made with another bundle")
        timer = StageTimer()
        s = dataclasses.replace(result.settings, strength=strength)
        with timer("compose"):
            image_out = compose_stage.compose_photo(result.photo, [(f.aligned, f.edit) for f in result.faces], strength)
        with timer("rescore"):
            extra = {**result.extra, **self._delivered(image_out, result.faces, s)}
        timings = {**result.timings, **timer.summary()}
        return dataclasses.replace(
            result,
            extra=extra,
            image=image_out,
            settings=s,
            timings=timings,
            result_id=result_id(self.bundle_hash, s, result.photo.rgb),
        )

    def _delivered(self, image_out: np.ndarray, edits: list[FaceEdit], s: Settings) -> dict:
        """The report's ``delivered`` block: the primary face of the photo as written, scored again."""
        if not edits:
            return {}
        d = rescore_stage.rescore(self.models, image_out, edits[0], s.min_face)
        return {} if d is None else {"delivered": d}


def result_id(bundle_hash: str, settings: Settings, rgb) -> str:
    """An id for a result: the same photo, bundle and settings give the same id."""
    h = hashlib.sha256()
    h.update(bundle_hash.encode())
    h.update(settings.digest().encode())
    h.update(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).data)  # no copy of a large photo
    return h.hexdigest()[:24]

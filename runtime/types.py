"""The typed hand-offs between the stages (decode -> detect -> align -> invert -> search -> compose -> encode).

Each stage takes and returns these; none holds a reference to a later stage's type. They are plain frozen
data (numpy arrays inside are treated as read-only by every stage):

    Photo          decode    the upright RGB photo
    Face           detect    one detection: box, score, 5 landmarks
    AlignedFace    align     the face's crop in the generator's frame, and the alignment that cut it
    Inversion      invert    the encoder's W+ for that crop, and the generator's rendering of it
    SearchOutcome  search    the best latent found, its scores, the per-generation history
    Edit           search -> compose: what is added to the photo (in the crop's frame, at strength 1)
    FaceEdit       one face's hand-offs together (what ``compose`` needs to re-render at another strength)
    Result         the composed photo, every face's FaceEdit, the report
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    from .ops.geometry import Alignment
    from .settings import Settings


@dataclass(frozen=True, eq=False)
class Photo:
    """A decoded photo: RGB uint8 (H, W, 3), EXIF orientation applied. ``name``: for messages."""

    rgb: np.ndarray
    name: str = "image"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face. ``box`` = (x0, y0, x1, y1) in image pixels; ``landmarks`` = (5, 2) float
    array of (x, y): image-left eye, image-right eye, nose, image-left mouth corner, image-right mouth corner."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray = field(repr=False)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def landmarks_inside_box(self, margin: float = 0.0) -> bool:
        x0, y0, x1, y1 = self.box
        lm = self.landmarks
        return bool(
            np.all(
                (lm[:, 0] >= x0 - margin)
                & (lm[:, 0] <= x1 + margin)
                & (lm[:, 1] >= y0 - margin)
                & (lm[:, 1] <= y1 + margin)
            )
        )

    def to_dict(self) -> dict:
        return {
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "landmarks": [[float(x), float(y)] for x, y in self.landmarks],
            "landmark_order": ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"],
        }


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """A face in the generator's frame. ``crop``: (R, R, 3) uint8 at the generator's resolution (what the
    encoder and the scorers see). ``alignment``: photo -> crop (None when the input was already an aligned
    crop: then ``crop`` is the whole photo resized). ``index``/``face``: which detection (None for aligned)."""

    crop: np.ndarray
    alignment: Optional["Alignment"] = None
    index: Optional[int] = None
    face: Optional[Face] = None

    def to_dict(self) -> Optional[dict]:
        if self.face is None:
            return None
        return {
            "index": self.index,
            **self.face.to_dict(),
            "alignment": self.alignment.to_dict() if self.alignment is not None else None,
        }


@dataclass(frozen=True, eq=False)
class Inversion:
    """``w_start``: (1, num_ws, w_dim) float32, the encoder's latent of the crop; ``g_start``: (3, R, R) float32
    in [-1, 1], the generator's rendering of it."""

    w_start: np.ndarray
    g_start: np.ndarray


@dataclass(frozen=True, eq=False)
class SearchOutcome:
    """The search's result: ``w_best`` (1, num_ws, w_dim); scores as the search measured them (``score_on``);
    ``identity``: cosine of the best candidate's embedding to the reference; ``history``: one dict per
    generation."""

    w_best: np.ndarray
    score_before: float
    score_after: float
    identity: float
    history: list[dict]
    generations: int
    stop: str
    best_generation: int
    strategy: str = "cma"
    evaluations: int = 0
    # the K best feasible candidates seen (the start among them), best first: {"ws", "score", "identity",
    # "generation"} (``settings.finalists``; empty when 1); ``rerank``: what ``stages.rerank`` measured
    finalists: tuple = ()
    rerank: Optional[dict] = None

    @property
    def gain(self) -> float:
        return self.score_after - self.score_before


@dataclass(frozen=True, eq=False)
class Edit:
    """What compose adds to the photo. ``mode="transfer"``: ``delta`` (R, R, 3) float32 grey levels in the crop's
    frame (the generator's edit G(best) - G(start) through the transfer); ``mode="generated"``: the generated
    face ``generated`` (R, R, 3) uint8 replaces the photo's face. ``g_best``: (3, R, R) float32 rendering."""

    mode: str
    g_best: np.ndarray
    delta: Optional[np.ndarray] = None
    generated: Optional[np.ndarray] = None


@dataclass(frozen=True, eq=False)
class FaceEdit:
    aligned: AlignedFace
    inversion: Inversion
    outcome: SearchOutcome
    edit: Edit

    def summary(self) -> dict:
        o = self.outcome
        return {
            "index": self.aligned.index,
            "box": self.aligned.face.to_dict()["box"] if self.aligned.face else None,
            "score_before": o.score_before,
            "score_after": o.score_after,
            "identity": o.identity,
            "generations_run": o.generations,
        }


@dataclass(eq=False)
class Result:
    """The output of ``Beautifier.optimize`` (or ``compose``): ``image`` is the whole photo with every edited
    face composed at ``settings.strength`` (with an aligned input, the edited crop). The first entry of ``faces`` is the
    primary face: its numbers are the report's top-level ones."""

    image: np.ndarray
    photo: Photo
    faces: list[FaceEdit]
    settings: "Settings"
    bundle_hash: str
    timings: dict
    faces_found: int = 0
    result_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def strength(self) -> float:
        return float(self.settings.strength)

    # the primary face's hand-offs, for callers of the earlier flat API
    @property
    def primary(self) -> FaceEdit:
        return self.faces[0]

    @property
    def aligned(self) -> np.ndarray:
        return self.primary.aligned.crop

    @property
    def w_start(self) -> np.ndarray:
        return self.primary.inversion.w_start[0]

    @property
    def w_best(self) -> np.ndarray:
        return self.primary.outcome.w_best[0]

    @property
    def generated_start(self) -> np.ndarray:
        from .ops.imaging import to_uint8

        return to_uint8(self.primary.inversion.g_start)

    @property
    def generated_best(self) -> np.ndarray:
        from .ops.imaging import to_uint8

        return to_uint8(self.primary.edit.g_best)

    @property
    def score_before(self) -> float:
        return self.primary.outcome.score_before

    @property
    def score_after(self) -> float:
        return self.primary.outcome.score_after

    @property
    def identity(self) -> float:
        return self.primary.outcome.identity

    @property
    def history(self) -> list[dict]:
        return self.primary.outcome.history

    @property
    def generations_run(self) -> int:
        return self.primary.outcome.generations

    @property
    def stop_reason(self) -> str:
        return self.primary.outcome.stop

    @property
    def face(self) -> Optional[dict]:
        return self.primary.aligned.to_dict()

    def report(self) -> dict:
        o = self.primary.outcome
        rep = {
            # the search's own estimate (the candidate crop it scored); "delivered" (when the bundle can score
            # crops): the photo as composed and written, re-detected, re-aligned and scored again
            "score_before": o.score_before,
            "score_after": o.score_after,
            "gain": o.gain,
            "identity": o.identity,
            "history": o.history,
            "generations_run": o.generations,
            "evaluations": sum(f.outcome.evaluations for f in self.faces),
            "stop_reason": o.stop,
            "strategy": o.strategy,
            "strength": self.strength,
            "settings": self.settings.to_dict(),
            "settings_hash": self.settings.digest(),
            "timings": self.timings,
            "bundle_hash": self.bundle_hash,
            "face": self.face,
            "faces_found": self.faces_found,
            "output_size": [int(self.image.shape[1]), int(self.image.shape[0])],
        }
        if self.settings.all_faces:
            rep["faces"] = [f.summary() for f in self.faces]
        if o.rerank is not None:  # the finalists' search and delivered numbers, and which one was kept
            rep["rerank"] = o.rerank
        if self.result_id:
            rep["result_id"] = self.result_id
        rep.update(self.extra)
        return rep

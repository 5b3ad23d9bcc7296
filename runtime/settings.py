"""``Settings``: everything that decides a result besides the input and the bundle, validated up front.

Every default lives here (or, for the objective, in ``objective.DEFAULT_WEIGHTS``); the CLI's help text and
README quote these constants. A setting left ``None`` takes the bundle's recommendation (manifest
``search_defaults`` / ``objective_defaults``, measured for its networks), else the default below --
:func:`resolve` fills them in.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping, Optional

import numpy as np

from beautyrt.engines.files import printable

from .errors import UsageError
from .objective import SPACES, ObjectiveWeights
from .ops.imaging import TRANSFERS

OUTPUT_MODES = ("transfer", "generated")
SCORE_ON = ("auto", "output", "generated")
DEFAULT_SIGMA0 = 0.5  # when neither the caller nor the bundle says
DEFAULT_GENERATIONS = 20  # likewise
DEFAULT_POPSIZE = 16
DEFAULT_STRATEGY = "cma"
STARTS = ("origin", "prior")  # where CMA-ES starts: the encoder's latent, or it plus the bundle's search prior
COVARIANCES = ("auto", "full", "diagonal")  # auto: diagonal above 256 dimensions
DEFAULT_START, DEFAULT_MIRRORED, DEFAULT_COVARIANCE = "origin", False, "auto"  # when the bundle says nothing
DEFAULT_FINALISTS = 1  # 1: the search's best is the result; K > 1: the best of its K best on the delivered photo
# what a bundle may recommend (manifest search_defaults; other keys are ignored)
SEARCH_DEFAULT_KEYS = ("sigma0", "generations", "popsize", "start", "mirrored", "covariance", "finalists")
STRENGTH_RANGE = (0.0, 2.0)
LIMITS = {
    "generations": (1, 10000),
    "popsize": (2, 1024),
    "seed": (0, 2**32 - 1),
    "face": (0, 1000),
    "finalists": (1, 64),
}
MIN_FACE_RANGE = (12.0, 4096.0)


def _check_int(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise UsageError(f"{name} must be an integer in {lo}..{hi}, got {printable(repr(v))[:80]}")
    if not lo <= int(v) <= hi:
        raise UsageError(f"{name} must be in {lo}..{hi}, got {v}")
    return int(v)


def check_float(name: str, v: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """A finite real number in [lo, hi] (or (lo, hi] with ``lo_open``), else UsageError naming ``name``."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise UsageError(f"{name} must be a number, got {printable(repr(v))[:80]}")
    f = float(v)
    if not math.isfinite(f):
        raise UsageError(f"{name} must be a finite number, got {v}")
    if f < lo or f > hi or (lo_open and f == lo):
        raise UsageError(f"{name} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v}")
    return f


def _check_choice(name: str, v: Any, choices) -> str:
    if not isinstance(v, str) or v not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {printable(repr(v))[:80]}")
    return v


def _check_bool(name: str, v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise UsageError(f"{name} must be true or false, got {printable(repr(v))[:80]}")


def as_settings(settings: Any) -> "Settings":
    """What the API accepts as settings, validated: None (the defaults), a Settings, or a mapping of its
    fields (``Settings.from_dict``); anything else is a UsageError."""
    if settings is None:
        return Settings().validate()
    if isinstance(settings, Settings):
        return settings.validate()
    if isinstance(settings, Mapping):
        return Settings.from_dict(settings)
    raise UsageError(f"settings must be a beautyrt Settings (or a dict of its fields), got {type(settings).__name__}")


@dataclass(frozen=True)
class Settings:
    """Everything that decides the result besides the input and the bundle."""

    generations: Optional[int] = None  # CMA-ES generations; None: the bundle's recommendation, else 20
    popsize: Optional[int] = None  # candidates per generation, one engine call; None: the bundle's, else 16
    sigma0: Optional[float] = None  # initial step in units of W's std; None: the bundle's, else 0.5
    seed: int = 0  # same input, bundle, seed and backend give the same output
    space: str = "w"  # w | groups | wplus (see objective.LatentSpace)
    weights: ObjectiveWeights = field(default_factory=ObjectiveWeights)  # None fields: the bundle's defaults
    output_mode: str = "transfer"  # transfer: add the edit to the photo; generated: paste G(best) itself
    face: Optional[int] = None  # index into faces sorted largest first; None = the largest
    all_faces: bool = False  # edit every detected face (largest first) instead of one
    min_face: float = 40.0  # smallest face side (pixels) the detector looks for
    score_on: str = "auto"  # output: score photo crop + edit (what the user gets); generated: G(w);
    # auto: output where the bundle can score crops
    transfer: str = "detail"  # detail: the edit's luma minus its broad part; luma: all of its
    # brightness change; rgb: colours too
    strength: float = 1.0  # the edit's scale when composed onto the photo (0: the photo unchanged)
    strategy: str = DEFAULT_STRATEGY  # search strategy (runtime.strategies.STRATEGIES)
    start: Optional[str] = None  # origin | prior (w_start + the bundle's search prior); None: the bundle's, else origin
    mirrored: Optional[bool] = None  # mirrored sampling (half the population); None: the bundle's, else off
    covariance: Optional[str] = None  # auto | full | diagonal; None: the bundle's, else auto
    finalists: Optional[int] = None  # K > 1: of the search's K best candidates, keep the one whose delivered
    # photo (re-detected, re-aligned) scores highest (stages.rerank); None: the bundle's, else 1 (off)

    def validate(self) -> "Settings":
        """These settings checked (typed, finite, ranged, with the option's name in every refusal) and
        returned with plain Python values (numpy scalars become int/float/bool: reports stay JSON)."""
        from .strategies import STRATEGIES

        weights = self.weights
        if weights is None:
            weights = ObjectiveWeights()
        elif isinstance(weights, Mapping):
            weights = ObjectiveWeights.from_dict(weights)
        if not isinstance(weights, ObjectiveWeights):
            raise UsageError(
                f"weights must be an ObjectiveWeights (or a dict of its fields), got {type(weights).__name__}"
            )
        generations = (
            None if self.generations is None else _check_int("generations", self.generations, *LIMITS["generations"])
        )
        popsize = None if self.popsize is None else _check_int("popsize", self.popsize, *LIMITS["popsize"])
        sigma0 = None if self.sigma0 is None else check_float("sigma", self.sigma0, 0.0, 10.0, lo_open=True)
        seed = _check_int("seed", self.seed, *LIMITS["seed"])
        _check_choice("space", self.space, SPACES)
        _check_choice("mode", self.output_mode, OUTPUT_MODES)
        face = None if self.face is None else _check_int("face", self.face, *LIMITS["face"])
        all_faces = _check_bool("all_faces", self.all_faces)
        if all_faces and face is not None:
            raise UsageError("choose either a face index (--face) or all faces (--all-faces), not both")
        min_face = check_float("min_face", self.min_face, *MIN_FACE_RANGE)
        _check_choice("score-on", self.score_on, SCORE_ON)
        _check_choice("transfer", self.transfer, TRANSFERS)
        strength = check_float("strength", self.strength, *STRENGTH_RANGE)
        _check_choice("strategy", self.strategy, tuple(STRATEGIES))
        start = None if self.start is None else _check_choice("start", self.start, STARTS)
        mirrored = None if self.mirrored is None else _check_bool("mirrored", self.mirrored)
        covariance = None if self.covariance is None else _check_choice("covariance", self.covariance, COVARIANCES)
        finalists = None if self.finalists is None else _check_int("finalists", self.finalists, *LIMITS["finalists"])
        return replace(
            self,
            generations=generations,
            popsize=popsize,
            sigma0=sigma0,
            seed=seed,
            weights=weights.validate(),
            face=face,
            all_faces=all_faces,
            min_face=min_face,
            strength=strength,
            start=start,
            mirrored=mirrored,
            covariance=covariance,
            finalists=finalists,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights"] = self.weights.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Settings":
        """The inverse of ``to_dict`` (unknown keys refused with their name)."""
        if not isinstance(d, Mapping):
            raise UsageError(f"settings must be a mapping, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(printable(repr(k)) for k in set(d) - names)
        if unknown:
            raise UsageError(f"unknown setting(s): {', '.join(unknown)}")
        kw = dict(d)
        if isinstance(kw.get("weights"), Mapping):
            kw["weights"] = ObjectiveWeights.from_dict(kw["weights"])
        return cls(**kw).validate()

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def resolve(
    s: Settings,
    *,
    search_defaults: Optional[Mapping] = None,
    objective_defaults: Optional[Mapping] = None,
    can_score_output: bool = True,
    has_prior: bool = False,
) -> Settings:
    """Settings with every ``None`` filled in from the bundle's recommendations (else the defaults above) and
    ``score_on="auto"`` decided. Refuses combinations the bundle cannot honour."""
    s = s.validate()
    rec = {k: v for k, v in (search_defaults or {}).items() if k in SEARCH_DEFAULT_KEYS}
    try:  # the bundle's recommendations are checked like the caller's settings
        Settings(**rec).validate()
    except (UsageError, TypeError) as e:
        from beautyrt.engines.errors import BundleSchemaError

        raise BundleSchemaError(f"manifest: search_defaults: {e}; rebuild it with `beautyrt export --out DIR`") from e

    def pick(value, key, default):
        return value if value is not None else rec.get(key, default)

    sigma0 = pick(s.sigma0, "sigma0", DEFAULT_SIGMA0)
    generations = pick(s.generations, "generations", DEFAULT_GENERATIONS)
    popsize = pick(s.popsize, "popsize", DEFAULT_POPSIZE)
    start = pick(s.start, "start", DEFAULT_START)
    mirrored = pick(s.mirrored, "mirrored", DEFAULT_MIRRORED)
    covariance = pick(s.covariance, "covariance", DEFAULT_COVARIANCE)
    finalists = pick(s.finalists, "finalists", DEFAULT_FINALISTS)
    if start == "prior" and not has_prior:
        raise UsageError("--start prior needs a bundle with a search prior (search_prior.npy; the demo pack has one)")
    score_on = s.score_on
    if score_on == "auto":
        score_on = "output" if can_score_output and s.output_mode == "transfer" else "generated"
    elif score_on == "output" and not can_score_output:
        raise UsageError(
            "--score-on output needs the bundle's beauty and identity models to take the generator's "
            "crop as it is; this bundle's do not (use --score-on generated)"
        )
    elif score_on == "output" and s.output_mode != "transfer":
        raise UsageError("--score-on output scores the photo plus the edit; it needs --mode transfer")
    return replace(
        s,
        sigma0=sigma0,
        generations=generations,
        popsize=popsize,
        start=start,
        mirrored=mirrored,
        covariance=covariance,
        finalists=finalists,
        score_on=score_on,
        weights=s.weights.resolved(objective_defaults),
    ).validate()

"""Request parameters -> ``Settings`` (+ aligned, output format, quality), with the CLI's option names.

Every ``Settings`` field is a query (or multipart form) parameter named as the CLI's option, without the dashes:
``generations``, ``popsize``, ``seed``, ``space``, ``sigma``, ``identity-floor``, ``identity-target``,
``identity-weight``, ``latent-weight``, ``naturalness-weight``, ``strength``, ``strategy``, ``face``,
``all-faces``, ``mode``, ``score-on``, ``transfer``, ``start``, ``mirrored``, ``covariance``, ``finalists``; plus
``aligned``, ``quality`` and ``format``. snake_case spellings are accepted too. A parameter not given takes the
CLI's default (``Settings()``), so the same photo, settings and seed give the same bytes as ``beautyrt optimize``.
Every value is checked before any work: a bad one is a UsageError naming the parameter (HTTP 400). No parameter can
name a file: there are no path parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from ..errors import UsageError
from ..objective import ObjectiveWeights
from ..settings import Settings

INT = {"generations", "popsize", "seed", "face", "quality", "finalists"}
FLOAT = {
    "sigma",
    "identity-floor",
    "identity-target",
    "identity-weight",
    "latent-weight",
    "naturalness-weight",
    "strength",
}
BOOL = {"all-faces", "aligned", "mirrored"}
STR = {"space", "strategy", "mode", "score-on", "transfer", "format", "start", "covariance"}
KNOWN = INT | FLOAT | BOOL | STR
FILE_OPTIONS = {"out", "o", "report", "side-by-side", "plot", "bundle"}  # CLI options that name files
SERVER_OPTIONS = {"backend", "device", "threads"}
FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "webp": "WEBP", "json": "JSON"}
MEDIA = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
DEFAULT_QUALITY = 95  # the CLI's --quality


@dataclass(frozen=True)
class OptimizeParams:
    settings: Settings
    aligned: bool = False
    fmt: Optional[str] = None  # JPEG | PNG | WEBP | JSON; None: from the Accept header, else the input's format
    quality: int = DEFAULT_QUALITY


def canonical(name: str) -> str:
    return name.strip().replace("_", "-")


def _int(name: str, v: str) -> int:
    try:
        return int(v.strip())
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {v!r}") from None


def _float(name: str, v: str) -> float:
    try:
        return float(v.strip())
    except ValueError:
        raise UsageError(f"{name} must be a number, got {v!r}") from None


def _bool(name: str, v: str) -> bool:
    s = v.strip().lower()
    if s in ("", "1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{name} must be true or false, got {v!r}")


def collect(items: Iterable[tuple[str, str]], allowed: Optional[set] = None) -> dict[str, str]:
    """Parameter pairs -> {canonical name: value}; unknown names and repeated parameters are refused."""
    allowed = KNOWN if allowed is None else allowed
    out: dict[str, str] = {}
    for raw, value in items:
        name = canonical(raw)
        if name in FILE_OPTIONS:
            raise UsageError(
                f"{raw}: the service never reads or writes files on the server; the edited photo and its report "
                "are the response"
            )
        if name in SERVER_OPTIONS:
            raise UsageError(f"{raw} is the server's setting (beautyrt serve --{name}), not a request parameter")
        if name not in allowed:
            raise UsageError(f"unknown parameter {raw!r}; known: {', '.join(sorted(allowed))}")
        if name in out:
            raise UsageError(f"parameter {name} given more than once")
        out[name] = value
    return out


def output_format(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    f = FORMATS.get(value.strip().lower())
    if f is None:
        raise UsageError(f"format must be one of jpeg, png, webp, json, got {value!r}")
    return f


def quality(value: Optional[str]) -> int:
    if value is None:
        return DEFAULT_QUALITY
    q = _int("quality", value)
    if not 1 <= q <= 100:
        raise UsageError(f"quality must be in 1..100, got {q}")
    return q


def parse(p: dict[str, str]) -> OptimizeParams:
    """Canonical parameters (see ``collect``) -> validated OptimizeParams."""
    d = Settings()
    g = p.get

    def opt_int(name: str) -> Optional[int]:
        return _int(name, p[name]) if name in p else None

    def opt_float(name: str) -> Optional[float]:
        return _float(name, p[name]) if name in p else None

    settings = Settings(
        generations=opt_int("generations"),
        popsize=_int("popsize", p["popsize"]) if "popsize" in p else d.popsize,
        seed=_int("seed", p["seed"]) if "seed" in p else d.seed,
        space=g("space", d.space),
        sigma0=opt_float("sigma"),
        weights=ObjectiveWeights(
            opt_float("identity-floor"),
            opt_float("identity-target"),
            opt_float("identity-weight"),
            opt_float("latent-weight"),
            opt_float("naturalness-weight"),
        ),
        output_mode=g("mode", d.output_mode),
        face=opt_int("face"),
        all_faces=_bool("all-faces", p["all-faces"]) if "all-faces" in p else d.all_faces,
        score_on=g("score-on", d.score_on),
        transfer=g("transfer", d.transfer),
        strength=_float("strength", p["strength"]) if "strength" in p else d.strength,
        strategy=g("strategy", d.strategy),
        start=g("start"),
        mirrored=_bool("mirrored", p["mirrored"]) if "mirrored" in p else None,
        covariance=g("covariance"),
        finalists=opt_int("finalists"),
    ).validate()
    return OptimizeParams(
        settings=settings,
        aligned=_bool("aligned", p["aligned"]) if "aligned" in p else False,
        fmt=output_format(g("format")),
        quality=quality(g("quality")),
    )


def negotiate(accept: Optional[str], fmt: Optional[str], default: str) -> str:
    """The response format: ``format=`` wins, then the Accept header (by q, in order), else ``default``."""
    if fmt is not None:
        return fmt
    if not accept or not accept.strip():
        return default
    by_media = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
    by_media["application/json"] = "JSON"
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media, q = fields[0].lower(), 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if q > 0 and media:
            ranked.append((-q, i, media))
    for _, _, media in sorted(ranked):
        if media in by_media:
            return by_media[media]
        if media in ("*/*", "image/*"):
            return default
    from .errors import NotAcceptable

    raise NotAcceptable(
        f"cannot answer with {accept!r}: ask for image/jpeg, image/png, image/webp or application/json (or ?format=)"
    )

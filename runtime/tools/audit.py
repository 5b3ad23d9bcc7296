"""Per-group audit: run the optimiser over a labelled folder and report, per group, what it did.

Groups are the relative sub-directory of each photo (MEBeauty: ``images/<gender>/<ethnicity>/`` gives groups
such as ``female/asian``), so a skew in gain, identity kept, failures or time between groups is visible. The
numbers describe THIS bundle's models on THIS sample: with random-weight presets they mean nothing about
faces; with trained models they show whose faces the regressor "improves" most and whom it fails on.

Torch-free: numpy + the runtime only. Nothing is written; the caller prints or saves the summary.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from beautyrt.engines.errors import BeautyrtError, UsageError

from ..beautifier import Beautifier
from ..settings import Settings, as_settings

log = logging.getLogger("beautyrt")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
AuditProgress = Callable[[int, int, str], None]  # (done, total, current group)


@dataclass
class PhotoOutcome:
    path: str
    group: str
    ok: bool
    seconds: float
    score_before: Optional[float] = None
    score_after: Optional[float] = None
    gain: Optional[float] = None
    identity: Optional[float] = None
    faces_found: Optional[int] = None
    error: Optional[str] = None  # exception class name (beautyrt's, or "internal:<name>" for a bug)
    exit_code: Optional[int] = None
    message: Optional[str] = None


def collect(root: str | Path, limit: Optional[int] = None) -> dict[str, list[Path]]:
    """Photos under ``root`` by group (relative directory, "." for ``root`` itself), sorted by path;
    ``limit``: at most this many per group (the first ones in sorted order, so a run is reproducible)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UsageError(f"--images {root}: not a directory")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    groups: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
            g = p.parent.relative_to(root).as_posix()
            groups.setdefault(g, []).append(p)
    if limit is not None:
        groups = {g: ps[:limit] for g, ps in groups.items()}
    if not groups:
        raise UsageError(f"--images {root}: no images ({', '.join(IMAGE_EXTS)}) found")
    return groups


def audit_one(b: Beautifier, path: Path, group: str, settings: Settings, aligned: bool = False) -> PhotoOutcome:
    t0 = time.perf_counter()
    try:
        r = b.optimize(path, settings, aligned=aligned)
    except BeautyrtError as e:
        return PhotoOutcome(
            str(path),
            group,
            False,
            time.perf_counter() - t0,
            error=type(e).__name__,
            exit_code=e.exit_code,
            message=" ".join(str(e).split())[:300],
        )
    except Exception as e:  # a bug in beautyrt: counted, logged, and the audit goes on
        log.warning("internal error on %s: %s: %s", path, type(e).__name__, e)
        return PhotoOutcome(
            str(path),
            group,
            False,
            time.perf_counter() - t0,
            error=f"internal:{type(e).__name__}",
            exit_code=70,
            message=" ".join(str(e).split())[:300],
        )
    return PhotoOutcome(
        str(path),
        group,
        True,
        time.perf_counter() - t0,
        score_before=r.score_before,
        score_after=r.score_after,
        gain=r.score_after - r.score_before,
        identity=r.identity,
        faces_found=r.faces_found,
    )


def _stats(outs: list[PhotoOutcome]) -> dict:
    ok = [o for o in outs if o.ok]
    gains = [o.gain for o in ok]
    mean = lambda xs: (sum(xs) / len(xs)) if xs else None  # noqa: E731
    return {
        "count": len(outs),
        "ok": len(ok),
        "failed": len(outs) - len(ok),
        "failure_rate": (len(outs) - len(ok)) / len(outs) if outs else None,
        "failures": dict(sorted(Counter(o.error for o in outs if not o.ok).items())),
        "mean_gain": mean(gains),
        "median_gain": statistics.median([g for g in gains if g is not None]) if gains else None,
        "mean_identity": mean([o.identity for o in ok]),
        "mean_score_before": mean([o.score_before for o in ok]),
        "mean_score_after": mean([o.score_after for o in ok]),
        "seconds_per_photo": mean([o.seconds for o in outs]),
    }


def summarize(outcomes: list[PhotoOutcome]) -> dict:
    by_group: dict[str, list[PhotoOutcome]] = {}
    for o in outcomes:
        by_group.setdefault(o.group, []).append(o)
    groups = {g: _stats(os_) for g, os_ in sorted(by_group.items())}
    overall = _stats(outcomes)
    gains = [s["mean_gain"] for s in groups.values() if s["mean_gain"] is not None]
    ids = [s["mean_identity"] for s in groups.values() if s["mean_identity"] is not None]
    rates = [s["failure_rate"] for s in groups.values() if s["failure_rate"] is not None]
    overall["spread"] = {  # max - min over groups: the skew at a glance
        "mean_gain": (max(gains) - min(gains)) if gains else None,
        "mean_identity": (max(ids) - min(ids)) if ids else None,
        "failure_rate": (max(rates) - min(rates)) if rates else None,
    }
    return {"groups": groups, "overall": overall}


def run_audit(
    images: str | Path,
    bundle: Optional[str | Path] = None,
    *,
    beautifier: Optional[Beautifier] = None,
    settings: Optional[Settings] = None,
    limit: Optional[int] = None,
    aligned: bool = False,
    device: str = "auto",
    threads: Optional[int] = None,
    backend: str = "auto",
    progress: Optional[AuditProgress] = None,
) -> dict:
    """Optimise every photo of ``images`` (``limit`` per group) with one loaded bundle; returns
    ``{"groups": {group: stats}, "overall": stats, "photos": [...], "settings": ..., "bundle_hash": ...}``."""
    groups = collect(images, limit)
    settings = as_settings(settings)
    jobs = [(g, p) for g, ps in groups.items() for p in ps]
    own = beautifier is None
    if beautifier is None:
        if bundle is None:
            raise UsageError("run_audit needs a bundle or a loaded beautifier")
        b = Beautifier(bundle, device=device, threads=threads, backend=backend)
    else:
        b = beautifier
    t0 = time.perf_counter()
    try:
        outcomes = []
        for i, (g, p) in enumerate(jobs):
            outcomes.append(audit_one(b, p, g, settings, aligned))
            if progress:
                progress(i + 1, len(jobs), g)
        bundle_hash = b.bundle_hash
        resolved = b.resolve(settings)
    finally:
        if own:
            b.close()
    res = summarize(outcomes)
    res.update(
        {
            "images": str(images),
            "limit_per_group": limit,
            "settings": resolved.to_dict(),
            "bundle_hash": bundle_hash,
            "seconds": time.perf_counter() - t0,
            "photos": [asdict(o) for o in outcomes],
        }
    )
    return res


def _f(v, fmt: str = "{:+.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_table(res: dict) -> str:
    """A fixed-width table, one row per group and one for all photos."""
    head = f"{'group':<24} {'n':>4} {'ok':>4} {'mean gain':>10} {'median':>8} {'identity':>9} {'s/photo':>8}  failures"
    rows = [head, "-" * len(head)]
    items = list(res["groups"].items()) + [("ALL", res["overall"])]
    for g, s in items:
        fails = ", ".join(f"{k} {v}" for k, v in s["failures"].items()) or "-"
        rows.append(
            f"{g[:24]:<24} {s['count']:>4} {s['ok']:>4} {_f(s['mean_gain']):>10} {_f(s['median_gain']):>8} "
            f"{_f(s['mean_identity'], '{:.3f}'):>9} {_f(s['seconds_per_photo'], '{:.2f}'):>8}  {fails}"
        )
        if g != "ALL" and g == items[-2][0]:
            rows.append("-" * len(head))
    sp = res["overall"]["spread"]
    rows.append(
        f"spread between groups (max - min): mean gain {_f(sp['mean_gain'], '{:.3f}')}, "
        f"identity {_f(sp['mean_identity'], '{:.3f}')}, failure rate {_f(sp['failure_rate'], '{:.2f}')}"
    )
    return "\n".join(rows)

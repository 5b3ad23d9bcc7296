"""``beautyrt evaluate``: run the search over a folder of photos and compare it with a linear edit.

For every photo (torch-free; the bundle's engines only):

* the search: the stages as :meth:`Beautifier.optimize` runs them, with the given settings -> regressor gain and
  identity cosine of the best candidate, measured where the search scored (``score_on``: the photo crop + edit
  vs the photo crop, or G(best) vs G(start)), time;
* the output the user gets: the beauty and identity models on the edited FFHQ crop (photo crop + edit)
  vs the photo's own crop (``gain_output`` / ``identity_output``);
* the linear baseline (InterFaceGAN-style, ``runtime.strategies.linear``) from the same inversion: the walk
  from w_start along the bundle's ``beauty_direction`` (a unit vector in W, units of w_std, fitted at export
  time), all steps scored in ONE call and measured like the search; the best step at or above the same
  identity floor is the baseline's result. Bundles without a direction skip the baseline.

The report: per-photo rows, and mean/median gains, identities, failures (no face, errors) and seconds
per photo; optionally a contact sheet image: one row per photo, columns before | search | linear.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image, ImageDraw

from ..beautifier import Beautifier
from ..errors import NoFaceError, UsageError
from ..objective import cosine_to, edit_cost
from ..ops.blend import delivery_mask, edits_as_delivered
from ..ops.imageio import atomic_write_bytes, check_outputs, encode_image, output_format
from ..ops.imaging import add_edit, blur_matrix, crop_to_unit, edit_in_grey_levels, resize_float, resize_u8
from ..settings import Settings, as_settings
from ..stages import compose, decode, search
from ..stages import rescore as rescore_stage
from ..timing import StageTimer

log = logging.getLogger("beautyrt")
EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def list_images(
    images: str | Path, csv_path: Optional[str | Path] = None, limit: Optional[int] = None, seed: int = 0
) -> list[Path]:
    """Photos under ``images`` (recursive, sorted); only those named in ``csv_path``'s ``image`` column
    (resolved against the csv's folder) when given; a seeded sample of ``limit`` of them."""
    root = Path(images)
    if not root.is_dir():
        raise UsageError(f"--images {root}: not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTS and p.is_file())
    if csv_path is not None:
        with open(csv_path, newline="") as f:
            wanted = {(Path(csv_path).parent / row["image"]).resolve() for row in csv.DictReader(f)}
        files = [p for p in files if p.resolve() in wanted]
    if not files:
        raise UsageError(f"no images found under {root}" + (f" listed in {csv_path}" if csv_path else ""))
    if limit is not None and limit < len(files):
        idx = np.sort(np.random.default_rng(seed).choice(len(files), size=limit, replace=False))
        files = [files[i] for i in idx]
    return files


SMOOTH_SIGMA = 1.5  # px at 64 px crop scale (scaled with the crop)
SMOOTH_OPACITY = 0.7


def smooth_skin(crop: np.ndarray, mask: np.ndarray, sigma: float = SMOOTH_SIGMA, opacity: float = SMOOTH_OPACITY):
    """The baseline users know: a Gaussian blur of the crop blended in over the face mask (uint8 in, uint8 out)."""
    n = crop.shape[0]
    B = blur_matrix(n, sigma * n / 64.0)
    x = crop.astype(np.float32)
    blurred = np.einsum("ij,jkc,lk->ilc", B, x, B)
    a = (opacity * mask.astype(np.float32))[..., None]
    return np.clip(np.rint(x + a * (blurred - x)), 0, 255).astype(np.uint8)


def _soft_ellipse(n: int) -> np.ndarray:
    """A face-sized soft ellipse in an aligned crop (for inputs without landmarks)."""
    ys, xs = (np.mgrid[0:n, 0:n] + 0.5) / n
    rho = np.sqrt(((xs - 0.5) / 0.3) ** 2 + ((ys - 0.56) / 0.38) ** 2)
    return np.clip((1.0 - rho) / 0.15, 0.0, 1.0).astype(np.float32)


def bootstrap_ci(v: np.ndarray, n: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of the mean."""
    v = np.asarray(v, np.float64)
    if v.size < 2:
        return [float(v.mean()), float(v.mean())] if v.size else [math.nan, math.nan]
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n, v.size))
    m = v[idx].mean(1)
    return [float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))]


class Evaluator:
    """Runs the stages on one photo at a time: the search with the given settings, then -- from the same
    inversion -- the linear baseline (``strategy="linear"``) when the bundle has a beauty direction, and the
    skin-smoothing baseline (:func:`smooth_skin`). The delivered photo is re-detected and re-scored
    (``delivered_*``); a ``judge`` (another bundle's crop_scorer: a regressor on networks the search did not
    use) scores the photo's crop, the delivered crop and both baselines (``judge_*``)."""

    def __init__(self, bf: Beautifier, settings: Settings, judge: Optional[Beautifier] = None):
        self.bf, self.s = bf, bf.resolve(settings)
        self.judge = judge
        if judge is not None and not judge.can_score_output:
            raise UsageError("the judge bundle cannot score crops (no crop_scorer)")
        self.linear_s = replace(self.s, strategy="linear")
        self.has_direction = bf.models.direction is not None
        if not bf.can_score_output:
            log.warning("this bundle cannot score crops in the generator's frame: no output-side metrics")

    def one(self, path: Path) -> tuple[dict, dict]:
        bf, s = self.bf, self.s
        t0 = time.perf_counter()
        timer = StageTimer()
        photo = decode.decode(path)
        faces, _ = bf.faces_to_edit(photo, s, False, timer)
        fe = bf.edit_face(faces[0], s, timer, photo=photo)
        out = compose.compose_photo(photo, [(fe.aligned, fe.edit)], s.strength)
        secs = time.perf_counter() - t0
        o, crop = fe.outcome, fe.aligned.crop
        row = {
            "image": str(path),
            "score_before": o.score_before,
            "score_after": o.score_after,
            "gain": o.gain,
            "identity": o.identity,
            "seconds": secs,
            "generations": o.generations,
            "evaluations": o.evaluations,
        }
        delta = edit_in_grey_levels(fe.inversion.g_start, fe.edit.g_best, s.transfer)
        vis = {
            "rgb": photo.rgb,
            "landmarks": fe.aligned.face.landmarks if fe.aligned.face else None,
            "out": out,
            "aligned": crop,
            "delta_search": delta,
        }
        dmask = delivery_mask(fe.aligned.alignment, len(crop))
        crops = [crop, add_edit(crop, _as_delivered(delta, dmask))]
        if self.has_direction:
            lin = search.search(bf.models, fe.aligned, fe.inversion, self.linear_s)
            g_lin = compose.render_edit(bf.models, fe.inversion, lin, self.linear_s).g_best
            d_lin = edit_in_grey_levels(fe.inversion.g_start, g_lin, s.transfer)
            vis["delta_linear"] = d_lin
            crops.append(add_edit(crop, _as_delivered(d_lin, dmask)))
            row.update(linear_gain=lin.gain, linear_identity=lin.identity)
        mask = dmask if dmask is not None else _soft_ellipse(len(crop))  # the face mask, also for the smoothing
        smooth = smooth_skin(crop, mask)
        vis["smooth"] = smooth
        if bf.can_score_output:
            found = rescore_stage.delivered_crop(bf.models, out, fe.aligned, s.min_face)
            named = {"photo": crop, "output": crops[1], "smooth": smooth}
            if len(crops) > 2:
                named["linear"] = crops[2]
            if found is not None:
                named["delivered"] = found[0]
            sc = bf.models.score_crops(np.concatenate([crop_to_unit(c, bf.resolution) for c in named.values()]))
            score = dict(zip(named, sc["score"].astype(np.float64)))
            cos = dict(zip(named, cosine_to(sc["embedding"][0].astype(np.float64), sc["embedding"].astype(np.float64))))
            row.update(edit_cost=_cost(crops[1], crop, mask), smooth_edit_cost=_cost(smooth, crop, mask))
            if "linear" in named:
                row.update(linear_edit_cost=_cost(named["linear"], crop, mask))
            row.update(gain_output=score["output"] - score["photo"], identity_output=float(cos["output"]))
            row.update(smooth_gain=score["smooth"] - score["photo"], smooth_identity=float(cos["smooth"]))
            if "linear" in named:
                row.update(
                    linear_gain_output=score["linear"] - score["photo"], linear_identity_output=float(cos["linear"])
                )
            if "delivered" in named:
                row.update(
                    delivered_gain=score["delivered"] - score["photo"],
                    delivered_identity=float(cos["delivered"]),
                    report_minus_delivered=o.score_after - score["delivered"],
                )
            if self.judge is not None:
                jr = self.judge.resolution
                jn = {k: v for k, v in named.items() if k != "output"}
                js = self.judge.models.score_crops(
                    np.concatenate([crop_to_unit(resize_u8(c, jr), jr) for c in jn.values()])
                )
                j = dict(zip(jn, js["score"].astype(np.float64)))
                for k in ("delivered", "linear", "smooth"):
                    if k in j:
                        row[f"judge_{k}_gain"] = float(j[k] - j["photo"])
        row = {k: float(v) if isinstance(v, np.floating) else v for k, v in row.items()}
        return row, vis


def _cost(edited: np.ndarray, crop: np.ndarray, mask: np.ndarray) -> float:
    """The naturalness cost (``objective.edit_cost``) of the change from ``crop`` to ``edited`` (uint8 crops)."""
    d = (edited.astype(np.float32) - crop.astype(np.float32)) / np.float32(127.5)
    return float(edit_cost(d.transpose(2, 0, 1)[None], mask)[0])


def _as_delivered(delta: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    """One (H, W, 3) edit as compose delivers it in the crop frame (the whole edit for an aligned input)."""
    if mask is None:
        return delta
    return edits_as_delivered(delta.transpose(2, 0, 1)[None], mask)[0].transpose(1, 2, 0)


def _stats(rows: list[dict], key: str) -> Optional[dict]:
    v = np.asarray([r[key] for r in rows if key in r], np.float64)
    if not v.size:
        return None
    return {
        "mean": float(v.mean()),
        "ci95": bootstrap_ci(v),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
    }


ROW_STATS = (
    "gain",
    "identity",
    "seconds",
    "gain_output",
    "identity_output",
    "delivered_gain",
    "delivered_identity",
    "report_minus_delivered",
    "linear_gain",
    "linear_identity",
    "linear_gain_output",
    "linear_identity_output",
    "smooth_gain",
    "smooth_identity",
    "edit_cost",
    "linear_edit_cost",
    "smooth_edit_cost",
    "judge_delivered_gain",
    "judge_linear_gain",
    "judge_smooth_gain",
)


def evaluate(
    images: str | Path,
    bundle: str | Path,
    *,
    settings: Optional[Settings] = None,
    limit: Optional[int] = None,
    csv_path: Optional[str | Path] = None,
    sheet: Optional[str | Path] = None,
    sheet_rows: int = 16,
    seed: int = 0,
    threads: Optional[int] = None,
    device: str = "auto",
    backend: str = "auto",
    progress: Optional[Callable[[int, int], None]] = None,
    judge: Optional[str | Path] = None,
) -> dict:
    """``judge``: another bundle whose crop_scorer (a regressor on other networks) scores the delivered crops
    and the baselines too (the cross-network check)."""
    import contextlib

    s = as_settings(settings)
    if sheet is not None:  # before minutes of work: not a photo of the set, not in the bundle, not a device
        check_outputs([("--sheet", sheet, True)], protected_dirs=[("--images", images), ("bundle", bundle)])
    files = list_images(images, csv_path, limit, seed)
    rows: list[dict] = []
    fails: list[dict] = []
    visuals: list[tuple[dict, dict]] = []
    with contextlib.ExitStack() as stack:
        bf = stack.enter_context(Beautifier(bundle, threads=threads, device=device, backend=backend))
        jb = None if judge is None else stack.enter_context(Beautifier(judge, threads=threads, backend=backend))
        ev = Evaluator(bf, s, jb)
        t0 = time.perf_counter()
        for i, p in enumerate(files):
            try:
                row, vis = ev.one(p)
                rows.append(row)
                if len(visuals) < sheet_rows:
                    visuals.append((row, vis))
            except NoFaceError as e:
                fails.append({"image": str(p), "error": f"no face: {e}"})
            except Exception as e:  # an evaluation reports failures instead of stopping
                fails.append({"image": str(p), "error": f"{type(e).__name__}: {e}"})
                log.warning("%s: %s", p, e)
            if progress:
                progress(i + 1, len(files))
        total = time.perf_counter() - t0
        floor = ev.s.weights.identity_floor
        rep: dict[str, Any] = {
            "bundle": str(Path(bundle)),
            "bundle_hash": bf.bundle_hash,
            "photos": len(files),
            "ok": len(rows),
            "failures": fails,
            "settings": ev.s.to_dict(),
            "identity_floor": floor,
            **{k: _stats(rows, k) for k in ROW_STATS},
            "judge": None if judge is None else str(judge),
            "total_seconds": total,
            "rows": rows,
        }
        if rep["gain"] and rep["linear_gain"]:
            wins = sum(r["gain"] > r["linear_gain"] for r in rows if "linear_gain" in r)
            rep["search_beats_linear"] = {
                "mean_gain_difference": rep["gain"]["mean"] - rep["linear_gain"]["mean"],
                "photos_where_search_wins": int(wins),
                "photos": len(rows),
            }
        if sheet is not None and visuals:
            write_sheet(visuals, sheet)
            rep["sheet"] = str(sheet)
    return rep


def _face_crop(rgb: np.ndarray, landmarks: Optional[np.ndarray], size: int) -> np.ndarray:
    from ..ops.geometry import ffhq_alignment, warp

    if landmarks is None:
        return np.asarray(Image.fromarray(rgb).resize((size, size)))
    return warp(rgb, ffhq_alignment(landmarks, size).matrix, size)


def write_sheet(visuals: list, path: str | Path, size: int = 160) -> Path:
    """Rows: before | search result | linear baseline, each the FFHQ crop of the photo at ``size`` px."""
    ncol = 3 if any("delta_linear" in v for _, v in visuals) else 2
    pad, label_h = 4, 14
    W = ncol * (size + pad) + pad
    H = len(visuals) * (size + label_h + pad) + pad + label_h
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(["before", "search (CMA-ES)", "linear direction"][:ncol]):
        draw.text((pad + c * (size + pad) + 2, 1), name, fill=(0, 0, 0))
    for i, (row, v) in enumerate(visuals):
        y = label_h + pad + i * (size + label_h + pad)
        before = _face_crop(v["rgb"], v["landmarks"], size)
        after = (
            _face_crop(v["out"], v["landmarks"], size)
            if v["landmarks"] is not None
            else np.asarray(Image.fromarray(v["out"]).resize((size, size)))
        )
        cols = [before, after]
        labels = ["", f"+{row['gain']:.2f} id {row['identity']:.2f}"]
        if ncol == 3:
            d = v.get("delta_linear")
            lin = (
                before
                if d is None
                else np.clip(
                    np.rint(before.astype(np.float32) + resize_float(d.astype(np.float32), size, size)), 0, 255
                ).astype(np.uint8)
            )
            cols.append(lin)
            labels.append(f"+{row.get('linear_gain', math.nan):.2f} id {row.get('linear_identity', math.nan):.2f}")
        labels[0] = Path(row["image"]).name[:24]
        for c, (im, lab) in enumerate(zip(cols, labels)):
            x = pad + c * (size + pad)
            sheet.paste(Image.fromarray(im), (x, y))
            draw.text((x + 2, y + size + 1), lab, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encode_image(np.asarray(sheet), output_format(path)))
    return path


def format_summary(rep: dict) -> str:
    def f(k):
        s = rep.get(k)
        if not s:
            return "n/a"
        ci = s.get("ci95") or [math.nan, math.nan]
        return f"mean {s['mean']:+.3f} [95% {ci[0]:+.3f}, {ci[1]:+.3f}] median {s['median']:+.3f}"

    lines = [
        f"photos: {rep['photos']} ok: {rep['ok']} failures: {len(rep['failures'])}",
        f"search  gain {f('gain')}; identity {f('identity')}",
        f"search  output gain {f('gain_output')}; output identity {f('identity_output')}",
        f"search  delivered gain {f('delivered_gain')}; identity {f('delivered_identity')}",
        f"search  report - delivered score {f('report_minus_delivered')}",
        f"linear  gain {f('linear_gain')}; identity {f('linear_identity')} (floor {rep['identity_floor']})",
        f"linear  output gain {f('linear_gain_output')}; output identity {f('linear_identity_output')}",
        f"smooth  gain {f('smooth_gain')}; identity {f('smooth_identity')}",
        f"edit cost (10 grey levels RMS + fine): search {f('edit_cost')}; linear {f('linear_edit_cost')}; "
        f"smooth {f('smooth_edit_cost')}",
        f"seconds/photo {f('seconds')}",
    ]
    if rep.get("judge"):
        lines.append(f"judge {rep['judge']}: delivered gain {f('judge_delivered_gain')}")
        lines.append(f"judge: linear gain {f('judge_linear_gain')}; smooth gain {f('judge_smooth_gain')}")
    if "search_beats_linear" in rep:
        b = rep["search_beats_linear"]
        lines.append(
            f"search - linear mean gain: {b['mean_gain_difference']:+.3f} "
            f"(search better on {b['photos_where_search_wins']}/{b['photos']})"
        )
    if rep.get("sheet"):
        lines.append(f"contact sheet: {rep['sheet']}")
    return "\n".join(lines)

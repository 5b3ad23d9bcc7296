"""``beautyrt evaluate``: run the search over a folder of photos and compare it with a linear edit.

For every photo (torch-free; the bundle's engines only):

* the search: :meth:`Beautifier.optimize` with the given settings -> regressor gain and identity cosine of the
  best candidate, measured where the search scored (``score_on``: the photo crop + edit vs the photo crop, or
  G(best) vs G(start)), time;
* the output the user gets: the beauty and identity models on the edited FFHQ crop (photo crop + edit)
  vs the photo's own crop (``gain_output`` / ``identity_output``);
* the linear baseline (InterFaceGAN-style): walk from w_start along the bundle's ``beauty_direction``
  (a unit vector in W, units of w_std, fitted at export time) in steps of ``step`` -- all steps scored in
  ONE scorer call -- until the identity cosine falls below the same identity floor; the best feasible step
  is the baseline's result. Bundles without a direction skip the baseline.

The report: per-photo rows, and mean/median gains, identities, failures (no face, errors) and seconds
per photo; optionally a contact sheet image: one row per photo, columns before | search | linear.
"""
from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .errors import NoFaceError, UsageError
from .imageio import load_image
from .objective import cosine_to
from .pipeline import Beautifier, Settings, crop_to_unit, edit_delta, model_input, resize_float

log = logging.getLogger("beautyrt")
EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DIRECTION_ROLE = "beauty_direction"


def list_images(images: str | Path, csv_path: Optional[str | Path] = None, limit: Optional[int] = None,
                seed: int = 0) -> list[Path]:
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


class Evaluator:
    def __init__(self, bf: Beautifier, settings: Settings, step: float = 0.25, max_steps: int = 32):
        from beautyrt.engines import open_engine

        self.bf, self.s, self.step, self.max_steps = bf, bf.resolve(settings), step, max_steps
        m = bf.manifest
        self.direction = None
        if m.has(DIRECTION_ROLE):
            d = np.load(m.path(DIRECTION_ROLE)).astype(np.float32)
            if d.shape != (bf.w_dim,):
                raise UsageError(f"bundle beauty_direction has shape {d.shape}, expected ({bf.w_dim},)")
            self.direction = d / max(float(np.linalg.norm(d)), 1e-12)
        # output-side metrics: the crop_scorer, else the standalone models where they take the crop as it is
        # (a model with its own alignment template, e.g. an external ArcFace, would need that crop: skipped)
        self.beauty = self.identity = None
        if not bf.can_score_output:
            log.warning("this bundle cannot score crops in the generator's frame: no output-side metrics")
        elif "crop_scorer" not in bf.engines:
            self.beauty, self.identity = open_engine(m, "beauty"), open_engine(m, "identity")

    def _image_models(self, crops: Sequence[np.ndarray]):
        """(scores, embeddings) of uint8 crops in the generator's frame through the bundle's own models."""
        if "crop_scorer" in self.bf.engines:
            x = np.concatenate([crop_to_unit(c, self.bf.resolution) for c in crops])
            out = self.bf.engines["crop_scorer"].run({"image": x})
            return out["score"].astype(np.float64), out["embedding"].astype(np.float64)
        if self.beauty is None or self.identity is None:
            return None, None
        bn, inn = self.bf.manifest.model("beauty").normalisation, self.bf.manifest.model("identity").normalisation
        xb = np.concatenate([model_input(c, bn) for c in crops])
        xi = np.concatenate([model_input(c, inn) for c in crops])
        return (self.beauty.run({"image": xb})["score"].astype(np.float64),
                self.identity.run({"image": xi})["embedding"].astype(np.float64))

    def linear(self, w_start: np.ndarray, crop: np.ndarray) -> dict:
        """Walk along the direction until the identity floor, scored like the search (on the photo crop plus
        the edit with ``score_on="output"``, on G(w) otherwise): all steps in one batched call."""
        ts = self.step * np.arange(0, self.max_steps + 1, dtype=np.float32)
        off = ts[:, None] * self.direction[None] * self.bf.w_std[None]
        ws = (w_start[None] + off[:, None, :]).astype(np.float32)
        if self.s.score_on == "output":
            out = self.bf._output_scorer(w_start[None], crop, self.s.transfer)(ws)
        else:
            out = self.bf.engines["scorer"].run({"ws": ws})
        score = out["score"].astype(np.float64)
        cos = cosine_to(out["embedding"][0].astype(np.float64), out["embedding"].astype(np.float64))
        floor = self.s.weights.identity_floor
        ok = np.flatnonzero(cos < floor)
        last = (int(ok[0]) - 1) if ok.size else len(ts) - 1  # walk stops before the first step below the floor
        k = int(np.argmax(score[: last + 1]))
        return {"t": float(ts[k]), "score_before": float(score[0]), "score_after": float(score[k]),
                "gain": float(score[k] - score[0]), "identity": float(cos[k]), "ws": ws[k]}

    def _delta(self, w_start: np.ndarray, w_best: np.ndarray) -> np.ndarray:
        """The edit the output carries, (H, W, 3) in grey levels, from the float generator images (the uint8
        ones are clipped, which would lose the part of an edit beyond the value range)."""
        g = self.bf.engines["synthesis"].run({"ws": np.stack([w_start, w_best]).astype(np.float32)})["image"]
        return edit_delta((g[1] - g[0])[None], self.s.transfer)[0].transpose(1, 2, 0) * 127.5

    def one(self, path: Path) -> tuple[dict, Optional[dict]]:
        t0 = time.perf_counter()
        r = self.bf.optimize(path, self.s)
        secs = time.perf_counter() - t0
        row = {"image": str(path), "score_before": r.score_before, "score_after": r.score_after,
               "gain": r.score_after - r.score_before, "identity": r.identity, "seconds": secs,
               "generations": r.generations_run}
        R = self.bf.resolution
        delta = self._delta(r.w_start, r.w_best)
        edited = np.clip(np.rint(r.aligned.astype(np.float32) + delta), 0, 255).astype(np.uint8)
        vis = {"rgb": load_image(path), "landmarks": np.asarray(r.face["landmarks"]) if r.face else None,
               "out": r.image, "aligned": r.aligned, "delta_search": delta}
        crops = [r.aligned, edited]
        if self.direction is not None:
            lin = self.linear(r.w_start.astype(np.float32), r.aligned)
            g = self.bf.engines["synthesis"].run({"ws": np.stack([r.w_start, lin["ws"]]).astype(np.float32)})["image"]
            d_lin = edit_delta((g[1] - g[0])[None], self.s.transfer)[0].transpose(1, 2, 0) * 127.5
            vis["delta_linear"] = d_lin
            crops.append(np.clip(np.rint(r.aligned.astype(np.float32) + d_lin), 0, 255).astype(np.uint8))
            row.update(linear_gain=lin["gain"], linear_identity=lin["identity"], linear_t=lin["t"])
        sc, emb = self._image_models(crops)
        if sc is not None:
            cos = cosine_to(emb[0], emb)
            row.update(gain_output=float(sc[1] - sc[0]), identity_output=float(cos[1]))
            if len(crops) > 2:
                row.update(linear_gain_output=float(sc[2] - sc[0]), linear_identity_output=float(cos[2]))
        assert R == r.aligned.shape[0]
        return row, vis


def _stats(rows: list[dict], key: str) -> Optional[dict]:
    v = np.asarray([r[key] for r in rows if key in r], np.float64)
    if not v.size:
        return None
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def evaluate(images: str | Path, bundle: str | Path, *, settings: Optional[Settings] = None, limit: Optional[int] = None,
             csv_path: Optional[str | Path] = None, sheet: Optional[str | Path] = None, sheet_rows: int = 16,
             seed: int = 0, threads: Optional[int] = None, device: str = "auto",
             progress: Optional[Callable[[int, int], None]] = None) -> dict:
    s = (settings or Settings()).validate()
    files = list_images(images, csv_path, limit, seed)
    rows, fails, visuals = [], [], []
    with Beautifier(bundle, threads=threads, device=device) as bf:
        ev = Evaluator(bf, s)
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
        rep = {
            "bundle": str(Path(bundle)), "bundle_hash": bf.bundle_hash, "photos": len(files), "ok": len(rows),
            "failures": fails, "settings": ev.s.to_dict(), "identity_floor": floor,
            "gain": _stats(rows, "gain"), "identity": _stats(rows, "identity"), "seconds": _stats(rows, "seconds"),
            "gain_output": _stats(rows, "gain_output"), "identity_output": _stats(rows, "identity_output"),
            "linear_gain": _stats(rows, "linear_gain"), "linear_identity": _stats(rows, "linear_identity"),
            "linear_gain_output": _stats(rows, "linear_gain_output"),
            "linear_identity_output": _stats(rows, "linear_identity_output"),
            "total_seconds": total, "rows": rows,
        }
        if rep["gain"] and rep["linear_gain"]:
            wins = sum(r["gain"] > r["linear_gain"] for r in rows if "linear_gain" in r)
            rep["search_beats_linear"] = {"mean_gain_difference": rep["gain"]["mean"] - rep["linear_gain"]["mean"],
                                          "photos_where_search_wins": int(wins), "photos": len(rows)}
        if sheet is not None and visuals:
            write_sheet(visuals, sheet)
            rep["sheet"] = str(sheet)
    return rep


def _face_crop(rgb: np.ndarray, landmarks: Optional[np.ndarray], size: int) -> np.ndarray:
    from .align import ffhq_alignment, warp

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
        after = _face_crop(v["out"], v["landmarks"], size) if v["landmarks"] is not None else \
            np.asarray(Image.fromarray(v["out"]).resize((size, size)))
        cols = [before, after]
        labels = ["", f"+{row['gain']:.2f} id {row['identity']:.2f}"]
        if ncol == 3:
            d = v.get("delta_linear")
            lin = before if d is None else np.clip(np.rint(before.astype(np.float32) + resize_float(
                d.astype(np.float32), size, size)), 0, 255).astype(np.uint8)
            cols.append(lin)
            labels.append(f"+{row.get('linear_gain', math.nan):.2f} id {row.get('linear_identity', math.nan):.2f}")
        labels[0] = Path(row["image"]).name[:24]
        for c, (im, lab) in enumerate(zip(cols, labels)):
            x = pad + c * (size + pad)
            sheet.paste(Image.fromarray(im), (x, y))
            draw.text((x + 2, y + size + 1), lab, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def format_summary(rep: dict) -> str:
    def f(k):
        s = rep.get(k)
        return "n/a" if not s else f"mean {s['mean']:+.3f} median {s['median']:+.3f}"
    lines = [f"photos: {rep['photos']} ok: {rep['ok']} failures: {len(rep['failures'])}",
             f"search  gain {f('gain')}; identity {f('identity')}",
             f"search  output gain {f('gain_output')}; output identity {f('identity_output')}",
             f"linear  gain {f('linear_gain')}; identity {f('linear_identity')} (floor {rep['identity_floor']})",
             f"seconds/photo {f('seconds')}"]
    if "search_beats_linear" in rep:
        b = rep["search_beats_linear"]
        lines.append(f"search - linear mean gain: {b['mean_gain_difference']:+.3f} "
                     f"(search better on {b['photos_where_search_wins']}/{b['photos']})")
    if rep.get("sheet"):
        lines.append(f"contact sheet: {rep['sheet']}")
    return "\n".join(lines)

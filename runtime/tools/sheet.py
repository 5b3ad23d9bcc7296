"""Pictures about a result, drawn with Pillow only (no matplotlib): a before|after sheet with the scores
written on it, and a per-generation plot of beauty score and identity.

Both return uint8 RGB arrays; writing them (atomically, with provenance) is the caller's business.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BG = (255, 255, 255)
INK = (20, 20, 20)
GREY = (150, 150, 150)
SCORE_COLOURS = ((200, 40, 40), (240, 160, 160))  # best so far, generation mean
IDENTITY_COLOURS = ((30, 90, 200), (150, 180, 240))
FLOOR_COLOUR = (230, 140, 0)


def _font(size: int):
    """Pillow's default font, scalable where Pillow has FreeType (>= 10.1), else the fixed bitmap one."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _fit(rgb: np.ndarray, height: int) -> Image.Image:
    im = Image.fromarray(np.asarray(rgb, np.uint8), "RGB")
    w = max(1, round(im.width * height / im.height))
    return im if im.height == height else im.resize((w, height), Image.Resampling.BICUBIC)


def side_by_side(before: np.ndarray, after: np.ndarray, report: Mapping, height: Optional[int] = None) -> np.ndarray:
    """``before | after`` at one height (default: the before photo's, clamped to 256..768 px) with the beauty
    scores, the gain and the identity cosine written under each half, and an "AI-edited" line."""
    h = int(height or min(768, max(256, before.shape[0])))
    a, b = _fit(before, h), _fit(after, h)
    pad, font_px = 8, max(14, h // 28)
    font = _font(font_px)
    band = 3 * font_px + 4 * pad
    sheet = Image.new("RGB", (a.width + b.width + 3 * pad, h + band + 2 * pad), BG)
    sheet.paste(a, (pad, pad))
    sheet.paste(b, (2 * pad + a.width, pad))
    d = ImageDraw.Draw(sheet)
    s0, s1 = float(report["score_before"]), float(report["score_after"])
    y = h + 2 * pad
    d.text((pad, y), f"before: beauty {s0:.3f}", fill=INK, font=font)
    d.text((2 * pad + a.width, y), f"after: beauty {s1:.3f} ({s1 - s0:+.3f})", fill=INK, font=font)
    d.text(
        (2 * pad + a.width, y + font_px + pad),
        f"identity (cosine to before): {float(report['identity']):.3f}",
        fill=INK,
        font=font,
    )
    d.text(
        (pad, y + 2 * (font_px + pad)),
        "AI-edited by beautyrt (scores are the bundle's own regressor)",
        fill=GREY,
        font=font,
    )
    return np.asarray(sheet)


def _panel(
    d: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    gens: Sequence[int],
    series: Sequence[tuple[str, Sequence[float], tuple]],
    title: str,
    font,
    hline: Optional[float] = None,
) -> None:
    x0, y0, x1, y1 = box
    vals = [v for _, ys, _ in series for v in ys] + ([hline] if hline is not None else [])
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    margin = 0.05 * (hi - lo)
    lo, hi = lo - margin, hi + margin
    g0, g1 = min(gens), max(gens)
    gx = (lambda g: x0 + (x1 - x0) * (g - g0) / (g1 - g0)) if g1 > g0 else (lambda g: (x0 + x1) / 2)
    vy = lambda v: y1 - (y1 - y0) * (v - lo) / (hi - lo)  # noqa: E731
    d.rectangle(box, outline=INK)
    d.text((x0, y0 - 18), title, fill=INK, font=font)
    d.text((x0 - 4, y0), f"{hi:.3f}", fill=GREY, font=font, anchor="ra")
    d.text((x0 - 4, y1), f"{lo:.3f}", fill=GREY, font=font, anchor="rd")
    if hline is not None and lo <= hline <= hi:
        d.line([(x0, vy(hline)), (x1, vy(hline))], fill=FLOOR_COLOUR, width=1)
    lx = x1 - 4
    for name, ys, colour in reversed(series):
        pts = [(gx(g), vy(v)) for g, v in zip(gens, ys)]
        if len(pts) == 1:
            d.ellipse([pts[0][0] - 3, pts[0][1] - 3, pts[0][0] + 3, pts[0][1] + 3], fill=colour)
        else:
            d.line(pts, fill=colour, width=2)
        d.text((lx, y1 - 4), name, fill=colour, font=font, anchor="rd")
        lx -= int(d.textlength(name, font=font)) + 12


def history_plot(
    history: Sequence[Mapping], identity_floor: Optional[float] = None, width: int = 720, height: int = 480
) -> np.ndarray:
    """Two panels over generations: beauty score (best so far, generation mean) and identity (identity of the
    best so far, generation mean; the floor as a line)."""
    if not history:
        raise ValueError("no history to plot (zero generations)")
    gens = [int(h["generation"]) for h in history]
    im = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(im)
    font = _font(13)
    left, right, top, gap, bottom = 70, 16, 28, 44, 36
    ph = (height - top - gap - bottom) // 2
    _panel(
        d,
        (left, top, width - right, top + ph),
        gens,
        [
            ("best so far", [h["best_score"] for h in history], SCORE_COLOURS[0]),
            ("generation mean", [h["gen_mean_score"] for h in history], SCORE_COLOURS[1]),
        ],
        "beauty score",
        font,
    )
    y2 = top + ph + gap
    _panel(
        d,
        (left, y2, width - right, y2 + ph),
        gens,
        [
            ("identity of best", [h["best_identity"] for h in history], IDENTITY_COLOURS[0]),
            ("generation mean", [h["gen_mean_identity"] for h in history], IDENTITY_COLOURS[1]),
        ],
        "identity (cosine to the start)"
        + (f"; orange line: floor {identity_floor:g}" if identity_floor is not None else ""),
        font,
        hline=identity_floor,
    )
    d.text(
        ((left + width - right) // 2, height - 8),
        f"generation ({gens[0]}..{gens[-1]})",
        fill=INK,
        font=font,
        anchor="md",
    )
    return np.asarray(im)

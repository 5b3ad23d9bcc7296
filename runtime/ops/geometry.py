"""Face alignment: 5 landmarks -> similarity transform -> square crop (numpy + Pillow).

Coordinates: a pixel's centre is at integer (x, y) = (column, row), in the image and in the crop alike
(numpy indexing, and what the detector's landmarks use). A 2x3 ``matrix`` maps homogeneous image points to
crop points, ``inverse`` maps crop points back to the image; both are pure similarities (rotation, uniform
scale, translation; never a reflection).

Two ways to get a transform:

* ``ffhq_quad`` + ``similarity_to_square``: the FFHQ dataset recipe (Karras et al., ``recreate_aligned_images``)
  expressed with 5 points: the eye centres are the two eye landmarks, the mouth centre is the mean of the two
  mouth corners; the oriented square ("quad") is mapped onto the whole crop, corner to corner (the quad's
  corners land on the crop's outer pixel edges, as Pillow's QUAD transform does).
* ``template_transform``: least-squares similarity (Umeyama 1991, reflection excluded) from the 5 landmarks
  to template points given in crop pixels (e.g. dlib's 150 px chip or ArcFace's 112 px template).

``warp`` resamples with Pillow BICUBIC through the inverse mapping; when the crop is smaller than the face
(shrinking), it supersamples (ceil(scale)^2 bicubic samples per output pixel, box-averaged), so there is
no aliasing. Parts of the crop that fall outside the photo are filled like FFHQ does: the photo is mirrored
(edge reflection) and the mirrored band is progressively blurred and pulled toward the photo's median colour
(``fill="reflect"``, the default); or a constant colour (``fill="constant"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

from ..errors import UsageError

__all__ = [
    "Alignment",
    "ffhq_quad",
    "similarity_to_square",
    "umeyama",
    "template_transform",
    "ffhq_alignment",
    "warp",
    "apply_affine",
    "invert_affine",
    "affine_sample",
]


# --------------------------------------------------------------------------------------------------
# small affine algebra
# --------------------------------------------------------------------------------------------------
def apply_affine(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (N, 2) points."""
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    lin = np.linalg.inv(m[:, :2])
    return np.concatenate([lin, -(lin @ m[:, 2])[:, None]], axis=1)


def _as_landmarks(landmarks5) -> np.ndarray:
    lm = np.asarray(landmarks5, dtype=np.float64)
    if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
        raise UsageError(f"expected 5 finite (x, y) landmarks, got shape {list(lm.shape)}")
    return lm


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``dst ~ s R src + t`` (no reflection). Returns the 2x3 matrix."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise UsageError(f"umeyama needs two (N>=2, 2) point sets of equal shape, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum() / len(src)
    if var_s <= 1e-12:
        raise UsageError("umeyama: source points are all the same point")
    cov = dc.T @ sc / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / var_s)
    t = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, t[:, None]], axis=1)


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Alignment:
    """How a square crop was cut out of a photo.

    ``matrix``: 2x3, image -> crop; ``inverse``: 2x3, crop -> image; ``size``: crop side in pixels;
    ``quad``: (4, 2) image coordinates of the crop's outer corners (top-left, bottom-left, bottom-right,
    top-right); ``landmarks``: the (5, 2) image landmarks it was computed from."""

    matrix: np.ndarray
    inverse: np.ndarray
    size: int
    quad: np.ndarray
    landmarks: np.ndarray = field(repr=False)

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return float(math.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def landmarks_in_crop(self) -> np.ndarray:
        return apply_affine(self.matrix, self.landmarks)

    def to_dict(self) -> dict:
        r = lambda a: [[round(float(v), 6) for v in row] for row in np.asarray(a)]  # noqa: E731
        return {
            "matrix": r(self.matrix),
            "inverse": r(self.inverse),
            "size": int(self.size),
            "quad": r(self.quad),
            "landmarks": r(self.landmarks),
            "scale": round(self.scale, 6),
            "rotation_deg": round(math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0])), 4),
        }

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, size: int, landmarks5) -> "Alignment":
        m = np.asarray(matrix, dtype=np.float64)
        inv = invert_affine(m)
        e = -0.5
        corners = np.array([[e, e], [e, size + e], [size + e, size + e], [size + e, e]])
        return cls(
            matrix=m,
            inverse=inv,
            size=int(size),
            quad=apply_affine(inv, corners),
            landmarks=_as_landmarks(landmarks5).copy(),
        )


# --------------------------------------------------------------------------------------------------
def ffhq_quad(landmarks5) -> np.ndarray:
    """The FFHQ crop quad (4, 2): top-left, bottom-left, bottom-right, top-right, in image coordinates.

    Recipe: eye_avg = mean of the eyes, eye_to_eye = right - left eye, mouth_avg = mean of the mouth corners,
    eye_to_mouth = mouth_avg - eye_avg; the crop's x axis is eye_to_eye rotated toward the perpendicular of
    eye_to_mouth (their average direction), half-side = max(2 |eye_to_eye|, 1.8 |eye_to_mouth|), centre =
    eye_avg + 0.1 eye_to_mouth."""
    lm = _as_landmarks(landmarks5)
    eye_l, eye_r = lm[0], lm[1]
    eye_avg = (eye_l + eye_r) / 2
    eye_to_eye = eye_r - eye_l
    mouth_avg = (lm[3] + lm[4]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    # eye_to_mouth rotated by -90 degrees points along +x for an upright face
    x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    n = math.hypot(*x)
    if n < 1e-9:
        raise UsageError("ffhq_quad: degenerate landmarks (eyes and mouth coincide)")
    x = x / n * max(math.hypot(*eye_to_eye) * 2.0, math.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])  # x rotated by +90 degrees (image y points down)
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def similarity_to_square(quad, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, inverse): the similarity mapping ``quad`` corners (tl, bl, br, tr) onto the crop's outer
    pixel edges, i.e. to (-0.5, -0.5), (-0.5, size-0.5), (size-0.5, size-0.5), (size-0.5, -0.5)."""
    if int(size) < 1:
        raise UsageError(f"crop size must be >= 1, got {size}")
    q = np.asarray(quad, dtype=np.float64)
    if q.shape != (4, 2):
        raise UsageError(f"quad must be (4, 2), got {list(q.shape)}")
    e = -0.5
    dst = np.array([[e, e], [e, size + e], [size + e, size + e], [size + e, e]])
    m = umeyama(q, dst)
    return m, invert_affine(m)


def ffhq_alignment(landmarks5, size: int) -> Alignment:
    """Alignment for an FFHQ-style crop of ``size`` pixels."""
    m, _ = similarity_to_square(ffhq_quad(landmarks5), size)
    return Alignment.from_matrix(m, size, landmarks5)


def template_transform(landmarks5, template_pts, size: int) -> Alignment:
    """Alignment whose matrix is the least-squares similarity taking ``landmarks5`` onto ``template_pts``
    (crop pixel coordinates of the same 5 points, same order) for a ``size`` x ``size`` crop."""
    lm = _as_landmarks(landmarks5)
    tp = np.asarray(template_pts, dtype=np.float64)
    if tp.shape != (5, 2):
        raise UsageError(f"template must be 5 (x, y) points, got shape {list(tp.shape)}")
    return Alignment.from_matrix(umeyama(lm, tp), size, lm)


# --------------------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------------------
def _pil_affine_data(m_dst_to_src: np.ndarray) -> tuple:
    """Pillow's AFFINE data for a dst->src map in pixel-centre-at-integer coordinates (Pillow samples at
    pixel centres x + 0.5)."""
    lin, t = m_dst_to_src[:, :2], m_dst_to_src[:, 2]
    off = t + 0.5 - lin @ np.array([0.5, 0.5])
    return (lin[0, 0], lin[0, 1], off[0], lin[1, 0], lin[1, 1], off[1])


def _fill_padding(arr: np.ndarray, pads: tuple[int, int, int, int], blur: float) -> np.ndarray:
    """FFHQ-like treatment of a mirrored border: progressively blur it and pull it toward the median."""
    left, top, right, bottom = pads
    h, w = arr.shape[:2]
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    tx = np.maximum((left - xs) / max(left, 1), (xs - (w - 1 - right)) / max(right, 1))
    ty = np.maximum((top - ys) / max(top, 1), (ys - (h - 1 - bottom)) / max(bottom, 1))
    t = np.clip(np.maximum(tx, ty), 0.0, 1.0)[..., None]  # 0 inside the photo, 1 at the far edge
    img = arr.astype(np.float32)
    if blur > 0:
        chans = [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(arr[..., c])).filter(ImageFilter.GaussianBlur(float(blur))),
                dtype=np.float32,
            )
            for c in range(arr.shape[2])
        ]
        blurred = np.stack(chans, axis=-1)
        img += (blurred - img) * np.clip(t * 3.0, 0.0, 1.0)
    inner = arr[top : h - bottom, left : w - right].reshape(-1, arr.shape[2])
    median = np.median(inner, axis=0).astype(np.float32)
    img += (median - img) * (t * 0.7)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def affine_sample(
    src: np.ndarray,
    m_dst_to_src: np.ndarray,
    out_w: int,
    out_h: int,
    *,
    fill: str = "reflect",
    fill_value: Sequence[int] = (0, 0, 0),
    resample: Image.Resampling = Image.Resampling.BICUBIC,
    blur: float | None = None,
    supersample_above: float = 1.25,
    as_float: bool = False,
) -> np.ndarray:
    """Resample ``src`` (H, W, C uint8) on the output grid: output pixel p takes src at ``M @ [p, 1]``.

    Shrinking (more than ``supersample_above`` source pixels per output pixel, scale s) samples a
    ceil(s)-times finer grid with BICUBIC and box-averages it (anti-aliasing without an extra blur pass).
    ``fill``: "reflect" (mirror + FFHQ-style blur toward the median; ``blur`` sigma in source pixels,
    default 2% of the sampled region) or "constant" (``fill_value``). Interpolation runs in float32;
    returns uint8 (rounded) or, with ``as_float``, float32 in [0, 255]."""
    if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] not in (1, 3, 4):
        raise UsageError(f"expected an (H, W, 1|3|4) uint8 image, got {src.dtype} {list(src.shape)}")
    m = np.asarray(m_dst_to_src, dtype=np.float64).copy()
    h, w = src.shape[:2]
    s = math.sqrt(abs(np.linalg.det(m[:, :2])))
    # anti-alias when shrinking: sample a k-times finer grid, then box-average k x k blocks (supersampling)
    k = int(math.ceil(s - 1e-6)) if s > supersample_above else 1
    k = min(k, 16)
    out_w, out_h = int(out_w), int(out_h)
    if k > 1:
        fine = np.array([[1.0 / k, 0.0, 0.5 / k - 0.5], [0.0, 1.0 / k, 0.5 / k - 0.5]])
        m = np.concatenate([m[:, :2] @ fine[:, :2], (m[:, :2] @ fine[:, 2] + m[:, 2])[:, None]], axis=1)
        out_w, out_h = out_w * k, out_h * k
    # the source region the output needs (+ margin for the bicubic support)
    corners = np.array([[-0.5, -0.5], [out_w - 0.5, -0.5], [-0.5, out_h - 0.5], [out_w - 0.5, out_h - 0.5]])
    sc = apply_affine(m, corners)
    margin = 4
    # Work on that region only (a face crop of a 64 MP photo must not convert, pad and blur the whole photo:
    # that took GBs). The region keeps every source pixel a mirrored border reflects, so the padding is the
    # full photo's; the median the border is pulled toward is then the region's, as FFHQ's own alignment does.
    x_lo, x_hi = int(math.floor(sc[:, 0].min())) - margin, int(math.ceil(sc[:, 0].max())) + margin + 1
    y_lo, y_hi = int(math.floor(sc[:, 1].min())) - margin, int(math.ceil(sc[:, 1].max())) + margin + 1
    cx0 = max(0, min(x_lo, w - max(0, x_hi - w), w - 1))
    cx1 = min(w, max(x_hi, -x_lo, cx0 + 1))
    cy0 = max(0, min(y_lo, h - max(0, y_hi - h), h - 1))
    cy1 = min(h, max(y_hi, -y_lo, cy0 + 1))
    if (cx0, cy0, cx1, cy1) != (0, 0, w, h):
        src = src[cy0:cy1, cx0:cx1]
        m[:, 2] -= (cx0, cy0)
        sc = sc - (cx0, cy0)
        h, w = src.shape[:2]
    left = max(0, int(math.ceil(-sc[:, 0].min())) + margin)
    top = max(0, int(math.ceil(-sc[:, 1].min())) + margin)
    right = max(0, int(math.ceil(sc[:, 0].max() - (w - 1))) + margin)
    bottom = max(0, int(math.ceil(sc[:, 1].max() - (h - 1))) + margin)
    if fill == "reflect":
        if left or top or right or bottom:
            padded = np.pad(src, ((top, bottom), (left, right), (0, 0)), mode="symmetric")
            if blur is None:
                region = max(sc[:, 0].max() - sc[:, 0].min(), sc[:, 1].max() - sc[:, 1].min())
                blur = 0.02 * region
            src = _fill_padding(padded, (left, top, right, bottom), blur)
            m[:, 2] += (left, top)
        fillcolor = None
    elif fill == "constant":
        fv = tuple(int(v) for v in fill_value)
        fillcolor = fv[0] if src.shape[2] == 1 else fv[: src.shape[2]]
    else:
        raise UsageError(f"fill must be 'reflect' or 'constant', got '{fill}'")
    # float32 per channel: Pillow's 8-bit transform truncates (a -0.5 grey-level bias per pass)
    data = _pil_affine_data(m)
    chans = []
    for ch in range(src.shape[2]):
        fc = None if fillcolor is None else float(fillcolor[ch] if isinstance(fillcolor, tuple) else fillcolor)
        im = Image.fromarray(np.ascontiguousarray(src[..., ch], dtype=np.float32))
        im = im.transform((out_w, out_h), Image.Transform.AFFINE, data=data, resample=resample, fillcolor=fc)
        if k > 1:
            im = im.reduce(k)
        chans.append(np.asarray(im, dtype=np.float32))
    out = np.clip(np.stack(chans, axis=-1), 0.0, 255.0)
    return out if as_float else np.rint(out).astype(np.uint8)


def warp(
    image: np.ndarray,
    affine_2x3: np.ndarray,
    size: int,
    *,
    fill: str = "reflect",
    fill_value: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """The ``size`` x ``size`` crop of ``image`` (H, W, 3 uint8) under ``affine_2x3`` (image -> crop)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise UsageError(f"warp needs an RGB uint8 (H, W, 3) image, got {got}")
    inv = invert_affine(np.asarray(affine_2x3, dtype=np.float64))
    return affine_sample(image, inv, int(size), int(size), fill=fill, fill_value=fill_value)

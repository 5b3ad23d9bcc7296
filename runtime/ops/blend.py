"""Blend a face edit into the original photo (numpy + Pillow).

Two ways, both over the face only (every pixel outside the mask is returned bit-identical):

* :func:`add_edits` (what the transfer mode uses): the EDIT -- a float difference in the crop's frame, at
  whatever resolution it has -- is warped ONCE into photo coordinates and added,
  ``out = photo + strength * mask * warp(edit)``, in float, rounded once. The photo's own pixels are never
  resampled, so its skin texture and detail stay at full resolution whatever the crop size.
* :func:`paste_back` (the ``generated`` mode): the generated crop itself replaces the face.

Details of ``paste_back``:

* Geometry: the crop is resampled into the photo's frame through the alignment's matrix (Pillow BICUBIC,
  Lanczos pre-reduction when the crop is denser than the photo), only over the face's bounding box; the
  photo keeps its resolution and every pixel outside that box is returned untouched.
* Mask: an ellipse around the face built from the 5 landmarks (axis along eye-centre -> mouth-centre; it
  spans from about one eye-to-mouth distance above the eyes to 0.85 below the mouth, and 1.05 x the eye
  distance either side of the face's centre line), multiplied by ``scale``; its edge is feathered with a
  smoothstep over ``feather`` (a fraction of the ellipse's radius), and it is also faded out within a few
  pixels of the crop's border so that nothing from outside the crop is ever pasted.
* Colour match (optional): per channel, the edited face's mean and spread are matched to the original's,
  measured with weights concentrated in the mask's feather band (where a seam would show); the gain is
  limited to [0.8, 1.25] and applied inside the mask only, so an intended change of the inner face is kept
  while the transition to the untouched photo stays seamless.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError
from .geometry import Alignment, affine_sample, apply_affine

__all__ = [
    "face_ellipse",
    "crop_mask",
    "image_mask",
    "paste_back",
    "add_edits",
    "delivery_mask",
    "edits_as_delivered",
    "warp_field",
]

DEFAULT_FEATHER = 0.25
GAIN_LIMITS = (0.8, 1.25)


def face_ellipse(landmarks5: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre (2,), unit axes (2, 2) rows = across / along the face, semi-axes (2,)) in the landmarks' frame."""
    lm = np.asarray(landmarks5, dtype=np.float64)
    eye_c = (lm[0] + lm[1]) / 2
    mouth_c = (lm[3] + lm[4]) / 2
    down = mouth_c - eye_c
    d = math.hypot(*down)
    e = math.hypot(*(lm[1] - lm[0]))
    if d < 1e-6 or e < 1e-6:
        raise UsageError("face mask: degenerate landmarks")
    down = down / d
    across = np.array([-down[1], down[0]])  # perpendicular to the eye->mouth axis
    top = -1.0 * d  # above the eyes (brows / forehead)
    bottom = d + 0.85 * d  # below the mouth (chin)
    centre = eye_c + down * (top + bottom) / 2
    semi = np.array([1.05 * max(e, 0.8 * d), (bottom - top) / 2]) * scale
    return centre, np.stack([across, down]), semi


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _mask_at(points_xy: np.ndarray, landmarks5: np.ndarray, scale: float, feather: float) -> np.ndarray:
    centre, axes, semi = face_ellipse(landmarks5, scale)
    rel = points_xy - centre
    u = rel @ axes[0] / semi[0]
    v = rel @ axes[1] / semi[1]
    rho = np.sqrt(u * u + v * v)
    f = max(float(feather), 1e-6)
    return _smoothstep((1.0 - rho) / f)


def crop_mask(alignment: Alignment, scale: float = 1.0, feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """The face mask in crop coordinates: (size, size) float32 in [0, 1]."""
    n = alignment.size
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float64)
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1)
    m = _mask_at(pts, alignment.landmarks_in_crop(), scale, feather)
    return (m * _smoothstep(_border_distance(pts, n) / 2.0)).reshape(n, n).astype(np.float32)


def _border_distance(crop_xy: np.ndarray, n: int) -> np.ndarray:
    """Distance in crop pixels from each crop point to the crop square's edge (negative outside): the mask fades
    out within ~2 of them, so that nothing from outside the crop is ever pasted (the same fade in both frames)."""
    c = crop_xy
    return np.minimum.reduce([c[:, 0] + 0.5, c[:, 1] + 0.5, n - 0.5 - c[:, 0], n - 0.5 - c[:, 1]])


def _region(alignment: Alignment, shape: tuple[int, int], scale: float) -> tuple[int, int, int, int] | None:
    """Integer box (x0, y0, x1, y1), exclusive end, of the photo that the mask can touch."""
    centre, axes, semi = face_ellipse(alignment.landmarks, scale)
    half = np.abs(axes.T) @ semi  # bounding box half-extent of the rotated ellipse
    quad = alignment.quad
    x0 = max(centre[0] - half[0], quad[:, 0].min())
    x1 = min(centre[0] + half[0], quad[:, 0].max())
    y0 = max(centre[1] - half[1], quad[:, 1].min())
    y1 = min(centre[1] + half[1], quad[:, 1].max())
    h, w = shape
    bx0, by0 = max(0, int(math.floor(x0)) - 1), max(0, int(math.floor(y0)) - 1)
    bx1, by1 = min(w, int(math.ceil(x1)) + 2), min(h, int(math.ceil(y1)) + 2)
    if bx1 <= bx0 or by1 <= by0:
        return None
    return bx0, by0, bx1, by1


def image_mask(
    alignment: Alignment, shape: tuple[int, int], scale: float = 1.0, feather: float = DEFAULT_FEATHER
) -> np.ndarray:
    """The paste mask in photo coordinates: (H, W) float32, zero outside the face ellipse and the crop."""
    h, w = shape
    out = np.zeros((h, w), dtype=np.float32)
    box = _region(alignment, shape, scale)
    if box is None:
        return out
    out[box[1] : box[3], box[0] : box[2]] = _region_mask(alignment, box, scale, feather)
    return out


def _region_mask(alignment: Alignment, box, scale: float, feather: float, rows: int = 256) -> np.ndarray:
    x0, y0, x1, y1 = box
    out = np.empty((y1 - y0, x1 - x0), np.float32)
    n = alignment.size
    # in blocks of ``rows`` rows: the float64 grids of a face region of a large photo would otherwise take
    # ~100 bytes per pixel at once (a 4000 px face: 1.6 GB)
    for ya in range(y0, y1, rows):
        yb = min(y1, ya + rows)
        ys, xs = np.mgrid[ya:yb, x0:x1].astype(np.float64)
        pts = np.stack([xs.ravel(), ys.ravel()], axis=1)
        m = _mask_at(pts, alignment.landmarks, scale, feather)
        # fade out within ~2 crop pixels of the crop border: never paste what the crop does not contain
        m = m * _smoothstep(_border_distance(apply_affine(alignment.matrix, pts), n) / 2.0)
        out[ya - y0 : yb - y0] = m.reshape(yb - ya, x1 - x0)
    return out


def _colour_match(edit: np.ndarray, orig: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Match per-channel mean/std of ``edit`` to ``orig`` with weights on the mask's feather band."""
    wgt = (mask * (1.0 - mask)).astype(np.float64) * 4.0  # peaks at mask = 0.5
    wgt = wgt + 0.05 * mask  # a little of the inner face, so a band-free mask still works
    tot = wgt.sum()
    if tot < 1e-6:
        return edit
    out = edit.copy()
    for ch in range(edit.shape[2]):
        e = edit[..., ch]
        o = orig[..., ch]
        me = (wgt * e).sum() / tot
        mo = (wgt * o).sum() / tot
        se = math.sqrt(max((wgt * (e - me) ** 2).sum() / tot, 1e-6))
        so = math.sqrt(max((wgt * (o - mo) ** 2).sum() / tot, 1e-6))
        gain = float(np.clip(so / se, *GAIN_LIMITS))
        out[..., ch] = (e - me) * gain + mo
    return out


def paste_back(
    original: np.ndarray,
    edited_crop: np.ndarray,
    alignment: Alignment,
    *,
    feather: float = DEFAULT_FEATHER,
    mask_scale: float = 1.0,
    color_match: bool = True,
    return_mask: bool = False,
):
    """Blend ``edited_crop`` (size x size x 3 uint8, in ``alignment``'s crop frame) into a copy of
    ``original`` (H x W x 3 uint8) over the face only. Returns the new photo (same shape, uint8), and the
    (H, W) float32 mask when ``return_mask``."""
    if (
        not isinstance(original, np.ndarray)
        or original.dtype != np.uint8
        or original.ndim != 3
        or original.shape[2] != 3
    ):
        raise UsageError("paste_back: original must be an RGB uint8 (H, W, 3) array")
    n = alignment.size
    if not isinstance(edited_crop, np.ndarray) or edited_crop.dtype != np.uint8 or edited_crop.shape != (n, n, 3):
        got = list(edited_crop.shape) if isinstance(edited_crop, np.ndarray) else type(edited_crop).__name__
        raise UsageError(f"paste_back: edited crop must be uint8 ({n}, {n}, 3) like the alignment, got {got}")
    if feather <= 0 or mask_scale <= 0:
        raise UsageError(f"paste_back: feather and mask_scale must be > 0, got {feather}, {mask_scale}")
    h, w = original.shape[:2]
    out = original.copy()
    full_mask = np.zeros((h, w), dtype=np.float32) if return_mask else None
    box = _region(alignment, (h, w), mask_scale)
    if box is None:
        return (out, full_mask) if return_mask else out
    x0, y0, x1, y1 = box
    mask = _region_mask(alignment, box, mask_scale, feather)
    # crop -> photo sampling for the region: region pixel p (offset by the box) -> crop point matrix @ (p + off)
    m = np.asarray(alignment.matrix, dtype=np.float64).copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    warped = affine_sample(edited_crop, m, x1 - x0, y1 - y0, fill="reflect", blur=1.0, as_float=True)
    orig = original[y0:y1, x0:x1].astype(np.float32)
    if color_match:
        warped = _colour_match(warped, orig, mask)
    a = mask[..., None]
    blended = orig * (1.0 - a) + warped * a
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if full_mask is not None:
        full_mask[y0:y1, x0:x1] = mask
        return out, full_mask
    return out


def warp_field(field: np.ndarray, m_dst_to_src: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Resample a float (n, n, C) field on an output grid (output pixel p takes the field at
    ``m_dst_to_src @ [p, 1]``), bicubic, zero outside the field. Float32 in, float32 out: nothing is rounded."""
    from PIL import Image

    from .geometry import _pil_affine_data

    data = _pil_affine_data(np.asarray(m_dst_to_src, dtype=np.float64))
    chans = []
    for c in range(field.shape[2]):
        im = Image.fromarray(np.ascontiguousarray(field[..., c], dtype=np.float32), "F")
        im = im.transform(
            (int(out_w), int(out_h)),
            Image.Transform.AFFINE,
            data=data,
            resample=Image.Resampling.BICUBIC,
            fillcolor=0.0,
        )
        chans.append(np.asarray(im, dtype=np.float32))
    return np.stack(chans, axis=-1)


def _edit_offset_at_seam(edit: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel mean of ``edit`` (..., H, W, C) weighted on the mask's feather band (where a seam would show)."""
    wgt = (mask * (1.0 - mask)).astype(np.float64) * 4.0
    tot = wgt.sum()
    if tot < 1e-6:
        return np.zeros(edit.shape[:-3] + edit.shape[-1:], np.float32)
    return ((edit * wgt[..., None]).sum(axis=(-3, -2)) / tot).astype(np.float32)


def delivery_mask(alignment: "Alignment | None", size: int) -> "np.ndarray | None":
    """The face mask :func:`add_edits` applies to a face's edit, in the crop frame at ``size`` x ``size`` (None for
    an aligned input, which gets the whole edit)."""
    if alignment is None:
        return None
    m = crop_mask(alignment)
    if m.shape[0] != size:
        from .imaging import resize_float

        m = np.clip(resize_float(m[..., None], size, size)[..., 0], 0.0, 1.0)
    return m


def edits_as_delivered(edits: np.ndarray, mask: np.ndarray, color_match: bool = True) -> np.ndarray:
    """What :func:`add_edits` delivers of each edit, in the crop frame: ``edits`` (n, C, H, W) float, ``mask``
    (H, W) the face mask in that frame (:func:`crop_mask` at H) -> (n, C, H, W) float32, each edit minus its
    offset at the mask's seam band (``color_match``, as add_edits removes it) times the mask. What the search
    scores, so that its estimate describes the photo the user gets, not edit outside the face that is never
    pasted."""
    m = np.asarray(mask, np.float32)
    e = np.asarray(edits, np.float32)
    if color_match:
        e = e - _edit_offset_at_seam(e.transpose(0, 2, 3, 1), m)[:, :, None, None]
    return (e * m).astype(np.float32)


def add_edits(
    original: np.ndarray,
    edits,
    *,
    strength: float = 1.0,
    feather: float = DEFAULT_FEATHER,
    mask_scale: float = 1.0,
    color_match: bool = True,
) -> np.ndarray:
    """``original`` (H, W, 3 uint8) plus every ``(alignment, edit)`` of ``edits``: ``edit`` is an (n, n, 3)
    float32 difference in grey levels in that alignment's crop frame (any n; the alignment's ``size`` is the
    crop side it refers to). Each edit is warped once into the photo over its face's region, scaled by the
    feathered face mask and ``strength``, and added in float; the sum is rounded once. ``color_match``
    removes each edit's own offset at the mask's feather band, so the face's edge meets the untouched photo
    without a step; the photo's pixels are never rescaled. A zero edit (or ``strength`` 0) returns
    ``original`` exactly."""
    if (
        not isinstance(original, np.ndarray)
        or original.dtype != np.uint8
        or original.ndim != 3
        or original.shape[2] != 3
    ):
        raise UsageError("add_edits: original must be an RGB uint8 (H, W, 3) array")
    if feather <= 0 or mask_scale <= 0:
        raise UsageError(f"add_edits: feather and mask_scale must be > 0, got {feather}, {mask_scale}")
    h, w = original.shape[:2]
    out = original.copy()
    if strength == 0:
        return out
    boxes = []
    for alignment, edit in edits:
        box = _region(alignment, (h, w), mask_scale)
        if box is not None:
            boxes.append((box, alignment, edit))
    if not boxes:
        return out
    # float only over the faces' boxes, overlapping boxes merged into one block (so a pixel two edits touch
    # is rounded once); every pixel of a block without an edit rounds back to itself. Each face's part is
    # added as soon as it is made: memory is the blocks plus one face, not every face nor the whole photo.
    for (ux0, uy0, ux1, uy1), members in _blocks(boxes):
        acc = original[uy0:uy1, ux0:ux1].astype(np.float32)
        for box, alignment, edit in members:
            x0, y0, x1, y1 = box
            mask = _region_mask(alignment, box, mask_scale, feather)
            # photo pixel p (offset by the box) -> crop point (alignment.matrix) -> edit pixel (edit/crop side)
            k = edit.shape[0] / float(alignment.size)
            m = np.asarray(alignment.matrix, dtype=np.float64).copy()
            m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
            m = np.concatenate([m[:, :2] * k, (m[:, 2] * k + 0.5 * k - 0.5)[:, None]], axis=1)
            warped = warp_field(np.asarray(edit, np.float32), m, x1 - x0, y1 - y0)
            if color_match:
                warped = warped - _edit_offset_at_seam(warped, mask)
            acc[y0 - uy0 : y1 - uy0, x0 - ux0 : x1 - ux0] += np.float32(strength) * mask[..., None] * warped
            del mask, warped
        np.rint(acc, out=acc)
        np.clip(acc, 0, 255, out=acc)
        np.copyto(out[uy0:uy1, ux0:ux1], acc, casting="unsafe")
        del acc
    return out


def _blocks(items: list) -> list:
    """Group ``(box, ...)`` items whose boxes overlap (transitively) into blocks: [(block box, items)]."""
    blocks: list = []
    for it in items:
        box, members = it[0], [it]
        changed = True
        while changed:
            changed = False
            for blk in blocks:
                b = blk[0]
                if box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]:
                    blocks.remove(blk)
                    box = (min(box[0], b[0]), min(box[1], b[1]), max(box[2], b[2]), max(box[3], b[3]))
                    members = blk[1] + members
                    changed = True
                    break
        blocks.append((box, members))
    for blk in blocks:  # the order edits are added in, as the caller gave them
        blk[1].sort(key=lambda it: next(i for i, x in enumerate(items) if x is it))
    return blocks

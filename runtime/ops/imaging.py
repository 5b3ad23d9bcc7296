"""Pixel helpers shared by the stages: value-range conversions, resizing, model inputs, and the edit transfer.

Conventions: photos and crops are RGB uint8 (H, W, 3); generator images are float32 (3, H, W) or
(n, 3, H, W) in [-1, 1]; an *edit* is a float32 (H, W, 3) difference in grey levels (0..255 units).
"""

from __future__ import annotations

import functools
from typing import Mapping

import numpy as np
from PIL import Image

from beautyrt.engines.errors import BundleSchemaError

TRANSFERS = ("detail", "luma", "rgb")
DETAIL_SIGMA = 1.0 / 16.0  # "detail" transfer: Gaussian sigma of the removed broad part, as a fraction of the side
LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Generator output (3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return np.clip(np.rint((img.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize_u8(rgb: np.ndarray, size: int) -> np.ndarray:
    """Square uint8 resize (bicubic; Pillow's reducing gap when shrinking)."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(
        Image.fromarray(rgb).resize(
            (size, size), Image.Resampling.BICUBIC, reducing_gap=None if rgb.shape[0] < size else 2.0
        )
    )


def resize_float(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, C) float32 -> (h, w, C), bicubic per channel."""
    if a.shape[:2] == (h, w):
        return a
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(a[..., c], dtype=np.float32), "F").resize(
                    (w, h), Image.Resampling.BICUBIC
                )
            )
            for c in range(a.shape[2])
        ],
        axis=-1,
    )


def edit_delta(d: np.ndarray, transfer: str) -> np.ndarray:
    """(n, 3, H, W) generator difference -> the edit carried to the photo: as is ("rgb"); its luma only, the
    same on all three channels ("luma": the photo keeps its colours); or that luma minus its Gaussian blur
    with sigma ``DETAIL_SIGMA`` of the side ("detail": local shape and shading -- eyes, brows, contours --
    without the broad brightening a weak generator's edit tends to carry, which reads as a blotch)."""
    if transfer == "rgb":
        return d
    y = np.tensordot(LUMA, d, axes=([0], [1])).astype(np.float32)  # (n, H, W)
    if transfer == "detail":
        bh, bw = blur_matrix(y.shape[1], DETAIL_SIGMA * y.shape[1]), blur_matrix(y.shape[2], DETAIL_SIGMA * y.shape[2])
        y = y - bh @ y @ bw.T
    return np.repeat(y[:, None], 3, axis=1).astype(np.float32)


def edit_in_grey_levels(g_start: np.ndarray, g_best: np.ndarray, transfer: str) -> np.ndarray:
    """The edit of one candidate, (H, W, 3) float32 in grey levels, from the float generator images (the
    uint8 ones are clipped, which would lose the part of an edit beyond the value range)."""
    return edit_delta((g_best - g_start)[None], transfer)[0].transpose(1, 2, 0) * 127.5


def add_edit(base: np.ndarray, edit: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """``base`` (uint8 crop) + ``strength`` x ``edit`` resized to it, rounded once."""
    h, w = base.shape[:2]
    d = resize_float(edit.astype(np.float32), h, w)
    return np.clip(np.rint(base.astype(np.float32) + np.float32(strength) * d), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian blur along one axis with mirrored borders (rows sum to 1); read-only, memoised."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    m = np.zeros((n, n), np.float64)
    for i in range(n):
        for o, w in zip(range(-r, r + 1), k):
            j = i + o
            while j < 0 or j >= n:  # reflect (d c b | a b c d | c b a)
                j = -j if j < 0 else 2 * (n - 1) - j
            m[i, j] += w
    m = m.astype(np.float32)
    m.flags.writeable = False
    return m


def crop_to_unit(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (1, 3, size, size) in [-1, 1] (the generator's value range)."""
    x = resize_u8(rgb, size).astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def normalise_unit(imgs: np.ndarray, norm: Mapping) -> np.ndarray:
    """(n, 3, R, R) in [-1, 1] -> a model's input (resized to its size, its mean/std)."""
    size = int(norm["size"])
    x = (imgs + 1.0) * 0.5
    if x.shape[-1] != size:
        x = np.stack(
            [resize_float(np.ascontiguousarray(a.transpose(1, 2, 0)), size, size).transpose(2, 0, 1) for a in x]
        )
    mean = np.asarray(norm["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(norm["std"], np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def model_input(rgb: np.ndarray, norm: Mapping) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (1, 3, S, S) with the manifest's normalisation."""
    if norm.get("color_order", "RGB") != "RGB" or norm.get("layout", "NCHW") != "NCHW":
        raise BundleSchemaError(f"unsupported normalisation {dict(norm)}; this runtime feeds RGB NCHW")
    x = resize_u8(rgb, int(norm["size"])).astype(np.float32) / np.float32(255.0)
    y = (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    return np.ascontiguousarray(y.transpose(2, 0, 1)[None], dtype=np.float32)

"""Compose at the photo's own resolution (issue 18): the edit is warped once and added; the photo's pixels are
never resampled, so fine texture inside the face survives, everything outside the mask is bit-identical, and a
zero edit (or strength 0) gives the decoded photo back exactly."""

from __future__ import annotations

import numpy as np
from PIL import Image

from beautyrt.runtime.ops.blend import delivery_mask, edits_as_delivered, image_mask
from beautyrt.runtime.ops.geometry import ffhq_alignment, warp
from beautyrt.runtime.ops.imaging import blur_matrix
from beautyrt.runtime.stages.compose import compose_photo
from beautyrt.runtime.types import AlignedFace, Edit, Photo
from tests.conftest import EXAMPLE

# landmarks of the example photo's face (MTCNN on the 512 px original; image-left eye, image-right eye, nose,
# mouth corners): fixed here so these tests need no detector
LANDMARKS_512 = np.array([[204.72, 101.08], [247.74, 103.11], [226.37, 129.46], [202.09, 139.96], [246.29, 141.90]])


def textured_photo(scale: int = 4, grain: float = 8.0, seed: int = 0) -> np.ndarray:
    """The example photo upscaled ``scale`` x with seeded fine grain: detail at the photo's own resolution."""
    im = Image.open(EXAMPLE).convert("RGB")
    big = np.asarray(im.resize((im.width * scale, im.height * scale), Image.BICUBIC), np.float32)
    noise = np.random.default_rng(seed).normal(0.0, grain, big.shape[:2])[..., None]
    return np.clip(np.rint(big + noise), 0, 255).astype(np.uint8)


def laplacian_energy(rgb: np.ndarray, region: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the luma over ``region`` (a boolean mask)."""
    y = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    lap = -4 * y[1:-1, 1:-1] + y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:]
    return float(lap[region[1:-1, 1:-1]].var())


def smooth_edit(size: int = 64, amplitude: float = 12.0, seed: int = 1) -> np.ndarray:
    """A generator-like edit: smooth shading changes of about +-``amplitude`` grey levels, the same on R, G, B."""
    n = np.random.default_rng(seed).normal(0.0, 1.0, (size, size)).astype(np.float32)
    k = blur_matrix(size, 3.0)
    b = k @ n @ k.T
    b *= amplitude / max(float(np.abs(b).max()), 1e-6)
    return np.repeat(b[..., None], 3, axis=2)


def face_at(scale: int, size: int = 64) -> AlignedFace:
    return AlignedFace(crop=np.zeros((size, size, 3), np.uint8), alignment=ffhq_alignment(LANDMARKS_512 * scale, size))


def test_texture_inside_the_face_survives_and_outside_is_untouched():
    photo = textured_photo()
    assert photo.shape == (2048, 2048, 3)
    face = face_at(4)
    edit = Edit(mode="transfer", g_best=np.zeros((3, 64, 64), np.float32), delta=smooth_edit())
    out = compose_photo(Photo(photo), [(face, edit)], 1.0)
    mask = image_mask(face.alignment, photo.shape[:2])
    inside, outside = mask > 0.5, mask == 0
    assert inside.sum() > 50_000  # the face spans ~350 x 400 px at 2048 px
    ratio = laplacian_energy(out, inside) / laplacian_energy(photo, inside)
    assert 0.95 <= ratio <= 1.05, ratio
    assert np.array_equal(out[outside], photo[outside])
    assert np.abs(out[inside].astype(int) - photo[inside]).mean() > 2.0, "the edit did not land"


def test_zero_edit_and_zero_strength_return_the_photo_exactly():
    photo = textured_photo(scale=2)
    face = face_at(2)
    zero = Edit(mode="transfer", g_best=np.zeros((3, 64, 64), np.float32), delta=np.zeros((64, 64, 3), np.float32))
    assert np.array_equal(compose_photo(Photo(photo), [(face, zero)], 1.0), photo)
    some = Edit(mode="transfer", g_best=zero.g_best, delta=smooth_edit())
    assert np.array_equal(compose_photo(Photo(photo), [(face, some)], 0.0), photo)
    half, full = (compose_photo(Photo(photo), [(face, some)], s).astype(int) - photo for s in (0.5, 1.0))
    assert np.abs(full).sum() > 1.8 * np.abs(half).sum() > 0  # strength scales the edit


def test_edit_resolution_does_not_matter_for_a_smooth_edit():
    """The same edit given at 64 px or upsampled to 256 px lands the same (it is warped once, from whatever
    resolution it has, in the alignment's crop frame)."""
    photo = textured_photo(scale=2)
    face = face_at(2)
    e64 = smooth_edit()
    e256 = np.stack(
        [
            np.asarray(Image.fromarray(np.ascontiguousarray(e64[..., c]), "F").resize((256, 256), Image.BICUBIC))
            for c in range(3)
        ],
        axis=-1,
    )
    g = np.zeros((3, 64, 64), np.float32)
    a = compose_photo(Photo(photo), [(face, Edit("transfer", g, delta=e64))], 1.0).astype(int)
    b = compose_photo(Photo(photo), [(face, Edit("transfer", g, delta=e256))], 1.0).astype(int)
    assert np.abs(a - b).max() <= 2


def test_the_search_scores_the_edit_as_compose_delivers_it():
    """``edits_as_delivered`` (what the search scores) describes the photo compose writes: the composed photo
    cut back into the crop frame differs from the photo's crop by the masked, seam-corrected edit -- not by
    the raw edit, whose part outside the face mask is never pasted."""
    photo = textured_photo(scale=2, grain=0.0)
    face = face_at(2)
    raw = smooth_edit(amplitude=20.0, seed=3) + 6.0  # shading everywhere plus an offset
    out = compose_photo(Photo(photo), [(face, Edit(mode="transfer", g_best=np.zeros((3, 64, 64)), delta=raw))], 1.0)
    m = face.alignment.matrix
    seen = warp(out, m, 64).astype(np.float64) - warp(photo, m, 64).astype(np.float64)
    mask = delivery_mask(face.alignment, 64)
    assert mask is not None and mask.shape == (64, 64)
    predicted = edits_as_delivered(raw.transpose(2, 0, 1)[None], mask)[0].transpose(1, 2, 0)
    err_delivered = np.abs(seen - predicted).mean()
    err_raw = np.abs(seen - raw).mean()
    assert err_delivered < 0.05 * err_raw  # measured 0.09 vs 7.3 grey levels, (err_delivered, err_raw)
    assert np.abs(predicted).mean() > 1.0  # not trivially zero
    assert delivery_mask(None, 64) is None  # an aligned input gets the whole edit

"""Alignment, warp and paste-back on synthetic data (numpy + Pillow only; no torch here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from beautyrt.runtime.errors import UsageError
from beautyrt.runtime.ops.blend import crop_mask, image_mask, paste_back
from beautyrt.runtime.ops.geometry import (
    Alignment,
    apply_affine,
    ffhq_alignment,
    ffhq_quad,
    invert_affine,
    similarity_to_square,
    template_transform,
    umeyama,
    warp,
)

# an upright face: image-left eye, image-right eye, nose, mouth corners
CANON = np.array([[40.0, 50.0], [60.0, 50.0], [50.0, 60.0], [42.0, 70.0], [58.0, 70.0]])


def similarity(scale, angle_deg, tx, ty):
    a = math.radians(angle_deg)
    c, s = math.cos(a) * scale, math.sin(a) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def smooth_image(h, w, seed=0, sigma=4.0):
    """Random image without frequencies near Nyquist (so resampling error measures geometry, not aliasing)."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (h, w, 3)).astype(np.uint8)
    sm = np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float64)
    return np.clip((sm - sm.mean()) * 6 + 128, 0, 255).astype(np.uint8)


def face_landmarks(cx, cy, eye_dist, angle_deg):
    """CANON scaled/rotated/moved so that the eye distance is ``eye_dist`` and the eyes' centre is near (cx, cy)."""
    m = similarity(eye_dist / 20.0, angle_deg, 0, 0)
    pts = apply_affine(m, CANON - CANON[:2].mean(0))
    return pts + np.array([cx, cy])


# ------------------------------------------------------------------------------------------------
def test_umeyama_recovers_known_similarity():
    rng = np.random.default_rng(1)
    src = rng.uniform(-50, 50, (5, 2))
    for scale, ang, tx, ty in [(1.0, 0, 0, 0), (2.5, 33.0, 10.0, -7.0), (0.3, -170.0, 400.0, 12.5)]:
        m = similarity(scale, ang, tx, ty)
        got = umeyama(src, apply_affine(m, src))
        np.testing.assert_allclose(got, m, atol=1e-9)
    # with noise: close to the truth, and never a reflection
    m = similarity(1.7, 20.0, 5.0, 3.0)
    dst = apply_affine(m, src) + rng.normal(0, 0.5, src.shape)
    got = umeyama(src, dst)
    assert np.linalg.det(got[:, :2]) > 0
    np.testing.assert_allclose(got[:, :2], m[:, :2], atol=0.05)
    np.testing.assert_allclose(got[:, 2], m[:, 2], atol=1.0)


def test_umeyama_never_reflects():
    src = CANON.copy()
    mirrored = src * np.array([-1.0, 1.0])  # the best fit would be a reflection
    got = umeyama(src, mirrored)
    assert np.linalg.det(got[:, :2]) > 0


def test_template_transform_maps_landmarks_onto_template():
    template = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])  # 112 px
    m_true = similarity(0.7, -12.0, 30.0, 20.0)
    lm = apply_affine(invert_affine(m_true), template)  # landmarks that map exactly onto the template
    al = template_transform(lm, template, 112)
    np.testing.assert_allclose(al.matrix, m_true, atol=1e-9)
    np.testing.assert_allclose(al.landmarks_in_crop(), template, atol=1e-9)
    np.testing.assert_allclose(al.inverse, invert_affine(m_true), atol=1e-9)
    assert al.size == 112


def test_ffhq_quad_on_canonical_landmarks():
    # eyes (40,50)-(60,50), mouth centre (50,70): eye_to_eye 20, eye_to_mouth 20 -> half side max(40, 36) = 40,
    # centre = eye_avg + 0.1 * eye_to_mouth = (50, 52)
    quad = ffhq_quad(CANON)
    np.testing.assert_allclose(quad, [[10, 12], [10, 92], [90, 92], [90, 12]], atol=1e-9)
    m, inv = similarity_to_square(quad, 256)
    np.testing.assert_allclose(m, [[3.2, 0, -32.5], [0, 3.2, -38.9]], atol=1e-9)
    np.testing.assert_allclose(apply_affine(inv, apply_affine(m, quad)), quad, atol=1e-9)


def test_ffhq_quad_follows_rotation_and_scale():
    base = ffhq_quad(CANON)
    m = similarity(1.8, 25.0, 100.0, 40.0)
    np.testing.assert_allclose(ffhq_quad(apply_affine(m, CANON)), apply_affine(m, base), atol=1e-9)
    al = ffhq_alignment(apply_affine(m, CANON), 512)
    assert al.scale == pytest.approx(512 / 80 / 1.8)
    assert al.to_dict()["rotation_deg"] == pytest.approx(-25.0)


def test_alignment_to_dict_is_json():
    import json

    al = ffhq_alignment(CANON, 64)
    d = json.loads(json.dumps(al.to_dict()))
    assert d["size"] == 64 and len(d["quad"]) == 4 and len(d["landmarks"]) == 5
    assert isinstance(al, Alignment)


def test_bad_inputs_raise_usage_error():
    with pytest.raises(UsageError):
        ffhq_quad(np.zeros((4, 2)))
    with pytest.raises(UsageError):
        warp(np.zeros((10, 10), np.uint8), np.eye(2, 3), 8)
    with pytest.raises(UsageError):
        paste_back(np.zeros((10, 10, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), ffhq_alignment(CANON, 16))


def test_warp_samples_where_the_matrix_says():
    img = smooth_image(120, 160)
    # pure translation by integers: the crop is an exact sub-image
    m = np.array([[1.0, 0, -30.0], [0, 1.0, -20.0]])
    crop = warp(img, m, 64)
    np.testing.assert_array_equal(crop, img[20:84, 30:94])
    # crop centre of a rotated, scaled crop lands on the expected source pixel (smooth image: bicubic ~ exact)
    al = ffhq_alignment(face_landmarks(80, 60, 20, 15.0), 128)
    crop = warp(img, al.matrix, 128)
    src_pt = apply_affine(al.inverse, [[64.0, 64.0]])[0]
    x, y = int(round(src_pt[0])), int(round(src_pt[1]))
    assert np.abs(crop[64, 64].astype(int) - img[y, x].astype(int)).max() <= 30


def test_warp_outside_image_is_filled_not_black():
    img = np.full((60, 60, 3), 200, np.uint8)
    al = ffhq_alignment(face_landmarks(10, 10, 20, 0.0), 64)  # face at the corner: most of the crop is outside
    reflect = warp(img, al.matrix, 64)
    const = warp(img, al.matrix, 64, fill="constant", fill_value=(0, 0, 0))
    assert reflect.min() >= 150  # mirrored/blurred photo, pulled to its median (200)
    assert (const == 0).all(axis=-1).mean() > 0.3


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_paste_back_of_unmodified_crop_reproduces_original(size):
    img = smooth_image(300, 400, seed=3)
    lm = face_landmarks(200, 150, 50, 8.0)
    al = ffhq_alignment(lm, size)
    crop = warp(img, al.matrix, size)
    out, mask = paste_back(img, crop, al, return_mask=True)
    diff = np.abs(out.astype(int) - img.astype(int)).max(axis=-1)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (mask > 0.99).sum() > 2000
    # outside the mask: bit-exact
    assert diff[mask == 0].max() == 0
    # inside: bounded resampling error of two passes (bicubic; supersampled box average when shrinking).
    # Measured (grey levels, max over RGB): 64 px (crop scale 0.32, a 3x down-sample): mean 3.04, max 9;
    # 256 px (scale 1.28): mean 1.12, max 3; 1024 px (scale 5.12): mean 0.77, max 2.
    inside = diff[mask > 0.99]
    limits = {64: (3.5, 12), 256: (1.5, 4), 1024: (1.0, 3)}[size]
    assert inside.mean() <= limits[0], inside.mean()
    assert inside.max() <= limits[1], inside.max()


def test_paste_never_touches_pixels_far_from_face():
    img = smooth_image(300, 400, seed=4)
    lm = face_landmarks(200, 150, 40, -10.0)
    al = ffhq_alignment(lm, 256)
    edited = np.full((256, 256, 3), 255, np.uint8)  # a maximal edit everywhere in the crop
    out, mask = paste_back(img, edited, al, return_mask=True)
    changed = np.any(out != img, axis=-1)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 1000
    # every changed pixel lies within 2.6 eye distances of the eyes' centre; nothing changed beyond that
    eye_c = lm[:2].mean(0)
    dist = np.hypot(xs - eye_c[0], ys - eye_c[1])
    assert dist.max() <= 2.6 * 40
    assert not changed[mask == 0].any()
    # the crop square's far corners (outside the face ellipse) are untouched
    for cx, cy in al.quad:
        x, y = int(np.clip(cx, 0, 399)), int(np.clip(cy, 0, 299))
        assert not changed[y, x]


def test_mask_shapes_and_range():
    al = ffhq_alignment(face_landmarks(100, 100, 40, 0.0), 128)
    cm = crop_mask(al)
    assert cm.shape == (128, 128) and cm.dtype == np.float32
    assert 0.0 <= cm.min() and cm.max() <= 1.0
    assert cm[64, 64] == 1.0 and cm[0, 0] == 0.0 and cm[127, 127] == 0.0
    im = image_mask(al, (200, 220))
    assert im.shape == (200, 220) and im.max() == 1.0 and im[0, 0] == 0.0


def test_colour_match_removes_a_global_cast():
    img = smooth_image(300, 400, seed=5)
    al = ffhq_alignment(face_landmarks(200, 150, 50, 0.0), 256)
    crop = warp(img, al.matrix, 256).astype(int)
    cast = np.clip(crop + np.array([40, -20, 10]), 0, 255).astype(np.uint8)
    out_cm, mask = paste_back(img, cast, al, return_mask=True, color_match=True)
    out_raw = paste_back(img, cast, al, color_match=False)
    core = mask > 0.99
    err_cm = np.abs(out_cm.astype(int) - img.astype(int))[core].mean()
    err_raw = np.abs(out_raw.astype(int) - img.astype(int))[core].mean()
    assert err_cm < 0.25 * err_raw

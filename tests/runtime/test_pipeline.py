"""Beautifier end to end on the tiny bundle (aligned crops; photos need the detector bundle)."""
from __future__ import annotations

import numpy as np
import pytest

from beautyrt.runtime.api import Beautifier, ObjectiveWeights, Settings
from beautyrt.runtime.errors import NoFaceError, UsageError


@pytest.fixture(scope="module")
def beautifier(tiny_bundle):
    with Beautifier(tiny_bundle, device="cpu") as b:
        yield b


def test_optimize_improves_and_history_is_monotone(beautifier, face_crop):
    s = Settings(generations=12, popsize=8, seed=3)
    r = beautifier.optimize(face_crop, s, aligned=True)
    best = [h["best_score"] for h in r.history]
    assert len(best) == r.generations_run == 12
    assert all(b2 >= b1 for b1, b2 in zip(best, best[1:]))
    assert r.score_after == best[-1] > r.score_before
    assert r.identity >= r.settings.weights.identity_floor == 0.6  # tiny preset: no bundle defaults
    assert r.image.shape == face_crop.shape and r.image.dtype == np.uint8
    rep = r.report()
    for k in ("score_before", "score_after", "identity", "history", "settings", "timings", "bundle_hash"):
        assert k in rep
    assert rep["timings"]["search_eval"] > 0


def test_same_seed_same_result_other_seed_differs(beautifier, face_crop):
    s = Settings(generations=4, popsize=6, seed=11)
    a = beautifier.optimize(face_crop, s, aligned=True)
    b = beautifier.optimize(face_crop, s, aligned=True)
    c = beautifier.optimize(face_crop, Settings(generations=4, popsize=6, seed=12), aligned=True)
    assert np.array_equal(a.image, b.image) and a.score_after == b.score_after
    assert not np.array_equal(a.w_best, c.w_best) or a.score_after == a.score_before


def test_identity_floor_is_respected(beautifier, face_crop):
    s = Settings(generations=6, popsize=8, sigma0=3.0, weights=ObjectiveWeights(identity_floor=0.97, identity_target=0.99))
    r = beautifier.optimize(face_crop, s, aligned=True)
    assert r.identity >= 0.97
    assert all(h["best_identity"] >= 0.97 for h in r.history)


@pytest.mark.parametrize("space", ["w", "groups", "wplus"])
def test_search_spaces(beautifier, face_crop, space):
    r = beautifier.optimize(face_crop, Settings(generations=3, popsize=4, space=space), aligned=True)
    assert r.score_after >= r.score_before


def test_generated_mode_returns_generator_output(beautifier, face_crop):
    r = beautifier.optimize(face_crop, Settings(generations=2, popsize=4, output_mode="generated"), aligned=True)
    assert r.image.shape == face_crop.shape


def test_edit_transfer_keeps_the_photo_where_nothing_changed(beautifier, face_crop):
    """With the start itself as the result (no improvement possible at floor 1.0), the output is the input."""
    s = Settings(generations=2, popsize=4, weights=ObjectiveWeights(identity_floor=1.0, identity_target=1.0))
    r = beautifier.optimize(face_crop, s, aligned=True)
    if r.score_after == r.score_before:
        assert np.array_equal(r.image, face_crop)


def test_bad_settings_and_inputs(beautifier, face_crop):
    with pytest.raises(UsageError):
        beautifier.optimize(face_crop, Settings(generations=0), aligned=True)
    with pytest.raises(UsageError):
        beautifier.optimize(face_crop, Settings(space="z"), aligned=True)
    with pytest.raises(UsageError, match="square"):
        beautifier.optimize(face_crop[:, :100], Settings(generations=1), aligned=True)
    with pytest.raises(UsageError, match="no face detector"):
        beautifier.optimize(face_crop, Settings(generations=1))


def test_photo_mode_with_detector(tiny_bundle_with_detector, example_photo):
    from beautyrt.runtime.imageio import load_image

    photo = load_image(example_photo)
    with Beautifier(tiny_bundle_with_detector, device="cpu") as b:
        r = b.optimize(example_photo, Settings(generations=3, popsize=4))
        assert r.image.shape == photo.shape
        assert r.faces_found == 1 and r.face["score"] > 0.9
        x0, y0, x1, y1 = r.face["box"]
        diff = np.abs(r.image.astype(int) - photo.astype(int)).sum(axis=2)
        outside = np.ones(diff.shape, bool)
        outside[max(0, int(y0) - 60):int(y1) + 60, max(0, int(x0) - 60):int(x1) + 60] = False
        assert diff[outside].max() == 0, "pixels far from the face changed"
        with pytest.raises(NoFaceError, match="only 1 face"):
            b.optimize(example_photo, Settings(generations=1, popsize=4, face=3))
        blank = np.full((200, 200, 3), 128, np.uint8)
        with pytest.raises(NoFaceError):
            b.optimize(blank, Settings(generations=1, popsize=4))


def test_search_defaults_from_bundle(tiny_bundle, tmp_path, face_crop):
    """An unset sigma0 takes the bundle's search_defaults; an explicit one wins."""
    import json
    import shutil

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["search_defaults"] = {"sigma0": 0.25, "generations": 3}
    (b / "manifest.json").write_text(json.dumps(m))
    with Beautifier(b, device="cpu") as bf:
        assert bf.resolve(Settings()).sigma0 == 0.25
        assert bf.resolve(Settings(sigma0=0.7)).sigma0 == 0.7
        assert bf.resolve(Settings(generations=5)).generations == 5
        r = bf.optimize(face_crop, Settings(popsize=4), aligned=True)
        assert r.report()["settings"]["sigma0"] == 0.25
        assert r.generations_run == r.report()["settings"]["generations"] == 3 == len(r.history)
    with Beautifier(tiny_bundle, device="cpu") as bf:
        assert bf.resolve(Settings()).sigma0 == 0.5
        assert bf.resolve(Settings()).generations == 20


def test_all_faces_edits_each_face(tiny_bundle_with_detector, example_photo):
    from PIL import Image

    from beautyrt.runtime.imageio import load_image

    photo = load_image(example_photo)
    small = np.asarray(Image.fromarray(photo).resize((256, 256)))
    tiled = np.concatenate([np.concatenate([small, small], 1), np.concatenate([small, small], 1)], 0)
    with Beautifier(tiny_bundle_with_detector, device="cpu") as b:
        with pytest.raises(UsageError):
            b.optimize(tiled, Settings(generations=1, popsize=4, all_faces=True, face=0))
        one = b.optimize(tiled, Settings(generations=2, popsize=4, seed=1))
        allf = b.optimize(tiled, Settings(generations=2, popsize=4, seed=1, all_faces=True))
    assert allf.faces_found == 4 and len(allf.faces) == 4 and "faces" in allf.report()
    assert "faces" not in one.report()
    changed = np.abs(allf.image.astype(int) - tiled.astype(int)).sum(axis=2) > 0
    for q in allf.faces:  # every face's box region was edited
        x0, y0, x1, y1 = (int(v) for v in q["box"])
        assert changed[max(y0, 0):y1, max(x0, 0):x1].mean() > 0.2, q
    # the single-face run changes only one of the four quadrants
    one_changed = np.abs(one.image.astype(int) - tiled.astype(int)).sum(axis=2) > 0
    quads = [one_changed[:256, :256].any(), one_changed[:256, 256:].any(), one_changed[256:, :256].any(),
             one_changed[256:, 256:].any()]
    assert sum(quads) == 1

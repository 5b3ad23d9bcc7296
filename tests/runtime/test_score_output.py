"""The search scores what the user gets (photo crop + edit), and the luma transfer keeps the photo's colours."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from beautyrt.engines import open_engine
from beautyrt.runtime.api import Beautifier, ObjectiveWeights, Settings
from beautyrt.runtime.errors import UsageError
from beautyrt.runtime.objective import cosine_to
from beautyrt.runtime.ops.imaging import LUMA, edit_delta, model_input


@pytest.fixture(scope="module")
def bf(tiny_bundle):
    with Beautifier(tiny_bundle, device="cpu") as b:
        yield b


def _image_scores(bf, crops):
    """Beauty scores and embeddings of uint8 crops through the bundle's standalone models (independent path)."""
    nb, ni = bf.manifest.model("beauty").normalisation, bf.manifest.model("identity").normalisation
    beauty, identity = (
        open_engine(bf.manifest, "beauty", device="cpu"),
        open_engine(bf.manifest, "identity", device="cpu"),
    )
    sc = beauty.run({"image": np.concatenate([model_input(c, nb) for c in crops])})["score"]
    emb = identity.run({"image": np.concatenate([model_input(c, ni) for c in crops])})["embedding"]
    return sc.astype(np.float64), emb.astype(np.float64)


def test_edit_delta_luma_is_grey_and_rgb_is_unchanged():
    d = np.random.default_rng(0).normal(size=(2, 3, 5, 5)).astype(np.float32)
    assert np.array_equal(edit_delta(d, "rgb"), d)
    y = edit_delta(d, "luma")
    assert y.shape == d.shape
    assert np.array_equal(y[:, 0], y[:, 1]) and np.array_equal(y[:, 1], y[:, 2])
    np.testing.assert_allclose(y[:, 0], np.einsum("c,nchw->nhw", LUMA, d), atol=1e-6)


def test_auto_resolves_to_output_on_a_bundle_whose_models_take_the_crop(bf):
    assert "crop_scorer" in bf.engines and bf.can_score_output
    assert bf.resolve(Settings()).score_on == "output"
    assert bf.resolve(Settings(output_mode="generated")).score_on == "generated"
    with pytest.raises(UsageError, match="transfer"):
        bf.resolve(Settings(score_on="output", output_mode="generated"))
    with pytest.raises(UsageError, match="score-on"):
        Settings(score_on="photo").validate()
    with pytest.raises(UsageError, match="transfer"):
        Settings(transfer="hsv").validate()


def test_detail_transfer_drops_the_broad_part():
    rng = np.random.default_rng(1)
    flat = np.full((1, 3, 32, 32), 0.3, np.float32)  # a uniform brightening: all broad, nothing carried
    assert np.abs(edit_delta(flat, "detail")).max() < 1e-5
    yy, xx = np.mgrid[:32, :32]
    spot = np.zeros((1, 3, 32, 32), np.float32)
    spot[..., 15:17, 15:17] = 1.0  # a 2 px detail: mostly kept
    det = edit_delta(spot, "detail")
    assert det[0, 0, 15:17, 15:17].mean() > 0.7
    assert np.array_equal(det[:, 0], det[:, 2])
    mix = edit_delta(spot + flat + 0.01 * rng.normal(size=spot.shape).astype(np.float32), "detail")
    assert abs(float(mix.mean())) < 0.02  # the broad part (and so the mean) is gone


@pytest.mark.parametrize("transfer", ["detail", "luma", "rgb"])
def test_reported_scores_are_the_scores_of_the_output(bf, face_crop, transfer):
    """score_before is the photo crop's own score; score_after and identity are those of crop + edit, recomputed
    here from the result's generated images through the standalone models."""
    s = Settings(
        generations=6,
        popsize=8,
        seed=2,
        sigma0=1.0,
        score_on="output",
        transfer=transfer,
        weights=ObjectiveWeights(identity_floor=0.5),
    )
    r = bf.optimize(face_crop, s, aligned=True)
    R = bf.resolution
    crop = r.aligned
    assert crop.shape == (R, R, 3)
    (s0,), _ = _image_scores(bf, [crop])
    assert r.score_before == pytest.approx(s0, abs=1e-4)
    assert r.score_after > r.score_before
    # the edit G(w_best) - G(w_start) added to the crop, rounded to an 8-bit image like an output file
    g = bf.engines["synthesis"].run({"ws": np.stack([r.w_start, r.w_best])})["image"]
    d = edit_delta((g[1] - g[0])[None], transfer)[0].transpose(1, 2, 0) * 127.5
    edited = np.clip(np.rint(crop + d), 0, 255).astype(np.uint8)
    sc, emb = _image_scores(bf, [crop, edited])
    assert sc[1] == pytest.approx(r.score_after, abs=0.01)
    assert cosine_to(emb[0], emb[1:])[0] == pytest.approx(r.identity, abs=0.005)
    # the generated start scores differently on this bundle, so the score_before check above can tell the modes apart
    assert abs(bf.engines["scorer"].run({"ws": r.w_start[None]})["score"][0] - s0) > 1e-3


def test_luma_transfer_changes_every_channel_alike(bf, face_crop):
    s = Settings(
        generations=4, popsize=8, seed=1, sigma0=1.5, transfer="luma", weights=ObjectiveWeights(identity_floor=0.3)
    )
    r = bf.optimize(face_crop, s, aligned=True)
    diff = r.image.astype(np.int16) - face_crop.astype(np.int16)
    assert np.abs(diff).max() > 2, "the search found no edit; the check below would be vacuous"
    inside = (r.image > 0).all(-1) & (r.image < 255).all(-1)  # not clipped
    spread = diff.max(-1) - diff.min(-1)
    assert spread[inside].max() <= 1  # rounding only
    r2 = bf.optimize(face_crop, Settings(**{**s.__dict__, "transfer": "rgb"}), aligned=True)
    d2 = r2.image.astype(np.int16) - face_crop.astype(np.int16)
    assert (d2.max(-1) - d2.min(-1))[inside].max() > 1  # rgb: channels differ (the control)


def test_bundles_without_crop_scorer_score_through_the_standalone_models(bf, tiny_bundle, face_crop, tmp_path):
    """Older bundles (or ones with external models) have no crop_scorer role: the runtime then runs the beauty
    and identity roles itself, with the same result."""
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    (old / m["models"].pop("crop_scorer")["file"]).unlink()
    (old / "manifest.json").write_text(json.dumps(m))
    s = Settings(generations=4, popsize=8, seed=5, sigma0=1.0, weights=ObjectiveWeights(identity_floor=0.5))
    a = bf.optimize(face_crop, s, aligned=True)
    with Beautifier(old, device="cpu") as b2:
        assert "crop_scorer" not in b2.engines and set(b2.models.image_norms) == {"beauty", "identity"}
        r = b2.optimize(face_crop, s, aligned=True)
    assert r.settings.score_on == a.settings.score_on == "output"
    assert r.score_before == pytest.approx(a.score_before, abs=1e-4)
    assert r.score_after == pytest.approx(a.score_after, abs=1e-3)
    np.testing.assert_allclose(r.w_best, a.w_best, atol=1e-4)

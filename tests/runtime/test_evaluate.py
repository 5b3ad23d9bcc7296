"""beautyrt evaluate: the loop over a folder, the linear baseline and the contact sheet (tiny bundle)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import EXAMPLE, run_cli


@pytest.fixture()
def photos(tmp_path) -> Path:
    d = tmp_path / "photos" / "sub"
    d.mkdir(parents=True)
    for i in range(2):
        shutil.copy(EXAMPLE, d / f"p{i}.jpg")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    return tmp_path / "photos"


@pytest.fixture()
def bundle_with_direction(tiny_bundle_with_detector, tmp_path) -> Path:
    """A copy of the tiny bundle plus a beauty_direction entry (what the demo export adds)."""
    from beautyrt.engines.manifest import sha256_file

    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_with_detector, b)
    m = json.loads((b / "manifest.json").read_text())
    d = np.random.default_rng(0).standard_normal(m["generator"]["w_dim"]).astype(np.float32)
    np.save(b / "beauty_direction.npy", d / np.linalg.norm(d))
    m["models"]["beauty_direction"] = {
        "file": "beauty_direction.npy",
        "sha256": sha256_file(b / "beauty_direction.npy"),
        "inputs": [],
        "outputs": [],
        "kind": "latent_direction",
        "space": "w",
    }
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def test_list_images(photos):
    from beautyrt.runtime.tools.evaluate import list_images

    files = list_images(photos)
    assert [p.name for p in files] == ["p0.jpg", "p1.jpg"]
    assert len(list_images(photos, limit=1)) == 1


def test_evaluate_without_direction(tiny_bundle_with_detector, photos, tmp_path):
    from beautyrt.runtime.api import Settings
    from beautyrt.runtime.tools.evaluate import evaluate

    rep = evaluate(
        photos, tiny_bundle_with_detector, settings=Settings(generations=3, popsize=4), sheet=tmp_path / "sheet.png"
    )
    assert rep["photos"] == 2 and rep["ok"] == 2 and rep["failures"] == []
    assert rep["gain"]["mean"] >= 0.0 and rep["linear_gain"] is None
    # the search scored the photo crop + edit (score_on=output): the output-side re-measurement through the
    # crop_scorer on the 8-bit edited crop must agree with what the search reported
    assert rep["settings"]["score_on"] == "output"
    for row in rep["rows"]:
        assert row["gain_output"] == pytest.approx(row["gain"], abs=0.02)
        assert row["identity_output"] == pytest.approx(row["identity"], abs=0.01)
    assert -1.0 <= rep["identity"]["mean"] <= 1.0 and rep["seconds"]["mean"] > 0
    from PIL import Image

    im = Image.open(tmp_path / "sheet.png")
    assert im.width > 300 and im.height > 300


def test_evaluate_with_linear_baseline_and_failure(bundle_with_direction, photos, tmp_path):
    from PIL import Image

    from beautyrt.runtime.api import Settings
    from beautyrt.runtime.tools.evaluate import evaluate

    Image.new("RGB", (120, 90), (200, 200, 200)).save(photos / "blank.png")  # no face -> a reported failure
    rep = evaluate(photos, bundle_with_direction, settings=Settings(generations=3, popsize=4), sheet=tmp_path / "s.png")
    assert rep["ok"] == 2 and len(rep["failures"]) == 1 and "no face" in rep["failures"][0]["error"]
    floor = rep["identity_floor"]
    for row in rep["rows"]:
        assert row["linear_gain"] >= 0.0 and row["linear_identity"] >= floor - 1e-6
        assert "gain_output" in row and "identity_output" in row
    assert "search_beats_linear" in rep
    # deterministic: the same seed gives the same numbers
    rep2 = evaluate(photos, bundle_with_direction, settings=Settings(generations=3, popsize=4))
    assert [r["gain"] for r in rep2["rows"]] == [r["gain"] for r in rep["rows"]]


def test_evaluate_cli(bundle_with_direction, photos, tmp_path):
    r = run_cli(
        "evaluate",
        "--images",
        str(photos),
        "--bundle",
        str(bundle_with_direction),
        "--limit",
        "1",
        "-g",
        "2",
        "-p",
        "4",
        "--json",
        block_torch=True,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["photos"] == 1 and rep["ok"] == 1


def test_evaluate_delivered_smoothing_judge_and_intervals(bundle_with_direction, tiny_bundle_with_detector, photos):
    """Issue 17: the delivered photo re-scored, the skin-smoothing baseline, a judge bundle and bootstrap
    intervals. The judge here is the same tiny networks, so its gains must equal the bundle's own on the same
    crops (any mix-up of crops or of the photo's reference would break the equality)."""
    from beautyrt.runtime.api import Settings
    from beautyrt.runtime.tools.evaluate import bootstrap_ci, evaluate, format_summary, smooth_skin

    rep = evaluate(
        photos, bundle_with_direction, settings=Settings(generations=2, popsize=4), judge=tiny_bundle_with_detector
    )
    assert rep["ok"] == 2 and rep["judge"] == str(tiny_bundle_with_detector)
    for row in rep["rows"]:
        assert row["judge_delivered_gain"] == pytest.approx(row["delivered_gain"], abs=1e-4)
        assert row["judge_smooth_gain"] == pytest.approx(row["smooth_gain"], abs=1e-4)
        assert row["judge_linear_gain"] == pytest.approx(row["linear_gain_output"], abs=1e-4)
        assert row["report_minus_delivered"] == pytest.approx(
            row["score_after"] - row["score_before"] - row["delivered_gain"], abs=1e-4
        )
        assert 0.0 < row["smooth_identity"] <= 1.0 + 1e-6
    for key in ("delivered_gain", "smooth_gain", "judge_delivered_gain"):
        lo, hi = rep[key]["ci95"]
        assert lo <= rep[key]["mean"] <= hi
    assert "smooth  gain" in format_summary(rep) and "judge" in format_summary(rep)
    # the interval is of the mean: wide for spread values, a point for constant ones
    assert bootstrap_ci(np.full(10, 2.0)) == [2.0, 2.0]
    lo, hi = bootstrap_ci(np.random.default_rng(1).normal(1.0, 1.0, 400))
    assert 0.8 < lo < 1.0 < hi < 1.2
    # the smoothing filter blurs inside the mask only
    crop = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1.0
    sm = smooth_skin(crop, mask)
    assert np.array_equal(sm[:8], crop[:8]) and sm[24:40, 24:40].std() < 0.6 * crop[24:40, 24:40].std()

"""`beautyrt audit`: per-group statistics over a labelled folder (groups = relative sub-directories)."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
MEBEAUTY = SHARED_DATA / "mebeauty" / "images"


@pytest.fixture()
def labelled(tmp_path, example_photo):
    """female/asian: the photo and its mirror; male/black: the photo, a face-less image, a text file named .jpg;
    plus a README that is not an image (ignored)."""
    root = tmp_path / "images"
    a, b = root / "female" / "asian", root / "male" / "black"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    shutil.copy(example_photo, a / "1.jpg")
    Image.open(example_photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(a / "2.png")
    shutil.copy(example_photo, b / "1.jpg")
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(b / "2.png")
    (b / "3.jpg").write_text("not an image")
    (root / "README.txt").write_text("labels are the folders")
    return root


def test_audit_api_groups_and_failures(tiny_bundle_with_detector, labelled):
    from beautyrt.runtime.api import Settings
    from beautyrt.runtime.tools.audit import format_table, run_audit

    res = run_audit(labelled, tiny_bundle_with_detector, settings=Settings(generations=2, popsize=4), device="cpu")
    g = res["groups"]
    assert sorted(g) == ["female/asian", "male/black"]
    fa, mb = g["female/asian"], g["male/black"]
    assert (fa["count"], fa["ok"], fa["failed"]) == (2, 2, 0)
    assert (mb["count"], mb["ok"], mb["failed"]) == (3, 1, 2)
    assert mb["failures"] == {"ImageDecodeError": 1, "NoFaceError": 1}
    ok = [p for p in res["photos"] if p["ok"]]
    assert len(ok) == 3 and all(p["gain"] >= 0 and p["identity"] > 0 for p in ok)
    assert fa["mean_gain"] == pytest.approx(np.mean([p["gain"] for p in ok if p["group"] == "female/asian"]))
    assert res["overall"]["count"] == 5 and res["overall"]["failure_rate"] == pytest.approx(0.4)
    assert res["overall"]["spread"]["failure_rate"] == pytest.approx(2 / 3)
    assert all(s["seconds_per_photo"] > 0 for s in g.values())
    table = format_table(res)
    assert "female/asian" in table and "NoFaceError 1" in table and "ALL" in table
    json.dumps(res)  # JSON-able


def test_audit_cli_json_and_limit(cli, tiny_bundle_with_detector, labelled):
    r = cli(
        "audit",
        "--images",
        str(labelled),
        "--bundle",
        str(tiny_bundle_with_detector),
        "--limit",
        "1",
        "-g",
        "1",
        "-p",
        "4",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {k: v["count"] for k, v in res["groups"].items()} == {"female/asian": 1, "male/black": 1}
    assert res["limit_per_group"] == 1 and res["overall"]["ok"] == 2
    r = cli("audit", "--images", str(labelled / "nope"), "--bundle", str(tiny_bundle_with_detector))
    assert r.returncode == 2 and r.stderr.startswith("beautyrt: error:") and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not MEBEAUTY.is_dir(), reason=f"MEBeauty images not present at {MEBEAUTY} (../shared absent)")
def test_audit_on_mebeauty_sample(tiny_bundle_with_detector):
    """The mechanics on real in-the-wild photos (random weights: the gains themselves mean nothing)."""
    from beautyrt.runtime.api import Settings
    from beautyrt.runtime.tools.audit import run_audit

    res = run_audit(
        MEBEAUTY, tiny_bundle_with_detector, settings=Settings(generations=1, popsize=4), limit=1, device="cpu"
    )
    assert len(res["groups"]) >= 4 and all("/" in g for g in res["groups"])
    assert res["overall"]["ok"] >= 1

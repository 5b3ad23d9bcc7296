"""Same input, bundle, seed and backend -> byte-identical output image and identical report.

How the report handles timings: ``timings`` (per stage) and each history entry's ``seconds`` are wall-clock
measurements and are the ONLY fields allowed to differ; reports are compared through
``beautyrt.runtime.api.without_timings``, which drops exactly those. Everything else (scores, identity,
history values, face box/landmarks, settings, hashes, sizes) must be equal, and the image files (including
their provenance metadata, which holds no timestamp) must be byte-identical.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image


def test_without_timings_drops_only_clock_fields():
    from beautyrt.runtime.api import without_timings

    rep = {
        "score_after": 1.0,
        "timings": {"total": 1.2},
        "history": [{"generation": 1, "seconds": 0.1, "best_score": 2}],
    }
    assert without_timings(rep) == {"score_after": 1.0, "history": [{"generation": 1, "best_score": 2}]}
    assert rep["timings"] == {"total": 1.2} and "seconds" in rep["history"][0]  # input untouched


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp"])
def test_api_repeat_is_byte_identical(tiny_bundle, face_crop, tmp_path, ext):
    """Two independent loads of the bundle, same seed: identical bytes and report (minus timings)."""
    from beautyrt.runtime.api import Settings, optimize_file, without_timings

    src = tmp_path / "face.png"
    Image.fromarray(face_crop).save(src)
    out, rep_path = tmp_path / f"out{ext}", tmp_path / "rep.json"
    runs = []
    for _ in range(2):
        rep = optimize_file(
            src,
            out,
            bundle=tiny_bundle,
            settings=Settings(generations=5, popsize=6, seed=7),
            aligned=True,
            report_path=rep_path,
            device="cpu",
        )
        runs.append((out.read_bytes(), json.loads(rep_path.read_text()), rep))
    (img_a, file_a, rep_a), (img_b, file_b, rep_b) = runs
    assert img_a == img_b
    assert without_timings(file_a) == without_timings(file_b)
    assert without_timings(rep_a) == without_timings(rep_b) == without_timings(file_a)
    assert file_a["timings"]["total"] > 0  # timings are kept in the report, only excluded from the comparison


def test_other_seed_gives_other_result(tiny_bundle, face_crop):
    from beautyrt.runtime.api import Beautifier, Settings

    with Beautifier(tiny_bundle, device="cpu") as b:
        a = b.optimize(face_crop, Settings(generations=5, popsize=6, seed=7), aligned=True)
        c = b.optimize(face_crop, Settings(generations=5, popsize=6, seed=8), aligned=True)
    assert [h["gen_mean_score"] for h in a.history] != [h["gen_mean_score"] for h in c.history]


def test_cli_photo_mode_repeat_is_identical(cli, tiny_bundle_with_detector, example_photo, tmp_path):
    """The full photo path (detect, align, search, paste-back, JPEG + provenance) in two processes."""
    from beautyrt.runtime.api import without_timings

    out, rep = tmp_path / "out.jpg", tmp_path / "rep.json"
    got = []
    for _ in range(2):
        r = cli(
            "optimize",
            str(example_photo),
            "-o",
            str(out),
            "--report",
            str(rep),
            "--bundle",
            str(tiny_bundle_with_detector),
            "-g",
            "3",
            "-p",
            "6",
            "--seed",
            "5",
            "-q",
            "--device",
            "cpu",
        )
        assert r.returncode == 0, r.stderr
        got.append((out.read_bytes(), without_timings(json.loads(rep.read_text()))))
    assert got[0][0] == got[1][0]
    assert got[0][1] == got[1][1]
    assert got[0][1]["faces_found"] == 1

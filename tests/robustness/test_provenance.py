"""Every output says it was AI-edited by beautyrt, readable with Pillow alone; side-by-side sheet and plot.

Reading it by hand:
    python -c "from PIL import Image; im = Image.open('out.jpg'); print(im.getexif()[0x0131], im.info['xmp'])"
(PNG: ``Image.open('out.png').info['beautyrt']`` holds the JSON record, ``info['XML:com.adobe.xmp']`` the XMP.)
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

DST = b"http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"


@pytest.fixture(scope="module")
def outputs(tiny_bundle, tmp_path_factory):
    """One optimisation written as .jpg, .png and .webp (+ report, side-by-side sheet, plot)."""
    from PIL import Image as _I

    from beautyrt.runtime.api import Settings, optimize_file

    d = tmp_path_factory.mktemp("prov")
    crop = np.asarray(
        _I.open(pathlib.Path(__file__).parents[2] / "examples" / "astronaut.jpg")
        .convert("RGB")
        .crop((150, 40, 300, 190))
    )
    src = d / "face.png"
    _I.fromarray(crop).save(src)
    reps = {}
    for ext in (".jpg", ".png", ".webp"):
        reps[ext] = optimize_file(
            src,
            d / f"out{ext}",
            bundle=tiny_bundle,
            aligned=True,
            device="cpu",
            settings=Settings(generations=4, popsize=6, seed=1),
            report_path=d / f"rep{ext}.json",
            side_by_side_path=d / f"sbs{ext}",
            plot_path=d / f"plot{ext}.png",
        )
    return d, reps


def _xmp(im: Image.Image) -> bytes:
    x = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or b""
    return x.encode() if isinstance(x, str) else x


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp"])
def test_output_carries_provenance(outputs, ext):
    d, reps = outputs
    umask = os.umask(0)
    os.umask(umask)
    for f in (f"out{ext}", f"sbs{ext}", f"rep{ext}.json"):  # like open(): not mkstemp's owner-only 0o600
        assert (d / f).stat().st_mode & 0o777 == 0o666 & ~umask, f
    im = Image.open(d / f"out{ext}")
    xmp = _xmp(im)
    assert DST in xmp and b"AI-edited by beautyrt" in xmp
    assert reps[ext]["bundle_hash"].encode() in xmp and reps[ext]["settings_hash"].encode() in xmp
    if ext == ".png":
        rec = json.loads(im.info["beautyrt"])
        assert rec["ai_edited"] is True and rec["tool"] == "beautyrt" and rec["bundle_hash"] == reps[ext]["bundle_hash"]
        assert im.info["Software"].startswith("beautyrt")
        assert im.info["Description"].startswith("AI-edited by beautyrt")
    else:
        exif = im.getexif()
        assert exif[0x0131].startswith("beautyrt")  # Software
        assert exif[0x010E].startswith("AI-edited by beautyrt")  # ImageDescription


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp"])
def test_side_by_side_and_plot(outputs, ext):
    d, reps = outputs
    out = Image.open(d / f"out{ext}")
    sbs = Image.open(d / f"sbs{ext}")
    assert sbs.width > 2 * out.width * sbs.height / (out.height * 2)  # two halves side by side
    assert DST in _xmp(sbs), "the before|after sheet shows an AI-edited image: tagged too"
    a = np.asarray(sbs.convert("RGB"))
    assert a.std() > 10  # not blank
    plot = Image.open(d / f"plot{ext}.png")
    assert plot.size == (720, 480)
    p = np.asarray(plot.convert("RGB")).astype(int)
    red = ((p[..., 0] > 150) & (p[..., 1] < 90) & (p[..., 2] < 90)).sum()
    blue = ((p[..., 2] > 150) & (p[..., 0] < 80)).sum()
    assert red > 50 and blue > 50, "score and identity curves drawn"
    assert not [f for f in d.iterdir() if f.name.startswith(".")], "temporary files left"


def test_sheet_functions_directly():
    from beautyrt.runtime.tools.sheet import history_plot, side_by_side

    before = np.zeros((40, 30, 3), np.uint8)
    after = np.full((40, 30, 3), 200, np.uint8)
    s = side_by_side(before, after, {"score_before": 1.0, "score_after": 1.5, "identity": 0.9})
    assert s.dtype == np.uint8 and s.shape[0] > 256 and s.shape[1] > 2 * 30 * 256 / 40
    h = [
        {
            "generation": g,
            "best_score": g * 0.1,
            "gen_mean_score": g * 0.05,
            "best_identity": 1 - g * 0.01,
            "gen_mean_identity": 0.9,
        }
        for g in range(1, 6)
    ]
    assert history_plot(h, identity_floor=0.6).shape == (480, 720, 3)
    assert history_plot(h[:1]).shape == (480, 720, 3)  # one generation: a point, no crash
    with pytest.raises(ValueError):
        history_plot([])


def test_cli_side_by_side_and_plot(cli, tiny_bundle, tmp_path):
    crop = np.asarray(
        Image.open(pathlib.Path(__file__).parents[2] / "examples" / "astronaut.jpg")
        .convert("RGB")
        .crop((150, 40, 300, 190))
    )
    src = tmp_path / "face.png"
    Image.fromarray(crop).save(src)
    r = cli(
        "optimize",
        str(src),
        "--aligned",
        "-o",
        str(tmp_path / "o.jpg"),
        "--bundle",
        str(tiny_bundle),
        "-g",
        "3",
        "-p",
        "4",
        "-q",
        "--side-by-side",
        str(tmp_path / "sbs.jpg"),
        "--plot",
        str(tmp_path / "plot.png"),
    )
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "sbs.jpg").width > Image.open(tmp_path / "sbs.jpg").height
    assert Image.open(tmp_path / "plot.png").size == (720, 480)
    # a bad --plot location fails before any work and leaves nothing
    r = cli(
        "optimize",
        str(src),
        "--aligned",
        "-o",
        str(tmp_path / "o2.jpg"),
        "--bundle",
        str(tiny_bundle),
        "-g",
        "1",
        "-p",
        "4",
        "-q",
        "--plot",
        str(tmp_path / "missing" / "plot.png"),
    )
    assert r.returncode == 40 and "does not exist" in r.stderr
    assert not (tmp_path / "o2.jpg").exists()

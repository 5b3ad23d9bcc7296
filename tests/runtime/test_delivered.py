"""The report's ``delivered`` block (issue 17 part 5): the photo as composed, re-detected, re-aligned, scored."""

from __future__ import annotations

import numpy as np
import pytest

from beautyrt.runtime.api import Beautifier, Settings
from beautyrt.runtime.ops.imaging import crop_to_unit

FAST = dict(generations=3, popsize=4, seed=0, score_on="output")


def test_delivered_scores_the_composed_photo(tiny_bundle_with_detector, example_photo):
    from PIL import Image

    rgb = np.asarray(Image.open(example_photo).convert("RGB"))
    with Beautifier(tiny_bundle_with_detector, threads=1) as bf:
        r = bf.optimize(rgb, Settings(strength=1.0, **FAST))
        d = r.report()["delivered"]
        assert d["detected"] and d["how"] == "re-detected and re-aligned"
        # the original photo's crop is the search's own start: the same number
        assert d["score_before"] == pytest.approx(r.report()["score_before"], abs=1e-5)
        assert r.timings["rescore"] > 0.0 and "seconds" not in d
        # at strength 0 the written photo is the input: no delivered gain, identity 1, whatever the search found
        r0 = bf.compose(r, 0.0)
        d0 = r0.report()["delivered"]
        assert np.array_equal(r0.image, rgb)
        assert d0["gain"] == pytest.approx(0.0, abs=1e-5) and d0["identity"] == pytest.approx(1.0, abs=1e-5)
        # an independent re-measure of the delivered photo: detect it again through the public API
        faces = bf.detect(r.image)
        from beautyrt.runtime.stages.align import align
        from beautyrt.runtime.types import Photo

        crop = align(Photo(r.image), faces[0], bf.resolution).crop
        s = bf.models.score_crops(crop_to_unit(crop, bf.resolution))["score"][0]
        assert d["score_after"] == pytest.approx(float(s), abs=1e-4)
        assert d["score_after"] != pytest.approx(d0["score_after"], abs=1e-6)  # the edit changed the delivered score


def test_delivered_with_aligned_input_is_the_output_crop(tiny_bundle, face_crop):
    with Beautifier(tiny_bundle, threads=1) as bf:
        r = bf.optimize(face_crop, Settings(strength=1.0, **FAST), aligned=True)
        d = r.report()["delivered"]
        s = bf.models.score_crops(crop_to_unit(r.image, bf.resolution))["score"][0]
        assert d["how"].startswith("output crop") and d["score_after"] == pytest.approx(float(s), abs=1e-4)

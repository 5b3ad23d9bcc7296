"""Reranking the search's finalists on the delivered photo (``--finalists``; runtime/stages/rerank.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from beautyrt.runtime.api import Beautifier, Settings
from beautyrt.runtime.errors import UsageError
from beautyrt.runtime.settings import resolve

FAST = dict(generations=4, popsize=6, seed=0, score_on="output", strength=1.0)


@pytest.fixture
def photo(example_photo):
    return np.asarray(Image.open(example_photo).convert("RGB"))


def test_the_search_keeps_its_k_best_feasible_candidates(tiny_bundle_with_detector, photo):
    with Beautifier(tiny_bundle_with_detector, threads=1) as bf:
        s = bf.resolve(Settings(finalists=5, **FAST))
        from beautyrt.runtime.stages import decode, invert, search
        from beautyrt.runtime.timing import StageTimer

        faces, _ = bf.faces_to_edit(decode.decode(photo), s, False, StageTimer())
        inv = invert.invert(bf.models, faces[0])
        o = search.search(bf.models, faces[0], inv, s)
        fin = o.finalists
        assert 1 < len(fin) <= 5
        scores = [f["score"] for f in fin]
        assert scores == sorted(scores, reverse=True)
        assert fin[0]["score"] == o.score_after and np.array_equal(fin[0]["ws"], o.w_best)
        assert all(f["identity"] >= s.weights.identity_floor for f in fin)
        # each finalist is a candidate the search really scored: its latent scores as recorded
        for f in fin:
            again = search.scorer(bf.models, faces[0], inv, s)(f["ws"] if f["generation"] else None)
            assert float(again["score"][0]) == pytest.approx(f["score"], abs=1e-4)
        # without finalists nothing is kept, and the search's result is the same
        o1 = search.search(bf.models, faces[0], inv, bf.resolve(Settings(finalists=1, **FAST)))
        assert o1.finalists == () and o1.score_after == o.score_after


def test_rerank_keeps_the_finalist_whose_delivered_photo_scores_highest(tiny_bundle_with_detector, photo):
    with Beautifier(tiny_bundle_with_detector, threads=1) as bf:
        one = bf.optimize(photo, Settings(finalists=1, **FAST)).report()
        r = bf.optimize(photo, Settings(finalists=6, **FAST))
        rep = r.report()
    assert "rerank" not in one
    table = rep["rerank"]["finalists"]
    assert len(table) > 1 and "rerank" in r.timings
    floor = rep["settings"]["weights"]["identity_floor"]
    ok = [i for i, f in enumerate(table) if "delivered_score" in f and f["delivered_identity"] >= floor]
    assert ok, table
    chosen = rep["rerank"]["chosen"]
    assert chosen == max(ok, key=lambda i: table[i]["delivered_score"])
    # the report's own delivered block (composed and re-detected afresh after the rerank) agrees with it
    assert rep["delivered"]["score_after"] == pytest.approx(table[chosen]["delivered_score"], abs=1e-4)
    assert rep["score_after"] == table[chosen]["search_score"]
    # finalist 0 is what finalists=1 delivers; the rerank never delivers less than it (when it is feasible)
    assert table[0]["search_score"] == one["score_after"]
    assert table[0]["delivered_score"] == pytest.approx(one["delivered"]["score_after"], abs=1e-4)
    assert rep["delivered"]["score_after"] >= one["delivered"]["score_after"] - 1e-4


def test_an_aligned_input_is_not_reranked(tiny_bundle, face_crop):
    with Beautifier(tiny_bundle, threads=1) as bf:
        a = bf.optimize(face_crop, Settings(finalists=6, **FAST), aligned=True)
        b = bf.optimize(face_crop, Settings(finalists=1, **FAST), aligned=True)
    assert "rerank" not in a.report() and np.array_equal(a.image, b.image)


def test_finalists_are_checked_and_the_bundle_may_recommend_them():
    for bad in (0, 65, 2.5, True, "3"):
        with pytest.raises(UsageError, match="finalists"):
            Settings(finalists=bad).validate()
    assert resolve(Settings(), search_defaults={"finalists": 4}).finalists == 4
    assert resolve(Settings(finalists=2), search_defaults={"finalists": 4}).finalists == 2
    assert resolve(Settings()).finalists == 1


def test_cli_refuses_a_bad_finalists_count(cli, example_photo, tiny_bundle_with_detector, tmp_path):
    out = tmp_path / "o.jpg"
    c = cli("optimize", str(example_photo), "-o", str(out), "--bundle", str(tiny_bundle_with_detector),
            "--finalists", "0", "-q")  # fmt: skip
    assert c.returncode == 2 and "finalists" in c.stderr and "Traceback" not in c.stderr
    assert not out.exists()

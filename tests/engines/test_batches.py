"""run_in_batches: what a fixed-batch engine (a static TensorRT profile) sees, and what the caller gets back."""

from __future__ import annotations

import numpy as np
import pytest

from beautyrt.engines.base import run_in_batches


def _engine(min_b, max_b, seen):
    def run(feeds):
        b = feeds["x"].shape[0]
        assert min_b <= b <= max_b, f"engine got batch {b}"
        assert feeds["y"].shape[0] == b
        seen.append(b)
        return {"sum": feeds["x"].sum(axis=(1, 2)) + feeds["y"][:, 0], "row": feeds["x"][:, 0, :] * 2}

    return run


@pytest.mark.parametrize(
    "b,min_b,max_b,calls",
    [
        (16, 16, 16, [16]),
        (1, 16, 16, [16]),
        (33, 16, 16, [16, 16, 16]),
        (5, 1, 8, [5]),
        (20, 1, 8, [8, 8, 4]),
        (9, 4, 8, [8, 4]),
    ],
)
def test_padding_and_chunking_give_the_unbatched_result(b, min_b, max_b, calls):
    rng = np.random.default_rng(b)
    feeds = {"x": rng.normal(size=(b, 3, 4)).astype(np.float32), "y": rng.normal(size=(b, 2)).astype(np.float32)}
    seen: list = []
    out = run_in_batches(feeds, min_b, max_b, _engine(min_b, max_b, seen))
    assert seen == calls
    np.testing.assert_allclose(out["sum"], feeds["x"].sum(axis=(1, 2)) + feeds["y"][:, 0], rtol=1e-6)
    np.testing.assert_array_equal(out["row"], feeds["x"][:, 0, :] * 2)
    assert out["sum"].shape == (b,)


def test_bad_range():
    with pytest.raises(ValueError):
        run_in_batches({"x": np.zeros((2, 1))}, 4, 2, lambda f: f)


def test_engine_chunk_runs_big_batches_in_pieces_with_the_same_outputs(tiny_bundle):
    """Engine.chunk: a batch above it reaches the backend in chunks (bounded activation memory), the caller
    still makes one call and gets the same outputs as one backend call."""
    from beautyrt.engines import load_manifest
    from beautyrt.engines.backends import open_with

    m = load_manifest(tiny_bundle)
    eng = open_with(m, "synthesis", "ort", device="cpu", threads=1)
    spec = m.model("synthesis").inputs[0]
    ws = np.random.default_rng(0).normal(size=(7, *spec.shape[1:])).astype(np.float32) * 0.3
    whole = eng.run({"ws": ws})["image"]
    seen: list = []
    backend_run = eng._run

    def spy(feeds):
        seen.append(feeds["ws"].shape[0])
        return backend_run(feeds)

    eng._run = spy
    eng.chunk = 3
    parts = eng.run({"ws": ws})["image"]
    assert seen == [3, 3, 1]
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)
    seen.clear()
    eng.run({"ws": ws[:3]})
    assert seen == [3]  # at or below the chunk: one backend call

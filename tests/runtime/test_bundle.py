"""The runtime's reading of a bundle: the generator record and role shapes are checked before any model loads."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from beautyrt.engines.errors import BundleSchemaError
from beautyrt.runtime.bundle import Models
from tests.conftest import edit_manifest


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(tiny_bundle, d)
    return d


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.pop("generator"), "generator"),
        (lambda m: m["generator"].update(w_avg=m["generator"]["w_avg"][:-1]), "w_avg"),
        (lambda m: m["generator"].update(w_std=[0.0] * len(m["generator"]["w_std"])), "w_std"),
        (lambda m: m["generator"].update(resolution="32"), "resolution"),
        (lambda m: m["generator"].update(num_ws=-3), "num_ws"),
        (lambda m: m["generator"].update(groups={"coarse": [0, 99]}), "groups"),
        (lambda m: m["models"].pop("scorer"), "scorer"),
        (lambda m: m["models"]["crop_scorer"]["inputs"][0].update(shape=[1, 3, 32, 32]), "crop_scorer"),
        (lambda m: m["models"]["synthesis"]["outputs"][0].update(shape=["batch", 3, 64, 64]), "synthesis"),
    ],
)
def test_generator_record_and_role_shapes_are_checked(bundle_copy, edit, match):
    edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleSchemaError, match=match):
        Models(bundle_copy, device="cpu")


def test_engine_batch_chunks_the_image_roles_and_keeps_the_result(tiny_bundle, face_crop):
    """Beautifier(engine_batch=N): the image-sized engines run N candidates per backend call; the search's
    outcome is the same as with whole generations (same candidates, outputs equal to float noise)."""
    from beautyrt.engines.errors import UsageError
    from beautyrt.runtime.api import Beautifier, Settings
    from beautyrt.runtime.bundle import CPU_CHUNK_PIXELS

    s = Settings(generations=3, popsize=6, seed=1)
    with Beautifier(tiny_bundle, device="cpu", threads=1) as b:
        assert b.models.engine_batch == CPU_CHUNK_PIXELS // (b.resolution * b.resolution)  # auto on a CPU
        whole = b.optimize(face_crop, s, aligned=True)
    with Beautifier(tiny_bundle, device="cpu", threads=1, engine_batch=4) as b:
        assert all(b.engines[r].chunk == 4 for r in ("synthesis", "scorer") if r in b.engines)
        assert b.engines["encoder"].chunk is None
        chunked = b.optimize(face_crop, s, aligned=True)
    assert abs(chunked.score_after - whole.score_after) < 1e-4
    np.testing.assert_allclose(chunked.w_best, whole.w_best, atol=1e-4)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(UsageError, match="engine-batch"):
            Beautifier(tiny_bundle, engine_batch=bad)

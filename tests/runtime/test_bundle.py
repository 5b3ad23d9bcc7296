"""The runtime's reading of a bundle: the generator record and role shapes are checked before any model loads."""

from __future__ import annotations

import shutil

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

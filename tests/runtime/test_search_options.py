"""Search options: the start (origin | the bundle's search prior), mirrored sampling, the covariance, and the
bundle's recommendations for them (issue 16)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from beautyrt.engines.manifest import sha256_file
from beautyrt.runtime.api import Beautifier, Settings
from beautyrt.runtime.errors import UsageError
from beautyrt.runtime.strategies.cma import CMAStrategy


@pytest.fixture()
def prior_bundle(tiny_bundle, tmp_path):
    """The tiny bundle plus a search prior (a fixed offset in W) and recommendations that use it."""
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    prior = np.linspace(-1.0, 1.0, m["generator"]["w_dim"]).astype(np.float32)
    np.save(b / "search_prior.npy", prior)
    m["models"]["search_prior"] = {
        "file": "search_prior.npy",
        "sha256": sha256_file(b / "search_prior.npy"),
        "inputs": [],
        "outputs": [],
    }
    m["search_defaults"] = {"generations": 4, "popsize": 6, "start": "prior", "mirrored": True, "covariance": "full"}
    (b / "manifest.json").write_text(json.dumps(m))
    return b, prior


def test_bundle_recommendations_fill_unset_search_options(prior_bundle, tiny_bundle):
    b, _ = prior_bundle
    with Beautifier(b, device="cpu") as bf:
        s = bf.resolve(Settings())
        assert (s.generations, s.popsize, s.start, s.mirrored, s.covariance) == (4, 6, "prior", True, "full")
        s = bf.resolve(Settings(popsize=10, start="origin", mirrored=False, covariance="diagonal"))
        assert (s.popsize, s.start, s.mirrored, s.covariance) == (10, "origin", False, "diagonal")
    with Beautifier(tiny_bundle, device="cpu") as bf:
        s = bf.resolve(Settings())
        assert (s.popsize, s.start, s.mirrored, s.covariance) == (16, "origin", False, "auto")
        with pytest.raises(UsageError, match="search prior"):
            bf.resolve(Settings(start="prior"))


def test_prior_start_moves_the_first_population_and_is_in_the_result(prior_bundle, face_crop, monkeypatch):
    """With start=prior CMA-ES starts at the prior's offset (every layer), not at the encoder's latent."""
    import beautyrt.runtime.strategies.cma as cma_mod

    b, prior = prior_bundle
    seen = []
    orig = cma_mod.CMAStrategy.__init__

    def spy(self, dim, **kw):
        seen.append(kw.get("x0"))
        orig(self, dim, **kw)

    monkeypatch.setattr(cma_mod.CMAStrategy, "__init__", spy)
    with Beautifier(b, device="cpu") as bf:
        r_prior = bf.optimize(face_crop, Settings(seed=1), aligned=True)
        r_origin = bf.optimize(face_crop, Settings(seed=1, start="origin"), aligned=True)
    np.testing.assert_allclose(seen[0], prior.astype(np.float64), rtol=1e-6)
    assert seen[1] is None
    assert r_prior.report()["settings"]["start"] == "prior" and r_origin.report()["settings"]["start"] == "origin"
    assert not np.allclose(r_prior.w_best, r_origin.w_best)


def test_mirrored_and_covariance_reach_pycma():
    plain = CMAStrategy(40, sigma0=0.3, popsize=8, seed=0)
    mirrored = CMAStrategy(40, sigma0=0.3, popsize=8, seed=0, mirrored=True)
    diag = CMAStrategy(40, sigma0=0.3, popsize=8, seed=0, diagonal=True)
    assert mirrored._es.opts["CMA_mirrors"] == 0.5 and diag.diagonal and not plain.diagonal
    differs = False
    for _ in range(4):  # pycma mirrors selectively, with a delay: the populations part after a few generations
        a, b = plain.ask(), mirrored.ask()
        differs |= not np.allclose(a, b)
        f = lambda X: (X**2).sum(1)  # noqa: E731
        plain.tell(a, f(a))
        mirrored.tell(b, f(b))
    assert differs


def test_bad_bundle_recommendations_are_a_schema_error(prior_bundle):
    from beautyrt.engines.errors import BundleSchemaError

    b, _ = prior_bundle
    m = json.loads((b / "manifest.json").read_text())
    m["search_defaults"]["mirrored"] = "false"  # a string, not a bool
    (b / "manifest.json").write_text(json.dumps(m))
    with Beautifier(b, device="cpu") as bf, pytest.raises(BundleSchemaError, match="search_defaults: mirrored"):
        bf.resolve(Settings())


def test_bad_search_options_are_refused():
    for kw, match in (
        ({"start": "middle"}, "start"),
        ({"mirrored": "yes"}, "mirrored"),
        ({"covariance": "sparse"}, "covariance"),
        ({"popsize": 1}, "popsize"),
    ):
        with pytest.raises(UsageError, match=match):
            Settings(**kw).validate()

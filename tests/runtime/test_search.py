"""The CMA-ES adapter: converges on known functions, is seeded, silent and writes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from beautyrt.runtime.errors import UsageError
from beautyrt.runtime.strategies.cma import CMAStrategy


def _minimise(f, dim, gens, seed=1, x0=1.5, **kw):
    es = CMAStrategy(dim, x0=np.full(dim, x0), sigma0=0.5, seed=seed, **kw)
    for _ in range(gens):
        X = es.ask()
        assert X.shape == (es.popsize, dim)
        es.tell(X, np.array([f(x) for x in X]))
        if es.stop():
            break
    return es


def sphere(x):
    return float(np.sum(x**2))


def rosenbrock(x):
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def test_sphere_converges():
    es = _minimise(sphere, 10, 400)
    assert sphere(es.mean) < 1e-8


def test_rosenbrock_converges():
    es = _minimise(rosenbrock, 5, 2000, x0=0.0)
    assert np.allclose(es.mean, 1.0, atol=1e-3), es.mean


def test_diagonal_for_large_dimension_and_still_descends():
    es = _minimise(sphere, 2048, 150, x0=1.0)
    assert es.diagonal
    assert sphere(es.mean) < 0.5 * 2048  # started at 2048


def test_seeded_and_independent_of_global_rng():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = CMAStrategy(8, seed=7).ask()
    np.random.seed(999)  # perturbing the global RNG must not change anything
    b = CMAStrategy(8, seed=7).ask()
    c = CMAStrategy(8, seed=8).ask()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    np.random.seed(123)
    CMAStrategy(8, seed=7).ask()
    assert np.array_equal(np.random.get_state()[1], before), "pycma touched the global numpy RNG"


def test_writes_no_files_and_prints_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _minimise(sphere, 6, 50)
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_bad_arguments():
    with pytest.raises(UsageError):
        CMAStrategy(0)
    with pytest.raises(UsageError):
        CMAStrategy(4, sigma0=-1)
    es = CMAStrategy(4, popsize=6)
    X = es.ask()
    with pytest.raises(UsageError):
        es.tell(X[:3], np.zeros(3))
    with pytest.raises(UsageError):
        es.tell(X, np.full(6, np.nan))

"""The search strategy behind one small adapter: ``ask() -> (λ, D)``, ``tell(X, f)``, ``stop()``.

:class:`CMAStrategy` wraps pycma so that it is seeded, silent and side-effect free: pycma by default
seeds the global ``numpy.random`` from the clock, prints, and writes ``outcmaes/``; here it gets its own
``numpy.random.Generator`` (option ``randn``; the global RNG is never touched, so concurrent searches
in one process do not disturb each other), ``verbose=-9``, ``verb_log=0``, ``verb_disp=0``.
Covariance is diagonal above 256 dimensions (full covariance costs ~0.8 s per generation plus periodic
eigendecompositions at 9216-d, diagonal ~11 ms; at 512-d see DIAGONAL_ABOVE).

pycma's linear algebra (eigendecomposition of C, sampling products) runs on small matrices, where a
multithreaded BLAS only loses: measured on 2 shared cores, numpy's OpenBLAS took 50 ms for a 32x32 ``eigh``
right after an onnxruntime call (0.1 ms single-threaded) and up to 8 s for 512x512 (0.25 s). So ask/tell
run with OpenBLAS limited to one thread for the calling thread only (``openblas_set_num_threads_local``,
OpenBLAS >= 0.3.27; restored afterwards; a no-op when numpy's BLAS is something else).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import logging
import os
import warnings
from typing import Optional

import numpy as np

from ..errors import UsageError

log = logging.getLogger("beautyrt")

# Dimensions above which covariance is diagonal by default. At 512-d (space "w" of a 512-wide W) full
# covariance cost 17 ms median / 45 ms mean per generation on 2 shared cores (single-threaded BLAS; diagonal
# 0.8 / 6 ms), while its learning rates (c1 ~ 2/D^2) leave C ~ the identity over the 10-100 generations a
# photo gets: on 512-d separable and rotated ellipsoids, λ=16, 5 seeds, full vs diagonal reached the same
# best value within 1.5 % after 20 generations, and diagonal was 7 % better after 100.
DIAGONAL_ABOVE = 256


@functools.lru_cache(maxsize=1)
def _openblas_set_threads_local():
    """numpy's bundled OpenBLAS ``openblas_set_num_threads_local`` (thread-local), or None."""
    base = os.path.dirname(np.__file__)
    for pattern in (base + ".libs/*openblas*.so*", base + "/.dylibs/*openblas*.dylib"):
        for path in glob.glob(pattern):
            try:
                fn = ctypes.CDLL(path).openblas_set_num_threads_local
            except (OSError, AttributeError):
                continue
            fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
            return fn
    return None


@contextlib.contextmanager
def single_threaded_blas():
    """Run the block with OpenBLAS on one thread, for the calling thread only."""
    fn = _openblas_set_threads_local()
    if fn is None:
        yield
        return
    prev = fn(1)
    try:
        yield
    finally:
        fn(prev)


class CMAStrategy:
    """Minimises f. ``x0`` defaults to the origin; ``sigma0`` is the initial step in x's units."""

    def __init__(
        self,
        dim: int,
        *,
        sigma0: float = 0.3,
        popsize: Optional[int] = None,
        seed: int = 0,
        x0: Optional[np.ndarray] = None,
        diagonal: Optional[bool] = None,
        max_generations: Optional[int] = None,
        mirrored: bool = False,
    ):
        try:
            with warnings.catch_warnings():  # cma warns at import when matplotlib is absent
                warnings.simplefilter("ignore")
                import cma
        except ImportError as e:  # pragma: no cover - base dependency
            from beautyrt.engines.errors import MissingDependencyError

            raise MissingDependencyError("the cma package is missing: `pip install beautyrt` brings it") from e
        if dim < 1:
            raise UsageError(f"search dimension must be >= 1, got {dim}")
        if sigma0 <= 0:
            raise UsageError(f"sigma0 must be > 0, got {sigma0}")
        if popsize is not None and popsize < 2:
            raise UsageError(f"popsize must be >= 2, got {popsize}")
        self.dim = dim
        self.diagonal = dim > DIAGONAL_ABOVE if diagonal is None else bool(diagonal)
        rng = np.random.default_rng(seed)
        opts = {
            "randn": lambda *shape: rng.standard_normal(shape),
            "seed": np.nan,  # pycma would otherwise re-seed the global numpy RNG
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
            "verb_filenameprefix": "",
            "CMA_diagonal": self.diagonal,
            "maxiter": max_generations if max_generations else np.inf,
            "tolfun": 0,
            "tolfunhist": 0,
            "tolflatfitness": 10**9,
            "tolstagnation": 10**9,
        }
        if popsize:
            opts["popsize"] = int(popsize)
        if mirrored:  # half of each population is the mirror image (x0 - d for x0 + d): fewer evaluations per step
            opts["CMA_mirrors"] = 0.5
        x0 = np.zeros(dim) if x0 is None else np.asarray(x0, dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._es = cma.CMAEvolutionStrategy(x0, sigma0, opts)
        self.popsize = int(self._es.popsize)
        self.generation = 0
        self._asked: Optional[np.ndarray] = None

    def ask(self) -> np.ndarray:
        """λ candidate points, shape (λ, D), float64."""
        with single_threaded_blas():
            self._asked = np.asarray(self._es.ask(), dtype=np.float64)
        return self._asked

    def tell(self, X: np.ndarray, f: np.ndarray) -> None:
        X = np.asarray(X, dtype=np.float64)
        f = np.asarray(f, dtype=np.float64)
        if X.shape != (self.popsize, self.dim) or f.shape != (self.popsize,):
            raise UsageError(
                f"tell() needs X {(self.popsize, self.dim)} and f ({self.popsize},), got {X.shape}, {f.shape}"
            )
        if not np.all(np.isfinite(f)):
            raise UsageError("tell() got non-finite objective values")
        with warnings.catch_warnings(), single_threaded_blas():
            warnings.simplefilter("ignore")
            self._es.tell(list(X), list(f))
        self.generation += 1

    def stop(self) -> dict:
        """Termination conditions met (empty dict: keep going)."""
        return dict(self._es.stop())

    @property
    def sigma(self) -> float:
        return float(self._es.sigma)

    @property
    def mean(self) -> np.ndarray:
        return np.array(self._es.mean, dtype=np.float64)


NAME = "cma"


def create(problem, settings) -> CMAStrategy:
    """CMA-ES from ``problem.x0`` (the origin = the start latent, or the bundle's search prior) with the settings'
    step, population, seed, generations, covariance (auto: diagonal above DIAGONAL_ABOVE) and mirrored sampling."""
    cov = getattr(settings, "covariance", None) or "auto"
    return CMAStrategy(
        problem.dim,
        sigma0=settings.sigma0,
        popsize=settings.popsize,
        seed=settings.seed,
        max_generations=settings.generations,
        x0=problem.x0,
        diagonal=None if cov == "auto" else cov == "diagonal",
        mirrored=bool(getattr(settings, "mirrored", False)),
    )

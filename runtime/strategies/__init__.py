"""Search strategies: one module each, one line each in :data:`STRATEGIES`.

A strategy minimises a function of search vectors x (shape (D,), units of W's per-dimension std) through the
small ask/tell interface of pycma (:class:`Strategy`): ``ask() -> (λ, D)``, ``tell(X, f)`` with the values to
minimise, ``stop() -> dict`` (empty: go on), ``sigma``. The search stage (``runtime.stages.search``) runs the
loop -- one batched scorer call per ``ask`` -- and keeps the best feasible candidate; a strategy only proposes.

A module defines ``NAME`` and ``create(problem: SearchProblem, settings) -> Strategy``. Adding one (e.g.
"sep-cma" or a random-search baseline) is a module here and one line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from ..errors import UsageError

STRATEGIES = {
    "cma": "beautyrt.runtime.strategies.cma",  # CMA-ES (pycma), the default
    "linear": "beautyrt.runtime.strategies.linear",  # InterFaceGAN-style walk along the bundle's beauty direction
}


class Strategy(Protocol):
    popsize: int

    def ask(self) -> np.ndarray: ...

    def tell(self, X: np.ndarray, f: np.ndarray) -> None: ...

    def stop(self) -> dict: ...

    @property
    def sigma(self) -> float: ...


@dataclass(frozen=True)
class SearchProblem:
    """What a strategy may know of the problem: the dimension, the bundle's beauty direction expressed in
    search coordinates (None when the bundle has none), and the start point."""

    dim: int
    direction: Optional[np.ndarray] = None
    x0: Optional[np.ndarray] = None  # where to start (search coordinates); None: the origin (w_start)


def create(name: str, problem: SearchProblem, settings) -> Strategy:
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return importlib.import_module(STRATEGIES[name]).create(problem, settings)


__all__ = ["STRATEGIES", "Strategy", "SearchProblem", "create"]

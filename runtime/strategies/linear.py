"""The linear baseline as a strategy: an InterFaceGAN-style walk along the bundle's beauty direction.

The bundle's ``beauty_direction`` is a unit vector in W (in units of W's std, fitted at export time). One
``ask`` proposes the whole walk -- ``t * direction`` for t = 0, STEP, 2 STEP, ..., STEPS * STEP -- so every step
is scored in ONE engine call; then the strategy stops. The search stage keeps the best feasible step (identity
at or above the floor), exactly as it keeps CMA-ES's best candidate, so both are measured the same way.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

NAME = "linear"
STEP = 0.25  # in units of W's std along the unit direction
STEPS = 32  # the walk: t = 0 .. STEPS * STEP


class LinearStrategy:
    def __init__(self, direction: np.ndarray, step: float = STEP, steps: int = STEPS):
        d = np.asarray(direction, np.float64).ravel()
        if not np.all(np.isfinite(d)) or float(np.linalg.norm(d)) == 0.0:
            raise UsageError("the bundle's beauty direction is zero or not finite")
        self.direction, self.step, self.steps = d, float(step), int(steps)
        self.popsize = self.steps + 1
        self._done = False

    def ask(self) -> np.ndarray:
        t = self.step * np.arange(self.popsize, dtype=np.float64)
        return t[:, None] * self.direction[None, :]

    def tell(self, X: np.ndarray, f: np.ndarray) -> None:
        self._done = True

    def stop(self) -> dict:
        return {"walked": 1} if self._done else {}

    @property
    def sigma(self) -> float:
        return self.step


def create(problem, settings) -> LinearStrategy:
    if problem.direction is None:
        raise UsageError(
            "--strategy linear needs a bundle with a beauty direction (beauty_direction.npy; the demo "
            "pack has one); this bundle has none"
        )
    return LinearStrategy(problem.direction)

"""Per-stage wall-clock timing (perf_counter) for reports and benchmarks; no global state."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterable, Optional

import numpy as np


class StageTimer:
    def __init__(self) -> None:
        self._t: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def add(self, stage: str, seconds: float) -> None:
        self._t[stage] = self._t.get(stage, 0.0) + float(seconds)

    def summary(self) -> dict[str, float]:
        d = dict(self._t)
        d["total"] = sum(v for k, v in self._t.items() if not k.startswith("search_"))
        return d


def percentiles(samples: Iterable[float], qs=(50, 90, 99)) -> dict[str, float]:
    a = np.asarray(list(samples), dtype=np.float64)
    if a.size == 0:
        return {f"p{q}": float("nan") for q in qs}
    return {f"p{q}": float(np.percentile(a, q)) for q in qs}


def peak_rss_bytes() -> Optional[int]:
    """This process's peak resident set size so far, in bytes; None where the OS tells neither. Linux: VmHWM of
    /proc/self/status (the peak of this program's own memory; getrusage's ru_maxrss also carries over the
    peak of whatever process exec'd it, e.g. a large parent that forked). Elsewhere getrusage (macOS bytes).
    Monotonic: read it after the work whose peak it should cover."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024

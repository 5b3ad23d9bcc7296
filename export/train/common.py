"""Small helpers shared by the trainers: seeding, a loss log, batches of aligned faces."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

log = logging.getLogger("beautyrt")


def seed_all(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def to_tensor(u8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def batch(images: torch.Tensor, idx: torch.Tensor, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    x = images[idx]
    if flip:
        m = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    return x


class LossLog:
    """Appends one JSON line per record to ``path`` and logs a short line."""

    def __init__(self, path: Optional[Path]):
        self.path = Path(path) if path else None
        self.t0 = time.time()
        self.records: list[dict] = []
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, **rec) -> dict:
        rec = {
            "t": round(time.time() - self.t0, 1),
            **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in rec.items()},
        }
        self.records.append(rec)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        log.info(" ".join(f"{k}={v}" for k, v in rec.items()))
        return rec

    @property
    def elapsed(self) -> float:
        return time.time() - self.t0

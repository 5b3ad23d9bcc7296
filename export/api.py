"""Entry points of the export stage used by the CLI."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from .bundle import ModelSet, build_preset, write_bundle
from .presets import get_preset

log = logging.getLogger("beautyrt")


def add_detector(ms: ModelSet, cache_dir: Optional[str | Path] = None) -> ModelSet:
    """Add the MTCNN detector (P/R/O-Net from the facenet-pytorch 2.6.0 wheel) to the bundle's models."""
    from .mtcnn_export import export_mtcnn

    state: dict = {}

    def net(name: str):
        def fn(d: Path) -> dict:
            if not state:
                state.update(export_mtcnn(d, cache_dir))
            return state[name]
        return fn

    for name in ("pnet", "rnet", "onet"):
        ms.extra_models[f"detector_{name}"] = net(name)
    return ms


def export_preset(preset: str, out: str | Path, *, seed: int = 0, overwrite: bool = False, detector: bool = True,
                  cache_dir: Optional[str | Path] = None,
                  progress: Optional[Callable[[str, int, int], None]] = None) -> Path:
    ms = build_preset(get_preset(preset), seed=seed)
    if detector:
        add_detector(ms, cache_dir)
    return write_bundle(ms, out, overwrite=overwrite, progress=progress)

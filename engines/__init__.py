"""Torch-free backends. ``open_engine(manifest, role)`` is the one way a bundle model gets loaded."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .base import Engine, TensorSpec
from .errors import UsageError
from .manifest import Manifest, load_manifest

BACKENDS = ("onnxruntime", "tensorrt")


def open_engine(manifest: Manifest, role: str, *, backend: str = "onnxruntime", device: str = "auto",
                device_id: int = 0, threads: Optional[int] = None, cache_dir: Optional[str | Path] = None) -> Engine:
    """Load the ``role`` model of a validated bundle with the chosen backend."""
    entry = manifest.model(role)
    if backend == "onnxruntime":
        from .ort import OrtEngine

        return OrtEngine(manifest.root / entry.file, entry.inputs, entry.outputs, name=role, device=device,
                         device_id=device_id, threads=threads, cache_dir=cache_dir, cache_key=entry.sha256[:16])
    if backend == "tensorrt":
        from .trt import open_trt_engine

        return open_trt_engine(manifest, role, device_id=device_id)
    raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["Engine", "TensorSpec", "Manifest", "load_manifest", "open_engine", "BACKENDS"]

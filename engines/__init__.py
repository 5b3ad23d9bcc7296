"""Torch-free backends. ``open_engines(manifest, roles, backend=...)`` is the one way bundle models get loaded.

Layout: ``base.py`` (the Engine interface, tensor specs), ``manifest.py`` (the generic bundle contract:
files, hashes, versions, tensor specs), ``backends/`` (one module per backend plus the registry),
``errors.py`` (the error hierarchy). Nothing here knows about faces or latents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from .backends import BACKENDS, CHOICES, DEFAULT_BACKEND, canonical, open_with, plan_backends
from .base import Engine, TensorSpec
from .manifest import Manifest, load_manifest


def open_engines(
    manifest: Manifest,
    roles: Iterable[str],
    *,
    backend: str = DEFAULT_BACKEND,
    device: str = "auto",
    device_id: int = 0,
    threads: Optional[int] = None,
    cache_dir: Optional[str | Path] = None,
) -> dict[str, Engine]:
    """Load ``roles`` of a validated bundle, each with the backend :func:`plan_backends` picks for it. On a
    failure the engines opened so far are closed again."""
    roles = list(roles)
    plan = plan_backends(manifest, roles, backend, device_id)
    auto = canonical(backend) == "auto"
    out: dict[str, Engine] = {}
    try:
        for role in roles:
            out[role] = open_with(
                manifest,
                role,
                plan[role],
                auto=auto,
                device=device,
                device_id=device_id,
                threads=threads,
                cache_dir=cache_dir,
            )
    except BaseException:
        for e in out.values():
            e.close()
        raise
    return out


def open_engine(
    manifest: Manifest,
    role: str,
    *,
    backend: str = "ort",
    device: str = "auto",
    device_id: int = 0,
    threads: Optional[int] = None,
    cache_dir: Optional[str | Path] = None,
) -> Engine:
    """Load one role with one named backend (``auto``: as :func:`open_engines` would)."""
    return open_engines(
        manifest, [role], backend=backend, device=device, device_id=device_id, threads=threads, cache_dir=cache_dir
    )[role]


__all__ = [
    "Engine",
    "TensorSpec",
    "Manifest",
    "load_manifest",
    "open_engine",
    "open_engines",
    "BACKENDS",
    "CHOICES",
    "DEFAULT_BACKEND",
]

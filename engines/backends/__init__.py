"""Engine backends: one module each, one line each in :data:`BACKENDS`.

A backend module defines

* ``NAME`` -- its name on the command line (``--backend NAME``);
* ``require(device_id)`` -- raise :class:`~beautyrt.engines.errors.MissingDependencyError` (exit 23) or
  :class:`~beautyrt.engines.errors.ProviderError` (exit 20) with one line saying what to install / why, when
  it cannot run on this machine; return silently otherwise;
* ``has_artefact(entry)`` -- whether the bundle holds something this backend runs for that role (an ONNX
  file, a TensorRT plan, ...);
* ``open_role(manifest, role, **options)`` -- the role's :class:`~beautyrt.engines.base.Engine`.

Adding a backend (e.g. OpenVINO) is a module ``engines/backends/openvino.py`` with those four names and
one line in ``BACKENDS``. The choice is made per role (:func:`plan_backends`): a role the chosen backend has
no artefact for (the detector under ``tensorrt``, whose plans are never built) runs on onnxruntime, the
backend every bundle can run.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Iterable, Optional

from ..errors import BundleSchemaError, BundleVersionError, MissingDependencyError, ProviderError, UsageError
from ..manifest import Manifest

log = logging.getLogger("beautyrt")

BACKENDS = {
    "ort": "beautyrt.engines.backends.ort",  # onnxruntime: every bundle (CPU, CUDA, TensorRT providers)
    "tensorrt": "beautyrt.engines.backends.trt",  # native TensorRT plans built by `beautyrt export --trt`
}
FALLBACK = "ort"  # runs every role of every bundle
AUTO_PREFERENCE = ("tensorrt", "ort")  # ``auto``: the first one that can run here and has the role's artefact
ALIASES = {"onnxruntime": "ort", "trt": "tensorrt"}
CHOICES = ("auto", *BACKENDS)
DEFAULT_BACKEND = "auto"


def canonical(name: str) -> str:
    """``name`` as a key of BACKENDS (or ``auto``); UsageError naming the choices otherwise."""
    if not isinstance(name, str):
        raise UsageError(f"backend must be a string, one of {', '.join(CHOICES)}; got {type(name).__name__}")
    n = ALIASES.get(name, name)
    if n != "auto" and n not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(CHOICES)}")
    return n


def backend_module(name: str) -> ModuleType:
    return importlib.import_module(BACKENDS[canonical(name)])


def plan_backends(
    manifest: Manifest, roles: Iterable[str], backend: str = DEFAULT_BACKEND, device_id: int = 0
) -> dict[str, str]:
    """{role: backend name} for ``roles`` of ``manifest``.

    * a named backend must be able to run here (else its one-line MissingDependencyError / ProviderError) and
      have an artefact for at least one of the roles (else BundleSchemaError saying how to build them); roles
      it has none for run on onnxruntime;
    * ``auto``: per role, the first of AUTO_PREFERENCE that runs here and has the role's artefact.
    """
    name = canonical(backend)
    roles = list(roles)
    if name == FALLBACK:
        return {r: FALLBACK for r in roles}
    if name != "auto":
        mod = backend_module(name)
        mod.require(device_id)
        plan = {r: name if mod.has_artefact(manifest.model(r)) else FALLBACK for r in roles}
        if all(v == FALLBACK for v in plan.values()):
            raise BundleSchemaError(
                f"--backend {name}: bundle {manifest.root} has no {name} artefact for any of "
                f"{', '.join(roles)}; {getattr(mod, 'BUILD_HINT', 'rebuild the bundle')}"
            )
        others = sorted(r for r, v in plan.items() if v == FALLBACK)
        if others:
            log.info("--backend %s: %s run on onnxruntime (no %s artefact)", name, ", ".join(others), name)
        return plan
    plan = {}
    usable: dict[str, bool] = {}
    for r in roles:
        entry = manifest.model(r)
        for cand in AUTO_PREFERENCE:
            mod = backend_module(cand)
            if cand not in usable:
                try:
                    mod.require(device_id)
                    usable[cand] = True
                except (MissingDependencyError, ProviderError):
                    usable[cand] = False
            if usable[cand] and mod.has_artefact(entry):
                plan[r] = cand
                break
        else:  # pragma: no cover - the fallback always has an artefact
            raise BundleSchemaError(f"no backend can run role {r!r} of {manifest.root}")
    return plan


def open_with(
    manifest: Manifest,
    role: str,
    backend: str,
    *,
    auto: bool = False,
    device: str = "auto",
    device_id: int = 0,
    threads: Optional[int] = None,
    cache_dir=None,
):
    """Open ``role`` with ``backend``. With ``auto`` a backend other than the fallback that refuses the
    artefact (a plan built for another GPU or TensorRT) falls back to onnxruntime with a warning."""
    name = canonical(backend)
    kw = dict(device=device, device_id=device_id, threads=threads, cache_dir=cache_dir)
    try:
        return backend_module(name).open_role(manifest, role, **kw)
    except (BundleVersionError, ProviderError) as e:
        if not auto or name == FALLBACK:
            raise
        log.warning("%s: %s; running it on onnxruntime", role, e)
        return backend_module(FALLBACK).open_role(manifest, role, **kw)


__all__ = ["BACKENDS", "CHOICES", "DEFAULT_BACKEND", "canonical", "plan_backends", "open_with", "backend_module"]

"""The Python API in one place: what the CLI and embedding servers call.

from beautyrt.runtime.api import Beautifier, Settings
with Beautifier("~/.cache/beautyrt/default") as b:
    result = b.optimize("photo.jpg", Settings(generations=20, seed=1))
    result.image        # uint8 RGB, the whole photo with the face edited
    result.report()     # JSON-able dict: scores, identity, history, timings, settings, bundle hash
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import numpy as np

from beautyrt.engines import DEFAULT_BACKEND
from beautyrt.engines.backends import canonical as canonical_backend
from beautyrt.engines.backends.ort import check_device
from beautyrt.engines.base import check_threads
from beautyrt.engines.errors import BeautyrtError, MissingDependencyError, UsageError
from beautyrt.engines.files import printable

from .beautifier import Beautifier
from .errors import NoFaceError
from .objective import ObjectiveWeights
from .ops.imageio import (
    atomic_write_many,
    check_input,
    check_outputs,
    check_quality,
    default_output,
    encode_image,
    load_image,
    output_format,
)
from .settings import Settings, as_settings
from .stages.encode import beautyrt_version, encode, provenance
from .stages.search import CancelCheck, Progress
from .types import Result

log = logging.getLogger("beautyrt")

__all__ = [
    "Beautifier",
    "Settings",
    "ObjectiveWeights",
    "Result",
    "optimize_file",
    "provenance",
    "doctor_report",
    "beautyrt_version",
    "require_export_extra",
    "without_timings",
    "TIMING_KEYS",
    "encode",
    "default_output",
]

# The only fields of a report that depend on the clock. Everything else is a function of (input, bundle,
# settings incl. seed, backend/device) and is reproduced exactly; compare reports through without_timings().
TIMING_KEYS = ("timings",)  # top level
HISTORY_TIMING_KEYS = ("seconds",)  # per generation


def without_timings(report: dict) -> dict:
    """The report minus wall-clock measurements: what must be identical between two runs with the same
    input, bundle, settings (seed) and backend."""
    rep = {k: v for k, v in report.items() if k not in TIMING_KEYS}
    if "history" in rep:
        rep["history"] = [{k: v for k, v in h.items() if k not in HISTORY_TIMING_KEYS} for h in rep["history"]]
    return rep


def optimize_file(
    image: str | Path,
    out: str | Path,
    *,
    bundle: str | Path,
    settings: Optional[Settings] = None,
    aligned: bool = False,
    report_path: Optional[str | Path] = None,
    quality: int = 95,
    device: str = "auto",
    threads: Optional[int] = None,
    progress: Optional[Progress] = None,
    side_by_side_path: Optional[str | Path] = None,
    plot_path: Optional[str | Path] = None,
    beautifier: Optional[Beautifier] = None,
    backend: str = DEFAULT_BACKEND,
    cancel: Optional[CancelCheck] = None,
) -> dict:
    """Optimise one photo file and write the output image (and report, before|after sheet, plot); returns the
    report. Every output location is checked before any work, and the outputs are written all-or-nothing:
    after a failure nothing new is left on disk (no output, no temporary file). ``beautifier``: an already
    loaded one to use instead of loading ``bundle``.
    """
    if isinstance(image, bool) or not isinstance(image, (str, os.PathLike)):
        raise UsageError(f"image must be a path (str or os.PathLike), got {type(image).__name__}")
    if isinstance(out, bool) or not isinstance(out, (str, os.PathLike)):
        raise UsageError(f"out must be a path (str or os.PathLike), got {type(out).__name__}")
    # every argument is checked before any work (no decode, no bundle load)
    fmt = output_format(out)
    canonical_backend(backend)
    check_device(device)
    quality = check_quality(quality)
    if threads is not None:
        threads = check_threads(threads)
    if not isinstance(aligned, (bool, np.bool_)):
        raise UsageError(f"aligned must be true or false, got {type(aligned).__name__}")
    for name, fn in (("progress", progress), ("cancel", cancel)):
        if fn is not None and not callable(fn):
            raise UsageError(f"{name} must be callable, got {type(fn).__name__}")
    if beautifier is not None and not isinstance(beautifier, Beautifier):
        raise UsageError(f"beautifier must be a Beautifier, got {type(beautifier).__name__}")
    if beautifier is None and (isinstance(bundle, bool) or not isinstance(bundle, (str, os.PathLike))):
        raise UsageError(f"bundle must be a path (str or os.PathLike), got {type(bundle).__name__}")
    settings = as_settings(settings)
    bundle_dir = beautifier.manifest.root if beautifier is not None else Path(bundle).expanduser()
    check_input(image)  # a missing/unreadable/special input is its own error (31/32/33), before the outputs'
    check_outputs(
        [
            ("-o", out, True),
            ("--report", report_path, False),
            ("--side-by-side", side_by_side_path, True),
            ("--plot", plot_path, True),
        ],
        inputs=[("the input photo", image)],
        protected_dirs=[("bundle", bundle_dir)],
    )
    rgb = load_image(image)  # cheap checks first: a bad photo is refused before the bundle is loaded
    try:
        if beautifier is not None:
            result = beautifier.optimize(rgb, settings, aligned=bool(aligned), progress=progress, cancel=cancel)
        else:
            with Beautifier(bundle, device=device, threads=threads, backend=backend) as b:
                result = b.optimize(rgb, settings, aligned=bool(aligned), progress=progress, cancel=cancel)
    except NoFaceError as e:
        raise NoFaceError(f"{printable(image)}: {e}") from e
    text, xmp = provenance(result)
    t0 = time.perf_counter()
    writes = [(out, encode(result, fmt, quality))]
    result.timings["encode"] = time.perf_counter() - t0
    result.timings["total"] = result.timings.get("total", 0.0) + result.timings["encode"]
    rep = result.report()
    rep.update(
        {
            "input": os.fsdecode(image),
            "output": os.fsdecode(out),
            "beautyrt_version": beautyrt_version(),
            "aligned_input": aligned,
        }
    )
    if report_path is not None:
        writes.append((report_path, (json.dumps(rep, indent=1) + "\n").encode()))
    if side_by_side_path is not None or plot_path is not None:
        from .tools.sheet import history_plot, side_by_side

        if side_by_side_path is not None:
            sheet = side_by_side(rgb, result.image, rep)
            writes.append(
                (side_by_side_path, encode_image(sheet, output_format(side_by_side_path), quality, text, xmp))
            )
        if plot_path is not None:
            plot = history_plot(result.history, identity_floor=result.settings.weights.identity_floor)
            writes.append(
                (plot_path, encode_image(plot, output_format(plot_path), quality, {"Software": text["Software"]}))
            )
    atomic_write_many(writes)
    return rep


def require_export_extra() -> None:
    missing = [m for m in ("torch", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"`beautyrt export` needs the export extra ({', '.join(missing)} missing): pip install 'beautyrt[export]'"
        )


def doctor_report(bundle: str | Path) -> dict:
    from beautyrt.engines.backends.ort import probe_providers

    rep: dict = {
        "beautyrt": beautyrt_version(),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
    }
    for pkg in ("numpy", "pillow", "cma", "onnxruntime", "onnxruntime-gpu", "torch", "onnx", "tensorrt"):
        try:
            rep[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    rep["providers"] = probe_providers()
    try:
        from beautyrt.engines import load_manifest

        m = load_manifest(bundle)
        rep["bundle"] = {
            "ok": True,
            "path": str(m.root),
            "hash": m.bundle_hash,
            "roles": sorted(m.models),
            "source": m.data.get("source"),
            "resolution": (m.data.get("generator") or {}).get("resolution"),
            "exported_with": m.data.get("versions"),
        }
    except BeautyrtError as e:
        rep["bundle"] = {"ok": False, "path": printable(bundle), "error": str(e), "exit_code": e.exit_code}
    return rep

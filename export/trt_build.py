"""Build TensorRT engines (``.plan``) from a bundle's ONNX files (extra ``trt``).

Build configuration is data (:func:`plan_profiles`): the fused scorer gets a STATIC profile sized to the
search population (one batch size, the fastest kernels for it); the other models get dynamic batch
profiles 1..max_batch. A persistent timing cache makes rebuilds fast. Each plan's manifest entry records
what the runtime checks before deserialising it::

    models[role]["trt"] = {"file": "scorer.plan", "sha256", "bytes", "tensorrt", "gpu", "compute_capability",
                           "profile": {input: {"min", "opt", "max"}}, "fp16"}

fp16 is only used when asked for (no silent precision changes). tensorrt is imported lazily.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from beautyrt.engines.manifest import MANIFEST_NAME, load_manifest, sha256_file

from .errors import ExportError, MissingDependencyError

log = logging.getLogger("beautyrt")

TRT_ROLES = ("scorer", "crop_scorer", "synthesis", "encoder", "mapping", "beauty", "identity")
STATIC_ROLES = ("scorer", "crop_scorer")  # called once per generation with the whole population
DEFAULT_TIMING_CACHE = Path("~/.cache/beautyrt/trt-timing.cache")
WORKSPACE = 4 << 30


def require_tensorrt():
    """Import tensorrt (and check cuda-python), or raise MissingDependencyError naming the extra."""
    try:
        import tensorrt
    except ImportError as e:
        raise MissingDependencyError(
            "TensorRT engines need the trt extra (tensorrt is not installed): pip install 'beautyrt[trt]'"
        ) from e
    try:
        from cuda.bindings import runtime  # noqa: F401
    except ImportError:
        try:
            from cuda import cudart  # noqa: F401
        except ImportError as e:
            raise MissingDependencyError(
                "TensorRT engines need the trt extra (cuda-python is not installed): pip install 'beautyrt[trt]'"
            ) from e
    return tensorrt


def plan_profiles(
    models: dict, scorer_batch: int = 16, max_batch: int = 8, opt_batch: int = 1, roles: Iterable[str] = TRT_ROLES
) -> dict:
    """{role: {input: {"min", "opt", "max"}}} from the manifest's tensor specs. Only the batch axis may be
    symbolic; the scorers' batch is fixed to ``scorer_batch`` (the population; other batches are padded or
    chunked by the engine, see ``engines.base.run_in_batches``)."""
    if scorer_batch < 1 or max_batch < 1:
        raise ExportError("TensorRT profile batches must be >= 1")
    out = {}
    for role in roles:
        if role not in models:
            continue
        prof = {}
        for spec in models[role]["inputs"]:
            shape = list(spec["shape"])
            if any(isinstance(d, str) for d in shape[1:]):
                raise ExportError(
                    f"{role}: input {spec['name']} has symbolic non-batch dims {shape}; no TensorRT profile for it"
                )
            if role in STATIC_ROLES:
                lo = opt = hi = scorer_batch
            else:
                lo, opt, hi = 1, max(1, min(opt_batch, max_batch)), max_batch
            rest = [int(d) for d in shape[1:]]
            prof[spec["name"]] = {"min": [lo] + rest, "opt": [opt] + rest, "max": [hi] + rest}
        out[role] = prof
    return out


def _gpu(device_id: int) -> dict:
    from beautyrt.engines.backends.trt import gpu_info

    g = gpu_info(device_id)
    if g is None:
        raise ExportError("building TensorRT engines needs a CUDA GPU and driver; none found")
    return g


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def build_engines(
    bundle_dir: str | Path,
    *,
    fp16: bool = False,
    scorer_batch: int = 16,
    max_batch: int = 8,
    roles: Iterable[str] = TRT_ROLES,
    timing_cache: Optional[str | Path] = None,
    device_id: int = 0,
) -> dict:
    """Build a plan per role into the bundle and record it in the manifest; returns {role: trt record}."""
    trt = require_tensorrt()
    man = load_manifest(bundle_dir)
    root = man.root
    data = json.loads((root / MANIFEST_NAME).read_text())
    profiles = plan_profiles(data["models"], scorer_batch, max_batch, roles=roles)
    gpu = _gpu(device_id)
    cache_path = Path(timing_cache or DEFAULT_TIMING_CACHE).expanduser()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    records = {}
    cache = None
    for role, prof in profiles.items():
        onnx_path = root / data["models"][role]["file"]
        flags = (
            0
            if int(trt.__version__.split(".")[0]) >= 10
            else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        )
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errs[:300]}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        cache = config.create_timing_cache(cache_bytes if cache is None else cache.serialize())
        config.set_timing_cache(cache, ignore_mismatch=False)
        profile = builder.create_optimization_profile()
        for name, p in prof.items():
            profile.set_shape(name, p["min"], p["opt"], p["max"])
        config.add_optimization_profile(profile)
        log.info("building TensorRT engine for %s (%s, profile %s)", role, "fp16" if fp16 else "fp32", prof)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ExportError(f"TensorRT failed to build an engine for {role} (see the log with -v)")
        plan_path = root / f"{role}.plan"
        _write_atomic(plan_path, bytes(plan))
        records[role] = {
            "file": plan_path.name,
            "sha256": sha256_file(plan_path),
            "bytes": plan_path.stat().st_size,
            "tensorrt": trt.__version__,
            "gpu": gpu["name"],
            "compute_capability": gpu["compute_capability"],
            "profile": prof,
            "fp16": bool(fp16),
            "device_id": device_id,
        }
        cache_bytes = bytes(cache.serialize())
    if cache is not None:
        _write_atomic(cache_path, bytes(cache.serialize()))
    for role, rec in records.items():
        data["models"][role]["trt"] = rec
    data.setdefault("versions", {})["tensorrt"] = trt.__version__
    _write_atomic(root / MANIFEST_NAME, json.dumps(data, indent=1).encode())
    return records

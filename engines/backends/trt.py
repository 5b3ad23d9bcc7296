"""Native TensorRT backend (extra ``trt``): one deserialised plan, one execution context, a lock.

Before anything is deserialised, the plan's manifest record (``models[role]["trt"]``, written by
``beautyrt export --trt``) is checked against this machine: the installed TensorRT version (read from
package metadata, without importing tensorrt), the GPU name and compute capability (from the CUDA
driver via ctypes), and the plan's sha256. A plan built elsewhere is refused with BundleVersionError
and a rebuild hint; TensorRT would otherwise fail deep inside deserialisation or, worse, run.

Device buffers are plain CUDA allocations through cuda-python (``cuda.bindings.runtime`` or the older
``cuda.cudart``); no torch. ``run`` is serialised by a lock: one context per Engine, so create one
Engine per worker for concurrency.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from importlib.metadata import PackageNotFoundError, version
from typing import Mapping, Optional

import numpy as np

from .. import cuda_driver
from ..base import Engine, run_in_batches
from ..errors import (
    BundleIntegrityError,
    BundleSchemaError,
    BundleVersionError,
    EngineInputError,
    EngineRuntimeError,
    MissingDependencyError,
    ProviderError,
)
from ..files import printable, read_regular
from ..manifest import Manifest

log = logging.getLogger("beautyrt")

TRT_EXTRA_HINT = "pip install 'beautyrt[trt]'"
REBUILD = "rebuild the engines on this machine with `beautyrt export --trt --out DIR` (or use --backend ort)"


def installed_tensorrt_version() -> Optional[str]:
    """TensorRT's version from package metadata (no import), or None when it is not installed."""
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_libs", "tensorrt-cu12-libs"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def gpu_info(device_id: int = 0) -> Optional[dict]:
    """{"name", "compute_capability"} of a CUDA device from the driver, None without a driver."""
    return cuda_driver.gpu_info(device_id)


def check_plan_compat(role: str, rec: Mapping, trt_version: Optional[str], gpu: Optional[Mapping]) -> None:
    """Refuse a plan built for another TensorRT version or GPU (BundleVersionError), before deserialising."""
    for k in ("file", "sha256", "tensorrt", "gpu", "compute_capability"):
        if k not in rec:
            raise BundleSchemaError(f"manifest: models.{role}.trt lacks '{k}'; {REBUILD}")
    if trt_version is None:
        raise MissingDependencyError(f"the tensorrt backend needs TensorRT (not installed): {TRT_EXTRA_HINT}")
    if str(rec["tensorrt"]) != str(trt_version):
        raise BundleVersionError(
            f"{role}: TensorRT plan {rec['file']} was built with TensorRT {rec['tensorrt']}, "
            f"this machine has {trt_version}; {REBUILD}"
        )
    if gpu is None:
        raise ProviderError(f"{role}: no CUDA device/driver found for the TensorRT plan; use --backend ort")
    if str(rec["compute_capability"]) != str(gpu["compute_capability"]) or str(rec["gpu"]) != str(gpu["name"]):
        raise BundleVersionError(
            f"{role}: TensorRT plan {rec['file']} was built for {rec['gpu']} (sm {rec['compute_capability']}), "
            f"this GPU is {gpu['name']} (sm {gpu['compute_capability']}); {REBUILD}"
        )


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise MissingDependencyError(f"the tensorrt backend needs cuda-python: {TRT_EXTRA_HINT}") from e
    return cudart


def _check(ret, what: str):
    err, *rest = ret if isinstance(ret, tuple) else (ret,)
    if int(err) != 0:
        raise EngineRuntimeError(f"CUDA {what} failed: {err}")
    return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)


def open_trt_engine(manifest: Manifest, role: str, device_id: int = 0) -> "TrtEngine":
    entry = manifest.model(role)
    rec = entry.extra.get("trt")
    if not isinstance(rec, Mapping):
        raise BundleSchemaError(f"bundle {manifest.root} has no TensorRT engine for '{role}'; {REBUILD}")
    check_plan_compat(role, rec, installed_tensorrt_version(), gpu_info(device_id))
    path = manifest.resolve(str(rec["file"]), f"{role} TensorRT plan")  # a symlink out of the bundle: refused
    try:
        plan = read_regular(
            path,
            max_bytes=None,
            not_found=lambda m: BundleIntegrityError(
                f"bundle {printable(manifest.root)}: TensorRT plan ({role}) is missing: {m}; {REBUILD}"
            ),
            bad=lambda m: BundleIntegrityError(f"bundle {printable(manifest.root)}: {m}; {REBUILD}"),
            label=str(rec["file"]),
        )
    except MemoryError as e:  # pragma: no cover - a plan larger than memory
        raise BundleIntegrityError(f"{role}: TensorRT plan {rec['file']} does not fit in memory") from e
    if hashlib.sha256(plan).hexdigest() != rec["sha256"]:
        raise BundleIntegrityError(
            f"bundle {printable(manifest.root)}: {rec['file']} ({role}) does not match its sha256; {REBUILD}"
        )
    return TrtEngine(plan, entry.inputs, entry.outputs, name=role, device_id=device_id)


class TrtEngine(Engine):
    backend = "tensorrt"

    def __init__(self, plan: bytes, inputs, outputs, name: str, device_id: int = 0):
        try:
            import tensorrt as trt
        except ImportError as e:
            raise MissingDependencyError(f"the tensorrt backend needs TensorRT: {TRT_EXTRA_HINT}") from e
        self._trt, self._cudart = trt, _cudart()
        self.name, self.inputs, self.outputs = name, tuple(inputs), tuple(outputs)
        self._lock = threading.Lock()
        self._bufs: dict[str, tuple[int, int]] = {}  # name -> (device ptr, bytes)
        _check(self._cudart.cudaSetDevice(device_id), "cudaSetDevice")
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BundleIntegrityError(f"{name}: TensorRT could not deserialise the plan; {REBUILD}")
        self._ctx = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        want = {s.name for s in self.inputs} | {s.name for s in self.outputs}
        if set(names) != want:
            raise BundleIntegrityError(
                f"{name}: plan tensors {sorted(names)} differ from the manifest's {sorted(want)}; {REBUILD}"
            )
        # the profile's batch range; any other batch is padded or chunked to it (run_in_batches), so it is not
        # exposed as ``max_batch`` (which would make check_feeds refuse what the engine can serve)
        lo, hi = 1, None
        for s in self.inputs:
            mn, _, mx = self._engine.get_tensor_profile_shape(s.name, 0)
            lo, hi = max(lo, int(mn[0])), int(mx[0]) if hi is None else min(hi, int(mx[0]))
        if hi is None or hi < lo:
            raise BundleIntegrityError(f"{name}: the plan's optimisation profile has no usable batch size; {REBUILD}")
        self._min_batch, self._max_batch = lo, hi
        log.debug("TensorRT engine %s: batch %d..%d", name, lo, hi)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._bufs.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr), "cudaFree")
            ptr = int(_check(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._bufs[name] = (ptr, nbytes)
        return ptr

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # a static profile (the scorers: batch = the population) still serves a start image (batch 1) or a
        # longer walk: padded / chunked to the profile
        return run_in_batches(feeds, self._min_batch, self._max_batch, self._run_profile)

    def _run_profile(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, cu = self._trt, self._cudart
        H2D, D2H = cu.cudaMemcpyKind.cudaMemcpyHostToDevice, cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            if self._ctx is None:
                raise EngineRuntimeError(f"engine '{self.name}' is closed")
            for s in self.inputs:
                arr = np.ascontiguousarray(feeds[s.name])
                if not self._ctx.set_input_shape(s.name, arr.shape):
                    raise EngineInputError(
                        f"engine '{self.name}': shape {list(arr.shape)} of '{s.name}' is outside the "
                        f"TensorRT profile; rebuild the engine with a larger profile"
                    )
                ptr = self._buffer(s.name, arr.nbytes)
                _check(cu.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, H2D, self._stream), "copy to device")
                self._ctx.set_tensor_address(s.name, ptr)
            outs = {}
            for s in self.outputs:
                shape = tuple(self._ctx.get_tensor_shape(s.name))
                arr = np.empty(shape, dtype=trt.nptype(self._engine.get_tensor_dtype(s.name)))
                ptr = self._buffer(s.name, max(arr.nbytes, 1))
                self._ctx.set_tensor_address(s.name, ptr)
                outs[s.name] = arr
            if not self._ctx.execute_async_v3(self._stream):
                raise EngineRuntimeError(f"engine '{self.name}': TensorRT execution failed")
            for s in self.outputs:
                arr = outs[s.name]
                _check(
                    cu.cudaMemcpyAsync(arr.ctypes.data, self._bufs[s.name][0], arr.nbytes, D2H, self._stream),
                    "copy to host",
                )
            _check(cu.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {k: v.astype(np.float32, copy=False) for k, v in outs.items()}

    def close(self) -> None:
        with self._lock:
            for ptr, _ in self._bufs.values():
                self._cudart.cudaFree(ptr)
            self._bufs.clear()
            if getattr(self, "_stream", None) is not None:
                self._cudart.cudaStreamDestroy(self._stream)
                self._stream = None
            self._ctx = self._engine = None


# --- backend registry interface (see beautyrt.engines.backends) -----------------------------------------
NAME = "tensorrt"
BUILD_HINT = "build TensorRT plans on the GPU machine with `beautyrt export --trt --out DIR`"


def require(device_id: int = 0) -> None:
    """TensorRT installed (package metadata; nothing imported) and a CUDA device present."""
    if installed_tensorrt_version() is None:
        raise MissingDependencyError(
            f"--backend tensorrt needs NVIDIA TensorRT, which is not installed here: "
            f"{TRT_EXTRA_HINT} on a machine with a CUDA GPU (or use --backend ort)"
        )
    if gpu_info(device_id) is None:
        raise ProviderError("--backend tensorrt needs a CUDA GPU and driver; none found here (use --backend ort)")


def has_artefact(entry) -> bool:
    return isinstance(entry.extra.get("trt"), Mapping)


def open_role(
    manifest: Manifest, role: str, *, device: str = "auto", device_id: int = 0, threads=None, cache_dir=None
) -> "TrtEngine":
    return open_trt_engine(manifest, role, device_id=device_id)

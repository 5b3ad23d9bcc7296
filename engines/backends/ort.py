"""onnxruntime backend.

Provider choice is made from what actually loads on this machine, not from what the wheel lists:
onnxruntime-gpu lists CUDA and TensorRT providers even on a machine without a driver, and asking for them
there prints loader errors and silently falls back to CPU. So ``auto`` asks for TensorRT only when the
TensorRT libraries load, CUDA only when the CUDA driver loads and reports a device, and otherwise CPU
alone (no loader noise). Whatever was asked for is checked against ``session.get_providers()`` after the
session is created; a silent fallback is turned into a ProviderError.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .. import cuda_driver
from ..base import Engine, TensorSpec, check_threads
from ..errors import (
    BundleIntegrityError,
    BundleSchemaError,
    EngineRuntimeError,
    MissingDependencyError,
    ProviderError,
    UsageError,
)
from ..files import printable
from ..schema import DTYPES

log = logging.getLogger("beautyrt")

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
PROVIDER_ALIASES = {"cpu": [CPU], "cuda": [CUDA, CPU], "tensorrt": [TRT, CUDA, CPU]}


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - base dependency
        raise MissingDependencyError("onnxruntime is not installed: `pip install beautyrt` brings it") from e
    return onnxruntime


def _cuda_device_count() -> int:
    """Devices the CUDA driver reports, 0 when there is no driver (without importing any CUDA python pkg)."""
    return cuda_driver.device_count()


def _tensorrt_loadable() -> bool:
    for name in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so", "nvinfer_10.dll", "nvinfer.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    try:  # the pip wheel keeps its libraries inside the package
        import tensorrt  # noqa: F401

        return True
    except Exception:
        return False


def probe_providers() -> dict:
    """What the installed onnxruntime lists, and what can really be used here (with reasons)."""
    ort = _ort()
    listed = list(ort.get_available_providers())
    usable, reasons = [], {}
    n_gpu = _cuda_device_count()
    if TRT in listed:
        if n_gpu and _tensorrt_loadable():
            usable.append(TRT)
        else:
            reasons[TRT] = "no CUDA device" if not n_gpu else "TensorRT libraries (libnvinfer) not loadable"
    if CUDA in listed:
        if n_gpu:
            usable.append(CUDA)
        else:
            reasons[CUDA] = "no CUDA driver/device (libcuda not loadable or 0 devices)"
    usable.append(CPU)
    return {
        "onnxruntime": ort.__version__,
        "listed": listed,
        "usable": usable,
        "unusable": reasons,
        "cuda_devices": n_gpu,
    }


DEVICES = ("auto", *PROVIDER_ALIASES)


def check_device(device) -> str:
    """``device`` as one of DEVICES, else UsageError (checked before any work)."""
    if not isinstance(device, str) or device not in DEVICES:
        raise UsageError(f"unknown device {printable(repr(device))[:60]}; choose auto, cpu, cuda or tensorrt")
    return device


def resolve_providers(device: str = "auto") -> list[str]:
    """Map ``auto|cpu|cuda|tensorrt`` to an onnxruntime provider list; refuse what cannot load here."""
    check_device(device)
    probe = probe_providers()
    if device == "auto":
        for p in (TRT, CUDA):
            if p in probe["usable"]:
                return PROVIDER_ALIASES["tensorrt" if p == TRT else "cuda"]
        return [CPU]
    if device not in PROVIDER_ALIASES:
        raise UsageError(f"unknown device {device!r}; choose auto, cpu, cuda or tensorrt")
    want = PROVIDER_ALIASES[device][0]
    if want not in probe["usable"]:
        why = probe["unusable"].get(want, f"onnxruntime {probe['onnxruntime']} was built without it")
        raise ProviderError(f"{device} was asked for but cannot be used here: {why}")
    return PROVIDER_ALIASES[device]


def _show(spec_dtype: str, shape) -> str:
    return f"{spec_dtype} {list(shape) if shape is not None else '[?]'}"


def check_graph(role: str, sess, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """Refuse (BundleSchemaError, exit 14) a model whose real graph disagrees with its manifest entry: input
    names (exactly), declared outputs (present), element types, ranks and fixed dims. A dim the manifest
    calls symbolic (e.g. ``batch``) must not be fixed in the graph; a fixed manifest dim may be symbolic
    there (the graph is more general)."""
    graph_in = {a.name: a for a in sess.get_inputs()}
    graph_out = {a.name: a for a in sess.get_outputs()}
    if sorted(graph_in) != sorted(s.name for s in inputs):
        raise BundleSchemaError(
            f"{role}: the model's inputs {sorted(graph_in)} differ from the manifest's "
            f"{sorted(s.name for s in inputs)}; rebuild the bundle with `beautyrt export`"
        )
    missing = [s.name for s in outputs if s.name not in graph_out]
    if missing:
        raise BundleSchemaError(
            f"{role}: the manifest's outputs {missing} are not outputs of the model (it has {sorted(graph_out)}); "
            f"rebuild the bundle with `beautyrt export`"
        )
    for side, specs, graph in (("input", inputs, graph_in), ("output", outputs, graph_out)):
        for spec in specs:
            arg = graph[spec.name]
            shape = arg.shape if isinstance(arg.shape, (list, tuple)) else None
            ok = DTYPES.get(spec.dtype) == arg.type
            if ok and shape is not None:
                ok = len(shape) == len(spec.shape) and all(
                    not isinstance(g, int) or g == want for g, want in zip(shape, spec.shape)
                )
            if not ok:
                raise BundleSchemaError(
                    f"{role}: the model's {side} '{spec.name}' is {_show(arg.type, shape)} but the manifest says "
                    f"{_show(spec.dtype, spec.shape)}; rebuild the bundle with `beautyrt export`"
                )


class OrtEngine(Engine):
    """One onnxruntime InferenceSession. ``run`` may be called from several threads at once."""

    backend = "ort"

    def __init__(
        self,
        path: str | Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        name: Optional[str] = None,
        device: str = "auto",
        device_id: int = 0,
        threads: Optional[int] = None,
        cache_dir: Optional[str | Path] = None,
        cache_key: str = "",
        max_batch: Optional[int] = None,
    ):
        ort = _ort()
        self.name = name or Path(path).stem
        self.inputs, self.outputs, self.max_batch = tuple(inputs), tuple(outputs), max_batch
        providers = resolve_providers(device)
        so = ort.SessionOptions()
        so.log_severity_level = 3  # errors only: warnings about unused initialisers etc. are not the user's business
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = check_threads(threads) if threads is not None else (os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # No busy-waiting between calls: the search loop alternates engine calls with numpy/pycma work in the
        # same process, and spinning pool threads steal the cores that work needs (tiny scorer at λ=16 on 2
        # shared cores: 93 -> 62 ms per call; with CUDA/TensorRT the CPU pool only idles).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options = []
        for p in providers:
            if p == TRT:
                trt_opts: dict[str, object] = {"device_id": device_id, "trt_fp16_enable": False}
                if cache_dir:
                    # keyed by model hash AND the onnxruntime build and device, so an upgrade or another GPU
                    # never picks up engines built for something else
                    d = Path(cache_dir) / f"ort-trt-{cache_key}-ort{ort.__version__}-dev{device_id}"
                    d.mkdir(parents=True, exist_ok=True)
                    trt_opts.update(
                        {
                            "trt_engine_cache_enable": True,
                            "trt_engine_cache_path": str(d),
                            "trt_timing_cache_enable": True,
                            "trt_timing_cache_path": str(d),
                        }
                    )
                options.append(trt_opts)
            elif p == CUDA:
                options.append({"device_id": device_id})
            else:
                options.append({})
        try:
            self._sess = ort.InferenceSession(str(path), so, providers=providers, provider_options=options)
        except Exception as e:
            msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise BundleIntegrityError(
                f"{Path(path).name}: onnxruntime cannot load it ({msg}); rebuild the bundle with `beautyrt export`"
            ) from e
        got = self._sess.get_providers()
        if got[0] != providers[0]:
            self._sess = None
            raise ProviderError(
                f"{self.name}: asked onnxruntime for {providers[0]} but it gave {got}; "
                f"refusing the silent fallback (use --device cpu to run on the CPU)"
            )
        self.providers = got
        check_graph(self.name, self._sess, self.inputs, self.outputs)
        self._out_names = [s.name for s in self.outputs]
        # On a GPU, inputs go through IOBinding into device buffers allocated once per (thread, input, shape)
        # and refilled in place; outputs (scores, embeddings, images) are copied to host by onnxruntime.
        self._device: Optional[tuple[str, int]] = ("cuda", device_id) if got[0] in (CUDA, TRT) else None
        self._local = threading.local()
        log.debug("engine %s on %s", self.name, got)

    def _device_buffer(self, name: str, arr: np.ndarray):
        assert self._device is not None
        bufs = self._local.__dict__.setdefault("bufs", {})
        key = (name, arr.shape, arr.dtype.str)
        ov = bufs.get(key)
        if ov is None:
            ov = _ort().OrtValue.ortvalue_from_shape_and_type(arr.shape, arr.dtype, *self._device)
            bufs[key] = ov
        ov.update_inplace(np.ascontiguousarray(arr))
        return ov

    def _run_iobinding(self, feeds: Mapping[str, np.ndarray]) -> list:
        binding = self._sess.io_binding()
        for name, arr in feeds.items():
            binding.bind_ortvalue_input(name, self._device_buffer(name, arr))
        for name in self._out_names:
            binding.bind_output(name, "cpu")
        self._sess.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._sess is None:
            raise EngineRuntimeError(f"engine '{self.name}' is closed")
        try:
            outs = self._run_iobinding(feeds) if self._device else self._sess.run(self._out_names, dict(feeds))
        except Exception as e:
            raise EngineRuntimeError(f"engine '{self.name}' failed: {str(e).splitlines()[0][:300]}") from e
        return dict(zip(self._out_names, outs))

    def close(self) -> None:
        self._sess = None


# --- backend registry interface (see beautyrt.engines.backends) -----------------------------------------
NAME = "ort"
BUILD_HINT = "every bundle holds ONNX files; rebuild it with `beautyrt export --out DIR`"


def require(device_id: int = 0) -> None:
    """onnxruntime is a base dependency; the provider (CPU/CUDA/TensorRT EP) is checked per engine."""
    _ort()


def has_artefact(entry) -> bool:
    return str(entry.file).lower().endswith(".onnx")


def open_role(
    manifest,
    role: str,
    *,
    device: str = "auto",
    device_id: int = 0,
    threads: Optional[int] = None,
    cache_dir: Optional[str | Path] = None,
) -> OrtEngine:
    entry = manifest.model(role)
    return OrtEngine(
        manifest.path(role),
        entry.inputs,
        entry.outputs,
        name=role,
        device=device,
        device_id=device_id,
        threads=threads,
        cache_dir=cache_dir,
        cache_key=entry.sha256[:16],
    )

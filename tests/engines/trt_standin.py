"""A STAND-IN for the small part of NVIDIA TensorRT and cuda-python that beautyrt uses -- not TensorRT.

It lets the logic of ``engines/backends/trt.py`` (deserialise, tensor names, profiles, shapes, dtypes, device
buffers, host<->device copies, the stream) and of ``export/trt_build.py`` (parse, profiles, timing cache, build)
run on a machine without a GPU. "Device memory" is host memory allocated with ctypes and addressed by raw
pointers, exactly as the backend hands them over; every copy and every kernel launch checks the pointers and
sizes it is given, so a wrong size, a freed buffer, a shape outside the profile or a copy on another stream fails
here as it would on a GPU. A "plan" is a JSON header (I/O names, dtypes, the optimisation profile) followed by
the ONNX model; "executing" it runs that model with onnxruntime on the CPU.

Install with :func:`install` (a pytest ``monkeypatch``); nothing here is used outside the tests.
"""

from __future__ import annotations

import ctypes
import json
import types
from typing import Optional

import numpy as np

MAGIC = b"BEAUTYRT-TRT-STANDIN\n"
VERSION = "10.0.0-standin"
GPU = {"name": "Stand-in GPU (no CUDA)", "compute_capability": "9.0"}


class StandinError(AssertionError):
    """A misuse of the TensorRT / CUDA surface that real hardware would also reject (or crash on)."""


# ----------------------------------------------------------------------------------------------- cuda
class _Memory:
    def __init__(self):
        self.buffers: dict[int, ctypes.Array] = {}
        self.streams: set[int] = set()
        self.freed: set[int] = set()
        self.copies = {"h2d": 0, "d2h": 0}
        self._next_stream = 1

    def check(self, ptr: int, nbytes: int, what: str) -> None:
        if ptr in self.freed:
            raise StandinError(f"{what}: device pointer {ptr:#x} was freed")
        buf = self.buffers.get(ptr)
        if buf is None:
            raise StandinError(f"{what}: {ptr:#x} is not a device allocation")
        if nbytes > len(buf):
            raise StandinError(f"{what}: {nbytes} bytes into a {len(buf)}-byte allocation")


def make_cudart(mem: _Memory) -> types.ModuleType:
    cu = types.ModuleType("cuda.bindings.runtime")
    ok = 0

    class cudaMemcpyKind:  # noqa: N801 - CUDA's names
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def cudaSetDevice(i):  # noqa: N802
        return (ok,) if i == 0 else (101,)

    def cudaStreamCreate():  # noqa: N802
        s = mem._next_stream
        mem._next_stream += 1
        mem.streams.add(s)
        return ok, s

    def cudaStreamDestroy(s):  # noqa: N802
        if s not in mem.streams:
            raise StandinError(f"cudaStreamDestroy of unknown stream {s}")
        mem.streams.discard(s)
        return (ok,)

    def cudaStreamSynchronize(s):  # noqa: N802
        if s not in mem.streams:
            raise StandinError(f"cudaStreamSynchronize of unknown stream {s}")
        return (ok,)

    def cudaMalloc(n):  # noqa: N802
        if n <= 0:
            raise StandinError(f"cudaMalloc({n})")
        buf = ctypes.create_string_buffer(int(n))
        ptr = ctypes.addressof(buf)
        mem.buffers[ptr] = buf
        mem.freed.discard(ptr)
        return ok, ptr

    def cudaFree(ptr):  # noqa: N802
        if ptr not in mem.buffers:
            raise StandinError(f"cudaFree of {ptr:#x}, not allocated (or freed twice)")
        del mem.buffers[ptr]
        mem.freed.add(ptr)
        return (ok,)

    def cudaMemcpyAsync(dst, src, n, kind, stream):  # noqa: N802
        if stream not in mem.streams:
            raise StandinError(f"copy on unknown stream {stream}")
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            mem.check(dst, n, "host->device copy")
            mem.copies["h2d"] += 1
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            mem.check(src, n, "device->host copy")
            mem.copies["d2h"] += 1
        else:
            raise StandinError(f"unknown copy kind {kind}")
        ctypes.memmove(dst, src, n)
        return (ok,)

    for f in (
        cudaSetDevice,
        cudaStreamCreate,
        cudaStreamDestroy,
        cudaStreamSynchronize,
        cudaMalloc,
        cudaFree,
        cudaMemcpyAsync,
    ):
        setattr(cu, f.__name__, f)
    cu.cudaMemcpyKind = cudaMemcpyKind
    return cu


# ------------------------------------------------------------------------------------------- tensorrt
class DataType:
    FLOAT = "float32"


def make_tensorrt(mem: _Memory, built: list) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSION

    class Logger:
        ERROR, WARNING, INFO = 1, 2, 3

        def __init__(self, level=2):
            self.level = level

    class NetworkDefinitionCreationFlag:
        EXPLICIT_BATCH = 0

    class MemoryPoolType:
        WORKSPACE = 0

    class BuilderFlag:
        FP16 = 0

    class _Network:
        def __init__(self):
            self.onnx: Optional[bytes] = None

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            import onnx

            data = open(path, "rb").read()
            try:
                onnx.load_from_string(data)
            except Exception as e:  # noqa: BLE001 - a parse error, as TensorRT's parser reports it
                self.errors.append(f"cannot parse: {e}")
                return False
            self.network.onnx = data
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class _Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            self.shapes[name] = {"min": list(mn), "opt": list(opt), "max": list(mx)}

    class _TimingCache:
        def __init__(self, data: bytes):
            self.data = bytes(data) or b"standin-timing-cache"

        def serialize(self):
            return self.data

    class _Config:
        def __init__(self):
            self.profiles, self.fp16, self.cache = [], False, None

        def set_memory_pool_limit(self, kind, n):
            pass

        def set_flag(self, flag):
            self.fp16 = True

        def create_timing_cache(self, data):
            return _TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch=False):
            self.cache = cache

        def add_optimization_profile(self, p):
            self.profiles.append(p)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            return _Network()

        def create_builder_config(self):
            return _Config()

        def create_optimization_profile(self):
            return _Profile()

        def build_serialized_network(self, network, config):
            import onnx

            if network.onnx is None or len(config.profiles) != 1:
                return None
            model = onnx.load_from_string(network.onnx)
            io = {
                "inputs": [i.name for i in model.graph.input],
                "outputs": [o.name for o in model.graph.output],
                "profile": config.profiles[0].shapes,
            }
            header = json.dumps(io).encode()
            built.append(io)
            return MAGIC + len(header).to_bytes(8, "little") + header + network.onnx

    class _Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            prof = self.engine.io["profile"][name]
            shape = list(shape)
            if len(shape) != len(prof["min"]) or any(
                not lo <= s <= hi for s, lo, hi in zip(shape, prof["min"], prof["max"])
            ):
                return False
            self.shapes[name] = shape
            return True

        def set_tensor_address(self, name, ptr):
            if name not in self.engine.names:
                raise StandinError(f"set_tensor_address of unknown tensor {name}")
            self.addresses[name] = ptr

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return tuple(self.shapes[name])
            self._infer()
            return tuple(self._out_shapes[name])

        def _infer(self):
            missing = [n for n in self.engine.io["inputs"] if n not in self.shapes]
            if missing:
                raise StandinError(f"output shape asked before input shapes were set: {missing}")
            feeds = {n: np.zeros(self.shapes[n], np.float32) for n in self.engine.io["inputs"]}
            outs = self.engine.session.run(self.engine.io["outputs"], feeds)
            self._out_shapes = {n: list(o.shape) for n, o in zip(self.engine.io["outputs"], outs)}

        def execute_async_v3(self, stream):
            if stream not in mem.streams:
                raise StandinError(f"execute on unknown stream {stream}")
            feeds = {}
            for n in self.engine.io["inputs"]:
                shape = self.shapes[n]
                nbytes = int(np.prod(shape)) * 4
                ptr = self.addresses.get(n)
                if ptr is None:
                    raise StandinError(f"input {n} has no address")
                mem.check(ptr, nbytes, f"kernel read of {n}")
                feeds[n] = np.frombuffer(ctypes.string_at(ptr, nbytes), np.float32).reshape(shape).copy()
            outs = self.engine.session.run(self.engine.io["outputs"], feeds)
            for n, o in zip(self.engine.io["outputs"], outs):
                o = np.ascontiguousarray(o, np.float32)
                ptr = self.addresses.get(n)
                if ptr is None:
                    raise StandinError(f"output {n} has no address")
                mem.check(ptr, o.nbytes, f"kernel write of {n}")
                ctypes.memmove(ptr, o.ctypes.data, o.nbytes)
            return True

    class _Engine:
        def __init__(self, plan: bytes):
            import onnxruntime

            n = int.from_bytes(plan[len(MAGIC) : len(MAGIC) + 8], "little")
            self.io = json.loads(plan[len(MAGIC) + 8 : len(MAGIC) + 8 + n])
            so = onnxruntime.SessionOptions()
            so.intra_op_num_threads = 1
            self.session = onnxruntime.InferenceSession(
                plan[len(MAGIC) + 8 + n :], so, providers=["CPUExecutionProvider"]
            )
            self.names = self.io["inputs"] + self.io["outputs"]

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_profile_shape(self, name, profile_index):
            p = self.io["profile"][name]
            return p["min"], p["opt"], p["max"]

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def create_execution_context(self):
            return _Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            if not bytes(plan[: len(MAGIC)]) == MAGIC:
                return None
            return _Engine(bytes(plan))

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.NetworkDefinitionCreationFlag, trt.MemoryPoolType, trt.BuilderFlag = (
        NetworkDefinitionCreationFlag,
        MemoryPoolType,
        BuilderFlag,
    )
    trt.nptype = lambda dt: np.dtype(dt).type
    return trt


def install(monkeypatch) -> types.SimpleNamespace:
    """Put the stand-in in place of ``tensorrt`` and ``cuda.bindings.runtime``; make beautyrt see a TensorRT
    installation and one GPU. Returns a namespace with the memory book-keeping (``mem``) and built plans."""
    import sys

    import beautyrt.engines.backends.trt as T

    mem, built = _Memory(), []
    trt = make_tensorrt(mem, built)
    cudart = make_cudart(mem)
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda.bindings = bindings
    for name, mod in (
        ("tensorrt", trt),
        ("cuda", cuda),
        ("cuda.bindings", bindings),
        ("cuda.bindings.runtime", cudart),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(T, "installed_tensorrt_version", lambda: VERSION)
    monkeypatch.setattr(T, "gpu_info", lambda device_id=0: dict(GPU))
    return types.SimpleNamespace(mem=mem, built=built, trt=trt, cudart=cudart)

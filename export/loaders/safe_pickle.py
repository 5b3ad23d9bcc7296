"""A restricted unpickler for NVIDIA stylegan2-ada-pytorch / stylegan3 network pickles.

NVIDIA's pickles carry the Python source of every network class (``torch_utils.persistence``): loading
them with ``pickle.load`` imports and executes that source. This unpickler never does. ``find_class``
answers only from a fixed allow-list of *data* constructors; everything else (``os.system``,
``builtins.eval``, ``subprocess.Popen``, any class) raises :class:`UnsafePickleError` before the pickle's
REDUCE opcode can call it, so nothing from the file runs.

What the allow-list rebuilds:
* tensors: ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` with type-checked arguments;
  storages arrive as ``torch.storage._load_from_bytes(blob)`` where blob is a legacy ``torch.save`` file,
  read with ``torch.load(weights_only=True)`` (torch's own restricted unpickler);
* ``collections.OrderedDict``, ``builtins.set``/``frozenset``, ``dnnlib.util.EasyDict`` (as a plain dict);
* numpy scalars / arrays / dtypes (object dtypes refused);
* ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` -> :class:`PersistentObject`, a plain
  record of the class name, the state dict of the object (its ``__dict__``: ``_parameters``, ``_buffers``,
  ``_modules``, ``_init_kwargs``, ...) and the embedded source *as text* (never compiled).
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from ..errors import CheckpointError, UnsafePickleError


@dataclass
class PersistentObject:
    """An object of a ``persistence.persistent_class`` turned into data (its class is never created)."""

    class_name: str
    state: dict
    module_src: str = field(repr=False, default="")
    version: Any = None

    @property
    def src_sha256(self) -> str:
        return hashlib.sha256(self.module_src.encode("utf-8", "replace")).hexdigest()

    # torch.nn.Module layout inside ``state``
    @property
    def modules(self) -> dict:
        return dict(self.state.get("_modules") or {})

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    def named_tensors(self, prefix: str = "") -> dict:
        """Flat ``{dotted.name: tensor}`` of parameters and buffers, like ``Module.state_dict()``."""
        out = {}
        for group in ("_parameters", "_buffers"):
            for k, v in (self.state.get(group) or {}).items():
                if v is not None:
                    out[prefix + k] = v
        for name, sub in self.modules.items():
            if isinstance(sub, PersistentObject):
                out.update(sub.named_tensors(f"{prefix}{name}."))
            elif sub is not None:
                raise CheckpointError(
                    f"pickle: submodule {prefix}{name} is a {type(sub).__name__}, not a network object"
                )
        return out


class EasyDictData(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access): kept as a plain dict."""


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafePickleError(
            f"pickle: persistent object with unexpected meta {type(meta).__name__} "
            f"(type={meta.get('type') if isinstance(meta, dict) else '?'}); refusing it"
        )
    state = meta.get("state")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise UnsafePickleError(
            f"pickle: persistent object {meta.get('class_name')!r} has a non-dict state; refusing it"
        )
    return PersistentObject(
        class_name=str(meta.get("class_name")),
        state=state,
        module_src=str(meta.get("module_src") or ""),
        version=meta.get("version"),
    )


def _load_from_bytes(blob):
    import torch

    if not isinstance(blob, (bytes, bytearray)):
        raise UnsafePickleError("pickle: storage payload is not bytes; refusing it")
    from .common import check_zip_sizes

    if bytes(blob[:4]) == b"PK\x03\x04":
        check_zip_sizes(io.BytesIO(bytes(blob)), len(blob), "pickle: an embedded tensor storage")
    try:
        return torch.load(io.BytesIO(bytes(blob)), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(
            f"pickle: an embedded tensor storage is not plain data ({str(e).splitlines()[0][:200]}); "
            f"nothing was executed"
        ) from e


def _is_int_tuple(t) -> bool:
    return isinstance(t, (tuple, list)) and all(isinstance(i, int) for i in t)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    import torch

    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f"pickle: tensor rebuilt from a {type(storage).__name__}, not a storage; refusing it")
    if not (isinstance(storage_offset, int) and _is_int_tuple(size) and _is_int_tuple(stride)):
        raise UnsafePickleError("pickle: malformed tensor record (offset/size/stride); refusing it")
    if backward_hooks:
        raise UnsafePickleError("pickle: tensor carries backward hooks; refusing it")
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, tuple(size), tuple(stride), False, collections.OrderedDict()
    )


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    import torch

    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"pickle: parameter rebuilt from a {type(data).__name__}; refusing it")
    if backward_hooks:
        raise UnsafePickleError("pickle: parameter carries backward hooks; refusing it")
    return data  # parameters are plain tensors here


class _SafeArray(np.ndarray):
    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) >= 3 and isinstance(state[2], np.dtype) and state[2].hasobject:
            raise UnsafePickleError("pickle: numpy array of Python objects; refusing it")
        return super().__setstate__(state)


def _np_reconstruct(subtype, shape, dtype_code):
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"pickle: numpy array of subtype {subtype!r}; refusing it")
    return np.ndarray.__new__(_SafeArray, shape, dtype_code)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("pickle: numpy scalar that is not plain numbers; refusing it")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _np_dtype(*args):
    d = np.dtype(*args[:1]) if args else None
    if d is None or d.hasobject:
        raise UnsafePickleError("pickle: numpy object dtype; refusing it")
    return np.dtype(*args)


def _codecs_encode(text, encoding="utf-8"):
    """Protocol-2 pickles store bytes as ``_codecs.encode(str, 'latin1')``: allowed for that form only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("pickle: _codecs.encode used for something other than bytes; refusing it")
    return text.encode("latin1")


ALLOWED = {
    ("_codecs", "encode"): _codecs_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDictData,
    ("dnnlib", "EasyDict"): EasyDictData,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
}


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, name: str = "pickle"):
        super().__init__(file)
        self._name = name

    def find_class(self, module: str, name: str):
        fn = ALLOWED.get((module, name))
        if fn is None:
            raise UnsafePickleError(
                f"{self._name}: refusing to load: it asks for {module}.{name}, which is not on "
                f"beautyrt's allow-list of data types (nothing from the file was executed)"
            )
        return fn

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._name}: unexpected persistent id {str(pid)[:60]!r} (not a network pickle)")


def safe_load(path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; raise UnsafePickleError / CheckpointError."""
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, name=str(path)).load()
        except (UnsafePickleError, CheckpointError):
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(
                f"{path}: not a readable pickle ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
            ) from e

"""Typed, ranged checks of manifest fields; every refusal is a :class:`BundleSchemaError` (exit 14) that names
the field by its path (``models.encoder.normalisation.mean``) and says what it must be.

Used by :func:`beautyrt.engines.manifest.load_manifest` for the generic contract and by
``beautyrt.runtime.bundle`` for what the runtime reads; together they are the one validation pass that runs
before any model is deserialised.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional, Sequence

from .errors import BundleSchemaError
from .files import printable

REBUILD_HINT = "rebuild it with `beautyrt export --out DIR`"
SHA256 = re.compile(r"[0-9a-f]{64}")
# what a bundle's tensors may be: onnxruntime's tensor element types that numpy has
DTYPES = {
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
    "float64": "tensor(double)",
    "int8": "tensor(int8)",
    "uint8": "tensor(uint8)",
    "int16": "tensor(int16)",
    "uint16": "tensor(uint16)",
    "int32": "tensor(int32)",
    "uint32": "tensor(uint32)",
    "int64": "tensor(int64)",
    "uint64": "tensor(uint64)",
    "bool": "tensor(bool)",
}
MAX_RANK = 8
MAX_DIM = 2**31 - 1


def _show(v: Any) -> str:
    r = repr(v)
    return printable(r if len(r) <= 60 else r[:57] + "...")


def fail(path: str, what: str, got: Any = ..., hint: str = REBUILD_HINT) -> BundleSchemaError:
    tail = "" if got is ... else f", got {_show(got)}"
    return BundleSchemaError(f"manifest: {printable(path)} {what}{tail}; {hint}")


def mapping(v: Any, path: str) -> Mapping:
    if not isinstance(v, Mapping):
        raise fail(path, "must be an object", type(v).__name__ if v is not None else None)
    return v


def field(d: Mapping, key: str, path: str) -> Any:
    if key not in d:
        raise BundleSchemaError(f"manifest: missing '{printable(key)}' in {printable(path)}; {REBUILD_HINT}")
    return d[key]


def string(v: Any, path: str, *, max_len: int = 256, choices: Optional[Sequence[str]] = None) -> str:
    if not isinstance(v, str) or not v or len(v) > max_len:
        raise fail(path, f"must be a non-empty string of at most {max_len} characters", v)
    if choices is not None and v not in choices:
        raise fail(path, f"must be one of {', '.join(choices)}", v)
    return v


def boolean(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise fail(path, "must be true or false", v)
    return v


def integer(v: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise fail(path, f"must be an integer in {lo}..{hi}", v)
    return v


def number(v: Any, path: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise fail(path, "must be a number", v)
    f = float(v)
    if not math.isfinite(f) or f < lo or f > hi or (lo_open and f == lo):
        raise fail(path, f"must be a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}]", v)
    return f


def array(v: Any, path: str, *, min_len: int = 0, max_len: int = 1 << 20) -> list:
    if not isinstance(v, list) or not min_len <= len(v) <= max_len:
        n = f"{min_len}" if min_len == max_len else f"{min_len}..{max_len}"
        raise fail(path, f"must be a list of {n} items", type(v).__name__ if not isinstance(v, list) else len(v))
    return v


def numbers(v: Any, path: str, n: int, lo: float, hi: float, *, lo_open: bool = False) -> list[float]:
    items = array(v, path, min_len=n, max_len=n)
    return [number(x, f"{path}[{i}]", lo, hi, lo_open=lo_open) for i, x in enumerate(items)]


def sha256(v: Any, path: str) -> str:
    if not isinstance(v, str) or not SHA256.fullmatch(v):
        raise fail(path, "must be a sha256 (64 lowercase hex digits)", v)
    return v


def tensor_spec(v: Any, path: str) -> dict:
    """{"name": str, "dtype": one of DTYPES, "shape": [int 1..2^31-1 | symbolic name, ...] (rank <= 8)}."""
    d = mapping(v, path)
    name = string(field(d, "name", path), f"{path}.name")
    dtype = string(field(d, "dtype", path), f"{path}.dtype", max_len=16, choices=tuple(DTYPES))
    shape = array(field(d, "shape", path), f"{path}.shape", max_len=MAX_RANK)
    for i, dim in enumerate(shape):
        if isinstance(dim, str):
            string(dim, f"{path}.shape[{i}]", max_len=64)
        else:
            integer(dim, f"{path}.shape[{i}]", 1, MAX_DIM)
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def tensor_specs(v: Any, path: str) -> list[dict]:
    items = array(v, path, max_len=64)
    specs = [tensor_spec(x, f"{path}[{i}]") for i, x in enumerate(items)]
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise fail(path, "must not name a tensor twice", names)
    return specs

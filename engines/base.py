"""The Engine interface: any artefact (ONNX file, TensorRT plan) runs through one of these.

An Engine owns its backend session, knows its inputs/outputs (from the bundle manifest, never sniffed),
checks every feed against them before running, and returns plain numpy arrays. Engines know nothing
about faces or latents.
"""

from __future__ import annotations

import abc
import logging
import numbers
import os
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import numpy as np

from .errors import BundleSchemaError, EngineInputError, UsageError

log = logging.getLogger("beautyrt")

Dim = Union[int, str]  # a fixed size or a symbolic name such as "batch"


def max_threads() -> int:
    """The most intra-op threads an engine may be given: 4 per core (more only thrash)."""
    return 4 * (os.cpu_count() or 1)


def check_threads(threads) -> int:
    """``threads`` as an int in 1..max_threads(), else UsageError naming the range."""
    hi = max_threads()
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise UsageError(f"threads must be an integer in 1..{hi}, got {threads!r}")
    if not 1 <= int(threads) <= hi:
        raise UsageError(f"threads must be in 1..{hi} (4 per core here), got {threads}")
    return int(threads)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[Dim, ...]

    @classmethod
    def from_dict(cls, d: Mapping) -> "TensorSpec":
        return cls(name=str(d["name"]), dtype=str(d["dtype"]), shape=tuple(d["shape"]))

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def check(self, arr: np.ndarray, where: str, max_batch: int | None = None) -> None:
        """Raise EngineInputError unless ``arr`` fits this spec (symbolic dims match anything >= 1)."""
        if not isinstance(arr, np.ndarray):
            raise EngineInputError(f"{where}: input '{self.name}' must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != np.dtype(self.dtype):
            raise EngineInputError(f"{where}: input '{self.name}' must be {self.dtype}, got {arr.dtype}")
        if arr.ndim != len(self.shape):
            raise EngineInputError(
                f"{where}: input '{self.name}' must have {len(self.shape)} dims {list(self.shape)}, "
                f"got {list(arr.shape)}"
            )
        for i, (want, got) in enumerate(zip(self.shape, arr.shape)):
            if isinstance(want, int) and want != got:
                raise EngineInputError(
                    f"{where}: input '{self.name}' dim {i} must be {want}, got {got} (shape {list(arr.shape)})"
                )
            if got < 1:
                raise EngineInputError(f"{where}: input '{self.name}' has an empty dim {i}")
        if max_batch is not None and arr.shape and isinstance(self.shape[0], str) and arr.shape[0] > max_batch:
            raise EngineInputError(
                f"{where}: batch {arr.shape[0]} of '{self.name}' is outside the engine profile (max {max_batch}); "
                f"rebuild the engine with a larger profile"
            )


class Engine(abc.ABC):
    """One loaded model. Thread-safety: see each backend; the ORT backend's ``run`` is safe to call
    from several threads at once (onnxruntime sessions are), TensorRT engines own one execution context and
    serialise calls with a lock."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int | None = None
    # the largest batch handed to the backend in one go: a larger batch is run in chunks of this size, one after
    # another, and the outputs joined (same results; bounds the activation memory of large models on a CPU)
    chunk: int | None = None

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        want = {s.name for s in self.inputs}
        got = set(feeds)
        if want != got:
            raise EngineInputError(f"engine '{self.name}': expected inputs {sorted(want)}, got {sorted(got)}")
        for spec in self.inputs:
            spec.check(feeds[spec.name], f"engine '{self.name}'", self.max_batch)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns ``{output_name: array}`` for every declared output, each checked against its
        spec (dtype, rank, fixed dims, and symbolic dims bound by the inputs: an output ``batch`` is the
        inputs' ``batch``)."""
        self.check_feeds(feeds)
        if (
            self.chunk is not None
            and all(s.shape and isinstance(s.shape[0], str) for s in self.inputs)
            and next(iter(feeds.values())).shape[0] > self.chunk
        ):
            out = run_in_batches(feeds, 1, self.chunk, self._run)
        else:
            out = self._run(feeds)
        self.check_outputs(feeds, out)
        return out

    def check_outputs(self, feeds: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]) -> None:
        bound: dict[str, int] = {}
        for spec in self.inputs:
            for want, got in zip(spec.shape, feeds[spec.name].shape):
                if isinstance(want, str):
                    bound.setdefault(want, got)
        for spec in self.outputs:
            arr = out.get(spec.name)
            if not isinstance(arr, np.ndarray):
                raise BundleSchemaError(
                    f"engine '{self.name}': output '{spec.name}' is missing from what the model returned; "
                    "rebuild the bundle with `beautyrt export`"
                )
            ok = arr.dtype == np.dtype(spec.dtype) and arr.ndim == len(spec.shape)
            if ok:
                for want, got in zip(spec.shape, arr.shape):
                    if (isinstance(want, int) and want != got) or (
                        isinstance(want, str) and bound.get(want, got) != got
                    ):
                        ok = False
            if not ok:
                got_s = f"{arr.dtype} {list(arr.shape)}"
                raise BundleSchemaError(
                    f"engine '{self.name}': output '{spec.name}' came back as {got_s} but the manifest says "
                    f"{spec.dtype} {list(spec.shape)}"
                    + (f" with {', '.join(f'{k}={v}' for k, v in bound.items())}" if bound else "")
                    + "; rebuild the bundle with `beautyrt export`"
                )

    @abc.abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def warmup(self, batch: int = 1, repeats: int = 1) -> None:
        """Run on zeros so that lazy allocations and kernel selection happen before timing starts."""
        feeds = {}
        for s in self.inputs:
            shape = [batch if isinstance(d, str) else d for d in s.shape]
            feeds[s.name] = np.zeros(shape, dtype=s.dtype)
        for _ in range(repeats):
            self.run(feeds)

    def close(self) -> None:
        """Release the backend session. Idempotent."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        ins = ", ".join(f"{s.name}{list(s.shape)}" for s in self.inputs)
        outs = ", ".join(f"{s.name}{list(s.shape)}" for s in self.outputs)
        return f"{self.name}: ({ins}) -> ({outs})"


def spec_list(items: Sequence[Mapping]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec.from_dict(d) for d in items)


def run_in_batches(feeds: Mapping[str, np.ndarray], min_batch: int, max_batch: int, run) -> dict[str, np.ndarray]:
    """Run ``run(feeds)`` on batches an engine with a fixed batch range accepts (e.g. a TensorRT plan whose
    profile is static at the population size): a batch below ``min_batch`` is padded with copies of its last
    row and the outputs cut back; one above ``max_batch`` is split into chunks. Every input's first axis is
    the batch; so is every output's."""
    if min_batch < 1 or max_batch < min_batch:
        raise ValueError(f"bad batch range {min_batch}..{max_batch}")
    b = next(iter(feeds.values())).shape[0]
    if min_batch <= b <= max_batch:
        return run(feeds)
    outs: list[dict] = []
    for start in range(0, b, max_batch):
        chunk = {k: v[start : start + max_batch] for k, v in feeds.items()}
        n = next(iter(chunk.values())).shape[0]
        if n < min_batch:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], min_batch - n, axis=0)]) for k, v in chunk.items()}
        outs.append({k: v[:n] for k, v in run(chunk).items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

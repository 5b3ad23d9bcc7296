"""The Engine interface: any artefact (ONNX file, TensorRT plan) runs through one of these.

An Engine owns its backend session, knows its inputs/outputs (from the bundle manifest, never sniffed),
checks every feed against them before running, and returns plain numpy arrays. Engines know nothing
about faces or latents.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import numpy as np

from .errors import EngineInputError

log = logging.getLogger("beautyrt")

Dim = Union[int, str]  # a fixed size or a symbolic name such as "batch"


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

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        want = {s.name for s in self.inputs}
        got = set(feeds)
        if want != got:
            raise EngineInputError(f"engine '{self.name}': expected inputs {sorted(want)}, got {sorted(got)}")
        for spec in self.inputs:
            spec.check(feeds[spec.name], f"engine '{self.name}'", self.max_batch)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns ``{output_name: array}`` for every declared output."""
        self.check_feeds(feeds)
        return self._run(feeds)

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

"""Shared pieces of the checkpoint loaders: the result record and strict weight assignment."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch

from ..errors import CheckpointError

log = logging.getLogger("beautyrt")


@dataclass
class Checkpoint:
    """What a checkpoint file provides. Each loader fills the parts its format carries."""

    kind: str
    path: str
    generator: Optional[torch.nn.Module] = None  # beautyrt Generator
    encoder: Optional[torch.nn.Module] = None  # image -> W+ (absolute)
    encoder_norm: Optional[dict] = None  # {"size", "mean", "std"} on [0,1] RGB
    identity: Optional[torch.nn.Module] = None
    identity_norm: Optional[dict] = None
    beauty: Optional[torch.nn.Module] = None
    beauty_norm: Optional[dict] = None
    w_avg: Optional[np.ndarray] = None
    w_std: Optional[np.ndarray] = None  # W's per-dimension std (the search's units), when known
    external_onnx: Any = None  # ExternalOnnx for as-is ONNX models
    objective_defaults: dict = field(default_factory=dict)  # e.g. identity floor/target fitting this identity net
    info: dict = field(default_factory=dict)  # config read from the file (recorded in the manifest)


def _fmt(names, n: int = 6) -> str:
    names = sorted(names)
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def assign_state(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str, ignore_missing: tuple[str, ...] = ()
) -> None:
    """Copy ``state`` into ``module`` requiring the same names and shapes; the error names the offenders.

    ``ignore_missing``: suffixes of module keys that may be absent (e.g. ``num_batches_tracked``).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(ignore_missing)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_fmt(unexpected)}")
        raise CheckpointError(f"{where}: weights do not fit {type(module).__name__}: {'; '.join(parts)}")
    bad = [
        f"{k} {list(state[k].shape)} != expected {list(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if bad:
        raise CheckpointError(
            f"{where}: shape mismatch in {len(bad)} tensor(s): {'; '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}"
        )
    with torch.no_grad():
        for k, t in own.items():
            if k in state:
                src = state[k]
                if not isinstance(src, torch.Tensor):
                    raise CheckpointError(f"{where}: {k} is a {type(src).__name__}, not a tensor")
                t.copy_(src.to(t.dtype))
    module.eval().requires_grad_(False)


def tensor_dict(obj: Any, where: str) -> dict:
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{where}: expected a state dict of tensors, got {type(obj).__name__}")
    return dict(obj)

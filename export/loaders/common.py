"""Shared pieces of the checkpoint loaders: the result record and strict weight assignment."""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from typing import IO, Any, Mapping, Optional, Union

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


# A torch.save zip stores its tensors uncompressed (ZIP_STORED): what its central directory declares is about
# the file's own size. A zip bomb declares (and inflates to) far more; refuse it from the central directory,
# before torch reads one record.
MAX_EXPANSION = 4.0  # declared uncompressed bytes per byte of file
MIN_ALLOWANCE = 64 << 20  # small files may declare up to this much anyway
MAX_DECLARED = 32 << 30  # no checkpoint beautyrt reads is near this


def check_zip_sizes(src: Union[str, IO[bytes]], size: int, where: str) -> None:
    """Refuse (CheckpointError) a zip whose entries declare more uncompressed bytes than ``size`` (the file's
    size) allows, or whose central directory cannot be read."""
    try:
        with zipfile.ZipFile(src) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{where}: not a readable torch checkpoint (zip: {str(e)[:160]})") from e
    if len(infos) > 1_000_000:
        raise CheckpointError(f"{where}: {len(infos):,} zip entries; not a checkpoint")
    declared = sum(max(0, i.file_size) for i in infos)
    limit = min(MAX_DECLARED, max(MIN_ALLOWANCE, int(MAX_EXPANSION * size)))
    if declared > limit:
        raise CheckpointError(
            f"{where}: its zip entries declare {declared:,} bytes uncompressed for a {size:,}-byte file "
            f"(limit {limit:,}): refused as a zip bomb before anything was read"
        )

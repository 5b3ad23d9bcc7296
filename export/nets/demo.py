"""The demo pack's networks beyond the StyleGAN2 generator and encoder (what `beautyrt train` trains and exports).

* :class:`NormalisedEncoder` -- the e4e-style :class:`~beautyrt.export.nets.encoder.Encoder` whose W+ rows
  are RMS-normalised (each row scaled to unit root-mean-square); the generator was trained on such rows,
  which is what kept the joint autoencoder training stable (DESIGN's probe).
* :class:`ChipIdentity` -- dlib's ResNet face descriptor on the generator's FFHQ crop: a fixed similarity
  (``crop_from_generator``) warps the crop into dlib's 150 px chip (bilinear ``grid_sample``), then the
  descriptor is centred on the mean descriptor of the training faces so that cosines discriminate people
  (raw dlib descriptors of different people have cosines ~0.8-0.9; centred, ~0).
* :class:`DescriptorBeauty` -- a small MLP head on the (centred) dlib descriptor, optionally fused with a
  CNN on the crop; the beauty regressor of the pack.

Inputs follow the Scorer's convention: ``Normalise`` turns the [-1,1] generator image into
``(x01 - mean) / std``; the pack uses mean 0, std 1/255 for the dlib-based models so the module sees
[0,255] RGB pixels.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PIXELS = {"mean": [0.0, 0.0, 0.0], "std": [1.0 / 255.0] * 3}  # Normalise(...) -> [0, 255] RGB


def rms_rows(ws: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return ws * (ws.square().mean(dim=-1, keepdim=True) + eps).rsqrt()


class NormalisedEncoder(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.resolution, self.num_ws, self.w_dim = encoder.resolution, encoder.num_ws, encoder.w_dim

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return rms_rows(self.encoder(img))


def chip_affine(mean_landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """2x3 similarity crop pixels -> dlib chip pixels from the mean 5 landmarks of aligned crops."""
    from beautyrt.export.dlib_dat import DLIB_CHIP_TEMPLATE_5PT, similarity_from_points

    return similarity_from_points(np.asarray(mean_landmarks, np.float64), DLIB_CHIP_TEMPLATE_5PT)


def _grid(matrix: np.ndarray, in_size: int, out_size: int) -> torch.Tensor:
    """Sampling grid (1, out, out, 2) for grid_sample(align_corners=False) of the affine in->out."""
    m = np.vstack([np.asarray(matrix, np.float64), [0, 0, 1]])
    inv = np.linalg.inv(m)
    ys, xs = np.mgrid[0:out_size, 0:out_size].astype(np.float64)
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    src = (inv @ pts)[:2]  # crop pixel coordinates (centres at integers)
    g = (src + 0.5) / in_size * 2 - 1
    return torch.from_numpy(g.T.reshape(1, out_size, out_size, 2).astype(np.float32))


class ChipIdentity(nn.Module):
    """[0,255] RGB FFHQ crop (N,3,S,S) -> centred dlib descriptor (N,128)."""

    def __init__(self, dlib_net: nn.Module, matrix: np.ndarray, in_size: int, centre: Optional[np.ndarray] = None):
        super().__init__()
        self.dlib = dlib_net.eval()
        self.in_size = int(in_size)
        self.embedding_dim = 128
        self.register_buffer("grid", _grid(matrix, in_size, 150))
        self.register_buffer(
            "centre", torch.zeros(128) if centre is None else torch.as_tensor(centre, dtype=torch.float32)
        )

    def chip(self, img: torch.Tensor) -> torch.Tensor:
        assert img.ndim == 4 and img.shape[2] == self.in_size, f"expected [B,3,{self.in_size},{self.in_size}]"
        return F.grid_sample(
            img, self.grid.expand(img.shape[0], -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False
        )

    def raw(self, img: torch.Tensor) -> torch.Tensor:
        return self.dlib(self.chip(img))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.raw(img) - self.centre


class DescriptorBeauty(nn.Module):
    """Beauty score (1..10) from the centred dlib descriptor of the crop: an MLP head over a ChipIdentity."""

    def __init__(
        self,
        identity: ChipIdentity,
        hidden: int = 64,
        mid: float = 5.5,
        feat_mean: Optional[np.ndarray] = None,
        feat_std: Optional[np.ndarray] = None,
    ):
        super().__init__()
        self.identity = identity
        self.head = nn.Sequential(nn.Linear(128, hidden), nn.GELU(), nn.Dropout(0.2), nn.Linear(hidden, 1))
        nn.init.constant_(self.head[-1].bias, mid)
        self.register_buffer("feat_mean", torch.zeros(128) if feat_mean is None else torch.as_tensor(feat_mean).float())
        self.register_buffer("feat_std", torch.ones(128) if feat_std is None else torch.as_tensor(feat_std).float())

    def from_descriptor(self, d: torch.Tensor) -> torch.Tensor:
        return self.head((d - self.feat_mean) / self.feat_std)[:, 0]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.from_descriptor(self.identity(img))


class BlockFeatureBeauty(nn.Module):
    """Beauty score (1..10): a linear (ridge) head on dlib features of the crop's chip -- the spatial mean of
    the ReLU of every residual block's output from ``first_block`` on, plus the raw 128-d descriptor.

    The deeper blocks carry face appearance that the identity-trained descriptor throws away (skin, eyes,
    proportions); measured on MEBeauty val (64 px crops, ridge lambda chosen by cross-validation on train):
    descriptor alone r 0.63, blocks 7.. + descriptor r ~0.68. The first blocks (32/64 channels: mostly
    colour and brightness statistics) are left out so the search cannot buy score with global tone."""

    def __init__(
        self,
        identity: ChipIdentity,
        first_block: int = 7,
        dim: int = 1536,
        feat_mean: Optional[np.ndarray] = None,
        feat_std: Optional[np.ndarray] = None,
    ):
        super().__init__()
        self.identity = identity
        self.first_block = int(first_block)
        self.head = nn.Linear(int(dim), 1)
        self.register_buffer("feat_mean", torch.zeros(dim) if feat_mean is None else torch.as_tensor(feat_mean).float())
        self.register_buffer("feat_std", torch.ones(dim) if feat_std is None else torch.as_tensor(feat_std).float())

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """[0,255] RGB FFHQ crops -> (N, dim) features."""
        blocks, desc = self.identity.dlib.blocks_and_descriptor(self.identity.chip(img))
        pooled = [F.relu(b).mean(dim=(2, 3)) for b in blocks[self.first_block :]]
        return torch.cat([*pooled, desc], dim=1)

    def from_features(self, f: torch.Tensor) -> torch.Tensor:
        return self.head((f - self.feat_mean) / self.feat_std)[:, 0]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(img))

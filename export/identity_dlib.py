"""dlib's face descriptor as the bundle's identity network.

The generator renders FFHQ-style crops; dlib's network wants its own 150 px chip, defined by 5 landmarks.
The landmarks of a typical face sit at fixed places in the FFHQ crop (measured by
``tests/bench/ffhq_landmarks.py`` over 223 MEBeauty val photos with beautyrt's detector and aligner; std
<= 0.04 of the crop side), so one fixed similarity takes the generator's crop into dlib's chip. It is
recorded in the manifest as ``normalisation.crop_from_generator`` (an ``affine_grid`` theta) and applied
inside the fused scorer; real photos are cut with ``normalisation.template`` from their own landmarks.

Objective defaults: dlib's same-person rule is a Euclidean distance < 0.6 between raw descriptors, whose norm
is about 1.4 (measured), i.e. cosine > 1 - 0.6² / (2·1.4²) ≈ 0.91; that is the identity floor recorded in
the manifest for bundles using this network, with the soft target at 0.95.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from .dlib_dat import CHIP_SIZE, DLIB_CHIP_TEMPLATE_5PT, DLIB_RESNET_LICENSE, load_dlib_resnet, similarity_from_points
from .nets.dlib_resnet import build_dlib_resnet

# Mean positions of (left eye, right eye, nose, left mouth corner, right mouth corner) in the FFHQ crop, in
# units of the crop side with pixel centres at integers (x / size). tests/bench/ffhq_landmarks.py, 223 faces.
FFHQ_LANDMARKS_UNIT = np.array(
    [
        [0.37864, 0.47387],
        [0.62063, 0.47253],
        [0.49186, 0.61453],
        [0.39356, 0.73671],
        [0.60302, 0.73569],
    ]
)
DESCRIPTOR_NORM = 1.4
DLIB_IDENTITY_FLOOR = round(1.0 - 0.6**2 / (2 * DESCRIPTOR_NORM**2), 3)  # 0.908
DLIB_IDENTITY_TARGET = 0.95


def crop_theta(src_unit: np.ndarray, template_px: np.ndarray, template_size: int, src_size_hint: int = 1000) -> list:
    """``affine_grid`` theta (align_corners=False) that samples a template crop out of a source crop.

    ``src_unit``: landmark positions in the source crop as (pixel-centre coordinate / size);
    ``template_px``: the same landmarks in the template crop's pixels (pixel centres at integers).
    """
    src = (np.asarray(src_unit, np.float64) * src_size_hint + 0.5) / src_size_hint  # -> [0, 1] edge coords
    dst = (np.asarray(template_px, np.float64) + 0.5) / template_size
    a = similarity_from_points(src, dst)  # src -> dst, unit edge coords
    lin = np.linalg.inv(a[:, :2])
    t = -lin @ a[:, 2]  # dst -> src
    theta = np.concatenate([lin, (lin @ np.ones(2) + 2 * t - 1)[:, None]], axis=1)
    return theta.tolist()


class DlibIdentity(nn.Module):
    """Wraps the dlib port: input (N, 3, 150, 150) RGB in [0, 255] (normalisation mean 0, std 1/255)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.embedding_dim = net.embedding_dim
        self.resolution = CHIP_SIZE

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.net(img)


def dlib_identity(path: Optional[str] = None) -> tuple[nn.Module, dict, dict]:
    """(module, normalisation for ModelSet.identity_norm, objective defaults) for dlib's descriptor."""
    net = build_dlib_resnet(load_dlib_resnet(path)).eval()
    norm = {
        "size": CHIP_SIZE,
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0 / 255.0] * 3,
        "crop_from_generator": crop_theta(FFHQ_LANDMARKS_UNIT, DLIB_CHIP_TEMPLATE_5PT, CHIP_SIZE),
        "template": DLIB_CHIP_TEMPLATE_5PT.tolist(),
        "template_size": CHIP_SIZE,
        "model": "dlib_face_recognition_resnet_model_v1",
        "licence": DLIB_RESNET_LICENSE,
    }
    defaults = {"identity_floor": DLIB_IDENTITY_FLOOR, "identity_target": DLIB_IDENTITY_TARGET}
    return DlibIdentity(net), norm, defaults

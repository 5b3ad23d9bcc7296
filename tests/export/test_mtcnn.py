"""MTCNN: weights from the facenet-pytorch wheel, ONNX export parity, and the numpy cascade on real photos.

Needs the facenet-pytorch 2.6.0 wheel (fetched with ``pip download`` into ``$BEAUTYRT_MTCNN_CACHE`` or
~/.cache/beautyrt/mtcnn); the tests that need it skip with the reason when it cannot be obtained.
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from beautyrt.export.errors import CheckpointError  # noqa: E402
from beautyrt.export.mtcnn_weights import WHEEL_NAME, mtcnn_state_dicts  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ASTRONAUT = REPO / "examples" / "astronaut.jpg"
SHARED_DATA = REPO.parent / "shared" / "data"


class OrtNet:
    """Minimal Engine-like adapter: ``.inputs[0].name`` and ``.run(feeds) -> {name: array}``."""

    def __init__(self, path: Path):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()
        self._names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds):
        return dict(zip(self._names, self.session.run(None, dict(feeds))))


def _cache_dir():
    env = os.environ.get("BEAUTYRT_MTCNN_CACHE")
    return Path(env) if env else None


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from beautyrt.export.mtcnn_export import export_mtcnn

    out = tmp_path_factory.mktemp("mtcnn_onnx")
    try:
        entries = export_mtcnn(out, _cache_dir())
    except CheckpointError as e:
        pytest.skip(f"MTCNN weights unavailable (no network or no pip download): {e}")
    return out, entries


@pytest.fixture(scope="module")
def detector(exported):
    from beautyrt.runtime.ops.mtcnn import MTCNNDetector

    out, _ = exported
    return MTCNNDetector(*(OrtNet(out / f"{n}.onnx") for n in ("pnet", "rnet", "onet")))


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


# ------------------------------------------------------------------------------------------------
def test_bad_wheel_hash_is_a_checkpoint_error(tmp_path):
    fake = tmp_path / WHEEL_NAME
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("facenet_pytorch/data/pnet.pt", b"not a checkpoint")
    with pytest.raises(CheckpointError, match="sha256"):
        mtcnn_state_dicts(tmp_path, download=False)


def test_missing_wheel_without_download_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        mtcnn_state_dicts(tmp_path / "empty", download=False)


def test_manifest_entries_are_plain_json(exported):
    out, entries = exported
    assert set(entries) == {"pnet", "rnet", "onet"}
    json.loads(json.dumps(entries))
    assert entries["pnet"]["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert entries["rnet"]["inputs"][0]["shape"] == ["batch", 3, 24, 24]
    assert entries["onet"]["inputs"][0]["shape"] == ["batch", 3, 48, 48]
    assert [o["name"] for o in entries["onet"]["outputs"]] == ["reg", "landmarks", "prob"]
    for name, e in entries.items():
        assert (out / e["file"]).is_file()
        assert e["normalisation"]["mean"] == [127.5] * 3 and e["normalisation"]["std"] == [128.0] * 3
        assert e["parity"]["max_abs"] < 1e-4, (name, e["parity"])


def test_onnx_matches_torch_on_fresh_inputs(exported):
    """Independent of the exporter's own parity numbers: new shapes and batches, all outputs."""
    from beautyrt.export.mtcnn_weights import load_mtcnn_nets

    out, _ = exported
    nets = load_mtcnn_nets(_cache_dir())
    rng = np.random.default_rng(123)
    cases = {
        "pnet": [(1, 3, 12, 12), (3, 3, 57, 203)],
        "rnet": [(1, 3, 24, 24), (33, 3, 24, 24)],
        "onet": [(1, 3, 48, 48), (17, 3, 48, 48)],
    }
    for name, shapes in cases.items():
        sess = OrtNet(out / f"{name}.onnx")
        for shape in shapes:
            x = ((rng.uniform(0, 255, shape) - 127.5) / 128.0).astype(np.float32)
            with torch.no_grad():
                ref = [t.numpy() for t in nets[name](torch.from_numpy(x))]
            got = list(sess.run({"image": x}).values())
            assert len(got) == len(ref)
            for r, g in zip(ref, got):
                assert r.shape == g.shape
                np.testing.assert_allclose(g, r, atol=2e-5, rtol=0)
            prob = got[-1]
            np.testing.assert_allclose(prob.sum(axis=1), 1.0, atol=1e-5)  # softmax inside the graph


def test_detects_the_astronaut(detector):
    img = load_rgb(ASTRONAUT)
    faces = detector.detect(img)
    assert len(faces) == 1
    f = faces[0]
    x0, y0, x1, y1 = f.box
    assert f.score > 0.99
    assert 60 < x1 - x0 < 160 and 60 < y1 - y0 < 180  # a ~100 px face in a 512 px portrait
    assert f.landmarks.shape == (5, 2)
    assert f.landmarks_inside_box()
    lm = f.landmarks
    assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])  # eyes above nose above mouth
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left before image-right
    json.dumps(f.to_dict())


def test_no_face_in_flat_or_tiny_images(detector):
    assert detector.detect(np.full((200, 300, 3), 128, np.uint8)) == []
    assert detector.detect(np.zeros((10, 10, 3), np.uint8)) == []


def test_astronaut_align_and_paste_round_trip(detector):
    from beautyrt.runtime.ops.blend import paste_back
    from beautyrt.runtime.ops.geometry import ffhq_alignment, warp

    img = load_rgb(ASTRONAUT)
    face = detector.detect(img)[0]
    al = ffhq_alignment(face.landmarks, 256)
    crop = warp(img, al.matrix, 256)
    # the aligned crop puts the eyes level and at FFHQ's height
    lm = al.landmarks_in_crop()
    assert abs(lm[0, 1] - lm[1, 1]) < 3 and 90 < lm[0, 1] < 125
    out, mask = paste_back(img, crop, al, return_mask=True)
    diff = np.abs(out.astype(int) - img.astype(int)).max(axis=-1)
    assert diff[mask == 0].max() == 0
    assert diff[mask > 0.99].mean() < 2.0  # measured 1.42 grey levels (JPEG detail, crop scale 1.49)


# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_detects_faces_on_mebeauty_sample(detector):
    csv_path = SHARED_DATA / "mebeauty" / "val.csv"
    if not csv_path.is_file():
        pytest.skip(f"{csv_path} absent (../shared/data is not part of a fresh clone)")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    sample = rows[::8]
    found = inside = 0
    for row in sample:
        faces = detector.detect(load_rgb(csv_path.parent / row["image"]))
        if faces:
            found += 1
            inside += faces[0].landmarks_inside_box()
    assert found >= 0.9 * len(sample), f"{found}/{len(sample)}"
    assert inside >= 0.9 * found

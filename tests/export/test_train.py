"""Demo-pack training: data prep with beautyrt's aligner, generator/encoder steps, beauty head, the pack."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import EXAMPLE, REPO, SHARED_DATA, needs_torch

pytestmark = needs_torch


def _tiny_cfg(**kw):
    from beautyrt.export.train.generator import GenConfig

    base = dict(
        resolution=32,
        z_dim=16,
        w_dim=16,
        channel_base=256,
        channel_max=16,
        mapping_layers=1,
        enc_channels=(8, 8, 16, 16),
        batch=4,
        lr=2e-3,
        warmup=5,
        max_steps=30,
        minutes=5,
        val_every=10,
        log_every=5,
        ckpt_every_s=1e9,
        threads=1,
        latent_noise=0.3,
    )
    base.update(kw)
    return GenConfig(**base)


def _synthetic_faces(n=8, res=32, seed=0) -> dict:
    """Smooth blobs standing in for aligned faces (the training loop does not care what they are)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:res, 0:res] / res
    imgs = []
    for _ in range(n):
        cx, cy, r = rng.uniform(0.3, 0.7, 3)
        col = rng.uniform(60, 220, 3)
        m = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.1 * r))
        imgs.append((m[..., None] * col + (1 - m[..., None]) * 40).astype(np.uint8))
    return {
        f"images_{res}": np.stack(imgs),
        "split": np.array([0] * (n - 2) + [1, 1], np.int8),
        "score": rng.uniform(2, 8, n).astype(np.float32),
    }


def test_generator_training_losses_fall_and_are_seeded(tmp_path):
    import torch

    from beautyrt.export.train.generator import load_checkpoint, train_generator

    data = _synthetic_faces()
    r1 = train_generator(data, tmp_path / "a", _tiny_cfg())
    log = [__import__("json").loads(l) for l in (tmp_path / "a" / "gen_log.jsonl").read_text().splitlines()]
    l1 = [rec["l1"] for rec in log if "l1" in rec]
    assert all(np.isfinite(l1)) and np.isfinite(r1["val_l1"])
    assert len(l1) >= 5 and l1[-1] < l1[0], l1
    r2 = train_generator(data, tmp_path / "b", _tiny_cfg())
    G1, E1, _ = load_checkpoint(tmp_path / "a" / "generator.pt")
    G2, E2, _ = load_checkpoint(tmp_path / "b" / "generator.pt")
    for a, b in zip(
        list(G1.state_dict().values()) + list(E1.state_dict().values()),
        list(G2.state_dict().values()) + list(E2.state_dict().values()),
    ):
        assert torch.equal(a, b)
    assert r1["val_l1"] == r2["val_l1"]


def test_encoded_stats_are_of_encoder_outputs():
    import torch

    from beautyrt.export.train.generator import encoded_stats

    ws = torch.randn(50, 4, 8) * 3 + 1
    m, s = encoded_stats(ws)
    assert m.shape == (8,) and s.shape == (8,)
    np.testing.assert_allclose(m, ws.reshape(-1, 8).mean(0).numpy(), atol=1e-5)


def test_chip_identity_centres_and_warps():
    import torch

    from beautyrt.export.nets.demo import ChipIdentity, _grid

    # the grid of the identity affine samples the crop's pixel centres exactly
    g = _grid(np.array([[150 / 64, 0, 0], [0, 150 / 64, 0]]), 64, 150)
    assert g.shape == (1, 150, 150, 2) and float(g.abs().max()) <= 1.01

    class Mean(torch.nn.Module):
        embedding_dim = 128

        def forward(self, x):
            return x.mean(dim=(2, 3)).repeat(1, 43)[:, :128]

    ident = ChipIdentity(Mean(), np.array([[2.0, 0, 10], [0, 2.0, 10]]), 64, centre=np.ones(128))
    out = ident(torch.full((2, 3, 64, 64), 100.0))
    assert out.shape == (2, 128)
    np.testing.assert_allclose(out.numpy(), 99.0, atol=1e-3)


def _fake_data_dir(tmp_path: Path, n: int = 3) -> Path:
    root = tmp_path / "data"
    img_dir = root / "mebeauty" / "images" / "x"
    img_dir.mkdir(parents=True)
    rows = []
    for i in range(n):
        shutil.copy(EXAMPLE, img_dir / f"a{i}.jpg")
        rows.append({"image": f"images/x/a{i}.jpg", "score": 4.0 + i})
    for split, rs in (("train", rows[:-1]), ("val", rows[-1:])):
        with open(root / "mebeauty" / f"{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["image", "score"])
            w.writeheader()
            w.writerows(rs)
    return root


def test_prepare_aligns_with_beautyrt_aligner(tmp_path):
    from beautyrt.export.errors import CheckpointError
    from beautyrt.export.train.data import load_aligned, prepare

    root = _fake_data_dir(tmp_path)
    try:
        p = prepare(root, sizes=(32,), cache=tmp_path / "cache", workers=1)
    except CheckpointError as e:
        pytest.skip(f"MTCNN weights unavailable: {e}")
    d = load_aligned(p)
    assert d["images_32"].shape == (3, 32, 32, 3) and d["images_32"].dtype == np.uint8
    assert list(d["split"]) == [0, 0, 1] and len(d["missed"]) == 0
    # FFHQ alignment puts the eyes at ~0.38/0.62 of the width, ~0.47 of the height
    lm = d["lm_32"][0] / 32
    assert abs(lm[0, 0] - 0.38) < 0.05 and abs(lm[1, 0] - 0.62) < 0.05 and abs(lm[0, 1] - 0.47) < 0.06
    assert prepare(root, sizes=(32,), cache=tmp_path / "cache", workers=1) == p  # cached


PACK = REPO / "export" / "demo_pack"


@pytest.mark.skipif(not (PACK / "config.json").is_file(), reason="demo pack not committed yet")
def test_pack_loads_and_scores(tmp_path):
    import torch

    from beautyrt.export.demo_pack import PACK_FILES, build_demo_modelset

    assert sum((PACK / f).stat().st_size for f in PACK_FILES) < 25e6
    ms = build_demo_modelset()
    R = ms.generator.img_resolution
    ws = torch.from_numpy(ms.w_avg)[None, None].repeat(2, ms.generator.num_ws, 1)
    with torch.no_grad():
        img = ms.generator.synthesis(ws)
        score = ms.beauty((img.clamp(-1, 1) + 1) * 127.5)
        emb = ms.identity((img.clamp(-1, 1) + 1) * 127.5)
        w = ms.encoder(img)
    assert img.shape == (2, 3, R, R) and score.shape == (2,) and emb.shape == (2, 128)
    assert torch.isfinite(score).all() and 1.0 < float(score.mean()) < 10.0
    assert w.shape == (2, ms.generator.num_ws, ms.generator.w_dim)
    assert "beauty_direction" in ms.extra_models


@pytest.mark.slow
@pytest.mark.skipif(not (PACK / "config.json").is_file(), reason="demo pack not committed yet")
def test_pack_exports(tmp_path):
    from beautyrt.engines import load_manifest
    from beautyrt.export.api import export_preset

    out = export_preset("demo", tmp_path / "demo", detector=False)
    m = load_manifest(out)
    assert m.has("beauty_direction") and m.data["generator"]["resolution"] == 64
    assert m.data["source"]["kind"] == "demo_pack"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "mebeauty").is_dir(), reason="needs ../shared/data (MEBeauty)")
def test_prepare_on_mebeauty_sample(tmp_path):
    from beautyrt.export.train.data import load_aligned, prepare

    d = load_aligned(prepare(SHARED_DATA, sizes=(64,), cache=tmp_path, include_omi=False, limit=6, workers=1))
    assert d["images_64"].shape[0] + len(d["missed"]) == 6 and d["images_64"].shape[0] >= 5


def test_ridge_beauty_recovers_a_planted_score_and_round_trips(tmp_path):
    """train_beauty_ridge on faces whose 'ratings' are a planted linear function of the block features:
    the cross-validated ridge must recover it on held-out faces, and the saved head, rebuilt by the pack
    loader, must give the trainer's predictions."""
    import torch
    from PIL import Image, ImageEnhance, ImageFilter

    from beautyrt.export.demo_pack import beauty_module
    from beautyrt.export.nets.demo import BlockFeatureBeauty
    from beautyrt.export.train.beauty import build_identity, train_beauty_ridge
    from beautyrt.export.train.common import to_tensor

    rng = np.random.default_rng(0)
    base = Image.open(EXAMPLE).convert("RGB").crop((150, 40, 300, 190))
    imgs = []
    for i in range(48):  # varied views of one face: brightness, contrast, blur, shifts
        im = ImageEnhance.Brightness(base).enhance(rng.uniform(0.6, 1.4))
        im = (
            ImageEnhance.Contrast(im).enhance(rng.uniform(0.6, 1.4)).filter(ImageFilter.GaussianBlur(rng.uniform(0, 2)))
        )
        dx, dy = rng.integers(-8, 9, size=2)
        imgs.append(np.asarray(im.crop((8 + dx, 8 + dy, 142 + dx, 142 + dy)).resize((64, 64), Image.BICUBIC)))
    lm = np.tile(np.array([[22, 28], [42, 28], [32, 38], [24, 48], [40, 48]], np.float32), (48, 1, 1))
    data = {"images_64": np.stack(imgs), "lm_64": lm, "split": np.array([0] * 32 + [2] * 6 + [1] * 10, np.int8)}
    probe = BlockFeatureBeauty(build_identity(lm, 64), dim=1).eval()
    with torch.no_grad():
        f = probe.features((to_tensor(data["images_64"]) + 1) * 127.5).numpy().astype(np.float64)
    z = (f - f.mean(0)) / (f.std(0) + 1e-6)
    planted = z @ rng.normal(size=f.shape[1])
    data["score"] = (5.5 + planted / planted.std()).astype(np.float32)

    res = train_beauty_ridge(data, tmp_path, omi_weight=0.5, lambdas=(0.01, 0.1, 1.0), folds=4)
    assert res["val_real"]["pearson_r"] > 0.8, res["val_real"]
    assert res["val_real_torch"]["pearson_r"] == pytest.approx(res["val_real"]["pearson_r"], abs=1e-3)
    assert set(res["cv_pearson_r_train"]) == {0.01, 0.1, 1.0} and res["lambda"] in (0.01, 0.1, 1.0)

    bst = torch.load(tmp_path / "beauty.pt", weights_only=True)
    assert bst["kind"] == "ridge_blocks"
    ident = build_identity(lm, 64)
    m = beauty_module(
        ident,
        {"kind": "ridge_blocks", "first_block": int(bst["first_block"]), "dim": int(bst["dim"])},
        bst,
        bst["head"],
    )
    with torch.no_grad():
        pred = m((to_tensor(data["images_64"][-10:]) + 1) * 127.5).numpy()
    r = np.corrcoef(pred, data["score"][-10:])[0, 1]
    assert r == pytest.approx(res["val_real"]["pearson_r"], abs=1e-3)
    with pytest.raises(Exception, match="unknown beauty kind"):
        beauty_module(ident, {"kind": "forest"}, bst, bst["head"])


def test_generator_identity_loss_and_resume(tmp_path):
    """id_weight > 0 with an identity module puts its loss in the log (0 without); resume continues the
    checkpoint's step count and optimiser instead of starting over."""
    import json

    import torch

    from beautyrt.export.train.generator import train_generator

    class Ident(torch.nn.Module):  # a fixed random embedding of the [0,255] crop
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)

        def forward(self, x):
            return self.conv(x / 255.0).flatten(1)

    torch.manual_seed(0)
    ident = Ident().eval().requires_grad_(False)
    data = _synthetic_faces()
    train_generator(data, tmp_path / "a", _tiny_cfg(max_steps=10, id_weight=0.5), identity=ident)
    log = [json.loads(line) for line in (tmp_path / "a" / "gen_log.jsonl").read_text().splitlines()]
    assert all(rec["id"] > 0 for rec in log if "id" in rec)
    r = train_generator(data, tmp_path / "a", _tiny_cfg(max_steps=25, id_weight=0.5), resume=True, identity=ident)
    assert r["steps"] == 25
    assert torch.load(tmp_path / "a" / "generator.pt", weights_only=True)["step"] == 25
    train_generator(data, tmp_path / "b", _tiny_cfg(max_steps=10))
    log = [json.loads(line) for line in (tmp_path / "b" / "gen_log.jsonl").read_text().splitlines()]
    assert all(rec["id"] == 0 for rec in log if "id" in rec)


@pytest.mark.slow
def test_trainer_outputs_export_and_optimize(tmp_path, cli, face_crop):
    """The trainer -> exporter contract: what ``beautyrt train generator|beauty|pack`` writes, ``beautyrt export``
    accepts (``--stylegan RUN/generator.pt --beauty RUN/beauty.pt`` and ``--pack DIR``), and the bundles optimise
    a photo with torch blocked. Tiny synthetic data: seconds of training, the real dlib network."""
    from PIL import Image

    from beautyrt.export.demo_pack import build_pack_from_training
    from beautyrt.export.train.beauty import train_beauty_ridge
    from beautyrt.export.train.generator import train_generator

    data = _synthetic_faces(n=24, res=32)
    data["split"] = np.array([0] * 14 + [2] * 4 + [1] * 6, np.int8)
    data["lm_32"] = np.tile(np.array([[11, 14], [21, 14], [16, 19], [12, 24], [20, 24]], np.float32), (24, 1, 1))
    run = tmp_path / "run"
    train_generator(data, run, _tiny_cfg(max_steps=20))
    train_beauty_ridge(data, run, res=32, lambdas=(1.0, 10.0), folds=2)
    npz = tmp_path / "aligned.npz"
    np.savez(npz, **data)
    pack = build_pack_from_training(run / "generator.pt", run / "beauty.pt", npz, out=tmp_path / "pack")
    crop = tmp_path / "face.png"
    Image.fromarray(face_crop).save(crop)
    for name, args in (
        ("ckpt", ["--stylegan", run / "generator.pt", "--beauty", run / "beauty.pt", "--identity", "dlib"]),
        ("pack", ["--pack", pack]),
    ):
        out = tmp_path / f"bundle_{name}"
        r = cli("export", *map(str, args), "--no-detector", "--out", str(out), timeout=900)
        assert r.returncode == 0, r.stderr
        m = __import__("json").loads((out / "manifest.json").read_text())
        assert m["generator"]["resolution"] == 32
        r = cli(
            "optimize",
            str(crop),
            "--aligned",
            "--bundle",
            str(out),
            "-g",
            "2",
            "-p",
            "4",
            "-o",
            str(tmp_path / f"{name}.png"),
            "--json",
            "-q",
            block_torch=True,
        )
        assert r.returncode == 0, r.stderr
        assert __import__("json").loads(r.stdout)["generations_run"] == 2
    roles = m["source"]
    assert roles["kind"] == "demo_pack" and roles["pack"] == str(pack)


def test_faceres_trainer_outputs_export_and_optimize(tmp_path, cli, face_crop, monkeypatch):
    """``train_beauty_faceres`` (issue 17): its beauty.pt is a ``ridge_faceres`` head that ``beautyrt export
    --beauty`` accepts; the exported bundle optimises with torch blocked; the torch module the loader builds
    reproduces the trainer's own predictions (the head is wired to the features it was fitted on) -- for the
    pooled feature and for a head on further FaceRes blocks, another crop and test-time mirror averaging."""
    import json

    import torch
    from PIL import Image

    from beautyrt.export.loaders import load_checkpoint
    from beautyrt.export.train import beauty as tb
    from beautyrt.export.train.beauty import train_beauty_faceres
    from beautyrt.export.train.generator import train_generator

    try:
        from beautyrt.export.human_models import model_path

        model_path("faceres")
    except Exception as e:  # npm missing and nothing cached (the CI installs npm)
        pytest.skip(f"faceres weights unavailable: {e}")
    data = _synthetic_faces(n=24, res=32)
    data["split"] = np.array([0] * 18 + [1] * 6, np.int8)
    data["lm_32"] = np.tile(np.array([[11, 14], [21, 14], [16, 19], [12, 24], [20, 24]], np.float32), (24, 1, 1))
    run = tmp_path / "run"
    train_generator(data, run, _tiny_cfg(max_steps=5))
    sets = ("faceres", "faceres+dlib")
    res = train_beauty_faceres(data, run, feature_sets=sets, lambdas=(0.1, 1.0), mirror=(False, True), folds=2, res=32)
    assert res["feature_set"] in sets and len(res["cv_pearson_r_train"]) == 8  # 2 sets x 2 lambdas x mirror or not
    assert res["val_real_torch"]["pearson_r"] == pytest.approx(res["val_real"]["pearson_r"], abs=1e-3)
    assert torch.load(run / "beauty.pt", weights_only=True)["kind"] == "ridge_faceres"
    x = torch.from_numpy(data["images_32"][-6:]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        pred = load_checkpoint(run / "beauty.pt").beauty(x).numpy()
    assert np.corrcoef(pred, data["score"][-6:])[0, 1] == pytest.approx(res["val_real"]["pearson_r"], abs=1e-3)
    assert np.abs(pred - pred.mean()).max() > 1e-4  # the head reads the image (not a constant)
    # richer features: intermediate blocks, the feats layer and gender of faceres, faceres on the whole crop, dlib;
    # mirror averaging forced (on real data the CV chooses it by a hair)
    monkeypatch.setitem(
        tb.FACERES_FEATURE_SETS, "t", ("faceres:pw7_mean+pw12_std+pw13_mean+feats+gender", "faceres@ffhq", "dlib")
    )
    run2 = tmp_path / "run2"
    res = train_beauty_faceres(data, run2, feature_sets=("t",), lambdas=(1.0,), mirror=(True,), folds=2, res=32)
    assert res["mirror"] and res["dim"] == 512 + 1024 + 1024 + 256 + 1 + 1024 + 1536
    assert res["val_real_torch"]["pearson_r"] == pytest.approx(res["val_real"]["pearson_r"], abs=1e-3)
    ck = load_checkpoint(run2 / "beauty.pt")
    assert ck.beauty.mirror and ck.beauty.blocks == [
        ("pw7_mean", "pw12_std", "pw13_mean", "feats", "gender"),
        ("pw13_mean",),
    ]
    with torch.no_grad():
        pred = ck.beauty(x).numpy()
        ck.beauty.mirror = False  # the mirror-averaged score is the mean of the crop's and its mirror image's
        halves = ck.beauty(x).numpy(), ck.beauty(x.flip(-1)).numpy()
        ck.beauty.mirror = True
    assert np.corrcoef(pred, data["score"][-6:])[0, 1] == pytest.approx(res["val_real"]["pearson_r"], abs=1e-3)
    assert pred == pytest.approx(0.5 * (halves[0] + halves[1]), abs=1e-4) and np.abs(halves[0] - halves[1]).max() > 1e-4
    # it exports (blocks, second crop and the in-graph mirror batch) and onnxruntime agrees on the faces it was fitted
    # to (the bundle exporter's random-noise parity inputs lie far outside 18 synthetic blobs' feature spread, where
    # this toy head amplifies float32 rounding; on MEBeauty the real head's crop_scorer agrees to ~2e-6)
    import onnxruntime as ort

    torch.onnx.export(
        ck.beauty, (x,), str(tmp_path / "b.onnx"), input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False
    )
    got = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()}
    )[0]
    assert np.abs(got - pred).max() <= 1e-3 * np.abs(pred).max()
    crop = tmp_path / "face.png"
    Image.fromarray(face_crop).save(crop)
    out = tmp_path / "bundle"
    args = ["--stylegan", run / "generator.pt", "--beauty", run / "beauty.pt", "--identity", "dlib"]
    r = cli("export", *map(str, args), "--no-detector", "--out", str(out), timeout=900)
    assert r.returncode == 0, r.stderr
    r = cli(
        "optimize",
        *(str(crop), "--aligned", "--bundle", str(out), "-g", "2", "-p", "4", "-o", str(tmp_path / "o.png")),
        *("--json", "-q"),
        block_torch=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["generations_run"] == 2

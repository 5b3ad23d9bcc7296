"""External ONNX identity/beauty models used as they are, fused into the scorer (export/fuse.py).

The external models are built here: a small conv embedder exported by torch's legacy exporter at opset 13
(dynamic batch, and a copy with the batch fixed to 1), a beauty regressor written directly with onnx.helper
at opset 12, and graphs whose fixed batch cannot be made symbolic. The reference for the fused scorer is
computed independently: the bundle's synthesis in onnxruntime, the crop / channel order / mean-std in numpy,
the ORIGINAL external file in onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
import onnxruntime as ort  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from beautyrt.export.errors import CheckpointError, ParityError  # noqa: E402
from tests.export.test_loaders import save_rosinality_ckpt  # noqa: E402

ID_SPEC = "size=16,color=BGR,mean=127.5,std=127.5,scale=pixel"  # insightface-style convention
BEAUTY_SPEC = {"size": 32, "color_order": "RGB", "mean": [0.4, 0.5, 0.6], "std": 0.25}


def _sess(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class TinyEmbedder(torch.nn.Module):
    def __init__(self, size=16):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, 2, 1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * (size // 2) ** 2, 12)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.bn(self.conv(x))), 1))


def beauty_helper_model(path: Path, size: int = 32, fixed_batch=None) -> None:
    """[N,3,S,S] -> ReduceMean over H,W (opset 12: axes attribute) -> MatMul + Add -> [N,1]."""
    n = fixed_batch or "n"
    w = numpy_helper.from_array(np.array([[1.5], [-2.0], [0.7]], np.float32), "w")
    b = numpy_helper.from_array(np.array([5.0], np.float32), "b")
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["mw"]),
        helper.make_node("Add", ["mw", "b"], ["rating"]),
    ]
    g = helper.make_graph(
        nodes,
        "beauty",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [n, 3, size, size])],
        [helper.make_tensor_value_info("rating", TensorProto.FLOAT, [n, 1])],
        initializer=[w, b],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 12)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    d = tmp_path_factory.mktemp("ext")
    torch.manual_seed(0)
    net = TinyEmbedder().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    x = torch.zeros(1, 3, 16, 16)
    kw = dict(input_names=["input.1"], output_names=["fc1"], dynamo=False, opset_version=13)
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(net, (x,), str(d / "emb.onnx"), dynamic_axes={"input.1": {0: "n"}, "fc1": {0: "n"}}, **kw)
        torch.onnx.export(net, (x,), str(d / "emb_b1.onnx"), **kw)  # batch fixed to 1
    beauty_helper_model(d / "beauty.onnx")
    (d / "beauty.json").write_text(json.dumps(BEAUTY_SPEC))
    # fixed batch 1 with the batch built into a Reshape: cannot become symbolic
    wt = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3 * 16 * 16, 12)).astype(np.float32), "wt")
    shp = numpy_helper.from_array(np.array([1, -1], np.int64), "shp")
    g = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shp"], ["flat"]), helper.make_node("MatMul", ["flat", "wt"], ["e"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 12])],
        initializer=[wt, shp],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, str(d / "emb_reshape_b1.onnx"))
    # fixed batch 1 whose output mixes images of a batch (x - batch mean): runs at batch 3, but wrongly
    g = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["bm"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "bm"], ["c"]),
            helper.make_node("Add", ["c", "x"], ["y"]),
            helper.make_node("ReduceMean", ["y"], ["e"], axes=[3], keepdims=0),
            helper.make_node("Flatten", ["e"], ["f"], axis=1),
        ],
        "mix",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, [1, 48])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, str(d / "emb_mix_b1.onnx"))
    return d


@pytest.fixture(scope="module")
def ros32(tmp_path_factory):
    path = tmp_path_factory.mktemp("ros") / "550000.pt"
    save_rosinality_ckpt(path)
    return path


def _warp(img: np.ndarray, theta, size: int) -> np.ndarray:
    """torch's affine_grid + grid_sample (bilinear, border padding, align_corners=False) in numpy."""
    H, W = img.shape[-2:]
    t = (np.arange(size) * 2 + 1) / size - 1
    gx, gy = np.meshgrid(t, t)
    th = np.asarray(theta, np.float64).reshape(2, 3)
    ix = np.clip(((th[0, 0] * gx + th[0, 1] * gy + th[0, 2] + 1) * W - 1) / 2, 0, W - 1)
    iy = np.clip(((th[1, 0] * gx + th[1, 1] * gy + th[1, 2] + 1) * H - 1) / 2, 0, H - 1)
    x0, y0 = np.floor(ix).astype(int), np.floor(iy).astype(int)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    wx, wy = ix - x0, iy - y0
    return (
        img[:, :, y0, x0] * (1 - wx) * (1 - wy)
        + img[:, :, y0, x1] * wx * (1 - wy)
        + img[:, :, y1, x0] * (1 - wx) * wy
        + img[:, :, y1, x1] * wx * wy
    )


def _model_in(img: np.ndarray, size: int, order: str, mean, std, theta=None) -> np.ndarray:
    """[-1,1] generator images (N,3,R,R) -> an external model's input, in numpy: the alignment crop ``theta``
    (the model's template is small in the crop, so no pre-shrink) or an integer-factor box resize."""
    f = img.shape[-1] // size
    if theta is not None:
        x = _warp(img, theta, size)
    else:
        x = img.reshape(img.shape[0], 3, size, f, size, f).mean(axis=(3, 5)) if f > 1 else img
    x = np.clip(x, -1, 1) * 0.5 + 0.5
    if order == "BGR":
        x = x[:, ::-1]
    return (
        (x - np.asarray(mean, np.float32).reshape(1, 3, 1, 1)) / np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    ).astype(np.float32)


def test_cli_export_fused_external_identity_and_beauty_then_optimize(tmp_path, ext, ros32, cli, face_crop):
    from PIL import Image

    from beautyrt.runtime.api import Beautifier, Settings

    out = tmp_path / "bundle"
    r = cli(
        "export",
        "--stylegan",
        ros32,
        "--identity",
        ext / "emb.onnx",
        "--identity-spec",
        ID_SPEC + ",crop=arcface",
        "--beauty",
        ext / "beauty.onnx",
        "--beauty-spec",
        ext / "beauty.json",
        "--preset",
        "tiny",
        "--no-detector",
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    gen = man["generator"]
    R = gen["resolution"]
    sc, cs = man["models"]["scorer"], man["models"]["crop_scorer"]
    for m in (sc, cs):
        assert [o["name"] for o in m["outputs"]] == ["score", "embedding"] and m["outputs"][1]["shape"] == ["batch", 12]
        assert set(m["fused_external"]) == {"beauty", "identity"}
        assert (
            m["fused_external"]["identity"]["opset"] == "13 -> 18"
            and m["fused_external"]["beauty"]["opset"] == "12 -> 18"
        )
        assert m["parity"]["batches"] == [1, 3] and 0 <= m["parity"]["max_rel"] < 1e-4, m["parity"]
        assert "external ONNX" in m["parity"]["reference"]
    assert "synthesis" in sc["parity"]["reference"] and "synthesis" not in cs["parity"]["reference"]
    assert cs["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, R, R]}]
    assert cs["input_range"] == [-1.0, 1.0] and sc["score_resolution"] == R
    assert man["source"]["roles"]["identity"]["kind"] == "onnx" and "scorer_identity" not in man["source"]["roles"]
    theta = man["models"]["identity"]["normalisation"]["crop_from_generator"]

    def want(img):  # the ORIGINAL external files on the generator crops, crop / normalise in numpy
        x_id = _model_in(img, 16, "BGR", [0.5] * 3, [0.5] * 3, theta)
        e = np.concatenate(
            [_sess(ext / "emb.onnx").run(None, {"input.1": x_id[i : i + 1]})[0] for i in range(len(img))]
        )
        x_b = _model_in(img, 32, "RGB", BEAUTY_SPEC["mean"], [0.25] * 3)
        return _sess(ext / "beauty.onnx").run(None, {"data": x_b})[0][:, 0], e

    def close(got, ref):
        for g, w in zip(got, ref):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())

    # the scorer's outputs on the generated crops, and the crop_scorer's on those crops, == computed independently
    rng = np.random.default_rng(3)
    ws = (
        np.asarray(gen["w_avg"]) + np.asarray(gen["w_std"]) * rng.standard_normal((5, gen["num_ws"], gen["w_dim"]))
    ).astype(np.float32)
    img = _sess(out / "synthesis.onnx").run(None, {"ws": ws})[0]
    score, emb = _sess(out / "scorer.onnx").run(["score", "embedding"], {"ws": ws})
    ref = want(img)
    assert emb.shape == (5, 12) and score.shape == (5,)
    close((score, emb), ref)
    assert np.ptp(emb[:, 0]) > 1e-3 and np.ptp(score) > 1e-3  # the candidates differ: not trivially constant
    crop_sess = _sess(out / "crop_scorer.onnx")
    close(crop_sess.run(["score", "embedding"], {"image": img}), ref)
    close(crop_sess.run(["score", "embedding"], {"image": img}), (score, emb))
    # any crop in the generator's frame (a photo's plus an edit), values past [-1, 1] clamped; batch 2 and 1
    crops = np.clip(img[:2] + rng.normal(0, 0.4, (2, 3, R, R)), -1.3, 1.3).astype(np.float32)
    close(crop_sess.run(["score", "embedding"], {"image": crops}), want(crops))
    close(crop_sess.run(["score", "embedding"], {"image": crops[1:]}), want(crops[1:]))

    # the bundle's own identity role takes RGB (the runtime's convention); channels flipped inside
    ident = man["models"]["identity"]
    assert ident["inputs"][0]["name"] == "image" and ident["normalisation"]["color_order"] == "RGB"
    xr = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    got = _sess(out / "identity.onnx").run(["embedding"], {"image": xr})[0]
    want_id = np.concatenate(
        [_sess(ext / "emb.onnx").run(None, {"input.1": np.ascontiguousarray(xr[i : i + 1, ::-1])})[0] for i in range(3)]
    )
    np.testing.assert_allclose(got, want_id, rtol=1e-4, atol=1e-5)

    # the runtime scores the output through the crop_scorer (the standalone identity needs its own alignment
    # crop, so without that role it could only score the generated face)
    bf = Beautifier(out)
    try:
        assert "crop_scorer" in bf.engines and not bf.models.image_norms and bf.can_score_output
        assert bf.resolve(Settings()).score_on == "output"
    finally:
        bf.close()
    face = tmp_path / "face.png"
    Image.fromarray(face_crop).resize((64, 64)).save(face)
    r = cli(
        "optimize",
        face,
        "--aligned",
        "--bundle",
        out,
        "-g",
        "2",
        "-p",
        "4",
        "-o",
        tmp_path / "o.png",
        "--json",
        "-q",
        "--device",
        "cpu",
        block_torch=True,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["settings"]["score_on"] == "output"
    assert (tmp_path / "o.png").is_file() and res["score_after"] >= res["score_before"] - 1e-6


def test_fixed_batch_one_made_symbolic_identity_only(tmp_path, ext):
    from beautyrt.export.api import build_from_checkpoints
    from beautyrt.export.fuse import CropFront, fused_parity, write_fused_crop_scorer, write_fused_scorer

    ms = build_from_checkpoints(preset="tiny", identity=ext / "emb_b1.onnx", identity_spec=ID_SPEC + ",crop=arcface")
    assert ms.beauty is not None and ms.identity is None and set(ms.external) == {"identity"}
    assert "crop_from_generator" in ms.identity_norm and ms.external["identity"].ext.batch == 1
    G = ms.generator

    def make(b, g):
        return (torch.randn(b, G.num_ws, G.w_dim, generator=g),)

    path, info = write_fused_scorer(
        tmp_path, G.synthesis, 32, {"beauty": (ms.beauty, ms.beauty_norm)}, ms.external, make, 1e-3, (1, 3)
    )
    rec = info["fused_external"]["identity"]
    assert rec["batch"] == 1 and "made symbolic" in rec["batch_handling"] and info["parity"]["max_rel"] < 1e-4
    # the fused scorer runs any batch; each row is what it gives for that candidate alone
    ws = np.random.default_rng(0).standard_normal((5, G.num_ws, G.w_dim)).astype(np.float32)
    s = _sess(path)
    both = s.run(["embedding"], {"ws": ws})[0]
    one = np.concatenate([s.run(["embedding"], {"ws": ws[i : i + 1]})[0] for i in range(5)])
    assert both.shape == (5, 12)
    np.testing.assert_allclose(both, one, rtol=1e-5, atol=1e-6)

    # the crop_scorer: same torch beauty and fixed-batch external identity, on G(ws) == the scorer on ws
    R = G.img_resolution
    assert R == 32

    def crops(b, g):
        return (torch.rand(b, 3, R, R, generator=g) * 2 - 1,)

    cpath, cinfo = write_fused_crop_scorer(
        tmp_path, {"beauty": (ms.beauty, ms.beauty_norm)}, ms.external, crops, 1e-3, (1, 3)
    )
    assert (
        cpath.name == "crop_scorer.onnx" and cinfo["parity"]["batches"] == [1, 3] and cinfo["parity"]["max_rel"] < 1e-4
    )
    assert "made symbolic" in cinfo["fused_external"]["identity"]["batch_handling"]
    front = CropFront({"beauty": (ms.beauty, ms.beauty_norm)}, ms.external).eval()
    with pytest.raises(ParityError, match="crop_scorer.onnx"):
        fused_parity(front, ms.external, cpath, crops, 1e-12, (2,))
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(ws)).numpy()
    cs = _sess(cpath)
    for b in (5, 1):
        got = cs.run(["score", "embedding"], {"image": img[:b]})
        for g, w in zip(got, s.run(["score", "embedding"], {"ws": ws[:b]})):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())


@pytest.mark.parametrize(
    "model, why",
    [("emb_reshape_b1.onnx", "making it symbolic fails"), ("emb_mix_b1.onnx", "different results per image")],
)
def test_fixed_batch_that_cannot_be_symbolic_is_refused(ext, model, why):
    from beautyrt.export.api import build_from_checkpoints

    with pytest.raises(CheckpointError, match=why) as ei:
        build_from_checkpoints(preset="tiny", identity=ext / model, identity_spec=ID_SPEC)
    assert "fixed to 1" in str(ei.value) and "\n" not in str(ei.value)


def test_cli_refusals_are_one_line_and_write_nothing(tmp_path, ext, cli):
    cases = [
        (["--identity", ext / "emb.onnx", "--identity-spec", "size=24,color=BGR"], "spec declares size 24"),
        (["--identity", ext / "emb_reshape_b1.onnx", "--identity-spec", ID_SPEC], "batch is fixed to 1"),
    ]
    for args, msg in cases:
        out = tmp_path / "b"
        r = cli("export", "--preset", "tiny", *map(str, args), "--no-detector", "--out", out)
        assert r.returncode == 52, r.stderr
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("beautyrt: error")]
        assert len(lines) == 1 and msg in lines[0], r.stderr
        assert "Traceback" not in r.stderr and "cannot be fused" not in r.stderr
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b")]


def test_beauty_only_fused_scorer_and_parity_threshold(tmp_path, ext):
    """External beauty + torch identity; a too-tight tolerance raises ParityError for the fused scorer."""
    from beautyrt.export.fuse import FrontHalf, fused_parity, prepare_external, write_fused_scorer
    from beautyrt.export.loaders import load_checkpoint
    from beautyrt.export.nets.identity import IResNet
    from beautyrt.export.nets.stylegan2 import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, img_resolution=32, channel_base=512, channel_max=16, mapping_layers=1).eval()
    ident = IResNet(resolution=16, layers=(1,), widths=(8,), embedding_dim=8).eval()
    id_norm = {"size": 16, "mean": [0.5] * 3, "std": [0.5] * 3}
    prep = prepare_external(
        load_checkpoint(ext / "beauty.onnx", input_spec=ext / "beauty.json").external_onnx, "beauty"
    )
    assert prep.out_dim == 1 and prep.batch_note == "dynamic"

    def make(b, g):
        return (torch.randn(b, G.num_ws, G.w_dim, generator=g),)

    path, info = write_fused_scorer(
        tmp_path, G.synthesis, 32, {"identity": (ident, id_norm)}, {"beauty": prep}, make, 1e-3, (1, 3)
    )
    assert set(info["fused_external"]) == {"beauty"} and info["parity"]["max_rel"] < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["scorer.onnx"]  # the front half is not left behind
    ws = make(4, torch.Generator().manual_seed(5))[0]
    score, emb = _sess(path).run(["score", "embedding"], {"ws": ws.numpy()})
    with torch.no_grad():
        img = G.synthesis(ws)
        want_emb = ident((F.avg_pool2d(img, 2).clamp(-1, 1) * 0.5 + 0.5 - 0.5) / 0.5)  # resize, clamp, normalise
    want_score = _sess(ext / "beauty.onnx").run(
        None, {"data": _model_in(img.numpy(), 32, "RGB", BEAUTY_SPEC["mean"], [0.25] * 3)}
    )[0]
    np.testing.assert_allclose(score, want_score[:, 0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(emb, want_emb.numpy(), rtol=1e-3, atol=1e-4)
    front = FrontHalf(G.synthesis, 32, {"identity": (ident, id_norm)}, {"beauty": prep}).eval()
    assert fused_parity(front, {"beauty": prep}, path, make, 1e-3, (2,))["batches"] == [2]
    with pytest.raises(ParityError, match="scorer.onnx"):
        fused_parity(front, {"beauty": prep}, path, make, 1e-12, (1, 3))


def test_spec_output_crop_and_beauty_shape(tmp_path, ext):
    from beautyrt.export.fuse import prepare_external
    from beautyrt.export.loaders import load_checkpoint
    from beautyrt.export.loaders.onnx_model import parse_input_spec

    sp = parse_input_spec("size=112,crop=arcface,output=fc1")
    assert sp.output == "fc1" and sp.template[0] == pytest.approx((38.2946, 51.6963))
    assert parse_input_spec("size=56,crop=arcface").template[0] == pytest.approx((38.2946 / 2, 51.6963 / 2))
    assert parse_input_spec({"size": 8, "template": [[1, 2]] * 5}).template == ((1.0, 2.0),) * 5
    for bad, msg in (
        ("size=16,crop=square", "crop must be"),
        ({"size": 8, "template": [[1, 2]]}, "five"),
        ("size=x", "integer"),
    ):
        with pytest.raises(CheckpointError, match=msg):
            parse_input_spec(bad)
    with pytest.raises(CheckpointError, match="outputs are fc1"):
        load_checkpoint(ext / "emb.onnx", input_spec=ID_SPEC + ",output=nope")
    # an embedder given as the beauty model: one score per image is required
    with pytest.raises(CheckpointError, match=r"one score per image.*\[2, 12\]"):
        prepare_external(load_checkpoint(ext / "emb.onnx", input_spec=ID_SPEC).external_onnx, "beauty")


def _dlib_dat():
    from beautyrt.export.dlib_dat import DLIB_RESNET_FILE, packaged_models_dir

    models = packaged_models_dir()
    if models is None or not (models / DLIB_RESNET_FILE).is_file():
        pytest.skip("face-recognition-models is not installed")
    return models / DLIB_RESNET_FILE


def test_dlib_dat_through_load_checkpoint_equals_identity_dlib(tmp_path):
    dat = _dlib_dat()
    from beautyrt.export.api import build_from_checkpoints
    from beautyrt.export.identity_dlib import DLIB_IDENTITY_FLOOR
    from beautyrt.export.loaders import load_checkpoint

    ck = load_checkpoint(dat)
    assert ck.kind == "dlib-resnet" and ck.objective_defaults["identity_floor"] == DLIB_IDENTITY_FLOOR
    a = build_from_checkpoints(preset="tiny", identity=dat)
    b = build_from_checkpoints(preset="tiny", identity="dlib")
    assert a.objective_defaults == b.objective_defaults == ck.objective_defaults
    assert a.identity_norm == b.identity_norm and not a.external
    sa, sb = a.identity.state_dict(), b.identity.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # the preset path (what `beautyrt export --preset tiny --identity FILE.dat` takes) as well
    from beautyrt.export.bundle import build_preset
    from beautyrt.export.presets import get_preset

    p = build_preset(get_preset("tiny"), identity=str(dat))
    assert p.objective_defaults == b.objective_defaults and p.source["identity"] == "dlib"
    other = tmp_path / "other.dat"
    other.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(other)

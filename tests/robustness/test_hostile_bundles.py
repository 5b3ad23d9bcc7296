"""Classes 2 and 3, bundle trust and malformed manifests: every hostile bundle is refused with its typed error
(11 missing, 12 tampered/outside, 13 version, 14 schema -- naming the field), one line from the CLI, and
BEFORE any model is deserialised (onnxruntime's InferenceSession is made to fail if it is reached). Files are
opened only inside the bundle: symlinks out of it, FIFOs and devices are refused; ONNX external data is listed
with its sha256 and verified like the model; a model whose real graph disagrees with its entry is refused
naming both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from beautyrt.engines.errors import (
    BundleIntegrityError,
    BundleNotFoundError,
    BundleSchemaError,
    BundleVersionError,
)
from tests.conftest import edit_manifest
from tests.robustness.corpus import FAST, assert_one_line_error, cli_inproc, copy_bundle, crop_array, crop_png

onnx = pytest.importorskip("onnx")  # building the hostile models needs onnx (export extra)


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _set(path: list, value):
    def fn(m):
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return fn


def _manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def _rehash(b: Path, role: str) -> None:
    f = _manifest(b)["models"][role]["file"]
    edit_manifest(b, lambda m: m["models"][role].update(sha256=_sha(b / f)))


def _external(b: Path, role: str = "scorer", location: str = "scorer.data", listed: bool = True) -> Path:
    """Re-save ``role``'s model with its weights in an external-data file (as onnx does past 2 GB)."""
    f = b / _manifest(b)["models"][role]["file"]
    model = onnx.load(str(f))
    onnx.save(
        model, str(f), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=1024
    )
    _rehash(b, role)
    if listed:
        rec = {"file": location, "sha256": _sha(b / location), "bytes": (b / location).stat().st_size}
        edit_manifest(b, lambda m: m["models"][role].update(external_data=[rec]))
    return b / location


def _direction(b: Path, arr, name: str = "beauty_direction.npy", allow_pickle: bool = False) -> Path:
    p = b / name
    np.save(p, arr, allow_pickle=allow_pickle)
    entry = {"file": name, "sha256": _sha(p), "inputs": [], "outputs": [], "kind": "latent_direction"}
    edit_manifest(b, lambda m: m["models"].__setitem__("beauty_direction", entry))
    return p


def _outside(b: Path, name: str) -> Path:
    """Move a bundle file out of the bundle and leave a symlink to it (sha256 unchanged: only the link)."""
    out = b.parent / "outside"
    out.mkdir(exist_ok=True)
    dst = out / name
    shutil.move(str(b / name), dst)
    os.symlink(dst, b / name)
    return dst


# --- trust (files) -----------------------------------------------------------------------------------------
def t_model_symlink_out(b):
    _outside(b, "encoder.onnx")


def t_manifest_symlink_out(b):
    _outside(b, "manifest.json")


def t_model_symlink_dev_zero(b):
    (b / "scorer.onnx").unlink()
    os.symlink("/dev/zero", b / "scorer.onnx")


def t_model_is_fifo(b):
    (b / "scorer.onnx").unlink()
    os.mkfifo(b / "scorer.onnx")


def t_model_is_dir(b):
    (b / "scorer.onnx").unlink()
    (b / "scorer.onnx").mkdir()


def t_dir_symlink_out(b):
    """The model sits in a sub-directory that is a symlink to a directory outside the bundle."""
    out = b.parent / "outside_dir"
    out.mkdir()
    shutil.move(str(b / "encoder.onnx"), out / "encoder.onnx")
    os.symlink(out, b / "sub")
    edit_manifest(b, lambda m: m["models"]["encoder"].update(file="sub/encoder.onnx"))


def t_external_unlisted(b):
    _external(b, listed=False)


def t_external_tampered(b):
    data = _external(b)
    raw = bytearray(data.read_bytes())
    for i in range(0, len(raw), 97):  # flip bytes all through the weights
        raw[i] ^= 0xFF
    data.write_bytes(bytes(raw))


def t_external_symlink_out(b):
    _external(b)
    _outside(b, "scorer.data")


def t_external_missing(b):
    _external(b).unlink()


def t_external_listed_unused(b):
    (b / "extra.data").write_bytes(b"x" * 16)
    rec = {"file": "extra.data", "sha256": _sha(b / "extra.data")}
    edit_manifest(b, lambda m: m["models"]["encoder"].update(external_data=[rec]))


def t_external_location_climbs_out(b):
    """The model itself points its tensors at ../ (a file beside the bundle)."""
    f = b / "scorer.onnx"
    model = onnx.load(str(f))
    onnx.save(model, str(f), save_as_external_data=True, location="w.data", size_threshold=1024)
    shutil.move(str(b / "w.data"), b.parent / "w.data")
    model = onnx.load(str(f), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../w.data"
    onnx.save(model, str(f))
    _rehash(b, "scorer")


def t_direction_symlink_out(b):
    d = np.ones(_manifest(b)["generator"]["w_dim"], np.float32)
    _direction(b, d)
    _outside(b, "beauty_direction.npy")


def t_direction_pickled(b):
    _direction(b, np.array([{"x": 1}], dtype=object), allow_pickle=True)


def t_direction_huge(b):
    _direction(b, np.ones(1 << 19, np.float32))  # 2 MiB: refused by size before numpy reads it


def t_direction_wrong_shape(b):
    _direction(b, np.ones(3, np.float32))


def t_direction_nan(b):
    d = np.ones(_manifest(b)["generator"]["w_dim"], np.float32)
    d[0] = np.nan
    _direction(b, d)


def t_direction_strings(b):
    _direction(b, np.array(["a"] * _manifest(b)["generator"]["w_dim"]))


# --- malformed manifests -----------------------------------------------------------------------------------
def raw(text: str):
    def fn(b):
        (b / "manifest.json").write_text(text)

    return fn


def rawb(data: bytes):
    def fn(b):
        (b / "manifest.json").write_bytes(data)

    return fn


def m(fn):
    def build(b):
        edit_manifest(b, fn)

    return build


def s_nested_1e5(b):
    (b / "manifest.json").write_text('{"format": "beautyrt-bundle", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")


def s_nested_40(b):
    edit_manifest(b, lambda d: d.update(source=json.loads("[" * 40 + "]" * 40)))


def s_huge_manifest(b):
    edit_manifest(b, lambda d: d.update(source={"pad": "x" * (9 << 20)}))


def s_manifest_dir(b):
    (b / "manifest.json").unlink()
    (b / "manifest.json").mkdir()


def s_manifest_fifo(b):
    (b / "manifest.json").unlink()
    os.mkfifo(b / "manifest.json")


def s_fixed_batch_graph(b):
    """crop_scorer's ONNX input made a fixed batch of 1 (the manifest still says 'batch')."""
    f = b / "crop_scorer.onnx"
    model = onnx.load(str(f))
    d0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    d0.ClearField("dim_param")
    d0.dim_value = 1
    onnx.save(model, str(f))
    _rehash(b, "crop_scorer")


def s_synthesis_wrong_resolution(b):
    """The manifest claims 64 px everywhere; the synthesis graph renders 32 px."""

    def fn(d):
        d["generator"]["resolution"] = 64
        d["models"]["synthesis"]["outputs"][0]["shape"] = ["batch", 3, 64, 64]
        d["models"]["crop_scorer"]["inputs"][0]["shape"] = ["batch", 3, 64, 64]

    edit_manifest(b, fn)


def s_embedding_dim(b):
    def fn(d):
        for r in ("scorer", "crop_scorer"):
            d["models"][r]["outputs"][1]["shape"] = ["batch", 33]

    edit_manifest(b, fn)


def s_output_name(b):
    edit_manifest(b, lambda d: d["models"]["scorer"]["outputs"][0].update(name="beauty"))


def s_dtype_float16(b):
    edit_manifest(b, lambda d: d["models"]["synthesis"]["inputs"][0].update(dtype="float16"))


WD = "w_dim"
TRUST = {
    "model_symlink_out": (t_model_symlink_out, 12, r"encoder.onnx resolves to .*outside the bundle"),
    "manifest_symlink_out": (t_manifest_symlink_out, 12, r"manifest.json resolves to .*outside the bundle"),
    "model_symlink_dev_zero": (t_model_symlink_dev_zero, 12, r"outside the bundle"),
    "model_is_fifo": (t_model_is_fifo, 12, r"scorer.onnx \(scorer\): is a FIFO"),
    "model_is_directory": (t_model_is_dir, 12, r"scorer.onnx \(scorer\): is a directory"),
    "model_in_symlinked_dir_out": (t_dir_symlink_out, 12, r"sub/encoder.onnx resolves to .*outside"),
    "external_data_unlisted": (
        t_external_unlisted,
        12,
        r"keeps tensors in 'scorer.data', which the manifest does not list",
    ),
    "external_data_tampered": (
        t_external_tampered,
        12,
        r"scorer.data \(scorer external data\) does not match its sha256",
    ),
    "external_data_symlink_out": (t_external_symlink_out, 12, r"scorer.data resolves to .*outside"),
    "external_data_missing": (t_external_missing, 11, r"scorer.data .* is missing"),
    "external_data_listed_unused": (t_external_listed_unused, 14, r"models.encoder.external_data lists extra.data"),
    "external_location_climbs_out": (t_external_location_climbs_out, 12, r"keeps tensors in '../w.data'"),
    "direction_symlink_out": (t_direction_symlink_out, 12, r"beauty_direction.npy resolves to .*outside"),
    "direction_pickled_npy": (t_direction_pickled, 12, r"not a plain .npy array"),
    "direction_huge_npy": (t_direction_huge, 12, r"above the limit of 1,048,576 bytes"),
    "direction_wrong_shape": (t_direction_wrong_shape, 14, r"beauty_direction has shape \[3\]"),
    "direction_nan": (t_direction_nan, 14, r"finite and non-zero"),
    "direction_strings": (t_direction_strings, 12, r"not a plain .npy array of numbers"),
}
SCHEMA = {
    "nested_1e5": (s_nested_1e5, 14, r"nested too deeply"),
    "nested_40": (s_nested_40, 14, r"deeper than 32 levels"),
    "manifest_9MB": (s_huge_manifest, 14, r"larger than 8,388,608 bytes, refused before parsing"),
    "manifest_not_utf8": (rawb(b'{"format": "\xff\xfe"}'), 14, r"not valid JSON"),
    "manifest_is_directory": (s_manifest_dir, 14, r"manifest.json is a directory"),
    "manifest_is_fifo": (s_manifest_fifo, 14, r"manifest.json is a FIFO"),
    "manifest_a_list": (raw("[1, 2]"), 14, r"not a beautyrt bundle manifest"),
    "nan_literal": (raw('{"format": "beautyrt-bundle", "format_version": 1, "x": NaN}'), 14, r"NaN is not a number"),
    "format_version_string": (m(_set(["format_version"], "1")), 14, r"format_version"),
    "format_version_bool": (m(_set(["format_version"], True)), 14, r"format_version"),
    "format_version_newer": (m(_set(["format_version"], 2)), 13, r"newer beautyrt"),
    "models_a_list": (m(_set(["models"], [1, 2])), 14, r"manifest: models must be an object"),
    "models_empty": (m(_set(["models"], {})), 14, r"models must hold 1..64 roles"),
    "models_entry_string": (m(_set(["models", "scorer"], "scorer.onnx")), 14, r"models.scorer must be an object"),
    "role_name_escape": (
        m(lambda d: d["models"].__setitem__("\x1b[31mx", d["models"]["mapping"])),
        14,
        r"role named '\\x1b\[31mx'",
    ),
    "file_int": (m(_set(["models", "scorer", "file"], 7)), 14, r"models.scorer.file must be a non-empty string"),
    "file_absolute": (
        m(_set(["models", "scorer", "file"], "/etc/passwd")),
        14,
        r"models.scorer.file must be a name inside",
    ),
    "file_dotdot": (m(_set(["models", "scorer", "file"], "../scorer.onnx")), 14, r"must be a name inside the bundle"),
    "file_backslash": (m(_set(["models", "scorer", "file"], "..\\scorer.onnx")), 14, r"must be a name inside"),
    "sha256_short": (m(_set(["models", "scorer", "sha256"], "abc")), 14, r"models.scorer.sha256 must be a sha256"),
    "inputs_not_list": (
        m(_set(["models", "scorer", "inputs"], {"name": "ws"})),
        14,
        r"models.scorer.inputs must be a list",
    ),
    "dtype_unknown": (
        m(lambda d: d["models"]["scorer"]["inputs"][0].update(dtype="float128x")),
        14,
        r"models.scorer.inputs\[0\].dtype must be one of",
    ),
    "shape_negative": (
        m(lambda d: d["models"]["scorer"]["inputs"][0]["shape"].__setitem__(1, -3)),
        14,
        r"inputs\[0\].shape\[1\] must be an integer in 1",
    ),
    "shape_huge": (
        m(lambda d: d["models"]["scorer"]["inputs"][0]["shape"].__setitem__(1, 2**40)),
        14,
        r"shape\[1\] must be an integer",
    ),
    "shape_float": (
        m(lambda d: d["models"]["scorer"]["inputs"][0]["shape"].__setitem__(1, 8.0)),
        14,
        r"shape\[1\] must be an integer",
    ),
    "shape_bool": (m(lambda d: d["models"]["scorer"]["inputs"][0]["shape"].__setitem__(1, True)), 14, r"shape\[1\]"),
    "shape_rank_9": (
        m(lambda d: d["models"]["scorer"]["inputs"][0].update(shape=["batch"] + [1] * 8)),
        14,
        r"shape must be a list of 0..8",
    ),
    "tensor_named_twice": (
        m(lambda d: d["models"]["scorer"]["outputs"].append(dict(d["models"]["scorer"]["outputs"][0]))),
        14,
        r"must not name a tensor twice",
    ),
    "generator_missing": (m(lambda d: d.pop("generator")), 14, r"missing 'generator'"),
    "resolution_string": (
        m(_set(["generator", "resolution"], "32")),
        14,
        r"generator.resolution must be an integer in 4..4096",
    ),
    "resolution_negative": (m(_set(["generator", "resolution"], -32)), 14, r"generator.resolution"),
    "resolution_huge": (m(_set(["generator", "resolution"], 10**9)), 14, r"generator.resolution"),
    "num_ws_zero": (m(_set(["generator", "num_ws"], 0)), 14, r"generator.num_ws"),
    "w_avg_short": (
        m(lambda d: d["generator"].update(w_avg=d["generator"]["w_avg"][:-1])),
        14,
        r"generator.w_avg must be a list of",
    ),
    "w_avg_string_item": (
        m(lambda d: d["generator"]["w_avg"].__setitem__(3, "0.1")),
        14,
        r"generator.w_avg\[3\] must be a number",
    ),
    "w_std_zero": (
        m(lambda d: d["generator"]["w_std"].__setitem__(0, 0.0)),
        14,
        r"generator.w_std\[0\] must be a finite number in \(0",
    ),
    "w_std_huge": (m(lambda d: d["generator"]["w_std"].__setitem__(0, 1e300)), 14, r"generator.w_std\[0\]"),
    "groups_out_of_range": (
        m(_set(["generator", "groups", "coarse"], [0, 99])),
        14,
        r"generator.groups.coarse\[1\] must be an integer in 0..7",
    ),
    "groups_bool": (m(_set(["generator", "groups", "coarse"], [True])), 14, r"generator.groups.coarse\[0\]"),
    "groups_a_list": (m(_set(["generator", "groups"], [0, 1])), 14, r"generator.groups must be an object"),
    "encoder_mean_len2": (
        m(_set(["models", "encoder", "normalisation", "mean"], [0.5, 0.5])),
        14,
        r"models.encoder.normalisation.mean must be a list of 3",
    ),
    "encoder_std_zero": (
        m(_set(["models", "encoder", "normalisation", "std"], [0.5, 0.0, 0.5])),
        14,
        r"normalisation.std\[1\]",
    ),
    "encoder_size_string": (
        m(_set(["models", "encoder", "normalisation", "size"], "32")),
        14,
        r"normalisation.size must be an integer",
    ),
    "encoder_size_zero": (m(_set(["models", "encoder", "normalisation", "size"], 0)), 14, r"normalisation.size"),
    "encoder_size_not_input": (
        m(_set(["models", "encoder", "normalisation", "size"], 64)),
        14,
        r"models.encoder.inputs 'image' is float32 \['batch', 3, 32, 32\], expected float32 \[batch, 3, 64, 64\]",
    ),
    "encoder_norm_missing": (
        m(lambda d: d["models"]["encoder"].pop("normalisation")),
        14,
        r"encoder has no normalisation",
    ),
    "encoder_color_order": (
        m(_set(["models", "encoder", "normalisation", "color_order"], "XYZ")),
        14,
        r"color_order must be one of RGB, BGR",
    ),
    "sigma0_negative": (m(_set(["search_defaults"], {"sigma0": -1})), 14, r"search_defaults.sigma0"),
    "sigma0_string": (m(_set(["search_defaults"], {"sigma0": "x"})), 14, r"search_defaults.sigma0 must be a number"),
    "generations_zero": (m(_set(["search_defaults"], {"generations": 0})), 14, r"search_defaults.generations"),
    "generations_float": (m(_set(["search_defaults"], {"generations": 1.5})), 14, r"search_defaults.generations"),
    "search_defaults_list": (m(_set(["search_defaults"], [1])), 14, r"search_defaults must be an object"),
    "identity_floor_5": (
        m(_set(["objective_defaults"], {"identity_floor": 5})),
        14,
        r"objective_defaults.identity_floor",
    ),
    "identity_weight_string": (
        m(_set(["objective_defaults"], {"identity_weight": "x"})),
        14,
        r"objective_defaults.identity_weight",
    ),
    "crop_scorer_fixed_batch_manifest": (
        m(lambda d: d["models"]["crop_scorer"]["inputs"][0]["shape"].__setitem__(0, 1)),
        14,
        r"crop_scorer input 'image' has shape \[1, 3, 32, 32\]",
    ),
    "crop_scorer_fixed_batch_graph": (
        s_fixed_batch_graph,
        14,
        r"crop_scorer: the model's input 'image' is tensor\(float\) \[1, 3, 32, 32\] "
        r"but the manifest says float32 \['batch', 3, 32, 32\]",
    ),
    "synthesis_wrong_resolution": (
        s_synthesis_wrong_resolution,
        14,
        r"the model's output 'image' is tensor\(float\) \[.*32, 32\] "
        r"but the manifest says float32 \['batch', 3, 64, 64\]",
    ),
    "embedding_dim_vs_graph": (
        s_embedding_dim,
        14,
        r"output 'embedding' is tensor\(float\) \[.*32\] but the manifest says float32 \['batch', 33\]",
    ),
    "output_name_vs_graph": (s_output_name, 14, r"models.scorer.outputs lacks 'score'"),
    "dtype_vs_spec": (s_dtype_float16, 14, r"models.synthesis.inputs 'ws' is float16"),
    "trt_file_dotdot": (
        m(_set(["models", "scorer", "trt"], {"file": "../x.plan", "sha256": "0" * 64})),
        14,
        r"models.scorer.trt.file must be a name inside",
    ),
}
CASES = {**TRUST, **SCHEMA}


@pytest.fixture()
def no_model_loads(monkeypatch):
    """onnxruntime must not be reached: every refusal here happens before any model is deserialised."""
    import onnxruntime

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bundle was refused")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)


GRAPH_CASES = {"crop_scorer_fixed_batch_graph", "synthesis_wrong_resolution", "embedding_dim_vs_graph"}
EXC = {11: BundleNotFoundError, 12: BundleIntegrityError, 13: BundleVersionError, 14: BundleSchemaError}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_bundle_cli(case, tiny_bundle, tmp_path):
    build, code, pattern = CASES[case]
    b = copy_bundle(tiny_bundle, tmp_path)
    build(b)
    photo = crop_png(tmp_path, "photo.png")
    o = tmp_path / "out" / "o.png"
    o.parent.mkdir()
    rc, out, err = cli_inproc("optimize", photo, "--aligned", "--bundle", b, "-o", o, *FAST)
    assert_one_line_error(rc, err, code, pattern, out)
    assert not any(o.parent.iterdir())


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_bundle_api(case, tiny_bundle, tmp_path, request):
    from beautyrt.runtime.api import Beautifier, Settings

    build, code, pattern = CASES[case]
    b = copy_bundle(tiny_bundle, tmp_path)
    build(b)
    if case not in GRAPH_CASES:  # these are refused by onnxruntime's view of the graph, right after it loads
        request.getfixturevalue("no_model_loads")
    with pytest.raises(EXC[code], match=pattern) as ei:
        with Beautifier(b, device="cpu") as bf:
            bf.optimize(crop_array(), Settings(generations=1, popsize=4), aligned=True)
    assert ei.value.exit_code == code and "\n" not in str(ei.value)


def test_external_data_bundle_runs_and_is_hashed(tiny_bundle, tmp_path):
    """A bundle whose scorer keeps its weights in an external-data file (listed with its sha256) loads and
    runs; the bundle hash covers that file (a different data file means a different manifest, so hash)."""
    from beautyrt.runtime.api import Beautifier, Settings

    b = copy_bundle(tiny_bundle, tmp_path)
    _external(b)
    with Beautifier(b, device="cpu") as bf:
        r = bf.optimize(crop_array(), Settings(generations=1, popsize=4, score_on="generated"), aligned=True)
        h = bf.bundle_hash
    assert np.isfinite(r.score_after)
    with Beautifier(tiny_bundle, device="cpu") as bf:
        assert bf.bundle_hash != h


def test_exporter_records_external_data(tmp_path):
    """export.bundle.external_data_records lists what a model refers to, with sha256 (what the loader wants)."""
    from onnx import TensorProto, helper, numpy_helper

    from beautyrt.export.bundle import external_data_records

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w],
    )
    onnx.save(
        helper.make_model(g), str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.bin", size_threshold=0
    )
    recs = external_data_records(tmp_path, "m.onnx")
    assert recs == [{"file": "m.bin", "sha256": _sha(tmp_path / "m.bin"), "bytes": (tmp_path / "m.bin").stat().st_size}]
    onnx.save(helper.make_model(g), str(tmp_path / "inline.onnx"))
    assert external_data_records(tmp_path, "inline.onnx") == []


def test_engine_outputs_checked_against_the_manifest():
    """An engine whose model returns another shape than its manifest entry says: exit 14 naming both."""
    from beautyrt.engines.base import Engine, TensorSpec

    class Liar(Engine):
        name = "synthesis"
        inputs = (TensorSpec("ws", "float32", ("batch", 2, 4)),)
        outputs = (TensorSpec("image", "float32", ("batch", 3, 8, 8)),)

        def _run(self, feeds):
            return {"image": np.zeros((1, 3, 16, 16), np.float32)}  # wrong batch and resolution

    with pytest.raises(
        BundleSchemaError,
        match=r"output 'image' came back as float32 \[1, 3, 16, 16\] "
        r"but the manifest says float32 \['batch', 3, 8, 8\] with batch=3",
    ):
        Liar().run({"ws": np.zeros((3, 2, 4), np.float32)})


def test_detector_specs_checked(tiny_bundle_with_detector, tmp_path, no_model_loads):
    from beautyrt.runtime.api import Beautifier

    for fn, pattern in (
        (
            lambda d: d["models"]["detector_rnet"]["outputs"][0].update(shape=["batch", 5]),
            r"models.detector_rnet.outputs 'reg'",
        ),
        (
            lambda d: d["models"]["detector_pnet"]["normalisation"].update(mean=["x", 1, 2]),
            r"detector_pnet.normalisation.mean\[0\]",
        ),
        (
            lambda d: d["models"]["detector_onet"]["inputs"][0].update(shape=["batch", 3, 24, 24]),
            r"detector_onet.inputs 'image'",
        ),
    ):
        b = copy_bundle(tiny_bundle_with_detector, tmp_path, f"b{len(list(tmp_path.iterdir()))}")
        edit_manifest(b, fn)
        with pytest.raises(BundleSchemaError, match=pattern):
            Beautifier(b, device="cpu")

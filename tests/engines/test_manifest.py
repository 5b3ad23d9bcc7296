"""Bundle validation happens before any model is loaded, and every refusal is a clear typed error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from beautyrt.engines import load_manifest, open_engine
from beautyrt.engines.errors import (
    BundleIntegrityError,
    BundleNotFoundError,
    BundleSchemaError,
    BundleVersionError,
    EngineInputError,
)
from tests.conftest import edit_manifest


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_valid_bundle_loads(tiny_bundle):
    m = load_manifest(tiny_bundle)
    assert {"encoder", "scorer", "synthesis", "beauty", "identity", "mapping"} <= set(m.models)
    assert len(m.bundle_hash) == 64
    for role, entry in m.models.items():
        par = entry.extra["parity"]
        assert par["max_rel"] <= par["tolerance"], role


def test_tampered_file_refused(bundle_copy):
    p = bundle_copy / "scorer.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="scorer.onnx.*sha256.*beautyrt export"):
        load_manifest(bundle_copy)


def test_truncated_onnx_refused(bundle_copy):
    p = bundle_copy / "encoder.onnx"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(BundleIntegrityError):
        load_manifest(bundle_copy)
    # re-hashed to match, the truncated protobuf is still refused before onnxruntime sees it
    from beautyrt.engines.manifest import sha256_file

    edit_manifest(bundle_copy, lambda m: m["models"]["encoder"].update(sha256=sha256_file(p)))
    with pytest.raises(BundleIntegrityError, match="encoder.onnx .* not a well-formed ONNX model"):
        load_manifest(bundle_copy)


def test_onnxruntime_refusal_is_typed(bundle_copy):
    """A well-formed ONNX file that onnxruntime cannot load (an op that does not exist) is a typed error."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from beautyrt.engines.manifest import sha256_file

    g = helper.make_graph(
        [helper.make_node("NoSuchOp", ["image"], ["ws"], domain="nowhere")],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("ws", TensorProto.FLOAT, ["batch", 8, 32])],
    )
    p = bundle_copy / "encoder.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("nowhere", 1)]), p)
    edit_manifest(bundle_copy, lambda m: m["models"]["encoder"].update(sha256=sha256_file(p)))
    m = load_manifest(bundle_copy)
    with pytest.raises(BundleIntegrityError, match="onnxruntime cannot load"):
        open_engine(m, "encoder")


def test_missing_file_refused(bundle_copy):
    (bundle_copy / "synthesis.onnx").unlink()
    with pytest.raises(BundleNotFoundError, match="synthesis.onnx"):
        load_manifest(bundle_copy)


def test_missing_bundle_and_manifest(tmp_path):
    with pytest.raises(BundleNotFoundError, match="beautyrt export"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(BundleNotFoundError, match="not a beautyrt bundle"):
        load_manifest(tmp_path)


def test_newer_format_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(format_version=99, beautyrt_version="9.0"))
    with pytest.raises(BundleVersionError, match="newer beautyrt"):
        load_manifest(bundle_copy)


def test_bad_json_and_schema(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleSchemaError):
        load_manifest(bundle_copy)
    (bundle_copy / "manifest.json").write_text(json.dumps({"format": "beautyrt-bundle", "format_version": 1}))
    with pytest.raises(BundleSchemaError, match="models"):
        load_manifest(bundle_copy)


def test_path_escape_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["models"]["scorer"].update(file="../scorer.onnx"))
    with pytest.raises(BundleSchemaError):
        load_manifest(bundle_copy)


def test_engine_checks_feeds(tiny_bundle):
    m = load_manifest(tiny_bundle)
    e = open_engine(m, "scorer", device="cpu")
    g = m.data["generator"]  # carried through, not interpreted, by engines/
    ok = np.zeros((3, g["num_ws"], g["w_dim"]), np.float32)
    out = e.run({"ws": ok})
    assert out["score"].shape == (3,) and out["embedding"].shape[0] == 3
    with pytest.raises(EngineInputError, match="dim 1"):
        e.run({"ws": np.zeros((3, g["num_ws"] + 1, g["w_dim"]), np.float32)})
    with pytest.raises(EngineInputError, match="float32"):
        e.run({"ws": ok.astype(np.float64)})
    with pytest.raises(EngineInputError, match="expected inputs"):
        e.run({"latent": ok})


def test_wrong_role_shapes_refused(bundle_copy):
    # the manifest claims a different input name than the ONNX file has: exit 14 naming both
    edit_manifest(bundle_copy, lambda m: m["models"]["scorer"]["inputs"][0].update(name="latents"))
    m = load_manifest(bundle_copy)
    with pytest.raises(BundleSchemaError, match=r"model's inputs \['ws'\] differ from the manifest's \['latents'\]"):
        open_engine(m, "scorer")

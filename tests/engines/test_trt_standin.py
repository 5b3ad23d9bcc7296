"""The native TensorRT route end to end -- ``export --trt`` plans, ``--backend tensorrt`` per role, padding and
chunking to the plans' profiles, device buffers and copies -- against ``trt_standin`` (a STAND-IN for TensorRT
and cuda-python that runs the ONNX model on the CPU; see its docstring). This checks beautyrt's logic, not
TensorRT: the real-GPU tests are tests/export/test_trt.py's ``trt``/``gpu`` ones, which run where TensorRT exists."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from beautyrt.engines import load_manifest, open_engine, open_engines
from beautyrt.engines.backends import plan_backends
from beautyrt.engines.errors import BundleSchemaError, BundleVersionError
from tests.engines import trt_standin

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture()
def standin(monkeypatch):
    return trt_standin.install(monkeypatch)


@pytest.fixture()
def trt_bundle(tiny_bundle_with_detector, tmp_path, standin):
    """The tiny bundle (with the detector) plus stand-in plans: scorers static at batch 4, the rest 1..3."""
    from beautyrt.export.trt_build import build_engines

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle_with_detector, b)
    recs = build_engines(b, scorer_batch=4, max_batch=3, timing_cache=tmp_path / "tc")
    assert (tmp_path / "tc").read_bytes() == b"standin-timing-cache"
    assert set(recs) == {"scorer", "crop_scorer", "synthesis", "encoder", "mapping", "beauty", "identity"}
    return b


def test_roles_without_a_plan_run_on_onnxruntime(trt_bundle, standin):
    m = load_manifest(trt_bundle)
    plan = plan_backends(m, sorted(m.models), "tensorrt")
    assert {r for r, b in plan.items() if b == "tensorrt"} == {
        "scorer",
        "crop_scorer",
        "synthesis",
        "encoder",
        "mapping",
        "beauty",
        "identity",
    }
    assert all(plan[r] == "ort" for r in ("detector_pnet", "detector_rnet", "detector_onet"))
    assert plan_backends(m, sorted(m.models), "auto") == plan  # auto: TensorRT where a plan exists
    assert set(plan_backends(m, sorted(m.models), "ort").values()) == {"ort"}


def test_tensorrt_engines_match_onnxruntime_with_padding_and_chunking(trt_bundle, standin):
    m = load_manifest(trt_bundle)
    g = m.data["generator"]
    rng = np.random.default_rng(0)
    with open_engine(m, "scorer", backend="tensorrt") as t, open_engine(m, "scorer", backend="ort", device="cpu") as o:
        assert type(t).__name__ == "TrtEngine" and (t._min_batch, t._max_batch) == (4, 4)
        for n in (1, 4, 9):  # below the static profile: padded; above: chunked
            ws = rng.standard_normal((n, g["num_ws"], g["w_dim"])).astype(np.float32)
            got, want = t.run({"ws": ws}), o.run({"ws": ws})
            for k in want:
                assert got[k].shape == want[k].shape
                np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)
        copies = dict(standin.mem.copies)
    assert copies["h2d"] == 1 + 1 + 3 and copies["d2h"] == 2 * (1 + 1 + 3)  # one launch per profile-sized batch
    assert not standin.mem.buffers and not standin.mem.streams  # close freed every buffer and the stream
    with open_engine(m, "synthesis", backend="tensorrt") as t:  # dynamic 1..3: 5 runs as 3 + 2
        assert (t._min_batch, t._max_batch) == (1, 3)
        ws = rng.standard_normal((5, g["num_ws"], g["w_dim"])).astype(np.float32)
        out = t.run({"ws": ws})["image"]
        with open_engine(m, "synthesis", backend="ort", device="cpu") as o:
            np.testing.assert_allclose(out, o.run({"ws": ws})["image"], rtol=1e-4, atol=1e-5)


def test_beautifier_on_tensorrt_gives_the_onnxruntime_result(trt_bundle, standin, example_photo):
    from beautyrt.runtime.api import Beautifier, Settings

    s = Settings(generations=3, popsize=4, seed=2)
    with Beautifier(trt_bundle, backend="tensorrt") as b:
        kinds = {r: type(e).__name__ for r, e in b.engines.items()}
        assert kinds["crop_scorer"] == kinds["synthesis"] == kinds["encoder"] == "TrtEngine"
        assert kinds["detector_pnet"] == "OrtEngine"
        rt = b.optimize(example_photo, s)
    with Beautifier(trt_bundle, backend="ort", device="cpu") as b:
        ro = b.optimize(example_photo, s)
    assert rt.score_before == pytest.approx(ro.score_before, abs=1e-4)
    assert rt.score_after == pytest.approx(ro.score_after, abs=1e-4)
    assert np.abs(rt.image.astype(int) - ro.image.astype(int)).max() <= 2


def test_foreign_plans_fall_back_under_auto_and_are_refused_under_tensorrt(trt_bundle, standin, caplog):
    data = json.loads((trt_bundle / "manifest.json").read_text())
    data["models"]["scorer"]["trt"]["gpu"] = "NVIDIA A100-SXM4-80GB"
    (trt_bundle / "manifest.json").write_text(json.dumps(data))
    m = load_manifest(trt_bundle)
    with pytest.raises(BundleVersionError, match="A100"):
        open_engines(m, ["scorer"], backend="tensorrt")
    with caplog.at_level("WARNING", logger="beautyrt"):
        e = open_engines(m, ["scorer", "synthesis"], backend="auto")
    assert type(e["scorer"]).__name__ == "OrtEngine" and type(e["synthesis"]).__name__ == "TrtEngine"
    assert "running it on onnxruntime" in caplog.text
    for x in e.values():
        x.close()


def test_tensorrt_without_plans_is_refused(tiny_bundle, standin):
    with pytest.raises(BundleSchemaError, match="export --trt"):
        open_engines(load_manifest(tiny_bundle), ["scorer", "synthesis"], backend="tensorrt")


def test_standin_catches_misuse(standin):
    """The stand-in is strict where hardware is: it must be able to fail the backend."""
    cu = standin.cudart
    _, s = cu.cudaStreamCreate()
    _, p = cu.cudaMalloc(8)
    src = np.zeros(4, np.float32)
    with pytest.raises(trt_standin.StandinError, match="16 bytes into a 8-byte"):
        cu.cudaMemcpyAsync(p, src.ctypes.data, 16, cu.cudaMemcpyKind.cudaMemcpyHostToDevice, s)
    cu.cudaFree(p)
    with pytest.raises(trt_standin.StandinError, match="freed"):
        cu.cudaMemcpyAsync(p, src.ctypes.data, 8, cu.cudaMemcpyKind.cudaMemcpyHostToDevice, s)
    with pytest.raises(trt_standin.StandinError, match="not allocated"):
        cu.cudaFree(p)

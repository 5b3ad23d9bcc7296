"""TensorRT: what can be checked without TensorRT (profiles, refusal of foreign plans before any
deserialisation, the missing-extra message), and a GPU build/run test that skips when TensorRT is absent."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from beautyrt.engines import load_manifest, open_engine
from beautyrt.engines.errors import BundleVersionError, MissingDependencyError
from beautyrt.engines.manifest import MANIFEST_NAME, sha256_file
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
TRT_SKIP = "TensorRT is not installed: pip install 'beautyrt[trt]'"


def _spec(name, shape):
    return {"name": name, "dtype": "float32", "shape": shape}


def write_fake_bundle(d: Path) -> Path:
    """A manifest in the real schema (tiny preset's shapes) with placeholder model files: enough for
    manifest validation, profile computation and the refusal logic, in milliseconds."""
    from beautyrt.engines.manifest import FORMAT, FORMAT_VERSION

    d.mkdir(parents=True)
    nw, wd, r = 8, 32, 32
    img = lambda n: [_spec("image", ["batch", 3, n, n])]  # noqa: E731
    roles = {
        "synthesis": ([_spec("ws", ["batch", nw, wd])], [_spec("image", ["batch", 3, r, r])]),
        "mapping": ([_spec("z", ["batch", 32])], [_spec("ws", ["batch", nw, wd])]),
        "encoder": (img(32), [_spec("ws", ["batch", nw, wd])]),
        "beauty": (img(32), [_spec("score", ["batch"])]),
        "identity": (img(32), [_spec("embedding", ["batch", 32])]),
        "scorer": ([_spec("ws", ["batch", nw, wd])], [_spec("score", ["batch"]), _spec("embedding", ["batch", 32])]),
        "crop_scorer": (img(r), [_spec("score", ["batch"]), _spec("embedding", ["batch", 32])]),
    }
    models = {}
    for role, (ins, outs) in roles.items():
        f = d / f"{role}.onnx"
        name = f"placeholder {role}".encode()  # a ModelProto whose graph holds only a name: the loader reads
        f.write_bytes(bytes([0x3A, len(name) + 2, 0x12, len(name)]) + name)  # ONNX headers (external data)
        models[role] = {"file": f.name, "sha256": sha256_file(f), "inputs": ins, "outputs": outs}
    man = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generator": {
            "resolution": r,
            "num_ws": nw,
            "w_dim": wd,
            "w_avg": [0.0] * wd,
            "w_std": [1.0] * wd,
            "groups": {},
        },
        "models": models,
    }
    (d / MANIFEST_NAME).write_text(json.dumps(man))
    return d


@pytest.fixture()
def bundle(tmp_path):
    return write_fake_bundle(tmp_path / "b")


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory):
    pytest.importorskip("torch")
    from beautyrt.export.api import export_preset

    return export_preset("tiny", tmp_path_factory.mktemp("trt") / "b", detector=False)


def test_profiles_static_scorer_dynamic_rest(bundle):
    from beautyrt.export.trt_build import plan_profiles

    models = json.loads((bundle / MANIFEST_NAME).read_text())["models"]
    prof = plan_profiles(models, scorer_batch=24, max_batch=6)
    assert prof["scorer"]["ws"] == {"min": [24, 8, 32], "opt": [24, 8, 32], "max": [24, 8, 32]}
    assert prof["synthesis"]["ws"] == {"min": [1, 8, 32], "opt": [1, 8, 32], "max": [6, 8, 32]}
    assert prof["encoder"]["image"]["max"] == [6, 3, 32, 32]
    assert prof["crop_scorer"]["image"] == {"min": [24, 3, 32, 32], "opt": [24, 3, 32, 32], "max": [24, 3, 32, 32]}
    assert set(prof) == {"scorer", "crop_scorer", "synthesis", "encoder", "mapping", "beauty", "identity"}


def _fake_plan(bundle_dir: Path, role: str, trt_version: str, gpu="NVIDIA H100 80GB HBM3", cc="9.0") -> None:
    plan = bundle_dir / f"{role}.plan"
    plan.write_bytes(b"not a real plan: must never be deserialised")
    data = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    data["models"][role]["trt"] = {
        "file": plan.name,
        "sha256": sha256_file(plan),
        "tensorrt": trt_version,
        "gpu": gpu,
        "compute_capability": cc,
        "profile": {},
        "fp16": False,
    }
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(data))


def test_foreign_plan_refused_before_deserialising(bundle, monkeypatch):
    import beautyrt.engines.backends.trt as T

    _fake_plan(bundle, "scorer", "8.6.1")
    man = load_manifest(bundle)
    monkeypatch.setattr(T, "installed_tensorrt_version", lambda: "10.3.0")
    monkeypatch.setattr(T, "gpu_info", lambda d=0: {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    had = "tensorrt" in sys.modules
    with pytest.raises(BundleVersionError, match=r"TensorRT 8\.6\.1.*10\.3\.0.*export --trt"):
        open_engine(man, "scorer", backend="tensorrt")
    assert ("tensorrt" in sys.modules) == had  # refused without importing tensorrt
    # same TensorRT, another GPU
    _fake_plan(bundle, "scorer", "10.3.0", gpu="NVIDIA A100-SXM4-80GB", cc="8.0")
    with pytest.raises(BundleVersionError, match=r"A100.*sm 8\.0.*H100.*sm 9\.0"):
        open_engine(load_manifest(bundle), "scorer", backend="tensorrt")
    assert ("tensorrt" in sys.modules) == had


def test_plan_needs_tensorrt_installed(bundle, monkeypatch):
    import beautyrt.engines.backends.trt as T

    _fake_plan(bundle, "synthesis", "10.3.0")
    monkeypatch.setattr(T, "installed_tensorrt_version", lambda: None)
    with pytest.raises(MissingDependencyError, match=r"beautyrt\[trt\]"):
        open_engine(load_manifest(bundle), "synthesis", backend="tensorrt")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed: the missing-extra path cannot be exercised")
def test_cli_export_trt_without_extra(tmp_path):
    r = run_cli("export", "--trt", "--no-detector", "--out", str(tmp_path / "b"), timeout=120, cwd=REPO)
    assert r.returncode == MissingDependencyError.exit_code
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'beautyrt[trt]'" in lines[0], r.stderr
    assert not (tmp_path / "b").exists()  # failed before exporting anything


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason=TRT_SKIP)
def test_build_and_run_trt(real_bundle, tmp_path):
    import shutil

    from beautyrt.export.trt_build import build_engines

    b = tmp_path / "b"
    shutil.copytree(real_bundle, b)
    recs = build_engines(b, scorer_batch=4, max_batch=4, roles=("scorer", "synthesis"), timing_cache=tmp_path / "tc")
    assert (tmp_path / "tc").is_file() and recs["scorer"]["profile"]["ws"]["min"][0] == 4
    man = load_manifest(b)
    ws = np.random.default_rng(0).standard_normal((4, 8, 32)).astype(np.float32)
    with open_engine(man, "scorer", backend="tensorrt") as e, open_engine(man, "scorer", device="cpu") as ref:
        got, want = e.run({"ws": ws}), ref.run({"ws": ws})
        for k in want:
            assert np.abs(got[k] - want[k]).max() <= 1e-3 * max(1.0, np.abs(want[k]).max())
        # a batch below the static profile is padded to it, one above is chunked: same rows as onnxruntime
        for n in (2, 9):
            w = np.random.default_rng(n).standard_normal((n, 8, 32)).astype(np.float32)
            got, want = e.run({"ws": w}), ref.run({"ws": w})
            for k in want:
                assert got[k].shape == want[k].shape
                assert np.abs(got[k] - want[k]).max() <= 1e-3 * max(1.0, np.abs(want[k]).max())

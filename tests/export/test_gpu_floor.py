"""tests/bench/gpu_floor.py, the GPU floor of the torch eager reference: its logic on the CPU (tiny preset),
its run on CUDA where a GPU exists."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "bench" / "gpu_floor.py"


def _floor():
    spec = importlib.util.spec_from_file_location("beautyrt_gpu_floor", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_floor_scores_the_presets_networks_and_is_reproducible():
    floor = _floor()
    a = floor.run_floor("tiny", "cpu", popsize=4, generations=3, seed=0)
    b = floor.run_floor("tiny", "cpu", popsize=4, generations=3, seed=0)
    c = floor.run_floor("tiny", "cpu", popsize=4, generations=3, seed=1)
    assert a["evaluations"] == 12 and len(a["best_history"]) == 3
    assert a["score_after"] == b["score_after"] and a["best_history"] == b["best_history"]
    assert c["score_before"] != a["score_before"]  # another seed: another preset network
    # the start score is the preset's own fused scorer on its mean face, computed here independently
    from beautyrt.export.bundle import build_preset
    from beautyrt.export.nets.scorer import Scorer
    from beautyrt.export.presets import get_preset

    ms = build_preset(get_preset("tiny"), seed=0)
    G = ms.generator
    sc = Scorer(G.synthesis, ms.beauty, ms.beauty_norm, ms.identity, ms.identity_norm, G.img_resolution).eval()
    w = torch.from_numpy(np.broadcast_to(np.asarray(ms.w_avg, np.float32), (1, G.num_ws, G.w_dim)).copy())
    with torch.no_grad():
        s0 = float(sc(w)[0][0])
    assert abs(a["score_before"] - s0) < 1e-5
    assert a["score_after"] >= a["score_before"] and 0.6 <= a["identity"] <= 1.0 + 1e-6
    assert a["candidates_per_s"] > 0 and 0 < a["score_call_fraction"] <= 1


def test_floor_runs_from_the_source_tree_without_the_package(tmp_path):
    """On a bare GPU machine beautyrt is not installed: the script maps beautyrt.* onto this checkout."""
    out = tmp_path / "floor.json"
    probe = (
        "import importlib.util, runpy, sys\n"
        "orig = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n == 'beautyrt' else orig(n, *a)\n"
        "sys.argv = ['gpu_floor', '--preset', 'tiny', '--device', 'cpu', '-p', '2', '-g', '1', "
        f"'--json', {str(out)!r}]\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "print('EXPORT_FROM', sys.modules['beautyrt.export'].__file__)\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"EXPORT_FROM {REPO / 'export' / '__init__.py'}" in r.stdout
    assert json.loads(out.read_text())["evaluations"] == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_floor_on_cuda():
    res = _floor().run_floor("tiny", "cuda", popsize=4, generations=2, seed=0)
    assert res["device"].startswith("cuda") and res["peak_device_memory_bytes"] > 0

"""The GPU floor: the torch eager reference of a preset's search loop on a CUDA device, one short run.

What a researcher reproducing arXiv 2501.00811 would run on a GPU: the preset's networks (random weights,
the same ``build_preset(preset, seed)`` as ``beautyrt export --preset``) in torch eager, fp32, the fused
scorer (synthesis -> beauty + identity) called once per generation on all λ candidates, ranked by the runtime's
own CMA-ES adapter and objective (numpy on λ scores), starting at the mean face (w_avg). Every generation is
timed with the device synchronised; a warm-up generation (cuDNN algorithm choice, allocator growth) is run
first and not counted. Reported: the GPU's name, per-generation p50/p90, candidates/s, the score call's
share of a generation, peak device memory, torch/CUDA versions and whether TF32 was allowed.

This is the number future GPU engines (onnxruntime CUDA, TensorRT) are compared with. It runs on any torch
device, so its logic is tested on the CPU with the tiny preset (tests/export/test_gpu_floor.py).

    python tests/bench/gpu_floor.py --preset stylegan2-1024 --device cuda -p 16 -g 20 --json OUT.json

On a machine without beautyrt installed the script imports it from this source tree (it needs torch,
numpy and cma; cma is pure Python: ``pip download cma`` gives a wheel that travels).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def _import_beautyrt_from_source() -> None:
    """Make ``beautyrt.<part>`` importable from this checkout when the package is not installed (a bare GPU
    machine): the same mapping as pyproject's package-dir (beautyrt.export -> export/, ...)."""
    if importlib.util.find_spec("beautyrt") is not None:
        return
    import types

    root = types.ModuleType("beautyrt")
    root.__path__ = []  # a namespace: only the parts below
    sys.modules["beautyrt"] = root
    for part in ("engines", "runtime", "export"):
        spec = importlib.util.spec_from_file_location(
            f"beautyrt.{part}", REPO / part / "__init__.py", submodule_search_locations=[str(REPO / part)]
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"beautyrt.{part}"] = mod
        spec.loader.exec_module(mod)
        setattr(root, part, mod)


def run_floor(
    preset: str = "stylegan2-1024",
    device: str = "cuda",
    popsize: int = 16,
    generations: int = 20,
    seed: int = 0,
    sigma0: float = 0.5,
    tf32: bool = False,
) -> dict:
    import torch

    _import_beautyrt_from_source()
    from beautyrt.export.bundle import build_preset
    from beautyrt.export.nets.scorer import Scorer
    from beautyrt.export.nets.stylegan2 import layer_groups
    from beautyrt.export.presets import get_preset
    from beautyrt.runtime.objective import LatentSpace, ObjectiveWeights, cosine_to, objective
    from beautyrt.runtime.strategies.cma import CMAStrategy

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_floor: --device cuda but torch sees no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    t0 = time.perf_counter()
    pre = get_preset(preset)
    ms = build_preset(pre, seed=seed)
    G = ms.generator
    score_res = ms.score_resolution or G.img_resolution
    scorer = Scorer(G.synthesis, ms.beauty, ms.beauty_norm, ms.identity, ms.identity_norm, score_res).eval().to(dev)
    w_avg = np.asarray(ms.w_avg if ms.w_avg is not None else G.mapping.w_avg.numpy(), np.float32)
    w_std = np.asarray(ms.w_std if ms.w_std is not None else G.latent_stats()[1], np.float32)
    nw, wd = G.num_ws, G.w_dim
    space = LatentSpace("w", nw, wd, w_std, layer_groups(nw))
    rows = torch.from_numpy(space.rows).to(dev)
    w_std_t = torch.from_numpy(w_std).to(dev)
    w_start = torch.from_numpy(np.broadcast_to(w_avg, (1, nw, wd)).copy()).to(dev)
    sync()
    build_s = time.perf_counter() - t0

    weights = ObjectiveWeights().resolved()
    with torch.no_grad():
        score0, e_ref = scorer(w_start)
        e_ref = e_ref[0].double().cpu().numpy()
        # the runtime's own CMA-ES adapter and objective (numpy on λ scores): only the networks run on the device
        es = CMAStrategy(space.dim, sigma0=sigma0, popsize=popsize, seed=seed)
        best_score, best_cos = float(score0[0]), 1.0
        gen_s: list[float] = []
        call_s: list[float] = []
        history = []
        for g in range(generations + 1):  # generation 0: warm-up, not timed
            tg = time.perf_counter()
            X = es.ask()
            Xt = torch.tensor(X, dtype=torch.float32, device=dev).reshape(len(X), space.n_vectors, wd)
            ws = w_start + Xt[:, rows, :] * w_std_t
            sync()
            tc = time.perf_counter()
            score_t, emb_t = scorer(ws)
            sync()
            tcall = time.perf_counter() - tc
            score, emb = score_t.double().cpu().numpy(), emb_t.double().cpu().numpy()
            cos = cosine_to(e_ref, emb)
            es.tell(X, -objective(score, cos, X, weights))
            feasible = np.flatnonzero(cos >= weights.identity_floor)
            if feasible.size:
                i = int(feasible[np.argmax(score[feasible])])
                if float(score[i]) > best_score:
                    best_score, best_cos = float(score[i]), float(cos[i])
            if g > 0:
                gen_s.append(time.perf_counter() - tg)
                call_s.append(tcall)
                history.append(best_score)
    gen = np.asarray(gen_s)
    res = {
        "preset": preset,
        "seed": seed,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "precision": "fp32" + (" (TF32 allowed)" if cuda and tf32 else ""),
        "resolution": G.img_resolution,
        "score_resolution": score_res,
        "popsize": popsize,
        "generations": generations,
        "evaluations": popsize * generations,
        "build_s": build_s,
        "generation_s": {"p50": float(np.percentile(gen, 50)), "p90": float(np.percentile(gen, 90))},
        "score_call_fraction": float(np.sum(call_s) / np.sum(gen_s)),
        "candidates_per_s": float(popsize / np.median(call_s)),
        "search_s": float(gen.sum()),
        "peak_device_memory_bytes": int(torch.cuda.max_memory_allocated(dev)) if cuda else None,
        "score_before": float(score0[0]),
        "score_after": best_score,
        "identity": best_cos,
        "best_history": history,
    }
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="stylegan2-1024")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("-p", "--popsize", type=int, default=16)
    ap.add_argument("-g", "--generations", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions (default: strict fp32)")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args(argv)
    res = run_floor(a.preset, a.device, a.popsize, a.generations, a.seed, tf32=a.tf32)
    text = json.dumps(res, indent=1)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(text)
    print(
        f"{res['device_name']}: {res['preset']} λ={res['popsize']} x {res['generations']} gens, "
        f"{res['generation_s']['p50'] * 1e3:.1f} ms / generation (p50), {res['candidates_per_s']:.1f} candidates/s, "
        f"search {res['search_s']:.2f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()

"""beautyrt (onnxruntime) vs the plain PyTorch eager reference, timed side by side in one process.

Usage (from the repository root; needs the export extra, i.e. torch):

    .venv/bin/python tests/bench/vs_torch.py --bundle DIR [--image examples/astronaut.jpg] [-p 16] [-g 10]
                                             [--repeats 3] [--threads N] [--space w] [--json]

``beautyrt bench --vs-torch`` calls :func:`run_vs_torch` (imported lazily, only with that flag). Both sides
run the same optimisation (same networks and weights rebuilt from the manifest's preset + seed, same seed,
λ, generations, search space and objective); each repeat runs both, alternating which goes first, after one
warm-up run of each. Reported: per-stage medians (detect, align, encode, search per generation, final
synthesis, paste-back/compose, total), candidates/s of the scorer, the search overhead fraction, and
``speedup`` = torch median total / beautyrt median total (plus per-stage ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Optional

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from torch_reference import TorchReference  # noqa: E402

from beautyrt.runtime.api import Beautifier, Settings  # noqa: E402
from beautyrt.runtime.ops.imaging import to_uint8  # noqa: E402
from beautyrt.runtime.timing import peak_rss_bytes  # noqa: E402

STAGES = ("detect", "align", "encode", "score_start", "search", "synthesize", "compose", "total")


def _load_avg() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_vs_torch(
    bundle: str | Path,
    *,
    image: Optional[str | Path] = None,
    popsize: int = 16,
    generations: int = 10,
    repeats: int = 3,
    threads: Optional[int] = None,
    space: str = "w",
    device: str = "cpu",
    torch_score_resolution: Optional[int] = None,
    torch_threads: Optional[int] = None,
    engine_batch: Optional[int] = None,
) -> dict:
    import torch

    load_before = _load_avg()
    b = Beautifier(bundle, device=device, threads=threads, engine_batch=engine_batch)
    try:
        aligned = image is None or not b.has_detector
        if aligned:
            w_avg = np.broadcast_to(b.w_avg, (1, b.num_ws, b.w_dim)).astype(np.float32)
            inp = to_uint8(b.engines["synthesis"].run({"ws": w_avg})["image"][0])
        else:
            from beautyrt.runtime.ops.imageio import load_image

            inp = load_image(image)
        s = Settings(generations=generations, popsize=popsize, space=space)
        warm = Settings(generations=1, popsize=popsize, space=space)
        b.optimize(inp, warm, aligned=aligned)
        # beautyrt's own peak (bundle loaded + one run at this λ), read before the torch side exists
        rss_beautyrt = peak_rss_bytes()
        ref = TorchReference(bundle, threads=torch_threads or threads, score_resolution=torch_score_resolution)
        ref.optimize(inp, warm, aligned=aligned)
        t = {"beautyrt": {k: [] for k in STAGES}, "torch": {k: [] for k in STAGES}}
        cands = {"beautyrt": [], "torch": []}
        overhead = {"beautyrt": [], "torch": []}
        agree = []
        for r in range(repeats):
            sr = Settings(**{**s.__dict__, "seed": r})
            order = ("beautyrt", "torch") if r % 2 == 0 else ("torch", "beautyrt")
            outs = {}
            for side in order:
                if side == "beautyrt":
                    res = b.optimize(inp, sr, aligned=aligned)
                    tm, n = res.timings, res.generations_run
                    outs[side] = (res.score_after, res.w_best)
                else:
                    res = ref.optimize(inp, sr, aligned=aligned)
                    tm, n = res["timings"], res["generations_run"]
                    outs[side] = (res["score_after"], res["w_best"])
                for k in STAGES:
                    if k in tm:
                        t[side][k].append(tm[k] / n if k == "search" else tm[k])
                cands[side].append(popsize * n / tm["search_eval"])
                overhead[side].append(tm["search_overhead"] / tm["search"])
            agree.append(
                {
                    "score_after": [outs["beautyrt"][0], outs["torch"][0]],
                    "w_best_max_abs_diff": float(np.max(np.abs(outs["beautyrt"][1] - outs["torch"][1]))),
                }
            )
        med = {side: {k: float(np.median(v)) for k, v in st.items() if v} for side, st in t.items()}
        ratio = {
            k: med["torch"][k] / med["beautyrt"][k]
            for k in med["beautyrt"]
            if k in med["torch"] and med["beautyrt"][k] > 0
        }
        return {
            "bundle": str(b.manifest.root),
            "source": b.manifest.data.get("source"),
            "resolution": b.resolution,
            "score_resolution": b.manifest.data["generator"].get("score_resolution"),
            "torch_score_resolution": ref.score_resolution,
            "input": "generated aligned crop" if aligned else str(image),
            "providers": b.engines["scorer"].providers,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "ort_threads": threads or os.cpu_count(),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": f"{platform.system()} {platform.machine()}",
                "loadavg_before": load_before,
                "loadavg_after": _load_avg(),
            },
            "popsize": popsize,
            "engine_batch": b.models.engine_batch,
            "generations": generations,
            "repeats": repeats,
            "space": space,
            "stages_median_s": med,
            "stage_speedup": ratio,
            "candidates_per_s": {k: float(np.median(v)) for k, v in cands.items()},
            "search_overhead_fraction": {k: float(np.median(v)) for k, v in overhead.items()},
            "speedup": ratio.get("total"),
            "search_speedup": ratio.get("search"),
            "candidates_speedup": float(np.median(cands["beautyrt"]) / np.median(cands["torch"])),
            "agreement": agree,
            "peak_rss_bytes": {"beautyrt": rss_beautyrt, "process": peak_rss_bytes()},
        }
    finally:
        b.close()


def format_vs(res: dict) -> str:
    m = res["stages_median_s"]
    lines = [
        f"{res['bundle']} ({res['resolution']} px, scored at {res['score_resolution']} px; torch at "
        f"{res.get('torch_score_resolution')} px), input: {res['input']}",
        f"λ={res['popsize']}, {res['generations']} gens x {res['repeats']} repeats (alternating), "
        f"{res['machine']['cpus']} cpus, load {res['machine']['loadavg_before']} -> {res['machine']['loadavg_after']}",
        f"{'stage (median)':<22}{'beautyrt ms':>12}{'torch ms':>12}{'speed-up':>10}",
    ]
    for k in STAGES:
        if k in m["beautyrt"] and k in m["torch"]:
            name = "search / generation" if k == "search" else k
            lines.append(
                f"{name:<22}{m['beautyrt'][k] * 1e3:>12.2f}{m['torch'][k] * 1e3:>12.2f}{res['stage_speedup'][k]:>9.2f}x"
            )
    c = res["candidates_per_s"]
    lines.append(
        f"candidates/s: beautyrt {c['beautyrt']:.1f}, torch {c['torch']:.1f} ({res['candidates_speedup']:.2f}x)"
    )
    o = res["search_overhead_fraction"]
    lines.append(f"search overhead: beautyrt {100 * o['beautyrt']:.1f}%, torch {100 * o['torch']:.1f}% of a generation")
    lines.append(f"speedup (torch total / beautyrt total): {res['speedup']:.2f}x")
    rss = res.get("peak_rss_bytes") or {}
    if rss.get("beautyrt"):
        lines.append(
            f"peak RSS: beautyrt {rss['beautyrt'] / 2**30:.2f} GiB (bundle loaded + one run, before torch loads), "
            f"process {rss['process'] / 2**30:.2f} GiB (both sides)"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--image")
    ap.add_argument("-p", "--popsize", type=int, default=16)
    ap.add_argument("-g", "--generations", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--space", default="w")
    ap.add_argument("--torch-score-resolution", type=int, help="score at this resolution on the torch side")
    ap.add_argument("--torch-threads", type=int, help="torch.set_num_threads for the reference (default: --threads)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = run_vs_torch(
        a.bundle,
        image=a.image,
        popsize=a.popsize,
        generations=a.generations,
        repeats=a.repeats,
        threads=a.threads,
        space=a.space,
        torch_score_resolution=a.torch_score_resolution,
        torch_threads=a.torch_threads,
    )
    print(json.dumps(res, indent=1) if a.json else format_vs(res))


if __name__ == "__main__":
    main()

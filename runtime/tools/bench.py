"""``beautyrt bench``: latency of the search loop on a bundle (torch-free).

Times whole ``optimize`` runs on an aligned crop rendered by the bundle's own generator (so every
bundle, random or trained, gets a face-like input), after a warm-up run, and reports per-stage
p50/p90/p99, candidates/s (λ / median scorer time per generation), the search overhead (ask/tell and
objective in numpy) as a fraction of a generation, and the scorer's batching efficiency at λ=1 vs λ.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..beautifier import Beautifier
from ..ops.imaging import to_uint8
from ..settings import Settings
from ..timing import peak_rss_bytes, percentiles

log = logging.getLogger("beautyrt")


def run_bench(
    bundle: str | Path,
    *,
    popsize: int = 16,
    generations: int = 10,
    repeats: int = 3,
    device: str = "auto",
    threads: Optional[int] = None,
    space: str = "w",
    backend: str = "auto",
    batch_sizes: tuple[int, ...] = (1, 4, 16),
    engine_batch: Optional[int] = None,
) -> dict:
    load_before = _loadavg()
    with Beautifier(bundle, device=device, threads=threads, backend=backend, engine_batch=engine_batch) as b:
        w_avg = np.broadcast_to(b.w_avg, (1, b.num_ws, b.w_dim)).astype(np.float32)
        crop = to_uint8(b.models.synthesize(w_avg)[0])
        settings = Settings(generations=generations, popsize=popsize, space=space)
        b.optimize(crop, Settings(generations=1, popsize=popsize, space=space), aligned=True)  # warm-up
        gen_s: list[float] = []
        eval_s: list[float] = []
        over_s: list[float] = []
        stages: dict[str, list[float]] = {"invert": [], "synthesize": [], "optimize_total": []}
        for r in range(repeats):
            run = b.optimize(crop, dataclasses.replace(settings, seed=r), aligned=True)
            gen_s += [h["seconds"] for h in run.history]
            n = max(1, run.generations_run)
            eval_s.append(run.timings["search_eval"] / n)
            over_s.append(run.timings["search_overhead"] / n)
            stages["invert"].append(run.timings["invert"])
            stages["synthesize"].append(run.timings["synthesize"])
            stages["optimize_total"].append(run.timings["total"])
        # batching efficiency of the scorer: per-candidate time at batch 1 vs batch popsize
        scorer = b.engines["scorer"]
        per_cand = {}
        for lam in sorted({1, popsize, *batch_sizes}):
            ws = np.repeat(w_avg, lam, axis=0)
            scorer.run({"ws": ws})
            ts = []
            for _ in range(max(2, repeats)):
                t0 = time.perf_counter()
                scorer.run({"ws": ws})
                ts.append(time.perf_counter() - t0)
            per_cand[lam] = float(np.median(ts)) / lam
        eval_med = float(np.median(eval_s))
        res = {
            "bundle": str(b.manifest.root),
            "bundle_hash": b.bundle_hash,
            "source": b.manifest.data.get("source"),
            "resolution": b.resolution,
            "score_resolution": b.manifest.data["generator"].get("score_resolution"),
            "providers": getattr(b.engines["scorer"], "providers", None),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": f"{platform.system()} {platform.machine()}",
                "processor": platform.processor(),
                "loadavg_before": load_before,
                "loadavg_after": _loadavg(),
            },
            "popsize": popsize,
            "engine_batch": b.models.engine_batch,
            "generations": generations,
            "repeats": repeats,
            "space": space,
            "stages": {
                "generation": percentiles(gen_s),
                "scorer_call": percentiles(eval_s),
                "search_overhead": percentiles(over_s),
                **{k: percentiles(v) for k, v in stages.items()},
            },
            "candidates_per_s": popsize / eval_med if eval_med > 0 else float("inf"),
            "search_overhead_fraction": float(np.median(over_s) / np.median(gen_s)),
            "per_candidate_s": {str(k): v for k, v in per_cand.items()},
            "batching_speedup": per_cand[1] / per_cand[popsize] if popsize != 1 else 1.0,
            "batching_speedup_by_lambda": {str(k): per_cand[1] / v for k, v in per_cand.items()},
            "peak_rss_bytes": peak_rss_bytes(),  # the whole process: bundle loaded, warm-up, every timed run
        }
    return res


def _loadavg() -> Optional[list[float]]:
    """1/5/15-minute load averages (where the OS has them): the numbers are only comparable at equal load."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def format_table(res: dict) -> str:
    lines = [
        f"bundle {res['bundle']} ({res['resolution']} px, scored at {res['score_resolution']} px) on "
        f"{res['providers'][0] if res['providers'] else '?'}, λ={res['popsize']}, "
        f"{res['generations']} gens x {res['repeats']}, engine batch {res['engine_batch']}",
        f"{'stage':<18}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}",
    ]
    for k, v in res["stages"].items():
        lines.append(f"{k:<18}{v['p50'] * 1e3:>10.2f}{v['p90'] * 1e3:>10.2f}{v['p99'] * 1e3:>10.2f}")
    lines.append(f"candidates/s: {res['candidates_per_s']:.2f}")
    lines.append(f"search overhead: {100 * res['search_overhead_fraction']:.1f}% of a generation")
    lines.append(
        f"scorer batching: {res['batching_speedup']:.2f}x per-candidate speed-up at λ={res['popsize']} vs λ=1 ("
        + ", ".join(f"λ={k}: {v:.2f}x" for k, v in res["batching_speedup_by_lambda"].items())
        + ")"
    )
    if res.get("peak_rss_bytes"):
        lines.append(f"peak RSS: {res['peak_rss_bytes'] / 2**30:.2f} GiB (bundle loaded, all runs)")
    lines.append(f"load average before/after: {res['machine']['loadavg_before']} / {res['machine']['loadavg_after']}")
    return "\n".join(lines)

"""Cost growth of the search: time per generation vs λ, vs search space, and the scorer's batching efficiency.

Usage (torch-free; bundles from ``beautyrt export --preset ...``):

    .venv/bin/python tests/bench/cost_growth.py --bundle DIR [--bundle DIR2 ...] [--lambdas 1 4 16 64]
        [--spaces w groups wplus] [--space-lambda 16] [--generations 3] [--batching 1 2 4 8 16] [--json]

For each bundle: a generation's wall time (ask + offsets + ONE scorer call + objective + tell) by λ in
space "w", then by search space at ``--space-lambda``, each the median over ``--generations`` generations of
a real ``optimize`` on an aligned crop rendered by the bundle (after a warm-up); the search overhead share;
and the scorer's per-candidate time at each batch of ``--batching`` (median of 3 calls).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from beautyrt.runtime.api import Beautifier, Settings
from beautyrt.runtime.ops.imaging import to_uint8


def _gen_stats(b, crop, lam, space, gens):
    res = b.optimize(crop, Settings(generations=gens, popsize=lam, space=space), aligned=True)
    secs = [h["seconds"] for h in res.history]
    n = max(1, res.generations_run)
    return {
        "generation_s": float(np.median(secs)),
        "overhead_fraction": res.timings["search_overhead"] / max(res.timings["search"], 1e-12),
        "scorer_s": res.timings["search_eval"] / n,
    }


def run(bundle, lambdas, spaces, space_lambda, gens, batching):
    out = {"bundle": bundle, "loadavg_before": list(os.getloadavg())}
    with Beautifier(bundle, device="cpu") as b:
        w = np.broadcast_to(b.w_avg, (1, b.num_ws, b.w_dim)).astype(np.float32)
        crop = to_uint8(b.engines["synthesis"].run({"ws": w})["image"][0])
        out.update(
            resolution=b.resolution,
            score_resolution=b.manifest.data["generator"].get("score_resolution"),
            num_ws=b.num_ws,
            w_dim=b.w_dim,
        )
        b.optimize(crop, Settings(generations=1, popsize=min(lambdas)), aligned=True)  # warm-up
        out["by_lambda"] = {str(lam): _gen_stats(b, crop, lam, "w", gens) for lam in lambdas}
        out["by_space"] = {sp: _gen_stats(b, crop, space_lambda, sp, gens) for sp in spaces}
        scorer, per = b.engines["scorer"], {}
        for lam in batching:
            ws = np.repeat(w, lam, axis=0)
            scorer.run({"ws": ws})
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                scorer.run({"ws": ws})
                ts.append(time.perf_counter() - t0)
            per[str(lam)] = float(np.median(ts)) / lam
        out["batching_per_candidate_s"] = per
        out["batching_speedup_vs_1"] = {k: per[str(batching[0])] / v for k, v in per.items()}
    out["loadavg_after"] = list(os.getloadavg())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", action="append", required=True)
    ap.add_argument("--lambdas", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--spaces", nargs="+", default=["w", "groups", "wplus"])
    ap.add_argument("--space-lambda", type=int, default=16)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--batching", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = [
        run(bd, [max(2, l) for l in a.lambdas], a.spaces, a.space_lambda, a.generations, a.batching) for bd in a.bundle
    ]
    if a.json:
        print(json.dumps(res, indent=1))
        return
    for r in res:
        print(f"{r['bundle']} ({r['resolution']} px, scored at {r['score_resolution']}), load {r['loadavg_before']}")
        for k, v in r["by_lambda"].items():
            print(
                f"  λ={k:>3} w      gen {v['generation_s'] * 1e3:10.1f} ms  "
                f"overhead {100 * v['overhead_fraction']:5.1f}%"
            )
        for k, v in r["by_space"].items():
            print(
                f"  space {k:<6}      gen {v['generation_s'] * 1e3:10.1f} ms  "
                f"overhead {100 * v['overhead_fraction']:5.1f}%"
            )
        print("  batching per-candidate ms:", {k: round(v * 1e3, 2) for k, v in r["batching_per_candidate_s"].items()})


if __name__ == "__main__":
    main()

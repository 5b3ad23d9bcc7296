"""Soak: one Beautifier shared by N threads running M optimisations each; prints time, RSS and mismatches.

    python tests/bench/soak.py --bundle /tmp/tb   [--threads 8 --runs 50 -g 4 -p 8 --photo]

Every threaded result is compared with a sequential run of the same (input, seed): any difference is a
mismatch (the count is printed, and the exit status is 1). RSS (psutil) is printed after loading, after the
sequential reference runs (warm), during the soak (peak, sampled every 50 ms) and after it. Without
``--bundle`` a tiny bundle is exported to a temporary directory first (needs the export extra).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def fingerprint(r) -> tuple:
    hist = tuple(tuple(sorted((k, v) for k, v in h.items() if k != "seconds")) for h in r.history)
    return (r.image.tobytes(), r.w_best.tobytes(), r.score_after, r.identity, hist)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--runs", type=int, default=50, help="optimisations per thread")
    ap.add_argument("-g", "--generations", type=int, default=4)
    ap.add_argument("-p", "--popsize", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=10, help="distinct seeds (x 2 inputs) in the job mix")
    ap.add_argument("--photo", action="store_true", help="whole photo (detector) instead of aligned crops")
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="repeat the whole soak; RSS after each round shows one-time growth vs a leak",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from beautyrt.runtime.api import Beautifier, Settings

    tmp = None
    bundle = a.bundle
    if bundle is None:
        from beautyrt.export.api import export_preset

        tmp = tempfile.TemporaryDirectory()
        bundle = export_preset("tiny", Path(tmp.name) / "tiny", detector=a.photo)
    photo = np.asarray(Image.open(REPO / "examples" / "astronaut.jpg").convert("RGB"))
    base = photo if a.photo else np.ascontiguousarray(photo[40:190, 150:300])
    inputs = [base, np.ascontiguousarray(base[:, ::-1])]
    jobs = [(i, s) for i in range(2) for s in range(a.seeds)]
    settings = {s: Settings(generations=a.generations, popsize=a.popsize, seed=s) for s in range(a.seeds)}
    proc = psutil.Process()
    mib = lambda: proc.memory_info().rss / 2**20  # noqa: E731
    out: dict = {
        "threads": a.threads,
        "runs_per_thread": a.runs,
        "generations": a.generations,
        "popsize": a.popsize,
        "mode": "photo" if a.photo else "aligned",
    }
    out["rss_start_mib"] = mib()
    with Beautifier(bundle, device="cpu") as b:
        out["rss_loaded_mib"] = mib()
        t0 = time.perf_counter()
        ref = {j: fingerprint(b.optimize(inputs[j[0]], settings[j[1]], aligned=not a.photo)) for j in jobs}
        out["sequential_s_per_run"] = (time.perf_counter() - t0) / len(jobs)
        gc.collect()
        out["rss_before_mib"] = mib()
        mismatches, errors, peak, done = [], [], [out["rss_before_mib"]], [0]
        stop = threading.Event()

        def sampler():
            while not stop.wait(0.05):
                peak[0] = max(peak[0], mib())

        def worker(t: int):
            for k in range(a.runs):
                j = jobs[(t * a.runs + k) % len(jobs)]
                try:
                    fp = fingerprint(b.optimize(inputs[j[0]], settings[j[1]], aligned=not a.photo))
                except BaseException as e:  # noqa: BLE001
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                if fp != ref[j]:
                    mismatches.append((t, k, j))
                done[0] += 1

        sm = threading.Thread(target=sampler, daemon=True)
        sm.start()
        out["rss_after_round_mib"], out["round_s"] = [], []
        for _ in range(a.rounds):
            ths = [threading.Thread(target=worker, args=(t,)) for t in range(a.threads)]
            t0 = time.perf_counter()
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            out["round_s"].append(time.perf_counter() - t0)
            gc.collect()
            out["rss_after_round_mib"].append(mib())
        out["soak_s"] = sum(out["round_s"])
        stop.set()
        out["rss_after_mib"] = mib()
        out["rss_peak_mib"] = peak[0]
    out.update(
        {
            "runs_done": done[0],
            "runs_per_s": done[0] / out["soak_s"],
            "mismatches": len(mismatches),
            "errors": len(errors),
            "error_examples": errors[:3],
            "rss_growth_mib": out["rss_after_mib"] - out["rss_before_mib"],
        }
    )
    if tmp is not None:
        tmp.cleanup()
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print(
            f"{a.rounds} round(s) of {a.threads} threads x {a.runs} runs ({out['mode']}, -g {a.generations} "
            f"-p {a.popsize}) on one Beautifier"
        )
        print(
            f"  time: {out['soak_s']:.1f} s for {done[0]} runs ({out['runs_per_s']:.1f} runs/s; "
            f"sequential {out['sequential_s_per_run'] * 1000:.0f} ms/run)"
        )
        print(
            f"  RSS: start {out['rss_start_mib']:.1f}, loaded {out['rss_loaded_mib']:.1f}, before soak "
            f"{out['rss_before_mib']:.1f}, peak {out['rss_peak_mib']:.1f}, after {out['rss_after_mib']:.1f} MiB "
            f"(growth {out['rss_growth_mib']:+.1f} MiB)"
        )
        print(
            f"  per round: {', '.join(f'{s:.1f} s' for s in out['round_s'])}; RSS after each round: "
            f"{', '.join(f'{r:.1f}' for r in out['rss_after_round_mib'])} MiB"
        )
        print(f"  mismatches vs sequential: {len(mismatches)}, errors: {len(errors)} {errors[:3]}")
    return 1 if mismatches or errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""One Beautifier shared by 8 threads: no crash, results identical to sequential runs with the same seeds,
memory bounded. (The full 8 x 50 soak with printed numbers is tests/bench/soak.py.)"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

psutil = pytest.importorskip("psutil", reason="psutil (test extra) measures RSS")

THREADS, RUNS = 8, 5


def fingerprint(r) -> tuple:
    """Everything a run produces except wall-clock timings."""
    hist = tuple(tuple(sorted((k, v) for k, v in h.items() if k != "seconds")) for h in r.history)
    return (
        r.image.tobytes(),
        r.w_best.tobytes(),
        r.score_before,
        r.score_after,
        r.identity,
        hist,
        r.generations_run,
        r.stop_reason,
    )


def test_shared_beautifier_threads_match_sequential(tiny_bundle, face_crop):
    from beautyrt.runtime.api import Beautifier, Settings

    inputs = [face_crop, np.ascontiguousarray(face_crop[:, ::-1])]
    jobs = [(i, seed) for i in range(len(inputs)) for seed in range(5)]  # 10 distinct (input, seed) pairs
    settings = {seed: Settings(generations=4, popsize=8, seed=seed) for seed in range(5)}
    proc = psutil.Process()
    with Beautifier(tiny_bundle, device="cpu") as b:
        ref = {(i, seed): fingerprint(b.optimize(inputs[i], settings[seed], aligned=True)) for i, seed in jobs}
        ref2 = {(i, seed): fingerprint(b.optimize(inputs[i], settings[seed], aligned=True)) for i, seed in jobs}
        assert ref == ref2, "sequential runs are not even reproducible"
        gc.collect()
        rss0 = proc.memory_info().rss
        results: dict[int, list] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(THREADS)

        def worker(t: int) -> None:
            try:
                barrier.wait()
                out = []
                for k in range(RUNS):
                    i, seed = jobs[(t * RUNS + k) % len(jobs)]
                    out.append(((i, seed), fingerprint(b.optimize(inputs[i], settings[seed], aligned=True))))
                results[t] = out
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=300)
        gc.collect()
        rss1 = proc.memory_info().rss
    assert not errors, errors
    assert sorted(results) == list(range(THREADS))
    mismatches = [(t, key) for t, out in results.items() for key, fp in out if fp != ref[key]]
    assert not mismatches, f"{len(mismatches)} threaded results differ from sequential ones: {mismatches[:5]}"
    growth = (rss1 - rss0) / 2**20
    print(
        f"RSS before {rss0 / 2**20:.1f} MiB, after {THREADS}x{RUNS} threaded runs {rss1 / 2**20:.1f} MiB "
        f"(+{growth:.1f} MiB)"
    )
    assert growth < 64, f"RSS grew by {growth:.1f} MiB over {THREADS * RUNS} threaded runs"


def test_threads_with_different_settings_do_not_leak_state(tiny_bundle, face_crop):
    """Different settings in different threads at once: each result equals its own sequential run."""
    from beautyrt.runtime.api import Beautifier, Settings

    variants = [
        Settings(generations=3, popsize=4, seed=1, space="w"),
        Settings(generations=3, popsize=6, seed=2, space="groups"),
        Settings(generations=2, popsize=4, seed=3, space="wplus", output_mode="generated"),
    ]
    with Beautifier(tiny_bundle, device="cpu") as b:
        ref = [fingerprint(b.optimize(face_crop, s, aligned=True)) for s in variants]
        got: list = [None] * len(variants)

        def run(k: int) -> None:
            got[k] = fingerprint(b.optimize(face_crop, variants[k], aligned=True))

        ths = [threading.Thread(target=run, args=(k,)) for k in range(len(variants))]
        for th in ths:
            th.start()
        for th in ths:
            th.join(timeout=120)
    assert got == ref

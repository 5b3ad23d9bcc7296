"""Bench (not a test): photos/s of the local batch pool with 1 and 2 workers, Ray Data batch with 1 and 2
actors, Ray Serve with 1 and 2 replicas, on the same photos in one run, and Ray's overhead against the local
pool at equal parallelism (sides alternated: local, ray, ray, local per parallelism).

    python tests/bench/ray_scale.py --bundle /tmp/ray_demo [--photos 8] [--generations 12]

Batch numbers are whole jobs (worker start, bundle load, every photo, results.jsonl), Ray's without the
cluster's own start (once per run, reported). Serve numbers are photos/s of N concurrent clients on a deployed
app (deploy time reported). Prints a JSON line and a Markdown table; the load average is read before and after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def photos(root: Path, n: int) -> list[Path]:
    im = Image.open(REPO / "examples" / "astronaut.jpg").convert("RGB")
    w, h = im.size
    out = []
    for i in range(n):
        c = im.crop((4 * i, 2 * i, w - 4 * (n - i), h - 2 * (n - i)))
        p = root / f"photo{i}.jpg"
        c.save(p, quality=92)
        out.append(p)
    return out


def run_job(inputs, out: Path, spec, executor) -> float:
    from beautyrt.runtime.tools import batch as B

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = B.run_batch(inputs, out, spec, executor)
    dt = time.perf_counter() - t0
    assert s.done == len(inputs) and not s.failed, s.line()
    return len(inputs) / dt


def serve_rate(bundle: Path, inputs, replicas: int, gens: int, threads: int, port: int) -> tuple[float, float]:
    from ray import serve

    from beautyrt.runtime.scale.serve_ray import application
    from beautyrt.runtime.serve.config import ServeConfig

    cfg = ServeConfig(bundle=bundle, workers=1, max_queue=4, threads=threads)
    t0 = time.perf_counter()
    serve.run(application(cfg, replicas=replicas, cpus_per_replica=1.0), name="bench", route_prefix="/", blocking=False)
    deploy = time.perf_counter() - t0
    datas = [p.read_bytes() for p in inputs]
    todo = list(range(len(datas)))
    lock = threading.Lock()
    errors: list = []

    def client():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            c.request("POST", f"/v1/optimize?generations={gens}&seed=1", datas[i],
                      {"Content-Type": "application/octet-stream", "Accept": "image/jpeg"})  # fmt: skip
            r = c.getresponse()
            r.read()
            if r.status != 200:
                errors.append(r.status)
            c.close()

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client) for _ in range(replicas)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    rate = len(datas) / (time.perf_counter() - t0)
    serve.delete("bench")
    assert not errors, errors
    return rate, deploy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--generations", type=int, default=12)
    a = ap.parse_args()

    import ray

    from beautyrt.runtime.scale.batch_ray import RayExecutor
    from beautyrt.runtime.settings import Settings
    from beautyrt.runtime.tools import batch as B

    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="beautyrt-raybench-"))
    inputs = photos(tmp, a.photos)
    cores = os.cpu_count() or 1
    settings = Settings(generations=a.generations, seed=1).to_dict()
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - t0
    res: dict = {"photos": a.photos, "generations": a.generations, "cores": cores, "ray_init_s": round(ray_start, 1)}
    for n in (1, 2):
        spec = B.BatchSpec(bundle=str(a.bundle), settings=settings, threads=max(1, cores // n))
        loc, ray_ = B.LocalPool(n), RayExecutor(actors=n, cpus_per_actor=cores / n)
        r = {"local": [], "ray": []}
        for side in ("local", "ray", "ray", "local"):  # alternate the sides
            ex = loc if side == "local" else ray_
            r[side].append(run_job(inputs, tmp / f"out-{side}-{n}", spec, ex))
            print(side, n, round(r[side][-1], 4), file=sys.stderr, flush=True)
        lo, ry = sum(r["local"]) / 2, sum(r["ray"]) / 2
        res[f"local_{n}"], res[f"ray_batch_{n}"] = round(lo, 4), round(ry, 4)
        res[f"ray_overhead_{n}"] = round(lo / ry - 1.0, 4)  # extra time per photo on Ray, as a fraction
        same = all(
            (tmp / f"out-local-{n}" / p.name).read_bytes() == (tmp / f"out-ray-{n}" / p.name).read_bytes()
            for p in (tmp / f"out-local-{n}").iterdir()
            if p.name != B.RESULTS
        )
        res[f"identical_{n}"] = same
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for n in (1, 2):
        rate, deploy = serve_rate(a.bundle, inputs, n, a.generations, max(1, cores // n), port)
        res[f"serve_{n}"], res[f"serve_deploy_{n}_s"] = round(rate, 4), round(deploy, 1)
        print("serve", n, round(rate, 4), file=sys.stderr, flush=True)
    serve.shutdown()
    ray.shutdown()
    res["loadavg_before"], res["loadavg_after"] = [round(x, 2) for x in load0], [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(res))
    print("| path | 1 | 2 |\n|---|---|---|")
    for k, name in (("local", "local batch (process pool)"), ("ray_batch", "Ray Data batch (actors)"),
                    ("serve", "Ray Serve (replicas)")):  # fmt: skip
        print(f"| {name} | {res[f'{k}_1']:.3f} | {res[f'{k}_2']:.3f} |")
    print(f"| Ray overhead vs local | {res['ray_overhead_1']:+.1%} | {res['ray_overhead_2']:+.1%} |")
    shutil.rmtree(tmp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()

"""Load bench of ``beautyrt serve`` (loopback only; bounded in count and time; stops by itself).

    python tests/bench/serve_load.py --bundle /tmp/demo_bundle [--seconds 30] [--clients 4] [--workers 1,2]

For each worker count W it starts the real server on 127.0.0.1 (a free port, --max-queue clients - W), then:
  1. three alternating rounds of: the photo through an in-process Beautifier with the server's engine threads
     (decode + optimize + encode: the single-photo time), W such photos at once in W threads (what the cores
     give without serving), and C = W clients posting to the server for T/3 seconds; the serving overhead
     check is the median served photos/s at C = W against W / single-photo time (target: >= 0.85), and
     against the in-process W-at-once rate;
  2. C = --clients clients for T seconds posting the photo to /v1/optimize in a loop: photos/s,
     p50/p90/p99 latency, status counts;
  3. past the queue limit, 3 rounds: clients + 3 requests at once; the excess must get 503 (none 500), the
     server must stay ready, and its RSS must stay flat over the rounds.
Prints a markdown table and, with --json PATH, writes every number.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "examples" / "astronaut.jpg"
MAX_REQUESTS = 2000  # hard bound on requests per phase


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, data: bytes, timeout: float = 600) -> tuple[int, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/optimize?seed=0", body=data, headers={"Content-Type": "image/jpeg"})
        r = conn.getresponse()
        r.read()
        return r.status, time.perf_counter() - t0
    except OSError:
        return -1, time.perf_counter() - t0
    finally:
        conn.close()


def ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/readyz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pct(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a), q)) if a else float("nan")


def closed_loop(port: int, data: bytes, clients: int, seconds: float) -> dict:
    """``clients`` threads posting in a loop for ``seconds`` (requests started before the end finish)."""
    lat: list[float] = []
    codes: Counter = Counter()
    lock = threading.Lock()
    end = time.perf_counter() + seconds
    count = [0]

    def client():
        while time.perf_counter() < end:
            with lock:
                if count[0] >= MAX_REQUESTS:
                    return
                count[0] += 1
            code, dt = post(port, data)
            with lock:
                codes[code] += 1
                if code == 200:
                    lat.append(dt)

    la0 = loadavg()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "photos_per_s": len(lat) / wall,
        "p50_s": pct(lat, 50),
        "p90_s": pct(lat, 90),
        "p99_s": pct(lat, 99),
        "statuses": {str(k): v for k, v in sorted(codes.items())},
        "loadavg_before": la0,
        "loadavg_after": loadavg(),
    }


def burst(port: int, data: bytes, n: int) -> Counter:
    codes: Counter = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def client():
        barrier.wait()
        code, _ = post(port, data)
        with lock:
            codes[code] += 1

    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


class InProcess:
    """The same work without serving: the photo through a Beautifier in this process, with the server's engine
    threads (decode + optimize + encode, as a worker does)."""

    def __init__(self, bundle: Path, threads):
        from beautyrt.runtime.api import Beautifier

        self.b = Beautifier(bundle, threads=threads)
        self.data = PHOTO.read_bytes()
        self.one()  # warm-up

    def one(self) -> float:
        from beautyrt.runtime.api import Settings, encode
        from beautyrt.runtime.ops.imageio import load_image

        t0 = time.perf_counter()
        r = self.b.optimize(load_image(self.data), Settings())
        encode(r, "JPEG", 95)
        return time.perf_counter() - t0

    def parallel(self, n: int) -> float:
        """Photos/s of n photos at once in n threads sharing the Beautifier (what n workers can give)."""
        t0 = time.perf_counter()
        threads = [threading.Thread(target=self.one) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        self.b.close()


def run(bundle: Path, workers: int, clients: int, seconds: float, rounds: int, log_dir: Path) -> dict:
    import psutil

    from beautyrt.runtime.serve.config import ServeConfig

    data = PHOTO.read_bytes()
    port = free_port()
    max_queue = max(0, clients - workers)
    code = "import sys; from beautyrt.cli.main import main; sys.argv = ['beautyrt'] + sys.argv[1:]; main()"
    cmd = [sys.executable, "-c", code, "serve", "--bundle", str(bundle), "--port", str(port)]
    cmd += ["--workers", str(workers), "--max-queue", str(max_queue), "--timeout", "600"]
    log = open(log_dir / f"server-w{workers}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 180
        while not ready(port):
            if proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"server did not start: see {log.name}")
            time.sleep(0.3)
        threads = ServeConfig(bundle=bundle, workers=workers).engine_threads
        ref = InProcess(bundle, threads)
        singles, par, served, phases = [], [], [], []
        try:  # alternate in-process and served rounds: the cores are shared, so load drifts during a run
            for _ in range(3):
                singles.append(ref.one())
                par.append(ref.parallel(workers))
                ph = closed_loop(port, data, workers, seconds / 3)
                phases.append(ph)
                served.append(ph["photos_per_s"])
        finally:
            ref.close()
        single = statistics.median(singles)
        res: dict = {"workers": workers, "max_queue": max_queue, "engine_threads": threads, "single_photo_s": single}
        res["single_photo_runs_s"] = singles
        res["in_process_parallel_photos_per_s"] = statistics.median(par)
        res["served_rounds_photos_per_s"] = served
        merged = dict(phases[-1])
        merged["photos_per_s"] = statistics.median(served)
        merged["statuses"] = dict(sum((Counter(p["statuses"]) for p in phases), Counter()))
        merged["loadavg_before"] = phases[0]["loadavg_before"]
        merged["seconds"] = sum(p["seconds"] for p in phases)
        res["at_c_eq_workers"] = merged
        ideal = workers / single
        res["ideal_photos_per_s"] = ideal
        res["serving_efficiency"] = merged["photos_per_s"] / ideal
        res["serving_vs_in_process_parallel"] = merged["photos_per_s"] / res["in_process_parallel_photos_per_s"]
        if clients != workers:
            res["at_c"] = closed_loop(port, data, clients, seconds)
        ps = psutil.Process(proc.pid)
        over = []
        for i in range(rounds):
            codes = burst(port, data, clients + 3)
            over.append(
                {
                    "round": i + 1,
                    "requests": clients + 3,
                    "statuses": {str(k): v for k, v in sorted(codes.items())},
                    "ready_after": ready(port),
                    "rss_mib": round(ps.memory_info().rss / 2**20, 1),
                    "loadavg": loadavg(),
                }
            )
        res["overload"] = over
        rss = [r["rss_mib"] for r in over]
        res["overload_ok"] = all(
            r["statuses"].get("500", 0) == 0 and r["statuses"].get("503", 0) >= 1 and r["ready_after"] for r in over
        )
        res["rss_growth"] = (rss[-1] - rss[0]) / rss[0]
        return res
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            res_rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            res_rc = proc.wait(10)
        log.close()
        if res_rc != 0:
            print(f"server (workers {workers}) exited with {res_rc}", file=sys.stderr)


def table(results: list[dict]) -> str:
    rows = [
        "| workers | clients | photos/s | p50 s | p90 s | p99 s | statuses | load (1 min) before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for key in ("at_c_eq_workers", "at_c"):
            if key in r:
                p = r[key]
                st = ", ".join(f"{k}: {v}" for k, v in p["statuses"].items())
                rows.append(
                    f"| {r['workers']} | {p['clients']} | {p['photos_per_s']:.3f} | {p['p50_s']:.2f} |"
                    f" {p['p90_s']:.2f} | {p['p99_s']:.2f} | {st} |"
                    f" {p['loadavg_before'][0]} → {p['loadavg_after'][0]} |"
                )
    rows += [
        "",
        "| workers | single photo in-process (median of 3) | ideal W / single | in-process, W at once |"
        " served photos/s at C = W (median of 3 rounds) | served / ideal | served / in-process W at once |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['workers']} (engine threads {r['engine_threads'] or 'all'}) | {r['single_photo_s']:.2f} s |"
            f" {r['ideal_photos_per_s']:.3f} | {r['in_process_parallel_photos_per_s']:.3f} |"
            f" {r['at_c_eq_workers']['photos_per_s']:.3f} | {r['serving_efficiency']:.2f} |"
            f" {r['serving_vs_in_process_parallel']:.2f} |"
        )
    rows += [
        "",
        "| workers | overload round | requests | statuses | ready after | server RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for o in r["overload"]:
            st = ", ".join(f"{k}: {v}" for k, v in o["statuses"].items())
            rows.append(
                f"| {r['workers']} | {o['round']} | {o['requests']} | {st} | {o['ready_after']} | {o['rss_mib']} |"
            )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.seconds > 600 or a.clients > 64:
        raise SystemExit("bounded: at most 600 s per phase and 64 clients")
    log_dir = Path(tempfile.mkdtemp(prefix="beautyrt-serve-load-"))
    results = [run(a.bundle, int(w), a.clients, a.seconds, a.rounds, log_dir) for w in a.workers.split(",")]
    out = {"bundle": str(a.bundle), "cpus": os.cpu_count(), "seconds": a.seconds, "results": results}
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    print(table(results))
    print(f"\nserver logs: {log_dir}")


if __name__ == "__main__":
    main()

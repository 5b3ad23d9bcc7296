"""With a real local Ray cluster (tests/scale/conftest.py ``ray_cluster``, 127.0.0.1 only): `beautyrt batch
--ray` against the local pool, a SIGKILLed Ray driver resumed, and `beautyrt serve --ray` (same bytes as the
CLI, both replicas answer, a killed replica replaced under a bounded load, graceful stop)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from beautyrt.runtime.tools import batch as B
from tests.scale.conftest import BATCH_ARGS, HAVE_RAY, run_beautyrt
from tests.scale.test_batch import lines, outputs

pytestmark = pytest.mark.skipif(not HAVE_RAY, reason="needs the ray extra: pip install -e '.[ray]'")
CODE = "import sys; from beautyrt.cli.main import main; sys.argv = ['beautyrt'] + sys.argv[1:]; main()"


@pytest.fixture(scope="module")
def local_run(photos, tiny_bundle, tmp_path_factory):
    """The reference: the local process pool's outputs and records for the 12 photos."""
    out = tmp_path_factory.mktemp("local") / "out"
    r = run_beautyrt("batch", str(photos), str(out), "--bundle", str(tiny_bundle), "--workers", "2", *BATCH_ARGS)
    assert r.returncode == 0, r.stderr
    return outputs(out), {x["key"]: x for x in lines(out)}


def test_ray_batch_is_byte_identical_to_the_local_batch(ray_cluster, photos, tiny_bundle, local_run, tmp_path):
    ref, ref_recs = local_run
    out = tmp_path / "ray"
    r = run_beautyrt(
        "batch", str(photos), str(out), "--bundle", str(tiny_bundle), "--ray", "--address", ray_cluster,
        "--workers", "2", "--ship-bundle", *BATCH_ARGS, "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert (s["total"], s["done"], s["skipped"], s["failed"]) == (12, 12, 0, {})
    assert outputs(out) == ref, "Ray Data's outputs must be byte-identical to the local pool's"
    recs = {x["key"]: x for x in lines(out)}
    assert set(recs) == set(ref_recs)
    for k, x in recs.items():
        assert x["bundle_hash"] == ref_recs[k]["bundle_hash"] and x["settings_hash"] == ref_recs[k]["settings_hash"]
        assert x["report"]["score_after"] == ref_recs[k]["report"]["score_after"]


def test_sigkill_of_the_ray_driver_then_resume(ray_cluster, photos, tiny_bundle, local_run, tmp_path):
    ref, _ = local_run
    out = tmp_path / "killed"
    args = ["batch", str(photos), str(out), "--bundle", str(tiny_bundle), "--ray", "--address", ray_cluster,
            "--workers", "1", "-g", "6"]  # fmt: skip
    base = [a for a in BATCH_ARGS if a not in ("-g", "2")]
    proc = subprocess.Popen([sys.executable, "-c", CODE, *args, *base], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    end = time.monotonic() + 240
    try:
        while time.monotonic() < end and proc.poll() is None:
            p = out / B.RESULTS
            if p.exists() and p.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job finished before it could be killed: make it longer"
        proc.send_signal(signal.SIGKILL)  # the driver only (its own session): no cleanup of any kind runs
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = lines(out)
    assert 3 <= len(before) < 12 and len({x["key"] for x in before}) == len(before)
    time.sleep(2)  # the killed job's actors go with it
    r = run_beautyrt(*args, *base, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["skipped"] >= 3 and s["skipped"] + s["done"] == 12, s
    recs = lines(out)
    assert len(recs) == 12 and len({x["key"] for x in recs}) == 12 and all(x["status"] == "done" for x in recs)
    got = outputs(out)
    assert sorted(got) == sorted(ref), "every output exactly once, and no temporary file left"
    # -g 6 differs from the reference's -g 2: compare against a clean local run of the same settings
    clean = tmp_path / "clean"
    r = run_beautyrt("batch", str(photos), str(clean), "--bundle", str(tiny_bundle), "-g", "6", *base)
    assert r.returncode == 0, r.stderr
    assert got == outputs(clean), "an output written before the kill must be complete (the same bytes)"


# --- Ray Serve ----------------------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None, timeout: float = 60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def optimize(port: int, data: bytes, timeout: float = 60):
    q = "/v1/optimize?aligned=true&generations=2&popsize=8&seed=3"
    return request(port, "POST", q, data, {"Content-Type": "application/octet-stream", "Accept": "image/jpeg"}, timeout)


def ready(port: int) -> bool:
    try:
        return request(port, "GET", "/readyz", timeout=5)[0] == 200
    except OSError:
        return False


def replica_actors() -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]


def serve_running() -> int:
    """Replicas Serve's controller counts as RUNNING in the beautyrt app."""
    from ray import serve

    app = serve.status().applications.get("beautyrt")
    if app is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


@pytest.fixture(scope="module")
def ray_server(ray_cluster, tiny_bundle, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("rayserve") / "serve.log"
    cmd = [sys.executable, "-c", CODE, "serve", "--ray", "--address", ray_cluster, "--bundle", str(tiny_bundle),
           "--port", str(port), "--replicas", "2", "--ship-bundle", "--max-queue", "2",
           "--shutdown-grace", "5"]  # fmt: skip
    env = dict(os.environ)
    env.pop("BEAUTYRT_DEBUG", None)
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    end = time.monotonic() + 180
    while time.monotonic() < end and not ready(port):
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    assert ready(port), log.read_text()[-3000:]
    yield port, proc, log
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_serve_on_ray_has_the_cli_bytes_and_both_replicas_answer(ray_server, photos, tiny_bundle, tmp_path, cli):
    port, _, _ = ray_server
    src = photos / "a" / "p1.jpg"
    status, h, body = optimize(port, src.read_bytes())
    assert status == 200, body[:300]
    ref = tmp_path / "ref.jpg"
    c = cli("optimize", str(src), "-o", str(ref), "--bundle", str(tiny_bundle), *BATCH_ARGS)
    assert c.returncode == 0, c.stderr
    assert body == ref.read_bytes(), "Ray Serve's answer must be byte-identical to `beautyrt optimize`'s"
    seen: set[str] = set()
    lock = threading.Lock()

    statuses: list[int] = []
    deadline = time.monotonic() + 60

    def hit():
        # Serve's router picks a replica per request: keep asking (bounded: 50 each, 60 s) until both have
        # answered, so a busy or briefly slower replica does not make the test depend on luck
        for _ in range(50):
            s, hh, _ = request(port, "GET", "/v1/bundle")
            with lock:
                statuses.append(s)
                if s == 200:
                    seen.add(hh["x-beautyrt-replica"])
                if len(seen) == 2 or time.monotonic() > deadline:
                    return

    ts = [threading.Thread(target=hit) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert set(statuses) == {200}, statuses
    assert len(seen) == 2, f"both replicas must answer, saw {seen} in {len(statuses)} requests"
    assert len(replica_actors()) == 2


def test_a_killed_replica_is_replaced_under_load(ray_server, photos):
    import ray

    port, _, _ = ray_server
    data = (photos / "a" / "p0.jpg").read_bytes()
    results: list[tuple[float, float, int]] = []  # (start, end, status)
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + 90  # bounded in time, and in count below

    def load():
        for _ in range(150):
            if stop.is_set() or time.monotonic() > deadline:
                return
            t0 = time.monotonic()
            try:
                s = optimize(port, data, timeout=60)[0]
            except OSError:
                s = -1
            with lock:
                results.append((t0, time.monotonic(), s))

    ts = [threading.Thread(target=load) for _ in range(3)]
    for t in ts:
        t.start()
    time.sleep(3)
    victim = replica_actors()[0]
    kill_at = time.monotonic()
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    # Serve notices (its controller's view of the replica leaves RUNNING), starts a new replica; readiness and
    # two running replicas come back
    noticed_at = None
    end = time.monotonic() + 120
    while time.monotonic() < end:
        running = serve_running()
        if noticed_at is None and running < 2:
            noticed_at = time.monotonic()
        names = replica_actors()
        if noticed_at is not None and victim not in names and running == 2 and ready(port):
            break
        time.sleep(0.1)
    assert noticed_at is not None, "Serve never noticed the killed replica"
    recovered = time.monotonic() - kill_at
    time.sleep(3)  # some load on the recovered deployment
    stop.set()
    for t in ts:
        t.join(90)
    names = replica_actors()
    assert victim not in names and len(names) == 2, names
    assert ready(port)
    in_flight = [r for r in results if r[0] <= kill_at <= r[1]]
    bad = [r for r in results if r[2] != 200]
    # Until Serve has noticed the death, its proxy may still route a new request to the dead replica, which
    # fails like one in flight at the kill: both count as "in flight at the kill". Nothing after may fail.
    slack = 0.5  # the controller's news reaching the proxy's router (a long poll)
    cut = noticed_at + slack
    at_kill = [r for r in results if r[0] <= cut and r[1] >= kill_at]
    print(
        f"\nreplica kill: {len(results)} requests, {len(bad)} not 200 ({sorted({r[2] for r in bad})}), started "
        f"{[round(r[0] - kill_at, 3) for r in bad]} s after the kill; Serve noticed after "
        f"{noticed_at - kill_at:.2f} s; {len(in_flight)} in flight at the kill, {len(at_kill)} started before Serve "
        f"noticed (+{slack} s); readiness and 2 running replicas back after {recovered:.1f} s"
    )
    assert all(r[0] <= cut and r[1] >= kill_at for r in bad), f"a request after Serve noticed the kill failed: {bad}"
    # a request the dead replica held may also be lost outright (the client gave up: -1) -- only one that had
    # started before the kill; the others that failed were answered with an HTTP error
    assert all(r[2] in (408, 500, 502, 503) or (r[2] == -1 and r[0] <= kill_at) for r in bad), bad
    assert len(bad) <= len(at_kill)
    assert sum(1 for r in results if r[2] == 200 and r[0] > cut) >= 3


def test_sigterm_drains_and_deletes_the_app(ray_server):
    port, proc, log = ray_server
    from ray import serve

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0, log.read_text()[-3000:]
    assert "beautyrt" not in serve.status().applications
    assert not ready(port)
    assert replica_actors() == []


def test_a_replica_refuses_a_bundle_that_is_not_the_drivers(ray_cluster, tiny_bundle):
    """Every replica checks the bundle hash the driver expects: a mismatch keeps the app from starting."""
    from ray import serve

    from beautyrt.runtime.scale.serve_ray import build

    app = build({"bundle": str(tiny_bundle), "expect_hash": "0" * 64, "replicas": 1, "warmup": False})
    with pytest.raises(RuntimeError, match="(?i)fail"):
        serve.run(app, name="beautyrt-badhash", route_prefix="/badhash", blocking=False)
    serve.delete("beautyrt-badhash")

"""Limits and life cycle through the real server: full queue (503 + Retry-After), timeout (504), a client that
disconnects, an abandoned job, graceful shutdown (exit 0), and refusals at start-up (bad bundle, unset token)."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time

import pytest

from tests.conftest import EXAMPLE
from tests.robustness.test_bad_inputs import BUNDLE_CASES
from tests.serve.conftest import needs_serve, start_server, wait_for

pytestmark = needs_serve
PHOTO = EXAMPLE.read_bytes()
LONG = "/v1/jobs?generations=10000&popsize=4"


def _gens(srv) -> float:
    return srv.value("beautyrt_search_generations_total")


def _stops_growing(srv, settle: float = 0.6) -> None:
    """The generation counter stops: the search really ended (no thread left searching)."""
    time.sleep(settle)
    a = _gens(srv)
    time.sleep(0.8)
    assert _gens(srv) == a, "the search is still running"


def test_queue_full_is_503_with_retry_after(limited):
    before = limited.value("beautyrt_rejected_total", reason="queue_full")
    a = limited.post_image(LONG, PHOTO).json()["id"]
    wait_for(lambda: limited.get(f"/v1/jobs/{a}").json()["state"] == "running", 20)
    b = limited.post_image(LONG, PHOTO).json()["id"]  # waits: the queue holds one
    assert limited.get(f"/v1/jobs/{b}").json()["state"] == "queued"
    assert limited.value("beautyrt_queue_depth") == 1 and limited.value("beautyrt_in_flight") == 1
    for path in (LONG, "/v1/optimize?generations=1&popsize=4"):
        r = limited.post_image(path, PHOTO)
        assert r.status == 503, (r.status, r.body[:200])
        assert int(r.headers["retry-after"]) >= 1
        err = r.json()["error"]
        assert err["code"] == 82 and err["kind"] == "Busy" and "queue is full" in err["message"], err
    assert limited.value("beautyrt_rejected_total", reason="queue_full") == before + 2
    for jid in (b, a):
        assert limited.request("DELETE", f"/v1/jobs/{jid}").json()["state"] == "cancelled"
    assert limited.get(f"/v1/jobs/{b}").json()["generation"] == 0, "the queued job never ran"
    _stops_growing(limited)
    assert limited.value("beautyrt_in_flight") == 0 and limited.value("beautyrt_queue_depth") == 0
    assert limited.ready()
    assert limited.post_image("/v1/optimize?generations=1&popsize=4", PHOTO).status == 200


def test_timeout_is_504_and_stops_the_search(limited):
    before = limited.value("beautyrt_cancelled_total", reason="timeout")
    t0 = time.monotonic()
    r = limited.post_image("/v1/optimize?generations=10000&popsize=4", PHOTO)
    took = time.monotonic() - t0
    assert r.status == 504, (r.status, r.body[:200])
    err = r.json()["error"]
    assert err["code"] == 60 and err["kind"] == "RequestTimeout" and "--timeout" in err["message"]
    assert 2.5 < took < 15, took
    assert wait_for(lambda: limited.value("beautyrt_cancelled_total", reason="timeout") == before + 1, 10)
    _stops_growing(limited)
    assert limited.value("beautyrt_in_flight") == 0


def test_a_client_that_disconnects_stops_its_search(limited):
    before = limited.value("beautyrt_cancelled_total", reason="disconnect")
    s = socket.create_connection(("127.0.0.1", limited.port))
    s.sendall(
        b"POST /v1/optimize?generations=10000&popsize=4 HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
        + f"Content-Length: {len(PHOTO)}\r\n\r\n".encode()
        + PHOTO
    )
    g0 = _gens(limited)
    wait_for(lambda: limited.value("beautyrt_in_flight") == 1 and _gens(limited) > g0 + 5, 20)
    s.close()
    wait_for(lambda: limited.value("beautyrt_in_flight") == 0, 10)
    assert limited.value("beautyrt_cancelled_total", reason="disconnect") == before + 1
    _stops_growing(limited)
    assert limited.ready()


def test_a_job_nobody_polls_is_cancelled(limited):
    """The page polls; when it is closed the job is no longer polled and is cancelled (--job-abandon 2)."""
    before = limited.value("beautyrt_cancelled_total", reason="abandoned")
    jid = limited.post_image(LONG, PHOTO).json()["id"]
    wait_for(lambda: limited.value("beautyrt_cancelled_total", reason="abandoned") == before + 1, 15, 0.3)
    j = limited.get(f"/v1/jobs/{jid}").json()
    assert j["state"] == "cancelled" and j["error"]["code"] == 60 and "abandoned" in j["error"]["message"]
    _stops_growing(limited)


def test_graceful_shutdown_cancels_running_work_and_exits_0(tiny_bundle_with_detector, tmp_path):
    srv = start_server(tiny_bundle_with_detector, tmp_path, "--workers", "1", "--shutdown-grace", "1")
    got = {}

    def client():
        got["r"] = srv.post_image("/v1/optimize?generations=10000&popsize=4", PHOTO, timeout=60)

    t = threading.Thread(target=client)
    t.start()
    wait_for(lambda: srv.value("beautyrt_in_flight") == 1, 20)
    queued = srv.post_image(LONG, PHOTO)  # a second one waits in the queue
    assert queued.status == 202
    t0 = time.monotonic()
    rc = srv.stop(signal.SIGTERM, timeout=30)
    took = time.monotonic() - t0
    t.join(10)
    assert rc == 0, srv.log.read_text()[-2000:]
    assert took < 15, took
    r = got["r"]
    assert r.status == 503 and r.json()["error"]["code"] == 60 and "shutting down" in r.json()["error"]["message"]
    assert "Traceback" not in srv.log.read_text()


def test_readyz_and_healthz(limited):
    assert limited.get("/healthz").json() == {"status": "ok"}
    r = limited.get("/readyz").json()
    assert r["ready"] is True and len(r["bundle_hash"]) == 64


@pytest.mark.parametrize("case", sorted(BUNDLE_CASES))
def test_a_bad_bundle_is_refused_at_start(case, cli, tiny_bundle_with_detector, tmp_path):
    build, code, _, pattern = BUNDLE_CASES[case]
    bundle = build(tiny_bundle_with_detector, tmp_path)
    r = cli("serve", "--bundle", str(bundle), "--port", "0", timeout=60)
    assert r.returncode == code, (r.returncode, r.stderr[-500:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("beautyrt: error:") and re.search(pattern, lines[0]), r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize(
    "args, pattern",
    [
        (
            ["--api-key-env", "BEAUTYRT_SURELY_UNSET_VAR"],
            r"BEAUTYRT_SURELY_UNSET_VAR: that environment variable is not set",
        ),
        (["--workers", "0"], r"--workers must be an integer in 1\.\.256"),
        (["--max-upload-mb", "0"], r"--max-upload-mb must be a number in \(0, 4096\]"),
        (["--cors-origin", "evil"], r"--cors-origin must be \*"),
    ],
)
def test_bad_serve_options_are_usage_errors(args, pattern, cli, tiny_bundle_with_detector):
    r = cli("serve", "--bundle", str(tiny_bundle_with_detector), "--port", "0", *args, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and re.search(pattern, lines[0]), r.stderr

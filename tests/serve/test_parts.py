"""The service's parts without a server: error mapping, content negotiation, the kept-results LRU, the pool."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.serve.conftest import needs_serve

pytestmark = needs_serve


def test_every_error_maps_to_one_status_and_input_errors_are_4xx():
    import beautyrt.engines.errors as ee
    import beautyrt.export.errors  # noqa: F401
    import beautyrt.runtime.errors as re_
    import beautyrt.runtime.serve.errors as se

    want = {
        ee.UsageError: 400,
        se.Unauthorized: 401,
        se.NotFound: 404,
        se.NotAcceptable: 406,
        se.JobPending: 409,
        se.UploadTooLarge: 413,
        re_.ImageDecodeError: 415,
        re_.ImageTooLargeError: 415,
        re_.ImageTooSmallError: 422,
        re_.NoFaceError: 422,
        se.Busy: 503,
        re_.Cancelled: 503,
        se.RequestTimeout: 504,
        ee.BundleNotFoundError: 503,
    }
    for cls, status in want.items():
        e = cls("x") if cls is not se.Busy else se.Busy("x", 3)
        assert se.status_of(e) == status, cls
        body = se.error_body(e)["error"]
        assert body == {"code": cls.exit_code, "kind": cls.__name__, "message": "x"}
    assert se.error_headers(se.Busy("x", 3.4))["Retry-After"] == "3"
    assert se.status_of(ValueError("bug")) == 500
    assert se.error_body(KeyError("k\nline"))["error"]["code"] == 70
    assert "\n" not in se.error_body(ValueError("a\nb"))["error"]["message"]


def test_negotiation():
    from beautyrt.runtime.serve.errors import NotAcceptable
    from beautyrt.runtime.serve.params import negotiate

    assert negotiate(None, None, "PNG") == "PNG"
    assert negotiate("*/*", None, "WEBP") == "WEBP"
    assert negotiate("image/png;q=0.5, image/webp", None, "JPEG") == "WEBP"
    assert negotiate("text/html;q=1, application/json;q=0.9", None, "JPEG") == "JSON"
    assert negotiate("image/png", "JPEG", "PNG") == "JPEG", "format= wins over Accept"
    assert negotiate("image/jpeg;q=0, image/*", None, "PNG") == "PNG"
    with pytest.raises(NotAcceptable):
        negotiate("text/html", None, "JPEG")


def _result(rid: str, side: int):
    from beautyrt.runtime.settings import Settings
    from beautyrt.runtime.types import Photo, Result

    img = np.zeros((side, side, 3), np.uint8)
    return Result(img, Photo(img.copy()), [], Settings(), "h", {}, result_id=rid)


def test_kept_results_are_bounded_in_count_and_bytes():
    from beautyrt.runtime.serve.app import Kept, ResultCache
    from beautyrt.runtime.serve.errors import NotFound

    c = ResultCache(max_items=3, max_bytes=10**9)
    for i in range(5):
        c.put(Kept(_result(f"r{i}", 8), {}, "PNG"))
    assert c.stats()[0] == 3
    with pytest.raises(NotFound):
        c.get("r0")
    c.get("r2")  # touched: now the most recent
    c.put(Kept(_result("r5", 8), {}, "PNG"))
    c.get("r2")
    with pytest.raises(NotFound):
        c.get("r3")
    one = 2 * 100 * 100 * 3
    b = ResultCache(max_items=100, max_bytes=int(2.5 * one))
    for i in range(4):
        b.put(Kept(_result(f"b{i}", 100), {}, "PNG"))
    n, nbytes = b.stats()
    assert n == 2 and nbytes == 2 * one


def _spin(job):
    while not job.should_stop():
        job.progress(job.generation + 1, 10**6, 0.0)
        time.sleep(0.001)
    from beautyrt.runtime.errors import Cancelled

    raise Cancelled("stopped")


def test_pool_admission_cancel_and_shutdown():
    from beautyrt.runtime.serve.errors import Busy
    from beautyrt.runtime.serve.pool import Job, WorkerPool

    finished = []
    pool = WorkerPool(1, 1, on_finish=finished.append)
    pool.start()
    a, b = pool.submit(Job(_spin)), pool.submit(Job(_spin))
    deadline = time.monotonic() + 10
    while a.state != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.state == "running" and b.state == "queued"
    assert pool.in_flight() == 1 and pool.queue_depth() == 1
    with pytest.raises(Busy, match="queue is full"):
        pool.submit(Job(_spin))
    t = threading.Thread(target=pool.shutdown, args=(0.2,))
    t.start()
    t.join(15)
    assert not t.is_alive()
    assert a.state == b.state == "cancelled" and a.cancel_reason == b.cancel_reason == "shutdown"
    assert b.generation == 0 and a.generation > 0
    g = a.generation
    time.sleep(0.05)
    assert a.generation == g
    assert sorted(j.state for j in finished) == ["cancelled", "cancelled"] and pool.in_flight() == 0
    with pytest.raises(Busy, match="shutting down"):
        pool.submit(Job(_spin))


def test_a_deadline_cancels_as_a_timeout():
    from beautyrt.runtime.serve.errors import RequestTimeout
    from beautyrt.runtime.serve.pool import Job, WorkerPool

    pool = WorkerPool(1, 0)
    pool.start()
    j = pool.submit(Job(_spin, deadline=time.monotonic() + 0.2))
    assert j.wait(10)
    assert j.state == "cancelled" and isinstance(j.error, RequestTimeout)
    pool.shutdown(0.1)

"""A bounded pool of worker threads for the CPU-bound work (decode, search, compose, encode), and the jobs it
runs. The event loop only submits jobs and awaits them; it never runs a search.

Admission is bounded: at most ``workers`` jobs run and ``max_queue`` wait; a job submitted beyond that is
refused at once with :class:`Busy` (HTTP 503 + Retry-After). Every job carries a cancel flag that the search
checks before each generation (``Beautifier.optimize(..., cancel=job.should_stop)``); it is set when the
client disconnects, when the request's deadline passes, when nobody polls a job for too long, on DELETE and on
shutdown. No global state: each app owns its pool.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import threading
import time
from typing import Any, Callable, Optional

from ..errors import BeautyrtError, Cancelled
from .errors import Busy, RequestTimeout

log = logging.getLogger("beautyrt")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


class Job:
    """One unit of work: ``fn(job)`` runs in a worker thread; ``progress``/``should_stop`` are its hooks."""

    def __init__(
        self,
        fn: Callable[["Job"], Any],
        *,
        kind: str = "optimize",
        deadline: Optional[float] = None,
        abandon_after: Optional[float] = None,
        info: Optional[dict] = None,
    ):
        self.id = secrets.token_hex(12)  # unguessable: a job id is the capability to read its result
        self.kind = kind
        self.fn = fn
        self.info = dict(info or {})
        self.state = QUEUED
        self.created = time.time()
        self.started: Optional[float] = None
        self.finished: Optional[float] = None
        self.generation = 0
        self.total: Optional[int] = None
        self.best: Optional[float] = None
        self.best_history: list[float] = []
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.cancel_reason: Optional[str] = None
        self.deadline = deadline  # time.monotonic() value
        self.abandon_after = abandon_after
        self.last_seen = time.monotonic()
        self.on_generation: Optional[Callable[[], None]] = None
        self.on_release: Optional[Callable[["Job"], None]] = None
        self._finishing = False
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[["Job"], None]] = []

    # --- cancellation ------------------------------------------------------------------------------------
    def cancel(self, reason: str) -> bool:
        """Ask the job to stop (before its next generation). True when this call set the flag."""
        with self._lock:
            if self.cancel_reason is not None or self._done.is_set():
                return False
            self.cancel_reason = reason
            self._cancel.set()
            return True

    def should_stop(self) -> bool:
        """The cancel check handed to the search: the flag, the deadline, or nobody watching any more."""
        if self._cancel.is_set():
            return True
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            self.cancel("timeout")
        elif self.abandon_after is not None and now - self.last_seen > self.abandon_after:
            self.cancel("abandoned")
        return self._cancel.is_set()

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    # --- progress ----------------------------------------------------------------------------------------
    def progress(self, generation: int, total: int, best: float) -> None:
        self.generation, self.total, self.best = int(generation), int(total), float(best)
        if len(self.best_history) < 100_000:
            self.best_history.append(float(best))
        if self.on_generation is not None:
            self.on_generation()

    # --- completion --------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._done.wait(timeout)

    def add_done_callback(self, cb: Callable[["Job"], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(cb)
                return
        cb(self)

    def _cancelled_error(self) -> Cancelled:
        if self.cancel_reason == "timeout":
            return RequestTimeout("the request ran past the server's timeout (--timeout); its search was cancelled")
        if self.cancel_reason == "shutdown":
            return Cancelled("the server is shutting down; the work was cancelled (retry on another instance)")
        return Cancelled(f"cancelled ({self.cancel_reason or 'by the caller'})")

    def run(self) -> None:
        """Run in the calling (worker) thread; never raises."""
        if self.should_stop():
            self._finish(CANCELLED, error=self._cancelled_error())
            return
        self.state, self.started = RUNNING, time.time()
        try:
            value = self.fn(self)
        except Cancelled as e:
            self._finish(CANCELLED, error=self._cancelled_error() if self.cancel_reason else e)
        except BeautyrtError as e:
            self._finish(FAILED, error=e)
        except BaseException as e:  # a bug: logged with its traceback on the server's log, one line to the client
            log.error("beautyrt: internal error in %s job %s", self.kind, self.id, exc_info=e)
            self._finish(FAILED, error=e)
        else:
            self._finish(DONE, value=value)

    def _finish(self, state: str, *, value: Any = None, error: Optional[BaseException] = None) -> None:
        with self._lock:
            if self._finishing:
                return
            self._finishing = True
            self.state, self.value, self.error, self.finished = state, value, error, time.time()
        if self.on_release is not None:  # the pool's bookkeeping first, so a waiter sees it done
            try:
                self.on_release(self)
            except Exception as e:
                log.error("beautyrt: job bookkeeping failed: %s", e)
        with self._lock:
            self._done.set()
            cbs, self._callbacks = self._callbacks, []
        for cb in cbs:
            try:
                cb(self)
            except Exception as e:  # a callback must never kill a worker
                log.error("beautyrt: job callback failed: %s", e)

    def seconds(self) -> Optional[float]:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


async def wait_async(job: Job) -> None:
    """Await a job's completion from the event loop (the job runs in a worker thread)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def _resolve() -> None:
        if not fut.done():
            fut.set_result(None)

    def _set(_: Job) -> None:
        loop.call_soon_threadsafe(_resolve)

    job.add_done_callback(_set)
    await fut


class WorkerPool:
    """``workers`` threads taking jobs from a FIFO queue of at most ``max_queue`` waiting jobs."""

    def __init__(self, workers: int, max_queue: int, *, on_finish: Optional[Callable[[Job], None]] = None):
        self.workers, self.max_queue = int(workers), int(max_queue)
        self._q: collections.deque[Job] = collections.deque()
        self._running: set[Job] = set()
        self._cv = threading.Condition()
        self._closed = False
        self._on_finish = on_finish
        self._durations: collections.deque[float] = collections.deque(maxlen=32)
        self._threads = [
            threading.Thread(target=self._loop, name=f"beautyrt-worker-{i}", daemon=True) for i in range(self.workers)
        ]
        self._shutdown_lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            for t in self._threads:
                t.start()

    # --- state for metrics and readiness --------------------------------------------------------------------
    def queue_depth(self) -> int:
        return len(self._q)

    def in_flight(self) -> int:
        return len(self._running)

    @property
    def closed(self) -> bool:
        return self._closed

    def retry_after(self) -> float:
        """Seconds a refused client should wait: the typical job time times the queue ahead per worker."""
        typical = sorted(self._durations)[len(self._durations) // 2] if self._durations else 1.0
        return max(1.0, typical * (1 + len(self._q)) / self.workers)

    # --- submit ----------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        with self._cv:
            if self._closed:
                raise Busy("the server is shutting down; not accepting new work", retry_after=5)
            if len(self._q) + len(self._running) >= self.workers + self.max_queue:
                raise Busy(
                    f"the work queue is full ({len(self._running)} running, {len(self._q)} waiting; "
                    f"--workers {self.workers}, --max-queue {self.max_queue}): retry later",
                    retry_after=self.retry_after(),
                )
            job.on_release = self._release
            self._q.append(job)
            self._cv.notify()
        return job

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._closed:
                    self._cv.wait()
                if not self._q:
                    return
                job = self._q.popleft()
                self._running.add(job)
            job.run()  # never raises; its end calls _release before anyone waiting is woken

    def _release(self, job: Job) -> None:
        with self._cv:
            self._running.discard(job)
        d = job.seconds()
        if d is not None and job.state == DONE:
            self._durations.append(d)
        if self._on_finish is not None:
            self._on_finish(job)

    # --- shutdown --------------------------------------------------------------------------------------------
    def close(self) -> list[Job]:
        """Stop accepting work and cancel every queued job (they finish as cancelled); returns those running."""
        with self._cv:
            self._closed = True
            queued = list(self._q)
            self._q.clear()
            running = list(self._running)
            self._cv.notify_all()
        for j in queued:
            j.cancel("shutdown")
            j.run()  # finishes it as cancelled without running its work
        return running

    def shutdown(self, grace: float, hard: float = 10.0) -> None:
        """Graceful stop: no new work, queued jobs cancelled, running ones get ``grace`` seconds to finish and
        are then cancelled (they stop before their next generation); threads joined within ``hard`` more."""
        with self._shutdown_lock:
            running = self.close()
            end = time.monotonic() + grace
            for j in running:
                j.wait(max(0.0, end - time.monotonic()))
            for j in running:
                if not j.done:
                    j.cancel("shutdown")
            end = time.monotonic() + hard
            for t in self._threads:
                if t.is_alive():
                    t.join(max(0.0, end - time.monotonic()))
            alive = [t.name for t in self._threads if t.is_alive()]
            if alive:
                log.warning("beautyrt: %d worker(s) still busy after shutdown: %s", len(alive), ", ".join(alive))

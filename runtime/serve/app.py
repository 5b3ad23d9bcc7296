"""The ASGI app: ``create_app(config) -> FastAPI`` over one shared, warmed-up ``Beautifier``.

Routes (README "HTTP service" has the reference): ``GET /`` (the page), ``GET /static/{file}``, ``GET /healthz``,
``GET /readyz``, ``GET /v1/bundle``, ``GET /metrics``, ``POST /v1/optimize`` (synchronous), ``POST /v1/jobs``,
``GET|DELETE /v1/jobs/{id}``, ``GET /v1/jobs/{id}/result``, ``POST /v1/compose``, ``GET /v1/results/{id}``.

The CPU-bound work (decode, search, compose, encode) runs in the bounded worker pool (``pool.py``) or, for
compose and encodes of kept results, in a small bounded thread limiter; the event loop only parses requests,
submits jobs and awaits them. A synchronous request whose client disconnects, or that runs past ``--timeout``,
cancels its search; so do shutdown and DELETE for jobs, and a job nobody polls any more.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Optional

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..beautifier import Beautifier
from ..errors import BeautyrtError, UsageError
from ..ops.imageio import load_image
from ..ops.imaging import to_uint8
from ..settings import DEFAULT_POPSIZE, STRENGTH_RANGE, Settings, check_float
from ..stages.encode import beautyrt_version, encode
from ..types import Result
from . import body as body_mod
from . import params as P
from .config import ServeConfig
from .errors import Busy, JobPending, NotFound, Unauthorized, error_body, error_headers, one_line, status_of
from .metrics import CONTENT_TYPE, Metrics
from .pool import CANCELLED, DONE, FINISHED, QUEUED, RUNNING, Job, WorkerPool, wait_async

log = logging.getLogger("beautyrt")

OPEN_PATHS = ("/healthz", "/readyz", "/", "/static/", "/openapi.json")  # everything else needs the token, if set
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
MAX_HEADER_REPORT = 16 * 1024  # a bigger report drops its history from the header (GET /v1/results/{id} has it)
SMALL_BODY = 64 * 1024  # compose requests carry a few parameters


# --------------------------------------------------------------------------------------------------------------
@dataclass
class Kept:
    """One kept result: the Result (decoded photo, faces' edits), its report, the input's format."""

    result: Result
    report: dict
    input_format: str
    nbytes: int = 0


def _nbytes(result: Result) -> int:
    n = result.image.nbytes + result.photo.rgb.nbytes
    for f in result.faces:
        for a in (
            f.aligned.crop,
            f.inversion.w_start,
            f.inversion.g_start,
            f.edit.g_best,
            f.edit.delta,
            f.edit.generated,
        ):
            if isinstance(a, np.ndarray):
                n += a.nbytes
    return n


class ResultCache:
    """The last N results (LRU), bounded in count and in bytes; thread-safe."""

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._d: collections.OrderedDict[str, Kept] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, kept: Kept) -> None:
        kept.nbytes = _nbytes(kept.result)
        rid = kept.result.result_id
        with self._lock:
            old = self._d.pop(rid, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._d[rid] = kept
            self._bytes += kept.nbytes
            while len(self._d) > 1 and (len(self._d) > self.max_items or self._bytes > self.max_bytes):
                _, ev = self._d.popitem(last=False)
                self._bytes -= ev.nbytes

    def get(self, rid: str) -> Kept:
        with self._lock:
            kept = self._d.get(rid)
            if kept is None:
                raise NotFound(
                    f"no result {rid!r} is kept here (the server keeps the last {self.max_items} results, "
                    f"--results / --results-mb): run the search again"
                )
            self._d.move_to_end(rid)
            return kept

    def stats(self) -> tuple[int, int]:
        with self._lock:
            return len(self._d), self._bytes


class JobStore:
    """Job records by id; finished ones beyond ``max_items`` are dropped oldest first (running/queued ones are
    bounded by the pool's admission)."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._d: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._d[job.id] = job
            if len(self._d) > self.max_items:
                for jid in [j.id for j in self._d.values() if j.state in FINISHED]:
                    if len(self._d) <= self.max_items:
                        break
                    del self._d[jid]

    def get(self, jid: str) -> Job:
        with self._lock:
            job = self._d.get(jid)
        if job is None:
            raise NotFound(f"no job {jid!r} (unknown, or finished long enough ago to be dropped: --jobs)")
        return job

    def discard(self, jid: str) -> None:
        with self._lock:
            self._d.pop(jid, None)


# --------------------------------------------------------------------------------------------------------------
def input_format(data: bytes) -> str:
    """The output format a request gets by default: the input's own (JPEG, PNG or WebP), else PNG."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return "PNG"


def route_label(path: str) -> str:
    """A bounded set of metric labels (ids are not labels)."""
    exact = {
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/bundle",
        "/v1/optimize",
        "/v1/jobs",
        "/v1/compose",
        "/openapi.json",
    }
    if path in exact:
        return path
    if path.startswith("/static/"):
        return "/static/{file}"
    if path.startswith("/v1/jobs/"):
        return "/v1/jobs/{id}/result" if path.endswith("/result") else "/v1/jobs/{id}"
    if path.startswith("/v1/results/"):
        return "/v1/results/{id}"
    return "other"


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


async def _wait_disconnect(receive: Callable) -> None:
    """Returns when the client has gone (after the body was read, receive() only reports the disconnect)."""
    while True:
        msg = await receive()
        if msg.get("type") == "http.disconnect":
            return


class _ClientGone(Exception):
    pass


# --------------------------------------------------------------------------------------------------------------
class Service:
    """Everything one app owns: config, Beautifier, pool, kept results, jobs, metrics. No global state."""

    def __init__(
        self,
        config: ServeConfig,
        beautifier: Optional[Beautifier] = None,
        on_fatal: Optional[Callable[[BaseException], None]] = None,
    ):
        self.config = config
        self.beautifier = beautifier
        self.owns_beautifier = beautifier is None
        self.on_fatal = on_fatal
        self.state = "loading"
        self.load_error: Optional[BaseException] = None
        self.closing = False
        self.started_at = time.time()
        self.pool = WorkerPool(config.workers, config.max_queue, on_finish=self._finished)
        self.results = ResultCache(config.results, int(config.results_mb * 2**20))
        self.jobs = JobStore(config.jobs)
        self.metrics = Metrics(
            queue_depth=self.pool.queue_depth,
            in_flight=self.pool.in_flight,
            ready=lambda: 1.0 if self.ready else 0.0,
        )
        self.limiter = anyio.CapacityLimiter(max(2, config.workers))  # compose / encode of kept results
        self._loader: Optional[threading.Thread] = None
        self._stopper: Optional[threading.Thread] = None
        self._stop_lock = threading.Lock()
        self.api_key = config.api_key

    # --- life cycle ---------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state == "ready" and not self.closing

    def start(self) -> None:
        self.pool.start()
        self._loader = threading.Thread(target=self._load, name="beautyrt-load", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        try:
            t0 = time.perf_counter()
            if self.beautifier is None:
                c = self.config
                self.beautifier = Beautifier(c.bundle, backend=c.backend, device=c.device, threads=c.engine_threads)
            if self.config.warmup:
                self._warm_up(self.beautifier)
            self.state = "ready"
            log.info(
                "beautyrt: bundle %s loaded and warmed up in %.1fs",
                self.beautifier.bundle_hash[:16],
                time.perf_counter() - t0,
            )
        except BaseException as e:
            self.state, self.load_error = "failed", e
            log.error("beautyrt: error: %s", one_line(e))
            if self.on_fatal is not None:
                self.on_fatal(e)

    @staticmethod
    def _warm_up(b: Beautifier) -> None:
        """One short search on a crop the bundle renders itself (every engine the search uses runs once), and
        the detector once, so the first request does not pay for onnxruntime's first-run costs."""
        w_avg = np.broadcast_to(b.w_avg, (1, b.num_ws, b.w_dim)).astype(np.float32)
        crop = to_uint8(b.models.synthesize(w_avg)[0])
        r = b.optimize(crop, Settings(generations=1, popsize=DEFAULT_POPSIZE), aligned=True)
        encode(b.compose(r, 0.5), "JPEG", 90)
        if b.has_detector:
            b.detect(np.zeros((128, 128, 3), np.uint8))

    def begin_shutdown(self) -> None:
        """Stop taking work now (readyz 503, queued jobs cancelled); running jobs get the grace time, then are
        cancelled. Safe to call from a signal handler; idempotent."""
        with self._stop_lock:
            self.closing = True
            if self._stopper is None:
                self._stopper = threading.Thread(
                    target=self.pool.shutdown, args=(self.config.shutdown_grace,), name="beautyrt-stop", daemon=True
                )
                self._stopper.start()

    def stop(self) -> None:
        self.begin_shutdown()
        assert self._stopper is not None
        self._stopper.join(self.config.shutdown_grace + 15.0)
        if self._loader is not None:
            self._loader.join(1.0)
        if self.owns_beautifier and self.beautifier is not None and not self.pool.in_flight():
            self.beautifier.close()

    def require_ready(self) -> Beautifier:
        if self.closing:
            raise Busy("the server is shutting down; not accepting new work", retry_after=5)
        if self.state == "failed" and self.load_error is not None:
            raise self.load_error
        if self.state != "ready" or self.beautifier is None:
            raise Busy("the server is still loading the bundle and warming up", retry_after=2)
        return self.beautifier

    # --- bookkeeping --------------------------------------------------------------------------------------------
    def _finished(self, job: Job) -> None:
        self.metrics.jobs.labels(job.kind, job.state).inc()
        if job.state == CANCELLED:
            self.metrics.cancelled.labels(job.cancel_reason or "client").inc()
        n, b = self.results.stats()
        self.metrics.results.set(n)
        self.metrics.results_bytes.set(b)

    def new_job(self, fn: Callable[[Job], Any], *, kind: str, deadline: Optional[float], abandon: bool) -> Job:
        job = Job(fn, kind=kind, deadline=deadline, abandon_after=self.config.job_abandon_s if abandon else None)
        job.on_generation = self.metrics.generations.inc
        try:
            self.pool.submit(job)
        except Busy:
            self.metrics.rejected.labels("queue_full" if not self.pool.closed else "shutting_down").inc()
            raise
        return job

    # --- the work (runs in a worker thread) ---------------------------------------------------------------------
    def optimize_work(self, data: bytes, p: P.OptimizeParams, fmt: Optional[str]) -> Callable[[Job], dict]:
        b = self.beautifier
        assert b is not None
        in_fmt = input_format(data)

        def work(job: Job) -> dict:
            t0 = time.perf_counter()
            rgb = load_image(data, name="upload")
            decode_s = time.perf_counter() - t0
            result = b.optimize(rgb, p.settings, aligned=p.aligned, progress=job.progress, cancel=job.should_stop)
            result.timings["decode"] = result.timings.get("decode", 0.0) + decode_s
            result.timings["total"] = result.timings.get("total", 0.0) + decode_s
            out = None
            if fmt is not None:
                out = self.encode_result(result, fmt if fmt != "JSON" else in_fmt, p.quality)
            rep = self.report_of(result, p.aligned)
            self.results.put(Kept(result, rep, in_fmt))
            self.metrics.observe_timings(result.timings)
            job.info["result_id"] = result.result_id
            return {"result_id": result.result_id, "report": rep, "data": out, "input_format": in_fmt}

        return work

    @staticmethod
    def encode_result(result: Result, fmt: str, quality: int) -> bytes:
        """``encode`` as ``beautyrt optimize`` writes it (the same bytes), timed into the result's timings."""
        t0 = time.perf_counter()
        data = encode(result, fmt, quality)
        dt = time.perf_counter() - t0
        result.timings["encode"] = dt
        return data

    @staticmethod
    def report_of(result: Result, aligned: bool) -> dict:
        rep = result.report()
        rep.update({"beautyrt_version": beautyrt_version(), "aligned_input": aligned})
        return rep


# --------------------------------------------------------------------------------------------------------------
def _error_response(e: BaseException) -> JSONResponse:
    return JSONResponse(error_body(e), status_code=status_of(e), headers=error_headers(e))


def _image_response(data: bytes, fmt: str, report: dict, *, status: int = 200, name: str = "beautified") -> Response:
    header = compact(report)
    if len(header) > MAX_HEADER_REPORT:
        short = {k: v for k, v in report.items() if k != "history"}
        short["history_omitted"] = True
        header = compact(short)
    headers = {
        "X-Beautyrt-Report": header,
        "X-Beautyrt-Result-Id": str(report.get("result_id", "")),
        "Content-Disposition": f'inline; filename="{name}{P.EXT[fmt]}"',
        "Cache-Control": "no-store",
    }
    return Response(content=data, status_code=status, media_type=P.MEDIA[fmt], headers=headers)


def _json_result(data: bytes, fmt: str, report: dict) -> JSONResponse:
    return JSONResponse(
        {
            "report": report,
            "image": base64.b64encode(data).decode("ascii"),
            "format": fmt.lower(),
            "media_type": P.MEDIA[fmt],
            "result_id": report.get("result_id"),
        },
        headers={"Cache-Control": "no-store"},
    )


def _openapi_params(names: list[str]) -> list[dict]:
    types = {**{n: "integer" for n in P.INT}, **{n: "number" for n in P.FLOAT}, **{n: "boolean" for n in P.BOOL}}
    return [
        {"name": n, "in": "query", "required": False, "schema": {"type": types.get(n, "string")}} for n in sorted(names)
    ]


_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def create_app(
    config: ServeConfig,
    beautifier: Optional[Beautifier] = None,
    *,
    on_fatal: Optional[Callable[[BaseException], None]] = None,
) -> FastAPI:
    """The service as an ASGI app. ``beautifier``: an already loaded one (else the bundle is loaded in the
    background at start-up; ``/readyz`` says when it is loaded and warmed up)."""
    config = config.validate()
    svc = Service(config, beautifier, on_fatal)

    async def lifespan(app: FastAPI):
        svc.start()
        if not config.is_loopback and svc.api_key is None:
            log.warning(
                "beautyrt: listening on %s without --api-key-env: anyone who can reach it can use it", config.host
            )
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(svc.stop)

    app = FastAPI(
        title="beautyrt",
        version=beautyrt_version(),
        description="Face beautification by StyleGAN latent search (beautyrt). Every output is AI-edited and says so.",
        docs_url=None,  # FastAPI's docs pages load their scripts from a CDN: the page must work offline
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = svc

    # --- errors: one status per beautyrt error, JSON body, never a traceback ------------------------------------
    @app.exception_handler(BeautyrtError)
    async def _beautyrt_error(request: Request, e: BeautyrtError):
        return _error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        return _error_response(UsageError(f"bad request: {one_line(e)[:300]}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        if e.status_code == 404:
            err: BaseException = NotFound(f"no route {request.method} {request.url.path}")
        else:
            err = UsageError(f"{request.method} {request.url.path}: {e.detail}")
        resp = _error_response(err)
        resp.status_code = e.status_code
        return resp

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        return _error_response(e)

    # --- gate: auth, metrics, request id (a plain ASGI middleware: streaming and disconnects pass through) ------
    token = svc.api_key.encode() if svc.api_key else None

    class Gate:
        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            t0 = time.perf_counter()
            path, method = scope.get("path", ""), scope.get("method", "")
            label = route_label(path)
            status = {"code": 500}

            async def send_wrapped(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                    hdrs = list(message.get("headers", []))
                    hdrs.append((b"x-content-type-options", b"nosniff"))
                    message = {**message, "headers": hdrs}
                await send(message)

            try:
                is_open = path in OPEN_PATHS or path.startswith("/static/")
                if token is not None and not is_open and method != "OPTIONS":
                    auth = dict(scope.get("headers", [])).get(b"authorization", b"")
                    scheme, _, given = auth.partition(b" ")
                    if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), token):
                        svc.metrics.rejected.labels("unauthorized").inc()
                        err = Unauthorized(
                            "missing or wrong bearer token: send Authorization: Bearer <token> "
                            "(the server reads it from the variable named by --api-key-env)"
                        )
                        await _error_response(err)(scope, receive, send_wrapped)
                        return
                await self.inner(scope, receive, send_wrapped)
            finally:
                svc.metrics.requests.labels(label, method, str(status["code"])).inc()
                svc.metrics.latency.labels(label).observe(time.perf_counter() - t0)

    app.add_middleware(Gate)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            expose_headers=["X-Beautyrt-Report", "X-Beautyrt-Result-Id", "Retry-After"],
        )

    # --- body helpers ---------------------------------------------------------------------------------------------
    async def read_photo(request: Request, query: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        """The photo (multipart field ``image``, or the raw body) and the parameters (query + form fields)."""
        body_mod.check_length(request.headers.get("content-length"), config.max_upload_bytes)
        try:
            data = await body_mod.read_limited(request.stream(), config.max_upload_bytes)
        except body_mod.UploadTooLarge:
            svc.metrics.rejected.labels("upload_too_large").inc()
            raise
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            return data, query
        parts = body_mod.parse_multipart(data, ctype)
        images = [p for p in parts if p.name == "image"]
        if len(images) != 1:
            raise UsageError(
                "a multipart body needs exactly one 'image' field with the photo"
                + (f" (got {len(images)})" if images else "")
            )
        form = [(p.name, p.data.decode("utf-8", "replace")) for p in parts if p.name != "image"]
        params = P.collect([*query.items(), *form])
        return images[0].data, params

    def query_params(request: Request) -> dict[str, str]:
        return P.collect(request.query_params.multi_items())

    async def run_limited(fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(fn, limiter=svc.limiter)

    async def submit_optimize(request: Request, *, sync: bool) -> tuple[Job, str, P.OptimizeParams]:
        arrival = time.monotonic()
        svc.require_ready()
        q = query_params(request)
        P.parse(q)  # what the query says is checked before the body is read
        try:
            data, merged = await read_photo(request, q)
        except ClientDisconnect:
            raise _ClientGone() from None
        p = P.parse(merged)
        default = input_format(data)
        fmt = P.negotiate(request.headers.get("accept"), p.fmt, default) if sync else None
        work = svc.optimize_work(data, p, fmt)
        # --timeout bounds a synchronous request; a job is bounded by its client polling it (--job-abandon)
        deadline = arrival + config.timeout if sync else None
        job = svc.new_job(work, kind="optimize" if sync else "job", deadline=deadline, abandon=not sync)
        job.info.update(input_format=default, quality=p.quality, format=p.fmt)
        return job, fmt or default, p

    # --- routes ---------------------------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz():
        """Alive (the process answers); says nothing about the bundle."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """Ready: the bundle is loaded and warmed up, and the server is not shutting down."""
        if svc.ready:
            return {"ready": True, "bundle_hash": svc.beautifier.bundle_hash if svc.beautifier else None}
        state = "shutting_down" if svc.closing else svc.state
        body: dict = {"ready": False, "state": state}
        if svc.load_error is not None:
            body.update(error_body(svc.load_error))
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})

    @app.get("/v1/bundle")
    async def bundle_info():
        """The loaded bundle: roles (files, sha256, sizes), hash, recommended and default settings, licences."""
        b = svc.require_ready()
        m = b.manifest.data
        roles = {
            role: {k: spec.get(k) for k in ("file", "sha256", "bytes") if k in spec}
            for role, spec in sorted(m.get("models", {}).items())
        }
        src = m.get("source") or {}
        licences = dict(src.get("licences") or {})
        for role, spec in m.get("models", {}).items():
            if isinstance(spec, dict) and spec.get("licence"):
                licences.setdefault(role, spec["licence"])
        resolved = b.resolve(Settings())
        return {
            "bundle_hash": b.bundle_hash,
            "format_version": m.get("format_version"),
            "beautyrt_version_of_bundle": m.get("beautyrt_version"),
            "source": src.get("kind") or src.get("preset") or None,
            "roles": roles,
            "generator": {"resolution": b.resolution, "num_ws": b.num_ws, "w_dim": b.w_dim},
            "has_detector": b.has_detector,
            "recommended": {
                "search": m.get("search_defaults") or {},
                "objective": m.get("objective_defaults") or {},
            },
            "defaults": resolved.to_dict(),
            "strength_range": list(STRENGTH_RANGE),
            "licences": licences,
            "versions": m.get("versions"),
            "server": {
                "workers": config.workers,
                "max_queue": config.max_queue,
                "max_upload_mb": config.max_upload_mb,
                "timeout_s": config.timeout,
                "results_kept": config.results,
            },
        }

    @app.get("/metrics")
    async def metrics():
        n, b = svc.results.stats()
        svc.metrics.results.set(n)
        svc.metrics.results_bytes.set(b)
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE)

    @app.post(
        "/v1/optimize",
        openapi_extra={"parameters": _openapi_params([*P.KNOWN]), **_IMAGE_BODY},
        responses={200: {"content": {m: {} for m in (*P.MEDIA.values(), "application/json")}}},
    )
    async def optimize(request: Request):
        """Beautify the photo (multipart field ``image`` or the raw body) and answer the edited photo (Accept:
        image/jpeg|png|webp, or ?format=) with the report in ``X-Beautyrt-Report``, or JSON (Accept:
        application/json): ``{"report": ..., "image": base64}``."""
        try:
            job, fmt, p = await submit_optimize(request, sync=True)
        except _ClientGone:
            return Response(status_code=400)
        disconnect = asyncio.ensure_future(_wait_disconnect(request.receive))
        done = asyncio.ensure_future(wait_async(job))
        try:
            left = max(0.0, (job.deadline or 0.0) - time.monotonic())
            finished, _ = await asyncio.wait({done, disconnect}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if done not in finished:
                job.cancel("disconnect" if disconnect in finished else "timeout")
                if disconnect in finished:
                    return Response(status_code=499)  # nobody reads it
                await asyncio.wait({done}, timeout=2.0)  # let the worker record the cancellation
        except asyncio.CancelledError:
            job.cancel("shutdown")
            raise
        finally:
            disconnect.cancel()
        if job.state != DONE:
            err = job.error if job.error is not None else job._cancelled_error()
            return _error_response(err)
        v = job.value
        if fmt == "JSON":
            return _json_result(v["data"], v["input_format"], v["report"])
        return _image_response(v["data"], fmt, v["report"])

    @app.post("/v1/jobs", status_code=202, openapi_extra={"parameters": _openapi_params([*P.KNOWN]), **_IMAGE_BODY})
    async def create_job(request: Request):
        """Start a search and return at once (202): poll ``GET /v1/jobs/{id}`` for progress, then fetch
        ``/v1/jobs/{id}/result``. A job nobody polls for a while is cancelled."""
        try:
            job, _, _ = await submit_optimize(request, sync=False)
        except _ClientGone:
            return Response(status_code=400)
        svc.jobs.add(job)
        return JSONResponse(
            job_view(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}", "Cache-Control": "no-store"}
        )

    def job_view(job: Job) -> dict:
        d: dict = {
            "id": job.id,
            "state": job.state,
            "generation": job.generation,
            "total": job.total,
            "best_score": job.best,
            "best_history": job.best_history,
            "queued_s": round(((job.started or time.time()) - job.created), 3),
            "links": {"self": f"/v1/jobs/{job.id}", "result": f"/v1/jobs/{job.id}/result"},
        }
        if job.state == DONE:
            d["result_id"] = job.value["result_id"]
            d["report"] = job.value["report"]
        elif job.error is not None:
            d.update(error_body(job.error))
            d["status"] = status_of(job.error)
        return d

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str):
        job = svc.jobs.get(job_id)
        job.touch()
        return JSONResponse(job_view(job), headers={"Cache-Control": "no-store"})

    @app.delete("/v1/jobs/{job_id}")
    async def delete_job(job_id: str):
        job = svc.jobs.get(job_id)
        if job.state in (QUEUED, RUNNING):
            job.cancel("client")
            await asyncio.wait({asyncio.ensure_future(wait_async(job))}, timeout=5.0)
        return JSONResponse(job_view(job))

    @app.get("/v1/jobs/{job_id}/result")
    async def job_result(job_id: str, request: Request):
        job = svc.jobs.get(job_id)
        job.touch()
        if job.state in (QUEUED, RUNNING):
            raise JobPending(f"job {job_id} is {job.state} (generation {job.generation} of {job.total or '?'})")
        if job.state != DONE:
            return _error_response(job.error if job.error is not None else job._cancelled_error())
        q = P.collect(request.query_params.multi_items(), allowed={"format", "quality"})
        kept = svc.results.get(job.value["result_id"])
        return await answer_kept(kept, request, q)

    async def answer_kept(kept: Kept, request: Request, q: dict[str, str]) -> Response:
        fmt = P.negotiate(request.headers.get("accept"), P.output_format(q.get("format")), kept.input_format)
        quality = P.quality(q.get("quality"))
        img_fmt = kept.input_format if fmt == "JSON" else fmt
        data = await run_limited(lambda: encode(kept.result, img_fmt, quality))
        if fmt == "JSON":
            return _json_result(data, img_fmt, kept.report)
        return _image_response(data, fmt, kept.report)

    @app.get("/v1/results/{result_id}")
    async def get_result(result_id: str, request: Request):
        """A kept result: its report (JSON), or with Accept: image/... (or ?format=) its image."""
        q = P.collect(request.query_params.multi_items(), allowed={"format", "quality"})
        kept = svc.results.get(result_id)
        accept = request.headers.get("accept") or ""
        if "format" not in q and "image/" not in accept:
            return JSONResponse({"result_id": result_id, "report": kept.report}, headers={"Cache-Control": "no-store"})
        return await answer_kept(kept, request, q)

    @app.post(
        "/v1/compose",
        openapi_extra={
            "parameters": _openapi_params(["result-id", "strength", "format", "quality"]),
        },
    )
    async def compose(request: Request):
        """Re-render a kept result at another strength (0..2) without searching again: ``result-id`` (from the
        report) and ``strength`` as query parameters, form fields or a JSON object."""
        b = svc.require_ready()
        allowed = {"result-id", "strength", "format", "quality"}
        items = list(request.query_params.multi_items())
        body_mod.check_length(request.headers.get("content-length"), SMALL_BODY)
        raw = await body_mod.read_limited(request.stream(), SMALL_BODY)
        ctype = (request.headers.get("content-type") or "").lower()
        if raw.strip():
            if ctype.startswith("application/json"):
                try:
                    obj = json.loads(raw)
                except ValueError as e:
                    raise UsageError(f"the JSON body does not parse: {e}") from None
                if not isinstance(obj, dict):
                    raise UsageError('the JSON body must be an object such as {"result_id": ..., "strength": 0.5}')
                items += [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in obj.items()]
            elif ctype.startswith("application/x-www-form-urlencoded"):
                from urllib.parse import parse_qsl

                items += parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
            elif ctype.startswith("multipart/form-data"):
                items += [(p.name, p.data.decode("utf-8", "replace")) for p in body_mod.parse_multipart(raw, ctype)]
            else:
                raise UsageError("send compose's parameters as a query string, a form, or a JSON object")
        q = P.collect(items, allowed=allowed)
        if "result-id" not in q:
            raise UsageError("compose needs result-id (the report's result_id)")
        if "strength" not in q:
            raise UsageError(f"compose needs strength ({STRENGTH_RANGE[0]:g}..{STRENGTH_RANGE[1]:g})")
        try:
            strength = check_float("strength", float(q["strength"]), *STRENGTH_RANGE)
        except ValueError:
            raise UsageError(f"strength must be a number, got {q['strength']!r}") from None
        kept = svc.results.get(q["result-id"].strip('"'))
        fmt = P.negotiate(request.headers.get("accept"), P.output_format(q.get("format")), kept.input_format)
        quality = P.quality(q.get("quality"))
        img_fmt = kept.input_format if fmt == "JSON" else fmt

        def work() -> tuple[bytes, dict]:
            t0 = time.perf_counter()
            r2 = b.compose(kept.result, strength)
            compose_s = time.perf_counter() - t0
            data = svc.encode_result(r2, img_fmt, quality)
            svc.metrics.observe_timings({"compose": compose_s, "encode": r2.timings["encode"]})
            rep = svc.report_of(r2, bool(kept.report.get("aligned_input")))
            rep["composed_from"] = kept.result.result_id
            svc.results.put(Kept(r2, rep, kept.input_format))
            return data, rep

        data, rep = await run_limited(work)
        svc.metrics.composes.inc()
        if fmt == "JSON":
            return _json_result(data, img_fmt, rep)
        return _image_response(data, fmt, rep)

    # --- the page -------------------------------------------------------------------------------------------------
    def static_text(name: str) -> bytes:
        return resources.files("beautyrt.runtime.serve").joinpath("static", name).read_bytes()

    @app.get("/", include_in_schema=False)
    async def index():
        return Response(
            static_text("index.html"),
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
        )

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC:  # a fixed list: no path from the request reaches the file system
            raise NotFound(f"no static file {name!r}")
        return Response(static_text(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    return app

"""``beautyrt serve --ray``: the HTTP service's own FastAPI app (``serve.app.create_app``) as a Ray Serve
deployment. Each replica verifies the bundle (every file's sha256 and the driver's bundle hash), loads one
``Beautifier`` and warms it up in its constructor, so Serve routes to it only once it can answer; Serve's health
check calls the replica's readiness; on shutdown or scale-down Serve stops routing to the replica, waits for its
requests in flight (``graceful_shutdown_timeout_s``), then the app's lifespan shutdown drains its worker pool.

``build(args)`` is the application builder that ``serve run`` / ``serve deploy`` call with serve_config.yaml's
``args`` (see README "Scale out on Ray"); ``serve_on_ray`` is what the CLI runs.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ray import serve

from beautyrt.engines.errors import UsageError

from ..errors import ClusterError
from ..serve.config import ServeConfig
from .common import bundle_for_nodes, connect, open_verified, require_ray

log = logging.getLogger("beautyrt")

APP_NAME = "beautyrt"
REPLICA_HEADER = b"x-beautyrt-replica"
CONFIG_FIELDS = {f.name for f in dataclasses.fields(ServeConfig)}


class ReplicaHeader:
    """ASGI middleware: every HTTP answer says which replica gave it (``X-Beautyrt-Replica``)."""

    def __init__(self, app, replica: str):
        self.app, self.replica = app, replica.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_id(msg):
            if msg["type"] == "http.response.start":
                msg = dict(msg)
                msg["headers"] = [*msg.get("headers", []), (REPLICA_HEADER, self.replica)]
            await send(msg)

        await self.app(scope, receive, send_with_id)


def config_to_args(config: ServeConfig) -> dict:
    d = dataclasses.asdict(config)
    d["bundle"] = str(config.bundle)
    d["cors_origins"] = list(config.cors_origins)
    return d


def config_from_args(d: dict) -> ServeConfig:
    unknown = sorted(set(d) - CONFIG_FIELDS)
    if unknown:
        raise UsageError(f"unknown service settings {unknown} (known: {sorted(CONFIG_FIELDS)})")
    kw: dict[str, Any] = dict(d)
    if "bundle" not in kw:
        raise UsageError("the Ray Serve app needs args.bundle: the bundle's path on every node (or '.' when shipped)")
    kw["bundle"] = Path(kw["bundle"])
    kw["cors_origins"] = tuple(kw.get("cors_origins") or ())
    return ServeConfig(**kw).validate()


@serve.deployment(name="BeautyrtService")
@serve.ingress()
class BeautyrtService:
    """One replica: one verified, loaded and warmed-up Beautifier behind the service's app."""

    def __init__(self, config: dict, expect_hash: Optional[str] = None):
        from ..beautifier import Beautifier
        from ..serve.app import Service

        self.config = config_from_args(config)
        c = self.config
        t0 = time.perf_counter()
        open_verified(c.bundle, expect_hash)
        self.beautifier = Beautifier(c.bundle, backend=c.backend, device=c.device, threads=c.engine_threads)
        if c.warmup:
            Service._warm_up(self.beautifier)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.service: Any = None
        log.info(
            "beautyrt: replica %s: bundle %s verified, loaded and warmed up in %.1fs",
            self.replica_id,
            self.beautifier.bundle_hash[:16],
            time.perf_counter() - t0,
        )

    def __serve_build_asgi_app__(self):
        from ..serve.app import create_app

        app = create_app(self.config.replace(warmup=False), self.beautifier)
        app.add_middleware(ReplicaHeader, replica=self.replica_id)
        self.service = app.state.service
        return app

    def check_health(self) -> None:
        """Serve's health check: the replica's readiness (a failed load or a closed service is unhealthy and is
        replaced; while the app starts, the constructor has already loaded and warmed the bundle)."""
        svc = self.service
        if svc is None:
            return
        if svc.state == "failed":
            raise RuntimeError(f"beautyrt replica {self.replica_id}: the bundle failed to load: {svc.load_error}")
        if svc.pool.closed and not svc.closing:
            raise RuntimeError(f"beautyrt replica {self.replica_id}: the worker pool stopped")


def deployment_options(
    config: ServeConfig,
    *,
    replicas: Optional[int] = None,
    autoscale: Optional[tuple[int, int]] = None,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
) -> dict:
    if replicas is not None and autoscale is not None:
        raise UsageError("--replicas and --autoscale exclude each other")
    if replicas is not None and (isinstance(replicas, bool) or not 1 <= int(replicas) <= 1024):
        raise UsageError(f"--replicas must be an integer in 1..1024, got {replicas!r}")
    if autoscale is not None:
        lo, hi = autoscale
        if not 0 <= lo <= hi or hi < 1 or hi > 1024:
            raise UsageError(f"--autoscale MIN:MAX needs 0 <= MIN <= MAX, 1 <= MAX <= 1024; got {lo}:{hi}")
    if not 0 < float(cpus_per_replica) <= 1024:
        raise UsageError(f"--cpus-per-replica must be a number in (0, 1024], got {cpus_per_replica!r}")
    if not 0 <= float(gpus_per_replica) <= 64:
        raise UsageError(f"--gpus-per-replica must be a number in [0, 64], got {gpus_per_replica!r}")
    actor: dict[str, Any] = {"num_cpus": float(cpus_per_replica)}
    if gpus_per_replica:
        actor["num_gpus"] = float(gpus_per_replica)
    opts: dict[str, Any] = {
        "ray_actor_options": actor,
        # a replica takes what its pool admits; Serve queues the rest (bounded) and answers 503 beyond
        "max_ongoing_requests": config.workers + config.max_queue,
        "max_queued_requests": max(8, 4 * (config.workers + config.max_queue)),
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 30.0,
        "graceful_shutdown_wait_loop_s": 1.0,
        "graceful_shutdown_timeout_s": config.shutdown_grace + 10.0,
        "max_constructor_retry_count": 3,
    }
    if autoscale is not None:
        target = max(1, config.workers)
        opts["autoscaling_config"] = {
            "min_replicas": autoscale[0],
            "max_replicas": autoscale[1],
            "initial_replicas": max(1, autoscale[0]),
            "target_ongoing_requests": target,
        }
    else:
        opts["num_replicas"] = int(replicas or 1)
    return opts


def application(
    config: ServeConfig, *, ship_bundle: bool = False, expect_hash: Optional[str] = None, **deploy_kw
) -> Any:
    """The bound Serve application. ``expect_hash``: the bundle hash every replica must find (default: the
    hash of ``config.bundle`` as this process sees it)."""
    from beautyrt.engines import load_manifest

    config = config.validate()
    if expect_hash is None:
        expect_hash = load_manifest(config.bundle).bundle_hash
    path, _ = bundle_for_nodes(config.bundle, ship_bundle)  # the runtime_env is the job's (serve_on_ray)
    replica_config = config.replace(bundle=Path(path))
    opts = deployment_options(config, **deploy_kw)
    deployment: Any = BeautyrtService  # a serve.Deployment (the decorators hide it from the type checker)
    return deployment.options(**opts).bind(config_to_args(replica_config), expect_hash)


def _autoscale_arg(v: Any) -> Optional[tuple[int, int]]:
    if v is None:
        return None
    if isinstance(v, str):
        lo, sep, hi = v.partition(":")
        if not sep:
            raise UsageError(f"--autoscale must be MIN:MAX, got {v!r}")
        try:
            return int(lo), int(hi)
        except ValueError as e:
            raise UsageError(f"--autoscale must be MIN:MAX with integers, got {v!r}") from e
    if isinstance(v, dict):
        return int(v["min"]), int(v["max"])
    raise UsageError(f"autoscale must be MIN:MAX, got {v!r}")


def build(args: dict) -> Any:
    """Application builder for ``serve run`` / ``serve deploy`` (serve_config.yaml's ``import_path``:
    ``beautyrt.runtime.scale.serve_ray:build``). ``args``: the service's settings (``bundle`` required; any
    ServeConfig field: workers, max_queue, timeout, ...) plus ``replicas`` | ``autoscale: MIN:MAX``,
    ``cpus_per_replica``, ``gpus_per_replica``, ``expect_hash``. To ship the bundle, give the application a
    ``runtime_env: {working_dir: BUNDLE}`` in serve_config.yaml and ``bundle: "."`` (``serve`` uploads it)."""
    a = dict(args or {})
    deploy = {
        "replicas": a.pop("replicas", None),
        "autoscale": _autoscale_arg(a.pop("autoscale", None)),
        "cpus_per_replica": float(a.pop("cpus_per_replica", 1.0)),
        "gpus_per_replica": float(a.pop("gpus_per_replica", 0.0)),
    }
    expect = a.pop("expect_hash", None)
    if deploy["replicas"] is not None:
        deploy["replicas"] = int(deploy["replicas"])
    return application(config_from_args(a), expect_hash=expect, **deploy)


def serve_on_ray(
    config: ServeConfig,
    *,
    address: Optional[str] = None,
    replicas: Optional[int] = None,
    autoscale: Optional[str] = None,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
    ship_bundle: bool = False,
    init_kw: Optional[dict] = None,
    on_ready=None,
) -> int:
    """Deploy, answer until SIGINT/SIGTERM, then delete the app (Serve drains each replica gracefully)."""
    require_ray("ray.serve", "fastapi")
    config = config.validate()
    app = application(
        config,
        ship_bundle=ship_bundle,
        replicas=replicas,
        autoscale=_autoscale_arg(autoscale),
        cpus_per_replica=cpus_per_replica,
        gpus_per_replica=gpus_per_replica,
    )
    import ray

    _, runtime_env = bundle_for_nodes(config.bundle, ship_bundle)
    kw = dict(init_kw or {})
    if runtime_env:
        kw["runtime_env"] = runtime_env
    started = connect(address, **kw)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # request_timeout_s: a request whose replica died before answering gets 408 from the proxy instead of
        # hanging; past the app's own --timeout (504) so it never cuts a healthy request short
        serve.start(http_options={"host": config.host, "port": config.port, "request_timeout_s": config.timeout + 30.0})
        try:
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as e:  # a replica could not start (bad bundle on a node, too few resources, ...)
            raise ClusterError(
                f"deploying on Ray failed: {' '.join(str(e).split())[:500]} (the replicas' logs under the cluster's "
                "session folder, logs/serve/, say why)"
            ) from e
        log.info("beautyrt: serving on Ray at http://%s:%d/ (Ctrl-C to stop)", config.host, config.port)
        if on_ready is not None:
            on_ready()
        while not stop.wait(0.5):
            pass
        log.info("beautyrt: stopping: draining the replicas (up to %.0fs)", config.shutdown_grace + 10)
        drain = config.shutdown_grace + 30.0
        t = threading.Thread(target=serve.delete, args=(APP_NAME,), name="beautyrt-serve-delete", daemon=True)
        t.start()
        t.join(drain)
        if t.is_alive():  # e.g. Ctrl-C in a terminal also reached the local cluster's own processes
            log.warning("beautyrt: the app was not deleted within %.0fs; leaving it to the cluster", drain)
            return 1
        if started and address is None:
            serve.shutdown()
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if started:
            ray.shutdown()

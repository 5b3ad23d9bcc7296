"""``ServeConfig``: every setting of the service, validated up front (UsageError naming the CLI option)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from beautyrt.engines.backends import DEFAULT_BACKEND

from ..errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ServeConfig:
    bundle: Path
    host: str = DEFAULT_HOST  # loopback unless told otherwise
    port: int = DEFAULT_PORT
    workers: int = 1  # worker threads running searches (each shares the one Beautifier)
    max_queue: int = 8  # requests waiting for a worker beyond those running; more get 503
    max_upload_mb: float = 20.0  # request bodies above this get 413 before they are read whole
    timeout: float = 120.0  # seconds from arrival to answer; past it the search is cancelled (504)
    api_key_env: Optional[str] = None  # name of the environment variable holding the bearer token
    cors_origins: tuple[str, ...] = ()  # no CORS unless asked for
    results: int = 16  # results kept for /v1/compose and job results (LRU)
    results_mb: float = 1024.0  # ... and at most this many MiB of them (photo + composed image each)
    jobs: int = 64  # job records kept (finished ones are dropped oldest first)
    job_abandon_s: float = 30.0  # a running job nobody polled for this long is cancelled (the page is gone)
    shutdown_grace: float = 10.0  # on SIGTERM running work gets this long to finish, then it is cancelled
    threads: Optional[int] = None  # intra-op threads per engine call; None: cores / workers
    backend: str = DEFAULT_BACKEND
    device: str = "auto"
    warmup: bool = True

    def validate(self) -> "ServeConfig":
        def pos_int(name: str, v: int, lo: int, hi: int) -> None:
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise UsageError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")

        def pos_float(name: str, v: float, lo: float, hi: float) -> None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < float(v) <= hi:
                raise UsageError(f"{name} must be a number in ({lo:g}, {hi:g}], got {v!r}")

        pos_int("--port", self.port, 0, 65535)
        pos_int("--workers", self.workers, 1, 256)
        pos_int("--max-queue", self.max_queue, 0, 100000)
        pos_float("--max-upload-mb", self.max_upload_mb, 0.0, 4096.0)
        pos_float("--timeout", self.timeout, 0.0, 86400.0)
        pos_int("--results", self.results, 1, 100000)
        pos_float("--results-mb", self.results_mb, 0.0, 1 << 20)
        pos_int("--jobs", self.jobs, 1, 100000)
        pos_float("job_abandon_s", self.job_abandon_s, 0.0, 86400.0)
        pos_float("shutdown_grace", self.shutdown_grace, 0.0, 3600.0)
        if self.threads is not None:
            pos_int("--threads", self.threads, 1, 1024)
        if not isinstance(self.host, str) or not self.host:
            raise UsageError(f"--host must be a host name or address, got {self.host!r}")
        if self.api_key_env is not None:
            if not self.api_key_env or "=" in self.api_key_env:
                raise UsageError(f"--api-key-env must name an environment variable, got {self.api_key_env!r}")
            if not os.environ.get(self.api_key_env):
                raise UsageError(
                    f"--api-key-env {self.api_key_env}: that environment variable is not set or empty "
                    "(set it to the bearer token clients must send)"
                )
        for o in self.cors_origins:
            if o != "*" and not o.startswith(("http://", "https://")):
                raise UsageError(f"--cors-origin must be * or an origin such as https://example.com, got {o!r}")
        return self

    @property
    def api_key(self) -> Optional[str]:
        """The token, read from the environment when asked (never stored in the config or logged)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    @property
    def engine_threads(self) -> Optional[int]:
        """Intra-op threads per engine call: the cores shared out between the workers (None: onnxruntime's
        default, with one worker), so N workers do not oversubscribe the machine."""
        if self.threads is not None:
            return self.threads
        if self.workers == 1:
            return None
        return max(1, (os.cpu_count() or 1) // self.workers)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def replace(self, **kw) -> "ServeConfig":
        return dataclasses.replace(self, **kw)

"""Run the app on uvicorn with a graceful shutdown: on SIGTERM / SIGINT the service stops taking work at once
(``/readyz`` 503, queued jobs cancelled), running searches get ``shutdown_grace`` seconds to finish and are then
cancelled, connections drain, and the process exits 0. A second SIGINT forces the exit."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Optional

import uvicorn

from ..beautifier import Beautifier
from ..errors import BeautyrtError
from .app import create_app
from .config import ServeConfig

log = logging.getLogger("beautyrt")
HANDLED = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    """uvicorn's server, but a signal starts the service's own shutdown and is not re-raised afterwards (uvicorn
    re-raises it, which would end the process with the signal's status instead of 0)."""

    def __init__(self, config: uvicorn.Config, on_signal):
        super().__init__(config)
        self._on_signal = on_signal

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {s: signal.signal(s, self._handle) for s in HANDLED}
        try:
            yield
        finally:
            for s, h in original.items():
                signal.signal(s, h)

    def _handle(self, sig, frame) -> None:
        self._on_signal()
        self.handle_exit(sig, frame)


def serve(config: ServeConfig, beautifier: Optional[Beautifier] = None, *, log_level: str = "info") -> int:
    """Serve until a signal; returns the exit code (0 after a graceful shutdown, the error's code when the bundle
    fails to load or warm up)."""
    fatal: dict = {}
    server: Optional[_Server] = None

    def on_fatal(e: BaseException) -> None:
        fatal["error"] = e
        if server is not None:
            server.should_exit = True

    app = create_app(config, beautifier, on_fatal=on_fatal)
    svc = app.state.service
    ucfg = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        lifespan="on",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(config.shutdown_grace + 5),
        timeout_keep_alive=5,
    )
    server = _Server(ucfg, on_signal=svc.begin_shutdown)
    server.run()
    e = fatal.get("error")
    if e is not None:
        return e.exit_code if isinstance(e, BeautyrtError) else 70
    if not server.started:
        return 1  # uvicorn could not bind (it logged why)
    return 0

"""The real server: ``beautyrt serve`` in a subprocess on 127.0.0.1 (a free port) on the tiny bundle, spoken to
over real HTTP (http.client / urllib from the standard library). Loopback only."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

HAVE_SERVE = all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "python_multipart", "prometheus_client"))
needs_serve = pytest.mark.skipif(not HAVE_SERVE, reason="needs the serve extra: pip install -e '.[serve]'")
TOKEN_ENV = "BEAUTYRT_TEST_TOKEN"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def report(self) -> dict:
        return json.loads(self.headers["x-beautyrt-report"])


def multipart(fields: dict, image: Optional[bytes] = None, filename: str = "photo.jpg") -> tuple[bytes, str]:
    """A multipart/form-data body (written here: the test does not trust the server's parser to check itself)."""
    b = uuid.uuid4().hex
    out = bytearray()
    for k, v in fields.items():
        out += f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    if image is not None:
        out += (
            f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        out += image + b"\r\n"
    out += f"--{b}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={b}"


@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    log: Path
    token: Optional[str] = None
    args: list = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[dict] = None,
        *,
        auth: bool = True,
        timeout: float = 120,
    ) -> Reply:
        h = dict(headers or {})
        if auth and self.token and "Authorization" not in h:
            h["Authorization"] = f"Bearer {self.token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post_image(self, path: str, data: bytes, accept: Optional[str] = None, **kw) -> Reply:
        h = {"Content-Type": "application/octet-stream"}
        if accept:
            h["Accept"] = accept
        return self.request("POST", path, data, h, **kw)

    def post_form(self, path: str, fields: dict, image: bytes, accept: Optional[str] = None, **kw) -> Reply:
        body, ctype = multipart(fields, image)
        h = {"Content-Type": ctype}
        if accept:
            h["Accept"] = accept
        return self.request("POST", path, body, h, **kw)

    def metrics(self) -> dict:
        """{(name, frozenset(labels.items())): value} from /metrics, parsed by prometheus_client's own parser."""
        from prometheus_client.parser import text_string_to_metric_families

        r = self.get("/metrics")
        assert r.status == 200 and r.headers["content-type"].startswith("text/plain"), r
        out = {}
        for fam in text_string_to_metric_families(r.body.decode()):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def value(self, name: str, **labels) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def ready(self) -> bool:
        try:
            return self.get("/readyz", auth=False, timeout=5).status == 200
        except OSError:
            return False

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(bundle: Path, tmp: Path, *args: str, token: Optional[str] = None, wait: float = 90) -> Server:
    port = free_port()
    env = dict(os.environ)
    env.pop("BEAUTYRT_DEBUG", None)
    extra = []
    if token:
        env[TOKEN_ENV] = token
        extra = ["--api-key-env", TOKEN_ENV]
    log = tmp / f"server-{port}.log"
    code = "import sys; from beautyrt.cli.main import main; sys.argv = ['beautyrt'] + sys.argv[1:]; main()"
    cmd = [sys.executable, "-c", code, "serve", "--bundle", str(bundle), "--port", str(port), *extra, *args]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    srv = Server(port, proc, log, token, list(args))
    end = time.monotonic() + wait
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if srv.ready():
            return srv
        time.sleep(0.2)
    srv.stop()
    raise RuntimeError(f"server not ready after {wait}s: {log.read_text()[-2000:]}")


def wait_for(pred, timeout: float = 30.0, every: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture(scope="session")
def server(tiny_bundle_with_detector, tmp_path_factory):
    """The main server: 2 workers, queue 4, bearer token, 8 MiB uploads."""
    if not HAVE_SERVE:
        pytest.skip("needs the serve extra: pip install -e '.[serve]'")
    srv = start_server(
        tiny_bundle_with_detector,
        tmp_path_factory.mktemp("serve"),
        "--workers",
        "2",
        "--max-queue",
        "4",
        "--max-upload-mb",
        "8",
        "--timeout",
        "120",
        token=secrets.token_urlsafe(16),
    )
    yield srv
    rc = srv.stop()
    assert rc == 0, srv.log.read_text()[-3000:]


@pytest.fixture(scope="session")
def limited(tiny_bundle_with_detector, tmp_path_factory):
    """A small server: 1 worker, queue 1, 3 s timeout, jobs abandoned after 2 s unpolled, no token."""
    if not HAVE_SERVE:
        pytest.skip("needs the serve extra: pip install -e '.[serve]'")
    srv = start_server(
        tiny_bundle_with_detector,
        tmp_path_factory.mktemp("serve_limited"),
        "--workers",
        "1",
        "--max-queue",
        "1",
        "--timeout",
        "3",
        "--job-abandon",
        "2",
    )
    yield srv
    rc = srv.stop()
    assert rc == 0, srv.log.read_text()[-3000:]

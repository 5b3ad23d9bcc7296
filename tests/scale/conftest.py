"""Photos for the batch tests (aligned crops of the example photo, distinct bytes, two folders with the same file
names) and, for the Ray tests, one real local Ray cluster per test module on this machine (stopped after it)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import EXAMPLE

HAVE_RAY = all(importlib.util.find_spec(m) for m in ("ray", "fastapi", "uvicorn", "prometheus_client"))
BATCH_ARGS = ["--aligned", "-g", "2", "-p", "8", "--seed", "3", "-q"]


def make_photos(root: Path, n: int = 12) -> Path:
    """``n`` aligned face crops (JPEG in a/, PNG in b/, same stems in both: p0, p1, ...)."""
    im = Image.open(EXAMPLE).convert("RGB")
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i in range(n):
        c = im.crop((140 + 3 * i, 30 + 2 * i, 300 + 3 * i, 190 + 2 * i))
        if i % 2 == 0:
            c.save(root / "a" / f"p{i // 2}.jpg", quality=92)
        else:
            c.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "b" / f"p{i // 2}.png")
    return root


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos") / "in")


def run_beautyrt(*args: str, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    code = "import sys; from beautyrt.cli.main import main; sys.argv = ['beautyrt'] + sys.argv[1:]; main()"
    env = dict(os.environ)
    env.pop("BEAUTYRT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=timeout, **kw
    )


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster (2 logical CPUs per core here: 4; small object store; no dashboard) started in
    this process; the CLI under test joins it with ``--address``. Yields the cluster's address."""
    if not HAVE_RAY:
        pytest.skip("needs the ray extra: pip install -e '.[ray]'")
    import ray

    try:
        ray.init(
            num_cpus=4,
            object_store_memory=200 * 2**20,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as e:  # Ray truly cannot start here (no shared memory, ...)
        pytest.skip(f"a local Ray cluster cannot start on this machine: {type(e).__name__}: {e}")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()

"""Shared fixtures: bundles are exported once per test session into a temp dir (tiny preset: seconds)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EXAMPLE = REPO / "examples" / "astronaut.jpg"
HAVE_TORCH = importlib.util.find_spec("torch") is not None

needs_torch = pytest.mark.skipif(
    not HAVE_TORCH, reason="needs the export extra (torch): pip install 'beautyrt[export]'"
)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A tiny random-weight bundle without the detector (for aligned-crop tests)."""
    if not HAVE_TORCH:
        pytest.skip("needs the export extra (torch) to export a bundle")
    from beautyrt.export.api import export_preset

    return export_preset("tiny", tmp_path_factory.mktemp("bundles") / "tiny", detector=False)


@pytest.fixture(scope="session")
def tiny_bundle_with_detector(tmp_path_factory) -> Path:
    """Tiny bundle plus MTCNN; skips when the facenet-pytorch wheel cannot be fetched."""
    if not HAVE_TORCH:
        pytest.skip("needs the export extra (torch) to export a bundle")
    from beautyrt.export.api import export_preset
    from beautyrt.export.errors import CheckpointError

    try:
        return export_preset("tiny", tmp_path_factory.mktemp("bundles") / "tiny_det", detector=True)
    except CheckpointError as e:
        pytest.skip(f"MTCNN weights unavailable: {e}")


@pytest.fixture()
def example_photo() -> Path:
    return EXAMPLE


@pytest.fixture()
def face_crop() -> np.ndarray:
    """A square face crop (centre of the example photo) as uint8 RGB."""
    from PIL import Image

    im = Image.open(EXAMPLE).convert("RGB").crop((150, 40, 300, 190))
    return np.asarray(im, dtype=np.uint8)


@pytest.fixture(scope="session")
def cli():
    """``cli(*args, env=..., block_torch=...)`` runs ``beautyrt ARGS`` in a subprocess (see run_cli)."""
    return run_cli


def run_cli(
    *args: str, env: dict | None = None, block_torch: bool = False, cwd: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run ``beautyrt ARGS`` in a subprocess (optionally with ``import torch`` made to fail)."""
    pre = "import sys; sys.modules['torch'] = None; " if block_torch else "import sys; "
    code = pre + "from beautyrt.cli.main import main; sys.argv = ['beautyrt'] + sys.argv[1:]; main()"
    e = dict(os.environ)
    e.pop("BEAUTYRT_DEBUG", None)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout
    )


def edit_manifest(bundle_dir: Path, fn) -> None:
    """Apply ``fn(manifest_dict)`` to a bundle's manifest.json in place (tests of refusals and fallbacks)."""
    import json

    p = Path(bundle_dir) / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))

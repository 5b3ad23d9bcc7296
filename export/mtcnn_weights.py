"""The MTCNN weights: taken out of the facenet-pytorch 2.6.0 wheel (MIT), never by installing it.

``pip install facenet-pytorch`` would pin torch<2.3, numpy<2 and Pillow<10.3 and wreck the environment, so
the wheel is only *downloaded* (``pip download --no-deps``) into a cache and the three state-dict files
``facenet_pytorch/data/{pnet,rnet,onet}.pt`` are read straight out of the zip. The wheel and each file are
checked against pinned sha256 hashes before anything is deserialised, and ``torch.load`` runs with
``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from beautyrt.engines.manifest import sha256_file

from .errors import CheckpointError

log = logging.getLogger("beautyrt")

FACENET_PYTORCH_VERSION = "2.6.0"
WHEEL_NAME = f"facenet_pytorch-{FACENET_PYTORCH_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
FILE_SHA256 = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}
LICENSE = "MIT (facenet-pytorch, Tim Esler); MTCNN weights by Zhang et al. 2016"


def default_cache_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "beautyrt" / "mtcnn"


def fetch_wheel(cache_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return the path of the verified facenet-pytorch wheel in ``cache_dir``, downloading it with
    ``pip download --no-deps`` when it is missing. Raises CheckpointError when it cannot be obtained or
    its hash differs."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wheel = cache / WHEEL_NAME
    if not wheel.is_file():
        if not download:
            raise CheckpointError(f"MTCNN weights: {wheel} not found (download disabled)")
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"facenet-pytorch=={FACENET_PYTORCH_VERSION}",
            "-d",
            str(cache),
        ]
        log.info("fetching MTCNN weights: %s", " ".join(cmd))
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CheckpointError(f"MTCNN weights: could not run pip download ({e})") from e
        if res.returncode != 0 or not wheel.is_file():
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise CheckpointError(
                f"MTCNN weights: 'pip download facenet-pytorch=={FACENET_PYTORCH_VERSION}' failed "
                f"(exit {res.returncode}: {tail[0]}); put {WHEEL_NAME} into {cache} by hand"
            )
    got = sha256_file(wheel)
    if got != WHEEL_SHA256:
        raise CheckpointError(f"MTCNN weights: {wheel} has sha256 {got}, expected {WHEEL_SHA256}; delete it and retry")
    return wheel


def mtcnn_state_dicts(cache_dir: str | os.PathLike | None = None, download: bool = True) -> dict:
    """``{"pnet": state_dict, "rnet": ..., "onet": ...}`` from the verified wheel (see module doc)."""
    import torch

    wheel = fetch_wheel(cache_dir, download=download)
    out = {}
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"MTCNN weights: {wheel} is not a valid wheel ({e})") from e
    with zf:
        for name, want in FILE_SHA256.items():
            member = f"facenet_pytorch/data/{name}.pt"
            try:
                data = zf.read(member)
            except KeyError as e:
                raise CheckpointError(f"MTCNN weights: {member} missing from {wheel.name}") from e
            got = hashlib.sha256(data).hexdigest()
            if got != want:
                raise CheckpointError(f"MTCNN weights: {member} has sha256 {got}, expected {want}")
            try:
                sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001  (any unpickling failure is a bad checkpoint)
                raise CheckpointError(f"MTCNN weights: cannot load {member} ({type(e).__name__}: {e})") from e
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise CheckpointError(f"MTCNN weights: {member} is not a tensor state dict")
            out[name] = sd
    return out


def load_mtcnn_nets(cache_dir: str | os.PathLike | None = None, download: bool = True) -> dict:
    """The three nets (eval mode, float32) with the wheel's weights loaded strictly."""
    from .nets.mtcnn import MTCNN_NETS

    sds = mtcnn_state_dicts(cache_dir, download=download)
    nets = {}
    for name, cls in MTCNN_NETS.items():
        net = cls()
        try:
            net.load_state_dict(sds[name], strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"MTCNN weights: {name}.pt does not fit beautyrt's {cls.__name__} ({first})") from e
        nets[name] = net.float().eval()
    return nets

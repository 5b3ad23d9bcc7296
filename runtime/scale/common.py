"""What the Ray paths share: the extra's check, connecting to a cluster, and how the bundle reaches each node."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Optional

from beautyrt.engines.errors import BundleIntegrityError, MissingDependencyError, UsageError
from beautyrt.engines.files import printable

log = logging.getLogger("beautyrt")

# Ray uploads a runtime_env working_dir to the cluster's GCS; it refuses packages above this (Ray's own limit).
SHIP_LIMIT_BYTES = 500 * 1024 * 1024


def require_ray(*modules: str) -> None:
    missing = [m for m in ("ray", *modules) if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"the Ray path needs the ray extra ({', '.join(missing)} missing): pip install 'beautyrt[ray]'"
        )


def connect(address: Optional[str], **init_kw) -> bool:
    """``ray.init``: ``address`` None starts a local cluster; "auto" or host:port / ray://... joins one.
    True when this call started (or joined) Ray and so should ``ray.shutdown()`` at the end."""
    import ray

    if ray.is_initialized():
        if init_kw.get("runtime_env"):
            raise UsageError("--ship-bundle needs its own Ray job: Ray is already initialised in this process")
        return False
    kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    kw.update(init_kw)
    try:
        ray.init(address=address, **kw)
    except ConnectionError as e:
        raise UsageError(f"--address {address}: no Ray cluster answers there ({' '.join(str(e).split())[:300]})")
    return True


def bundle_for_nodes(bundle: Path, ship: bool) -> tuple[str, dict]:
    """(the bundle path a worker opens, the runtime_env that brings it there).

    ``ship=False``: the path as given (absolute) — it must be the same bundle on every node (a shared or
    replicated folder). ``ship=True``: the bundle folder becomes the job's runtime_env ``working_dir`` (passed to
    ``ray.init``, which is the only place Ray uploads a local folder): Ray packs it once, stores it in the
    cluster (GCS) and unpacks it on every node that runs one of the job's workers (Serve replicas inherit it),
    whose working directory it is, so the worker opens ``.``. Either way every worker checks every file's sha256 and the
    bundle hash against the driver's before it serves (:func:`open_verified`)."""
    root = Path(os.path.abspath(bundle.expanduser()))
    if not ship:
        return str(root), {}
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    if size > SHIP_LIMIT_BYTES:
        raise UsageError(
            f"bundle {printable(root)} is {size / 2**20:.0f} MiB, above what Ray ships with a job "
            f"({SHIP_LIMIT_BYTES // 2**20} MiB): put it on a path every node sees and drop --ship-bundle"
        )
    return ".", {"working_dir": str(root)}


def open_verified(bundle: str | Path, expect_hash: Optional[str]):
    """The worker side: ``load_manifest`` (every file's sha256 against the manifest) and the bundle hash against
    the one the driver computed; a mismatch is a ``BundleIntegrityError`` and the worker does not start."""
    from beautyrt.engines import load_manifest

    m = load_manifest(bundle, verify_hashes=True)
    if expect_hash is not None and m.bundle_hash != expect_hash:
        raise BundleIntegrityError(
            f"bundle {printable(m.root)} on this node has hash {m.bundle_hash[:16]}, "
            f"the deployment expects {expect_hash[:16]}: the nodes do not see the same bundle"
        )
    return m

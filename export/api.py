"""Entry points of the export stage used by the CLI."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from .bundle import ModelSet, build_preset, check_target, write_bundle
from .presets import get_preset

log = logging.getLogger("beautyrt")


def _check_seed(seed) -> int:
    from beautyrt.engines.errors import UsageError

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1:
        raise UsageError(f"seed must be an integer in 0..{2**32 - 1}, got {seed!r}")
    return seed


def add_detector(ms: ModelSet, cache_dir: Optional[str | Path] = None) -> ModelSet:
    """Add the MTCNN detector (P/R/O-Net from the facenet-pytorch 2.6.0 wheel) to the bundle's models."""
    from .mtcnn_export import export_mtcnn

    state: dict = {}

    def net(name: str):
        def fn(d: Path) -> dict:
            if not state:
                state.update(export_mtcnn(d, cache_dir))
            return state[name]

        return fn

    for name in ("pnet", "rnet", "onet"):
        ms.extra_models[f"detector_{name}"] = net(name)
    return ms


def export_preset(
    preset: str,
    out: str | Path,
    *,
    seed: int = 0,
    overwrite: bool = False,
    detector: bool = True,
    cache_dir: Optional[str | Path] = None,
    progress: Optional[Callable[[str, int, int], None]] = None,
    identity: str = "preset",
    pack: Optional[str | Path] = None,
) -> Path:
    """A preset's networks -> bundle; ``identity="dlib"`` uses dlib's trained face descriptor instead of the
    preset's random identity net. ``preset="demo"``: the committed self-trained demo pack
    (``export/demo_pack``, see ``beautyrt.export.demo_pack``; ``seed``/``identity`` do not apply), or with
    ``pack`` the pack ``beautyrt train pack`` wrote there."""
    if pack is not None and preset != "demo":
        from .errors import ExportError

        raise ExportError(f"--pack is a demo pack; it cannot be combined with --preset {preset}")
    check_target(out, overwrite)  # before minutes of work
    _check_seed(seed)
    if preset == "demo":
        from .demo_pack import PACK_DIR, build_demo_modelset

        ms = build_demo_modelset(Path(pack).expanduser() if pack is not None else PACK_DIR)
        if detector:
            add_detector(ms, cache_dir)
        return write_bundle(ms, out, overwrite=overwrite, progress=progress)
    ms = build_preset(get_preset(preset), seed=seed, identity=identity)
    if detector:
        add_detector(ms, cache_dir)
    return write_bundle(ms, out, overwrite=overwrite, progress=progress)


def _file_record(ck) -> dict:
    from beautyrt.engines.manifest import sha256_file

    p = Path(ck.path)
    return {
        "kind": ck.kind,
        "file": p.name,
        "sha256": sha256_file(p),
        **{k: v for k, v in ck.info.items() if k != "format"},
        "format": ck.info.get("format", ck.kind),
    }


def build_from_checkpoints(
    *,
    stylegan: Optional[str | Path] = None,
    encoder: Optional[str | Path] = None,
    identity: Optional[str | Path] = None,
    beauty: Optional[str | Path] = None,
    preset: Optional[str] = None,
    seed: int = 0,
    identity_spec=None,
    beauty_spec=None,
    identity_crop: Optional[str] = "psp",
    score_resolution: Optional[int] = None,
) -> ModelSet:
    """Users' checkpoints -> a ModelSet (what ``write_bundle`` exports).

    Every role comes from a checkpoint; a missing one falls back to ``preset``'s random-weight network of
    a matching size only when ``preset`` is given, otherwise CheckpointError names the missing option.
    External ONNX identity/beauty models (with their input spec) are used as they are: checked and given a
    symbolic batch here (:func:`beautyrt.export.fuse.prepare_external`), joined to the torch-exported front
    half of the scorer by ``write_bundle``. ``identity="dlib"`` is dlib's descriptor from the installed
    face-recognition-models package, the same as passing the path of its ``.dat`` file.
    """
    import numpy as np
    import torch

    from .errors import CheckpointError
    from .loaders import load_checkpoint
    from .nets.encoder import Encoder
    from .presets import HALF, get_preset

    pre = get_preset(preset) if preset else None
    fallback: Optional[ModelSet] = None

    def fb(role: str) -> ModelSet:
        nonlocal fallback
        if pre is None:
            opt = {"generator": "--stylegan", "encoder": "--encoder", "identity": "--identity", "beauty": "--beauty"}[
                role
            ]
            raise CheckpointError(
                f"no {role} model: pass {opt} PATH, or --preset NAME to use that preset's "
                f"random-weight {role} (for tests/benchmarks only)"
            )
        if fallback is None:
            fallback = build_preset(pre, seed=seed)
        log.warning("%s: using preset %r random weights (no checkpoint given)", role, pre.name)
        return fallback

    ck_g = None
    if pre is None:  # name a missing part before loading more than needed
        if encoder is None:  # only beautyrt's own generator.pt carries an encoder: look before refusing
            ck_g = load_checkpoint(stylegan) if stylegan else None
            if ck_g is None or ck_g.encoder is None:
                fb("encoder")
        for role, given in (("identity", identity), ("beauty", beauty), ("generator", stylegan or encoder)):
            if given is None:
                fb(role)
    source: dict = {"kind": "checkpoints", "preset_fallback": pre.name if pre else None, "roles": {}}
    if identity is not None and str(identity) == "dlib":
        from .dlib_dat import find_dlib_model

        identity = find_dlib_model()
    if ck_g is None and stylegan:
        ck_g = load_checkpoint(stylegan)
    ck_e = load_checkpoint(encoder) if encoder else None
    if ck_e is None and ck_g is not None and ck_g.encoder is not None:
        ck_e = ck_g  # beautyrt's own generator checkpoint: generator and encoder trained together
    ck_i = load_checkpoint(identity, input_spec=identity_spec, identity_crop=identity_crop) if identity else None
    ck_b = load_checkpoint(beauty, input_spec=beauty_spec) if beauty else None
    for role, ck, attr in (("generator", ck_g, "generator"), ("encoder", ck_e, "encoder")):
        if ck is not None and getattr(ck, attr) is None:
            raise CheckpointError(f"{ck.path}: a {ck.kind} checkpoint holds no {role}")
    for role, ck, attr in (("identity", ck_i, "identity"), ("beauty", ck_b, "beauty")):
        if ck is not None and getattr(ck, attr) is None and ck.external_onnx is None:
            raise CheckpointError(f"{ck.path}: a {ck.kind} checkpoint holds no {role} model")

    # generator: --stylegan, else the encoder checkpoint's decoder (pSp/e4e), else the preset
    if ck_g is not None:
        G, w_avg, source["roles"]["generator"] = ck_g.generator, ck_g.w_avg, _file_record(ck_g)
    elif ck_e is not None and ck_e.generator is not None:
        G, w_avg = ck_e.generator, ck_e.w_avg
        source["roles"]["generator"] = {**_file_record(ck_e), "part": "decoder"}
    else:
        f = fb("generator")
        G, w_avg, source["roles"]["generator"] = f.generator, f.w_avg, {"kind": "preset", "preset": pre.name}
    if w_avg is None:
        w_avg = G.mapping.w_avg.numpy().copy()
    w_std = next((ck.w_std for ck in (ck_g, ck_e) if ck is not None and ck.w_std is not None), None)
    if w_std is None:  # W's spread as the mapping network samples it
        _, w_std = G.latent_stats(n=4096, seed=seed)

    if ck_e is not None:
        enc, enc_norm = ck_e.encoder, ck_e.encoder_norm
        if (enc.num_ws, enc.w_dim) != (G.num_ws, G.w_dim):
            raise CheckpointError(
                f"{ck_e.path}: encoder outputs W+ [{enc.num_ws}, {enc.w_dim}] but the generator takes "
                f"[{G.num_ws}, {G.w_dim}]"
            )
        source["roles"]["encoder"] = _file_record(ck_e)
    else:
        fb("encoder")
        torch.manual_seed(seed)
        enc = Encoder(num_ws=G.num_ws, w_dim=G.w_dim, **pre.encoder).eval().requires_grad_(False)
        enc.w_avg.copy_(torch.from_numpy(np.asarray(w_avg, np.float32)))
        enc_norm = {"size": pre.encoder["resolution"], **HALF}
        source["roles"]["encoder"] = {"kind": "preset", "preset": pre.name}

    external: dict = {}

    def role_part(role: str, ck):
        """(torch module or None, normalisation) of the beauty/identity role."""
        if ck is None:
            f = fb(role)
            source["roles"][role] = {"kind": "preset", "preset": pre.name}
            return getattr(f, role), getattr(f, f"{role}_norm")
        source["roles"][role] = _file_record(ck)
        if ck.external_onnx is not None:
            from .fuse import prepare_external

            external[role] = prepare_external(ck.external_onnx, role, seed=seed)
            return None, external[role].normalisation()
        return getattr(ck, role), getattr(ck, f"{role}_norm")

    ident, ident_norm = role_part("identity", ck_i)
    beau, beau_norm = role_part("beauty", ck_b)
    defaults = dict(ck_i.objective_defaults) if ck_i is not None else {}
    ms = ModelSet(
        generator=G,
        encoder=enc,
        beauty=beau,
        identity=ident,
        encoder_norm=enc_norm,
        beauty_norm=beau_norm,
        identity_norm=ident_norm,
        score_resolution=score_resolution,
        w_avg=np.asarray(w_avg, np.float32),
        w_std=w_std,
        crop={"method": "ffhq", "size": G.img_resolution},
        source=source,
        parity_batches=(1, 3) if G.img_resolution <= 256 else (1, 2),
        objective_defaults=defaults,
        external=external,
    )
    return ms.eval()


def export_checkpoints(
    out: str | Path,
    *,
    overwrite: bool = False,
    detector: bool = True,
    cache_dir: Optional[str | Path] = None,
    progress: Optional[Callable[[str, int, int], None]] = None,
    **kw,
) -> Path:
    """``beautyrt export --stylegan/--encoder/--identity/--beauty``: checkpoints -> bundle
    (see build_from_checkpoints)."""
    check_target(out, overwrite)  # before minutes of work
    _check_seed(kw.get("seed", 0))
    ms = build_from_checkpoints(**kw)
    if detector:
        add_detector(ms, cache_dir)
    return write_bundle(ms, out, overwrite=overwrite, progress=progress)

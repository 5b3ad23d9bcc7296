"""Entry points used by ``beautyrt train generator|beauty`` (and scripts)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

log = logging.getLogger("beautyrt")


def train_generator_cmd(
    data: str | Path,
    out: str | Path,
    *,
    minutes: float = 30.0,
    seed: int = 0,
    max_steps: int = 1_000_000,
    batch: int = 16,
    threads: Optional[int] = 1,
    cache: Optional[str | Path] = None,
    resume: bool = False,
    limit: Optional[int] = None,
    id_weight: float = 0.0,
) -> dict:
    """``resume``: continue ``out/generator.pt`` (its step count, optimiser state). ``id_weight`` > 0 adds the
    identity loss: 1 - cosine of dlib's descriptors (centred on the training faces' mean, as the pack's
    identity) of a quarter of each batch's reconstructions vs their inputs."""
    from .data import DEFAULT_CACHE, load_aligned, prepare
    from .generator import GenConfig, train_generator

    path = prepare(data, cache=cache or DEFAULT_CACHE, limit=limit)
    cfg = GenConfig(minutes=minutes, seed=seed, max_steps=max_steps, batch=batch, threads=threads, id_weight=id_weight)
    aligned = load_aligned(path)
    identity = None
    if id_weight > 0:
        import torch

        from .beauty import build_identity, descriptors
        from .common import to_tensor

        if threads:
            torch.set_num_threads(threads)
        R = cfg.resolution
        identity = build_identity(aligned[f"lm_{R}"], R)
        train = to_tensor(aligned[f"images_{R}"][aligned["split"] != 1])
        identity.centre.copy_(torch.from_numpy(descriptors(identity, train, label="centre").mean(0)))
        identity.eval().requires_grad_(False)
    res = train_generator(aligned, out, cfg, resume=resume, identity=identity)
    res["data"] = str(path)
    Path(out, "generator_result.json").write_text(json.dumps(res, indent=1))
    return res


def train_beauty_cmd(
    data: str | Path,
    out: str | Path,
    *,
    generator: Optional[str | Path] = None,
    seed: int = 0,
    omi_weight: float = 0.5,
    threads: Optional[int] = 1,
    cache: Optional[str | Path] = None,
    limit: Optional[int] = None,
    hard_bundle: Optional[str | Path] = None,
    hard_n: int = 150,
    head: str = "ridge",
) -> dict:
    """``head="faceres"``: a ridge head on HSE FaceRes features (alone or with dlib's; feature set, OMI weight and
    lambda by cross-validation on MEBeauty train, ``beauty.train_beauty_faceres``). ``head="ridge"``: a ridge
    head on dlib block features, lambda by cross-validation on MEBeauty train (``beauty.train_beauty_ridge``).
    ``head="mlp"``: the earlier MLP on the descriptor; ``hard_bundle``: a bundle built with a first regressor;
    its search results on ``hard_n`` training faces become hard negatives (see ``beauty.add_hard_examples``)."""
    import torch

    from beautyrt.runtime.errors import UsageError

    from .beauty import add_hard_examples, train_beauty
    from .data import DEFAULT_CACHE, load_aligned, prepare

    if threads:
        torch.set_num_threads(threads)
    path = prepare(data, cache=cache or DEFAULT_CACHE, limit=limit)
    if head == "ridge":
        from .beauty import train_beauty_ridge

        if hard_bundle is not None or generator is not None:
            raise UsageError("--generator/--hard-bundle apply to --head mlp only")
        res = train_beauty_ridge(load_aligned(path), out, omi_weight=omi_weight, seed=seed)
        Path(out, "beauty_result.json").write_text(json.dumps(res, indent=1))
        return res
    if head == "faceres":
        from .beauty import train_beauty_faceres

        if hard_bundle is not None or generator is not None:
            raise UsageError("--generator/--hard-bundle apply to --head mlp only")
        res = train_beauty_faceres(load_aligned(path), out, seed=seed)
        Path(out, "beauty_result.json").write_text(json.dumps(res, indent=1))
        return res
    if head != "mlp":
        raise UsageError(f"unknown beauty head {head!r}: ridge, faceres or mlp")
    if hard_bundle is not None:
        if generator is None:
            raise UsageError("hard examples need the generator checkpoint too (--generator)")
        from .beauty import compute_features

        compute_features(load_aligned(path), Path(out), str(generator))
        add_hard_examples(load_aligned(path), Path(out), hard_bundle, str(generator), n=hard_n, seed=seed)
    res = train_beauty(
        load_aligned(path), out, generator_ckpt=str(generator) if generator else None, omi_weight=omi_weight, seed=seed
    )
    Path(out, "beauty_result.json").write_text(json.dumps(res, indent=1))
    return res


def build_pack_cmd(
    data: str | Path,
    out: str | Path,
    *,
    generator: str | Path,
    beauty: str | Path,
    cache: Optional[str | Path] = None,
    threads: Optional[int] = 1,
    training: Optional[dict] = None,
) -> dict:
    """Generator checkpoint + beauty checkpoint -> the committed pack folder (``export/demo_pack``)."""
    import torch

    from ..demo_pack import PACK_FILES, build_pack_from_training
    from .data import DEFAULT_CACHE, prepare

    if threads:
        torch.set_num_threads(threads)
    path = prepare(data, cache=cache or DEFAULT_CACHE)
    extra = {
        "training": training or {},
        "recommended_objective": {"identity_floor": 0.6, "identity_target": 0.8, "latent_weight": 1.0},
        "recommended_search": {
            "sigma0": 0.3,
            "generations": 30,
            "note": (
                "measured with beautyrt evaluate on 12 MEBeauty val photos, score_on=output, transfer=detail: "
                "20 generations x 16 give a delivered-photo gain of +0.79 (latent weight 1) / +0.76 (3); 30 "
                "generations +1.00 at identity 0.82, 3.5 s per photo on 2 cores; sigma0 0.5 is worse (+0.68); "
                "popsize 8 x 40 or 10 x 32 no better than 16 x 20"
            ),
        },
    }
    out = build_pack_from_training(generator, beauty, path, out, extra_config=extra)
    return {"pack": str(out), "bytes": sum((Path(out) / f).stat().st_size for f in PACK_FILES)}

"""pSp / e4e checkpoints and the ArcFace IR-SE50 state dict (``model_ir_se50.pth``).

pSp / e4e: ``{"state_dict": {"encoder.*", "decoder.*"}, "opts": {...}, "latent_avg": ...}``. ``opts``
names the encoder (``encoder_type``: GradualStyleEncoder for pSp, Encoder4Editing for e4e) and the
generator size (``output_size`` / ``stylegan_size``); the backbone depth/widths are read from the
weights (IR-SE50 for the released models, reduced ones in tests). The decoder (a rosinality generator)
is loaded too, so ``--encoder psp.pt`` alone provides a generator.
"""

from __future__ import annotations

import logging
import math
import re

import torch

from ..errors import CheckpointError
from ..nets.psp import Encoder4Editing, GradualStyleEncoder, IRSEBackbone, StyleEncoder
from .common import Checkpoint, assign_state, tensor_dict
from .rosinality import generator_from_rosinality

log = logging.getLogger("beautyrt")

HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
PSP_ID_CROP_256 = (35, 223, 32, 220)  # pSp/e4e IDLoss: x[:, :, 35:223, 32:220] of a 256 px image, pooled to 112


def ir_layout(sd: dict, where: str, prefix: str = "") -> dict:
    """Stage widths, unit counts, SE reduction and input channels of an IR(-SE) body from its weights."""
    units = sorted({int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"body\.(\d+)\.", k))})
    if not units or units != list(range(len(units))):
        raise CheckpointError(f"{where}: no '{prefix}body.N' IR units found")
    widths, counts = [], []
    for i in units:
        key = f"{prefix}body.{i}.res_layer.1.weight"
        if key not in sd:
            raise CheckpointError(f"{where}: missing key '{key}'")
        w = int(sd[key].shape[0])
        if not widths or w != widths[-1]:  # a stage starts where the width changes (its first unit strides)
            widths.append(w)
            counts.append(1)
        else:
            counts[-1] += 1
    if len(widths) != 4:
        raise CheckpointError(f"{where}: IR body has {len(widths)} stages {widths}, expected 4")
    se_key = f"{prefix}body.0.res_layer.5.fc1.weight"
    use_se = se_key in sd
    reduction = int(widths[0] // sd[se_key].shape[0]) if use_se else 16
    in_nc = int(sd[f"{prefix}input_layer.0.weight"].shape[1])
    return {
        "widths": tuple(widths),
        "units": tuple(counts),
        "se_reduction": reduction,
        "use_se": use_se,
        "input_nc": in_nc,
    }


def _opts(ckpt, where: str) -> dict:
    opts = ckpt.get("opts")
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        opts = dict(vars(opts)) if hasattr(opts, "__dict__") else None
    if opts is None:
        raise CheckpointError(f"{where}: 'opts' is not a dict")
    return opts


def load_psp(path, ckpt, kind=None, resolution: int = 256) -> Checkpoint:
    where = str(path)
    sd_all = tensor_dict(ckpt["state_dict"], f"{where} state_dict")
    opts = _opts(ckpt, where)
    enc_sd = {k[len("encoder.") :]: v for k, v in sd_all.items() if k.startswith("encoder.")}
    if not enc_sd:
        raise CheckpointError(f"{where}: state_dict has no 'encoder.*' keys")
    etype = opts.get("encoder_type") or ("Encoder4Editing" if kind == "e4e" else "GradualStyleEncoder")
    classes = {"GradualStyleEncoder": GradualStyleEncoder, "Encoder4Editing": Encoder4Editing}
    if etype not in classes:
        raise CheckpointError(f"{where}: encoder_type {etype!r} is not supported yet (supported: {', '.join(classes)})")
    if int(opts.get("input_nc", 3)) != 3:
        raise CheckpointError(
            f"{where}: input_nc={opts['input_nc']} (conditional pSp tasks) is not supported; "
            f"only face inversion encoders (3-channel input)"
        )
    n_styles = 1 + max(int(m.group(1)) for k in enc_sd if (m := re.match(r"styles\.(\d+)\.", k)))
    size = opts.get("output_size", opts.get("stylegan_size"))
    if size is not None and 2 * int(math.log2(int(size))) - 2 != n_styles:
        raise CheckpointError(
            f"{where}: opts say a {size} px generator ({2 * int(math.log2(int(size))) - 2} styles) "
            f"but the encoder has {n_styles} style heads"
        )
    lay = ir_layout(enc_sd, where)
    w_dim = int(enc_sd["styles.0.linear.weight"].shape[0])
    n_convs = len({int(m.group(1)) for k in enc_sd if (m := re.match(r"styles\.0\.convs\.(\d+)\.weight", k))})
    res = 16 * 2**n_convs  # coarse heads reduce the 1/16 map to 1x1 with log2(res/16) convs
    if res != resolution:
        log.info("%s: encoder input resolution read from its heads: %d px", where, res)
    enc = classes[etype](
        n_styles=n_styles,
        resolution=res,
        w_dim=w_dim,
        input_nc=lay["input_nc"],
        widths=lay["widths"],
        units=lay["units"],
        se_reduction=lay["se_reduction"],
        use_se=lay["use_se"],
    )
    assign_state(enc, enc_sd, f"{where} (encoder.*, {etype})")
    start_avg = opts.get("start_from_latent_avg", True)
    la = ckpt.get("latent_avg")
    if start_avg and not isinstance(la, torch.Tensor):
        raise CheckpointError(f"{where}: start_from_latent_avg is set but the checkpoint has no 'latent_avg'")
    if opts.get("learn_in_w"):
        raise CheckpointError(f"{where}: learn_in_w encoders (single W) are not supported yet")
    model = StyleEncoder(enc, la if start_avg else None).eval().requires_grad_(False)
    out = Checkpoint(
        kind="e4e" if etype == "Encoder4Editing" else "psp",
        path=where,
        encoder=model,
        encoder_norm={"size": res, **HALF},
        info={
            "format": f"{'e4e' if etype == 'Encoder4Editing' else 'pSp'} checkpoint",
            "encoder_type": etype,
            "n_styles": n_styles,
            "w_dim": w_dim,
            "backbone": lay,
            "resolution": res,
            "start_from_latent_avg": bool(start_avg),
        },
    )
    dec = {k[len("decoder.") :]: v for k, v in sd_all.items() if k.startswith("decoder.")}
    if dec:
        g = generator_from_rosinality(dec, f"{where} decoder", la, kind=out.kind)
        if g.generator.num_ws != n_styles:
            raise CheckpointError(f"{where}: decoder has {g.generator.num_ws} ws but the encoder {n_styles}")
        out.generator, out.w_avg = g.generator, g.w_avg
        out.info["decoder"] = g.info
    log.info("loaded %s %s: %d styles, backbone %s", etype, where, n_styles, lay)
    return out


def load_irse50(path, sd, input_size: int | None = None, crop: str | None = "psp") -> Checkpoint:
    """ArcFace IR-SE50 (``Backbone(112, 50, 'ir_se')``) state dict -> identity model.

    ``crop="psp"``: the model takes 256 px FFHQ-aligned images and crops/pools them as pSp's ID loss does;
    ``crop=None``: it takes the backbone's own ``input_size`` (112) directly.
    """
    where = str(path)
    sd = tensor_dict(sd, where)
    lay = ir_layout(sd, where)
    fc = sd.get("output_layer.3.weight")
    if fc is None:
        raise CheckpointError(f"{where}: missing key 'output_layer.3.weight' (not an IR-SE ArcFace backbone)")
    emb, flat = int(fc.shape[0]), int(fc.shape[1])
    s = int(round(math.sqrt(flat / lay["widths"][3])))
    size = input_size or 16 * s
    if lay["widths"][3] * (size // 16) ** 2 != flat:
        raise CheckpointError(f"{where}: output_layer.3.weight {list(fc.shape)} does not fit input size {size}")
    affine = "output_layer.4.weight" in sd
    if crop == "psp":
        k = size / 112.0
        c = tuple(int(round(v * k)) for v in PSP_ID_CROP_256)
        in_res = int(round(256 * k))
    elif crop is None:
        c, in_res = None, size
    else:
        raise CheckpointError(f"unknown identity crop {crop!r} (psp | none)")
    net = IRSEBackbone(
        input_size=size,
        widths=lay["widths"],
        units=lay["units"],
        embedding_dim=emb,
        se_reduction=lay["se_reduction"],
        in_resolution=in_res,
        crop=c,
        affine=affine,
        use_se=lay["use_se"],
    )
    assign_state(net, sd, f"{where} (IR-SE backbone)")
    log.info("loaded ArcFace IR-SE %s: input %d, embedding %d, crop %s", where, size, emb, c)
    return Checkpoint(
        kind="arcface-irse50",
        path=where,
        identity=net,
        identity_norm={"size": in_res, **HALF},
        info={
            "format": "ArcFace IR-SE backbone (pSp model_ir_se50.pth)",
            "backbone": lay,
            "input_size": size,
            "embedding_dim": emb,
            "crop": list(c) if c else None,
        },
    )

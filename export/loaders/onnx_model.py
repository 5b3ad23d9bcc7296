"""External ONNX image models used as-is (e.g. insightface ``w600k_r50.onnx``), with a declared input spec.

The spec says what the model expects; nothing is guessed from the graph except the tensor names, which
are checked against the declaration:

    {"size": 112, "color_order": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": "unit",
     "crop": "resize", "output": "fc1"}

``scale``: "unit" (mean/std apply to pixel/255, the manifest's convention) or "pixel" (mean/std in 0..255,
converted). ``mean``/``std`` are listed in the model's own channel order (``color_order``). ``crop``: how the
model's input is cut from the generator's FFHQ-aligned crop: "resize" (the whole crop, resized; default) or
"arcface" (insightface's 5-point ArcFace template, scaled to ``size``); a JSON/TOML spec may instead give
``template``: five (x, y) points (eyes, nose, mouth corners) in the model's input pixels. ``output``: which
output to use when the model has several. Given inline (``size=112,color=BGR,mean=127.5,std=127.5,
scale=pixel,crop=arcface``) or as a JSON/TOML file.

Such a model is fused into the bundle's scorer by :mod:`beautyrt.export.fuse`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from beautyrt.engines.manifest import sha256_file

from ..errors import CheckpointError

log = logging.getLogger("beautyrt")


# insightface's ArcFace alignment template (5 points in a 112 x 112 input; eyes, nose, mouth corners)
ARCFACE_TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)


@dataclass
class InputSpec:
    size: int
    color_order: str = "RGB"
    mean: tuple = (0.5, 0.5, 0.5)  # in the model's channel order
    std: tuple = (0.5, 0.5, 0.5)
    template: Optional[tuple] = None  # five (x, y) points in the input's pixels, or None: resize the whole crop
    output: Optional[str] = None

    def normalisation(self) -> dict:
        """The model's own input convention (channel order as the model wants it)."""
        d = {
            "size": self.size,
            "color_order": self.color_order,
            "layout": "NCHW",
            "value_scale": "pixel/255",
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
        }
        if self.template is not None:
            d.update(template=[list(map(float, p)) for p in self.template], template_size=self.size)
        return d

    def rgb_mean_std(self) -> tuple[list, list]:
        """mean/std per RGB channel (what a caller feeding RGB uses when the model's channels are flipped in-graph)."""
        mean, std = [float(x) for x in self.mean], [float(x) for x in self.std]
        return (mean[::-1], std[::-1]) if self.color_order == "BGR" else (mean, std)


def _triple(v, key: str) -> tuple:
    if isinstance(v, (int, float)):
        return (float(v),) * 3
    if isinstance(v, str):
        v = [x for x in v.replace("/", ":").replace(";", ":").split(":") if x]
    if isinstance(v, (list, tuple)) and len(v) in (1, 3):
        vals = tuple(float(x) for x in v)
        return vals * 3 if len(vals) == 1 else vals
    raise CheckpointError(f"input spec: '{key}' must be a number or three numbers, got {v!r}")


def parse_input_spec(spec: Any) -> InputSpec:
    """dict | path to .json/.toml | inline ``k=v,k=v`` string -> InputSpec."""
    if isinstance(spec, InputSpec):
        return spec
    if isinstance(spec, (str, Path)) and Path(spec).suffix.lower() in (".json", ".toml") and Path(spec).is_file():
        p = Path(spec)
        try:
            if p.suffix.lower() == ".json":
                spec = json.loads(p.read_text())
            else:
                import tomllib

                spec = tomllib.loads(p.read_text())
        except Exception as e:
            raise CheckpointError(f"input spec {p}: cannot parse ({type(e).__name__}: {e})") from e
    elif isinstance(spec, str):
        d = {}
        for part in filter(None, (x.strip() for x in spec.split(","))):
            if "=" not in part:
                raise CheckpointError(f"input spec: expected key=value, got {part!r}")
            k, v = part.split("=", 1)
            d[k.strip()] = v.strip()
        spec = d
    if not isinstance(spec, dict):
        raise CheckpointError(f"input spec must be a mapping, got {type(spec).__name__}")
    known = {"size", "color_order", "color", "mean", "std", "scale", "crop", "template", "output"}
    extra = set(spec) - known
    if extra:
        raise CheckpointError(
            f"input spec: unknown key(s) {', '.join(sorted(extra))} (known: {', '.join(sorted(known))})"
        )
    if "size" not in spec:
        raise CheckpointError("input spec: 'size' (square input side in pixels) is required")
    order = str(spec.get("color_order", spec.get("color", "RGB"))).upper()
    if order not in ("RGB", "BGR"):
        raise CheckpointError(f"input spec: color_order must be RGB or BGR, got {order!r}")
    mean, std = _triple(spec.get("mean", 0.5), "mean"), _triple(spec.get("std", 0.5), "std")
    scale = str(spec.get("scale", "unit"))
    if scale == "pixel":
        mean, std = tuple(m / 255.0 for m in mean), tuple(s / 255.0 for s in std)
    elif scale != "unit":
        raise CheckpointError(f"input spec: scale must be 'unit' or 'pixel', got {scale!r}")
    if any(s <= 0 for s in std):
        raise CheckpointError("input spec: std must be positive")
    try:
        size = int(spec["size"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"input spec: 'size' must be an integer, got {spec['size']!r}") from e
    if size < 8:
        raise CheckpointError(f"input spec: 'size' {size} is too small")
    crop = str(spec.get("crop", "template" if "template" in spec else "resize")).lower()
    template = None
    if crop == "arcface":
        template = tuple((x * size / 112.0, y * size / 112.0) for x, y in ARCFACE_TEMPLATE_112)
    elif crop == "template":
        t = spec.get("template")
        try:
            template = tuple((float(x), float(y)) for x, y in t)
        except (TypeError, ValueError):
            template = ()
        if len(template) != 5:
            raise CheckpointError("input spec: 'template' must be five [x, y] points (eyes, nose, mouth corners)")
    elif crop != "resize":
        raise CheckpointError(f"input spec: crop must be resize or arcface (or give 'template'), got {crop!r}")
    output = str(spec["output"]) if spec.get("output") not in (None, "") else None
    return InputSpec(size=size, color_order=order, mean=mean, std=std, template=template, output=output)


@dataclass
class ExternalOnnx:
    path: Path
    spec: InputSpec
    input_name: str
    outputs: list  # [{"name", "dtype", "shape"}]
    batch: Optional[int] = None  # the input's fixed batch size, None when symbolic

    @property
    def output(self) -> str:
        """The output used (the spec's ``output``, else the only one)."""
        return self.spec.output or self.outputs[0]["name"]

    def record(self) -> dict:
        return {
            "kind": "external-onnx",
            "file": self.path.name,
            "sha256": sha256_file(self.path),
            "input": self.input_name,
            "output": self.output,
            "batch": self.batch if self.batch else "dynamic",
            "normalisation": self.spec.normalisation(),
        }


def _dim(d) -> Any:
    return d if isinstance(d, int) and d > 0 else None


def load_external_onnx(path, spec) -> ExternalOnnx:
    """Check that ``path`` loads in onnxruntime and has ONE image input [N,3,S,S] of the declared size."""
    import onnxruntime as ort

    path = Path(path)
    sp = parse_input_spec(spec) if spec is not None else None
    if sp is None:
        raise CheckpointError(f"{path}: an external ONNX model needs an input spec (size, color order, mean/std)")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise CheckpointError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from e
    ins = sess.get_inputs()
    if len(ins) != 1:
        raise CheckpointError(
            f"{path}: expected a single image input, the model has {len(ins)}: {', '.join(i.name for i in ins)}"
        )
    inp = ins[0]
    if inp.type != "tensor(float)":
        raise CheckpointError(f"{path}: input '{inp.name}' is {inp.type}, expected tensor(float)")
    shape = list(inp.shape)
    if len(shape) != 4 or _dim(shape[1]) not in (3, None):
        raise CheckpointError(f"{path}: input '{inp.name}' has shape {shape}, expected [N,3,H,W]")
    for ax in (2, 3):
        if _dim(shape[ax]) is not None and shape[ax] != sp.size:
            raise CheckpointError(
                f"{path}: input '{inp.name}' is {shape[2]}x{shape[3]} but the spec declares size {sp.size}"
            )
    outs = []
    for o in sess.get_outputs():
        if o.type != "tensor(float)":
            raise CheckpointError(f"{path}: output '{o.name}' is {o.type}, expected tensor(float)")
        oshape = [
            "batch" if i == 0 and _dim(shape[0]) is None else (d if _dim(d) else f"d{i}") for i, d in enumerate(o.shape)
        ]
        outs.append({"name": o.name, "dtype": "float32", "shape": oshape})
    names = [o["name"] for o in outs]
    if sp.output is not None and sp.output not in names:
        raise CheckpointError(
            f"{path}: the spec names output '{sp.output}' but the model's outputs are {', '.join(names)}"
        )
    if sp.output is None and len(outs) > 1:
        raise CheckpointError(
            f"{path}: the model has {len(outs)} outputs ({', '.join(names)}); say which one with "
            f"output=NAME in its spec"
        )
    log.info("external ONNX %s: input %s %s, outputs %s", path, inp.name, shape, [o["name"] for o in outs])
    return ExternalOnnx(path=path, spec=sp, input_name=inp.name, outputs=outs, batch=_dim(shape[0]))

"""External ONNX identity/beauty models (used as they are) fused into the bundle's scorer.

The scorer contract (``ws [batch, n_ws, w_dim] -> score [batch], embedding [batch, D]``, one call per CMA-ES
generation) does not change when a role comes from an external ONNX file such as insightface's
``w600k_r50.onnx``. The scorer is then built in two halves and joined in ONNX:

1. the **front half** in torch: W+ -> synthesis -> for each external role the crop/resize its spec asks for,
   clamp to [0, 1], channel order (RGB/BGR), ``(x - mean) / std``, NCHW at the declared size; roles that
   come from torch checkpoints are computed here in full. Exported with :func:`export_onnx` (opset 18).
2. the external graph(s), as given except: the unused outputs and the initializers listed as inputs are
   dropped, a fixed batch is made symbolic when that is verified to be safe (:func:`prepare_external`),
   the opset is raised with ``onnx.version_converter`` to the front half's when it is older (or the front
   half's to theirs), names get a ``<role>_ext/`` prefix, and the output is reshaped to the contract
   (beauty ``[N]``, identity ``[N, D]``; embeddings are left unnormalised like every identity net's output:
   the runtime compares them by cosine).

``onnx.compose.merge_models`` connects the front half's ``<role>_input`` outputs to the external inputs.
Parity: the fused model in onnxruntime vs the front half in torch followed by the ORIGINAL external file in
onnxruntime (its own batch handling), at the bundle's parity batches; recorded like every other model's.
The ``crop_scorer`` (``image [batch, 3, R, R]`` in [-1, 1], the generator's crop -> the same two outputs; what
the runtime's ``score_on="output"`` calls) is built the same way from :class:`CropFront`, the front half
without the synthesis, joined to the same external graph(s) and checked the same way.
The bundle's own ``beauty``/``identity`` roles for such a model are the external graph behind a small
front that takes the manifest's RGB ``image`` input (channels flipped in-graph for BGR models).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from beautyrt.engines.manifest import sha256_file

from .errors import CheckpointError, ExportError, ParityError
from .loaders.onnx_model import ExternalOnnx
from .nets.scorer import to_model_frame
from .onnx_export import Parity, export_onnx

log = logging.getLogger("beautyrt")

OUT_NAME = {"beauty": "score", "identity": "embedding"}
ROLES = ("beauty", "identity")


def _session(model_or_path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = max(1, os.cpu_count() or 1)
    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]


def _default_opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise CheckpointError(f"{model.graph.name or 'model'}: no default-domain opset import")


def _rel_err(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    err = float(np.abs(ref - got).max()) if ref.size else 0.0
    return err, err / max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-6)


@dataclass
class Prepared:
    """An external model checked and made ready for fusion (symbolic batch, one output)."""

    role: str
    ext: ExternalOnnx
    model: object  # onnx.ModelProto, original opset
    out_dim: int  # values per image: 1 for beauty, D for identity
    batch_note: str  # "dynamic" or how a fixed batch was handled
    _orig: object = field(default=None, repr=False)
    _at_opset: dict = field(default_factory=dict, repr=False)  # target opset -> converted model (scorer, crop_scorer)

    @property
    def size(self) -> int:
        return self.ext.spec.size

    def frame(self) -> dict:
        """How the model's input is cut from the generator's crop (``to_model_frame``'s argument)."""
        d: dict = {"size": self.size}
        if self.ext.spec.template is not None:
            from .identity_dlib import FFHQ_LANDMARKS_UNIT, crop_theta

            d["crop_from_generator"] = crop_theta(FFHQ_LANDMARKS_UNIT, np.asarray(self.ext.spec.template), self.size)
        return d

    def normalisation(self) -> dict:
        """Manifest normalisation of the bundle's own role model (RGB input; see :func:`write_standalone`)."""
        mean, std = self.ext.spec.rgb_mean_std()
        d = {
            "size": self.size,
            "color_order": "RGB",
            "layout": "NCHW",
            "value_scale": "pixel/255",
            "mean": mean,
            "std": std,
        }
        fr = self.frame()
        if "crop_from_generator" in fr:
            d.update(
                crop_from_generator=fr["crop_from_generator"],
                template=self.ext.spec.normalisation()["template"],
                template_size=self.size,
            )
        d["model_input"] = self.ext.spec.normalisation()  # the external model's own convention (for reference)
        return d

    def run_original(self, x: np.ndarray) -> np.ndarray:
        """The ORIGINAL file in onnxruntime on ``x`` (model's own input convention), chunked to its fixed batch
        when it has one (the last chunk padded by repetition); post-processed to the contract's shape."""
        if self._orig is None:
            self._orig = _session(self.ext.path)
        b0 = self.ext.batch
        if b0 is None:
            y = self._orig.run([self.ext.output], {self.ext.input_name: x})[0]
        else:
            parts = []
            for i in range(0, len(x), b0):
                chunk = x[i : i + b0]
                n = len(chunk)
                if n < b0:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b0 - n, axis=0)])
                parts.append(self._orig.run([self.ext.output], {self.ext.input_name: chunk})[0][:n])
            y = np.concatenate(parts)
        return self.post(y)

    def at_opset(self, target: int):
        """The prepared model converted to ``target`` (done once, shared by the fused models)."""
        if target not in self._at_opset:
            self._at_opset[target] = _to_opset(self.model, target, str(self.ext.path))
        return self._at_opset[target]

    def post(self, y: np.ndarray) -> np.ndarray:
        return y.reshape(len(y)) if self.role == "beauty" else y.reshape(len(y), -1)


def prepare_external(ext: ExternalOnnx, role: str, seed: int = 0) -> Prepared:
    """Check an external model's output against the role's contract and give it a symbolic batch.

    A fixed input batch is replaced by a symbolic one only when the edited graph then runs at batches 1 and 3
    and matches the original model image by image; otherwise CheckpointError says to re-export it."""
    if role not in ROLES:
        raise ExportError(f"role {role!r} cannot come from an external ONNX model (only {', '.join(ROLES)})")
    path, S, out = ext.path, ext.spec.size, ext.output
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: onnx cannot load it ({_short(e)})") from e
    prep = Prepared(role=role, ext=ext, model=None, out_dim=0, batch_note="dynamic")
    rng = np.random.default_rng(seed)
    b0 = ext.batch or 2
    x = rng.standard_normal((b0, 3, S, S)).astype(np.float32)
    try:
        y = _session(path).run([out], {ext.input_name: x})[0]
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: onnxruntime fails on a [{b0}, 3, {S}, {S}] input ({_short(e)})") from e
    if y.ndim == 0 or y.shape[0] != b0:
        raise CheckpointError(
            f"{path}: output '{out}' has shape {list(y.shape)} for a batch of {b0}; expected the batch first"
        )
    per = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1
    if role == "beauty" and per != 1:
        raise CheckpointError(
            f"{path}: a beauty model must give one score per image ([N] or [N, 1]); output '{out}' is {list(y.shape)}"
        )
    if role == "identity" and per < 2:
        raise CheckpointError(
            f"{path}: an identity model must give an embedding per image; output '{out}' is {list(y.shape)}"
        )
    prep.out_dim = per

    g = model.graph
    init_names = {t.name for t in g.initializer}
    keep_in = [i for i in g.input if i.name not in init_names]  # old exporters list weights as inputs
    del g.input[:]
    g.input.extend(keep_in)
    keep_out = [o for o in g.output if o.name == out]
    del g.output[:]
    g.output.extend(keep_out)
    if ext.batch is not None:
        model = _make_batch_dynamic(model, prep, rng)
        prep.batch_note = f"fixed {ext.batch} in the file; made symbolic (checked at batches 1 and 3)"
        log.info("%s: input batch fixed to %d, made symbolic (same results at batches 1 and 3)", path, ext.batch)
    prep.model = model
    return prep


def _make_batch_dynamic(model, prep: Prepared, rng: np.random.Generator):
    ext = prep.ext
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == ext.batch:
            dims[0].dim_param = "batch"
    del m.graph.value_info[:]  # inferred shapes carry the old batch
    why = (
        "the graph has the batch size built in (e.g. a Reshape to a fixed shape); re-export it with a symbolic "
        "batch axis"
    )
    S = ext.spec.size
    worst = 0.0
    try:
        sess = _session(m)
        for b in (1, 3):
            x = rng.standard_normal((b, 3, S, S)).astype(np.float32)
            got = sess.run([ext.output], {ext.input_name: x})[0]
            ref = prep.run_original(x)
            if got.shape[0] != b or got.size != ref.size:
                raise ValueError(f"batch {b} gives output shape {list(got.shape)}")
            worst = max(worst, _rel_err(ref, prep.post(got))[1])
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"{ext.path}: its input batch is fixed to {ext.batch} and making it symbolic fails ({_short(e)}): {why}"
        ) from e
    if worst > 1e-4:
        raise CheckpointError(
            f"{ext.path}: its input batch is fixed to {ext.batch} and at other batch sizes it gives "
            f"different results per image (rel. error {worst:.3g}): {why}"
        )
    return m


# --------------------------------------------------------------------------------------------- front half (torch)
class CropFront(nn.Module):
    """The generator's crop ``[N, 3, R, R]`` in [-1, 1] -> per role: the torch model's output, or the external
    model's normalised input. The front half of the fused ``crop_scorer``, and the crop stage of :class:`FrontHalf`.

    Outputs, in order beauty then identity: ``score`` / ``embedding`` for torch roles, ``<role>_input``
    (``[N, 3, S, S]`` in the external model's channel order and normalisation) for external ones."""

    input_name = "image"
    describe = "generator crop -> crop/normalise"

    def __init__(self, torch_roles: dict, external: dict):
        super().__init__()
        self.roles = [r for r in ROLES if r in torch_roles or r in external]
        self.frames: dict = {}
        self.flip: dict = {}
        self.nets = nn.ModuleDict()
        for r in self.roles:
            if r in external:
                p: Prepared = external[r]
                self.frames[r] = p.frame()
                mean, std = p.ext.spec.mean, p.ext.spec.std
                self.flip[r] = p.ext.spec.color_order == "BGR"
            else:
                net, norm = torch_roles[r]
                self.nets[r] = net
                self.frames[r] = dict(norm)
                mean, std = norm["mean"], norm["std"]
            self.register_buffer(
                f"{r}_mean", torch.tensor([float(v) for v in mean], dtype=torch.float32).reshape(1, 3, 1, 1)
            )
            self.register_buffer(
                f"{r}_std", torch.tensor([float(v) for v in std], dtype=torch.float32).reshape(1, 3, 1, 1)
            )

    def output_names(self) -> list[str]:
        return [OUT_NAME[r] if r in self.nets else f"{r}_input" for r in self.roles]

    def forward(self, img: torch.Tensor):
        outs = []
        for r in self.roles:
            x = to_model_frame(img, self.frames[r])
            x = F.hardtanh(x) * 0.5 + 0.5  # [-1, 1] -> [0, 1], clamped (as the torch scorer's Normalise)
            if self.flip.get(r):
                x = torch.cat([x[:, 2:3], x[:, 1:2], x[:, 0:1]], dim=1)  # RGB -> BGR
            x = (x - getattr(self, f"{r}_mean")) / getattr(self, f"{r}_std")
            outs.append(self.nets[r](x) if r in self.nets else x)
        return tuple(outs)


class FrontHalf(nn.Module):
    """W+ -> synthesis (stopped at ``score_resolution``) -> :class:`CropFront`: the fused ``scorer``'s front half."""

    input_name = "ws"
    describe = "W+ -> synthesis -> crop/normalise"

    def __init__(self, synthesis: nn.Module, score_resolution: int, torch_roles: dict, external: dict):
        super().__init__()
        self.synthesis = synthesis
        self.score_resolution = score_resolution
        self.crop = CropFront(torch_roles, external)

    def output_names(self) -> list[str]:
        return self.crop.output_names()

    def forward(self, ws: torch.Tensor):
        stop = None if self.score_resolution == self.synthesis.img_resolution else self.score_resolution
        return self.crop(self.synthesis(ws, stop_at=stop))


# --------------------------------------------------------------------------------------------- ONNX surgery
def _to_opset(model, target: int, what: str):
    have = _default_opset(model)
    if have == target:
        return model
    from onnx import version_converter

    try:
        conv = version_converter.convert_version(model, target)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{what}: cannot convert opset {have} to {target} for fusion ({_short(e)})") from e
    log.info("%s: opset %d converted to %d", what, have, target)
    return conv


def _with_contract_output(model, prefix: str, prep: Prepared, name: str):
    """Append the reshape to the contract's output shape; the graph's only output becomes ``name``."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    src = prefix + prep.ext.output
    if prep.role == "beauty":
        shape = numpy_helper.from_array(np.array([-1], np.int64), name=prefix + "__score_shape")
        g.initializer.append(shape)
        g.node.append(helper.make_node("Reshape", [src, shape.name], [name], name=prefix + "__to_score"))
        vi = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"])
    else:
        g.node.append(helper.make_node("Flatten", [src], [name], axis=1, name=prefix + "__to_embedding"))
        vi = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", prep.out_dim])
    del g.output[:]
    g.output.append(vi)
    return model


def _join(front, exts: Sequence[tuple[Prepared, str]], what: str):
    """front + each external model (connected at ``io`` names) -> one model."""
    from onnx import compose

    target = max([_default_opset(front)] + [_default_opset(p.model) for p, _ in exts])
    merged = _to_opset(front, target, what)
    for prep, io in exts:
        pre = f"{prep.role}_ext/"
        m = compose.add_prefix(prep.at_opset(target), pre)  # a copy
        m = _with_contract_output(m, pre, prep, OUT_NAME[prep.role])
        ir = max(merged.ir_version, m.ir_version)
        merged.ir_version = m.ir_version = ir
        try:
            merged = compose.merge_models(merged, m, io_map=[(io, pre + prep.ext.input_name)])
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{prep.ext.path}: cannot be joined to the {what} ({_short(e)})") from e
    order = {"score": 0, "embedding": 1}
    outs = sorted(merged.graph.output, key=lambda o: order.get(o.name, 2))
    del merged.graph.output[:]
    merged.graph.output.extend(outs)
    try:
        onnx.checker.check_model(merged)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"fused {what} fails the ONNX checker ({_short(e)})") from e
    return merged, target


def _save(model, path: Path) -> None:
    if model.ByteSize() > 1_900_000_000:
        raise ExportError(f"{path.name}: the fused model is over 2 GB, which one ONNX file cannot hold")
    onnx.save(model, str(path))


def _check(name: str, ref: dict, got: dict, tolerance: float, batches, reference: str) -> dict:
    max_abs = max_rel = 0.0
    for key, (r_list, g_list) in ((k, (ref[k], got[k])) for k in ref):
        for r, o in zip(r_list, g_list):
            if r.shape != o.shape:
                raise ParityError(
                    f"{name}: output '{key}' is {list(o.shape)} in onnxruntime but {list(r.shape)} in the reference"
                )
            a, rel = _rel_err(r, o)
            max_abs, max_rel = max(max_abs, a), max(max_rel, rel)
    parity = Parity(max_abs, max_rel, tolerance, list(batches))
    if not np.isfinite(max_rel) or max_rel > tolerance:
        raise ParityError(
            f"{name}: onnxruntime differs from the reference by {max_abs:.3g} abs / {max_rel:.3g} rel "
            f"(tolerance {tolerance:g} rel)"
        )
    log.info("parity %s: max abs %.3g, max rel %.3g", name, max_abs, max_rel)
    return {**parity.to_dict(), "reference": reference}


def write_fused_scorer(
    d: Path,
    synthesis: nn.Module,
    score_resolution: int,
    torch_roles: dict,
    external: dict,
    make_inputs: Callable,
    tolerance: float,
    batches: Sequence[int],
    seed: int = 1234,
) -> tuple[Path, dict]:
    """The ``scorer`` (``ws`` -> score, embedding): export the front half, join the external graph(s), check
    parity; returns (path, manifest extras)."""
    front_mod = FrontHalf(synthesis, score_resolution, torch_roles, external).eval()
    return _write_fused(d, "scorer", front_mod, external, make_inputs, tolerance, batches, seed)


def write_fused_crop_scorer(
    d: Path,
    torch_roles: dict,
    external: dict,
    make_inputs: Callable,
    tolerance: float,
    batches: Sequence[int],
    seed: int = 1234,
) -> tuple[Path, dict]:
    """The ``crop_scorer`` (``image`` [N, 3, R, R] in [-1, 1], the generator's crop -> score, embedding): the same
    per-role crop/normalise as the scorer's front half without the synthesis, joined to the same external
    graph(s); returns (path, manifest extras)."""
    front_mod = CropFront(torch_roles, external).eval()
    return _write_fused(d, "crop_scorer", front_mod, external, make_inputs, tolerance, batches, seed)


def _write_fused(
    d: Path,
    name: str,
    front_mod: nn.Module,
    external: dict,
    make_inputs: Callable,
    tolerance: float,
    batches: Sequence[int],
    seed: int,
) -> tuple[Path, dict]:
    front_path = d / f".{name}_front.onnx"
    out = d / f"{name}.onnx"
    try:
        export_onnx(
            front_mod,
            make_inputs(2, torch.Generator().manual_seed(0)),
            front_path,
            [front_mod.input_name],
            front_mod.output_names(),
        )
        front = onnx.load(str(front_path))
    finally:
        front_path.unlink(missing_ok=True)
    front_opset = _default_opset(front)
    merged, opset = _join(front, [(external[r], f"{r}_input") for r in ROLES if r in external], name)
    _save(merged, out)

    parity = fused_parity(front_mod, external, out, make_inputs, tolerance, batches, seed)
    fused = {
        r: {
            **external[r].ext.record(),
            "opset": f"{_default_opset(external[r].model)} -> {opset}",
            "batch_handling": external[r].batch_note,
        }
        for r in ROLES
        if r in external
    }
    return out, {"parity": parity, "fused_external": fused, "front_opset": front_opset}


def fused_parity(
    front_mod: nn.Module,
    external: dict,
    path: Path,
    make_inputs: Callable,
    tolerance: float,
    batches: Sequence[int],
    seed: int = 1234,
) -> dict:
    """A fused model in onnxruntime vs its front half (:class:`FrontHalf` or :class:`CropFront`) in torch followed
    by the ORIGINAL external file(s) in onnxruntime, on the same random inputs at each batch size; ParityError
    above ``tolerance`` (relative)."""
    names = front_mod.output_names()
    sess = _session(path)
    g = torch.Generator().manual_seed(seed)
    ref: dict = {"score": [], "embedding": []}
    got: dict = {"score": [], "embedding": []}
    for b in batches:
        (x,) = make_inputs(b, g)
        with torch.no_grad():
            parts = dict(zip(names, front_mod(x)))
        for r in ROLES:
            key = OUT_NAME[r]
            ref[key].append(
                external[r].run_original(parts[f"{r}_input"].numpy()) if r in external else parts[key].numpy()
            )
        res = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {front_mod.input_name: x.numpy()})))
        for key in ref:
            got[key].append(res[key])
    return _check(
        path.name,
        ref,
        got,
        tolerance,
        batches,
        f"torch {torch.__version__} eager fp32 CPU front half ({front_mod.describe}), then the "
        f"external ONNX model(s) as-is in onnxruntime",
    )


def write_standalone(d: Path, prep: Prepared, tolerance: float, batches: Sequence[int], seed: int = 4321) -> dict:
    """The bundle's ``beauty``/``identity`` role for an external model: input ``image`` (RGB, the manifest's
    normalisation), the model's channels flipped in-graph for BGR models, output ``score``/``embedding``."""
    from onnx import TensorProto, helper, numpy_helper

    S, role = prep.size, prep.role
    io = "__model_input"
    nodes, inits = [], []
    if prep.ext.spec.color_order == "BGR":
        idx = numpy_helper.from_array(np.array([2, 1, 0], np.int64), name="__bgr_index")
        inits.append(idx)
        nodes.append(helper.make_node("Gather", ["image", idx.name], [io], axis=1, name="__rgb_to_bgr"))
    else:
        nodes.append(helper.make_node("Identity", ["image"], [io], name="__rgb"))
    graph = helper.make_graph(
        nodes,
        "front",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, S, S])],
        [helper.make_tensor_value_info(io, TensorProto.FLOAT, ["batch", 3, S, S])],
        initializer=inits,
    )
    front = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _default_opset(prep.model))])
    front.ir_version = prep.model.ir_version
    model, _ = _join(front, [(prep, io)], f"{role} model")
    path = d / f"{role}.onnx"
    _save(model, path)

    sess = _session(path)
    rng = np.random.default_rng(seed)
    ref: dict = {OUT_NAME[role]: []}
    got: dict = {OUT_NAME[role]: []}
    for b in batches:
        x = rng.standard_normal((b, 3, S, S)).astype(np.float32)
        xm = np.ascontiguousarray(x[:, ::-1]) if prep.ext.spec.color_order == "BGR" else x
        ref[OUT_NAME[role]].append(prep.run_original(xm))
        got[OUT_NAME[role]].append(sess.run([OUT_NAME[role]], {"image": x})[0])
    parity = _check(
        path.name,
        ref,
        got,
        tolerance,
        batches,
        "the external ONNX model as-is in onnxruntime (channels reordered in numpy)",
    )
    out_shape = ["batch"] if role == "beauty" else ["batch", prep.out_dim]
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, S, S]}],
        "outputs": [{"name": OUT_NAME[role], "dtype": "float32", "shape": out_shape}],
        "normalisation": prep.normalisation(),
        "parity": parity,
        "source": prep.ext.record(),
    }

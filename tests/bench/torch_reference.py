"""The optimisation of ``beautyrt optimize`` written plainly in PyTorch eager: the speed reference.

This is what a researcher reproducing arXiv 2501.00811 would write: the torch modules, ``torch.no_grad``,
pycma driven directly, the objective computed on torch tensors. It runs the SAME optimisation as the
runtime on the SAME networks and weights: the networks are rebuilt from the bundle manifest's recorded
source (``build_preset(preset, seed)``; the W statistics are checked against the manifest so a mismatch
cannot go unnoticed), the scorer stops the synthesis at the manifest's ``score_resolution``, CMA-ES gets
the same options and the same seeded ``randn`` as ``runtime.search.CMAStrategy``, and the objective is
``runtime.objective``'s formula. Image decoding, the MTCNN cascade's numpy logic (its three nets run in
torch here), alignment and paste-back are shared numpy code: they cost the same on both sides.

Bench-only (imports torch); never imported by ``beautyrt.runtime``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from beautyrt.export.bundle import build_preset
from beautyrt.export.nets.scorer import Scorer
from beautyrt.export.presets import get_preset
from beautyrt.runtime.api import Settings
from beautyrt.runtime.objective import INFEASIBLE, LatentSpace
from beautyrt.runtime.ops.imaging import DETAIL_SIGMA, LUMA, crop_to_unit, edit_delta, model_input, resize_u8
from beautyrt.runtime.ops.imaging import blur_matrix as _blur_matrix
from beautyrt.runtime.strategies.cma import DIAGONAL_ABOVE
from beautyrt.runtime.timing import StageTimer


class _TorchNet:
    """Engine-like adapter (``.inputs[0].name``, ``.run(feeds) -> dict``) over a torch MTCNN net."""

    class _In:
        name = "image"

    def __init__(self, net: torch.nn.Module, outputs: tuple[str, ...]):
        self.net, self.outputs, self.inputs = net, outputs, [self._In()]

    def run(self, feeds: dict) -> dict:
        with torch.no_grad():
            outs = self.net(torch.from_numpy(np.ascontiguousarray(feeds["image"])))
        return {k: v.numpy() for k, v in zip(self.outputs, outs)}


class TorchReference:
    """Rebuild the bundle's source networks in torch and run the optimisation eagerly."""

    def __init__(self, bundle: str | Path, threads: Optional[int] = None, score_resolution: Optional[int] = None):
        """``score_resolution`` overrides the manifest's (e.g. the generator's full resolution, as a plain
        reproduction of the paper would score)."""
        if threads:
            torch.set_num_threads(int(threads))
        self.root = Path(bundle).expanduser()
        m = json.loads((self.root / "manifest.json").read_text())
        src = m.get("source", {})
        t0 = time.perf_counter()
        if src.get("kind") == "preset":
            ms = build_preset(get_preset(src["preset"]), seed=int(src["seed"]), identity=src.get("identity", "preset"))
        elif src.get("kind") == "demo_pack":
            from beautyrt.export.demo_pack import build_demo_modelset

            ms = build_demo_modelset()
        else:
            raise SystemExit(
                f"torch reference: bundle source {src} is neither a preset nor the demo pack; "
                f"cannot rebuild its networks"
            )
        gen = m["generator"]
        if not np.allclose(ms.w_avg, np.asarray(gen["w_avg"], np.float32), atol=1e-5):
            raise SystemExit("torch reference: rebuilt w_avg differs from the manifest's; not the same weights")
        self.G, self.encoder = ms.generator, ms.encoder
        self.score_resolution = int(
            score_resolution or m["models"]["scorer"].get("score_resolution") or gen["resolution"]
        )
        self.scorer = Scorer(
            ms.generator.synthesis, ms.beauty, ms.beauty_norm, ms.identity, ms.identity_norm, self.score_resolution
        ).eval()
        self.beauty, self.identity = ms.beauty.eval(), ms.identity.eval()
        # as runtime.bundle.Models._image_model_norms: score_on="output" needs both models to take the generator's crop
        norms = {r: m["models"].get(r, {}).get("normalisation") or {} for r in ("beauty", "identity")}
        self.image_norms = (
            norms
            if all(
                n and n.get("crop_from_generator") is None and int(n["size"]) == int(gen["resolution"])
                for n in norms.values()
            )
            else {}
        )
        self.has_crop_scorer = "crop_scorer" in m["models"]
        self.resolution, self.num_ws, self.w_dim = int(gen["resolution"]), int(gen["num_ws"]), int(gen["w_dim"])
        self.w_std = np.asarray(gen["w_std"], np.float32)
        self.w_std_t = torch.from_numpy(self.w_std)
        self.groups = gen["groups"]
        self.encoder_norm = m["models"]["encoder"]["normalisation"]
        self.detector_norm = m["models"].get("detector_pnet", {}).get("normalisation")
        self.nets = None
        if "detector_pnet" in m["models"]:
            from beautyrt.export.mtcnn_weights import load_mtcnn_nets

            n = load_mtcnn_nets(download=False)
            self.nets = (
                _TorchNet(n["pnet"], ("reg", "prob")),
                _TorchNet(n["rnet"], ("reg", "prob")),
                _TorchNet(n["onet"], ("reg", "landmarks", "prob")),
            )
        self.objective_defaults = m.get("objective_defaults")
        self.search_defaults = m.get("search_defaults") or {}
        self.prior = (
            np.load(Path(bundle) / m["models"]["search_prior"]["file"], allow_pickle=False).astype(np.float64)
            if "search_prior" in m["models"]
            else None
        )
        self.load_seconds = time.perf_counter() - t0

    def _output_scorer(self, w_start: torch.Tensor, crop: np.ndarray, transfer: str):
        """Plain torch version of runtime.stages.search.scorer (score_on=output): photo crop + the candidate's
        edit -> score, embedding."""
        base = torch.from_numpy(crop_to_unit(crop, self.resolution))
        g0 = self.G.synthesis(w_start)
        luma = torch.from_numpy(LUMA).reshape(1, 3, 1, 1)

        def norm(x: torch.Tensor, n: dict) -> torch.Tensor:
            mean = torch.tensor(n["mean"], dtype=torch.float32).reshape(1, 3, 1, 1)
            std = torch.tensor(n["std"], dtype=torch.float32).reshape(1, 3, 1, 1)
            return ((x + 1.0) * 0.5 - mean) / std

        def run(ws):
            if ws is None:
                x = base
            else:
                d = self.G.synthesis(ws) - g0
                if transfer in ("luma", "detail"):
                    d = (d * luma).sum(1, keepdim=True)
                    if transfer == "detail":
                        n = d.shape[-1]
                        b = torch.from_numpy(np.array(_blur_matrix(n, DETAIL_SIGMA * n)))
                        d = d - b @ d @ b.T
                    d = d.expand(-1, 3, -1, -1)
                x = torch.clamp(base + d, -1.0, 1.0)
            if self.has_crop_scorer:  # the crop_scorer role's module
                return self.scorer.crop_scorer(x)
            return (
                self.beauty(norm(x, self.image_norms["beauty"])),
                self.identity(norm(x, self.image_norms["identity"])),
            )

        return run

    @torch.no_grad()
    def optimize(self, image, s: Settings, aligned: bool = False) -> dict:
        import dataclasses

        import cma

        from beautyrt.runtime.settings import resolve

        # unset settings from the bundle's recommendations (score_on is decided below, as Beautifier.resolve)
        s = dataclasses.replace(
            resolve(
                dataclasses.replace(s, score_on="generated"),
                search_defaults=self.search_defaults,
                objective_defaults=self.objective_defaults,
                has_prior=self.prior is not None,
            ),
            score_on=s.score_on,
        )

        from beautyrt.runtime.ops.imageio import load_image

        timer = StageTimer()
        with timer("decode"):
            rgb = load_image(image)
        if aligned:
            crop = resize_u8(rgb, self.resolution)
        else:
            from beautyrt.runtime.ops.geometry import ffhq_alignment, warp
            from beautyrt.runtime.ops.mtcnn import MTCNNDetector

            with timer("detect"):
                faces = MTCNNDetector(*self.nets, min_face=s.min_face, normalisation=self.detector_norm).detect(rgb)
            f = faces[0 if s.face is None else s.face]
            with timer("align"):
                a_gen = ffhq_alignment(f.landmarks, self.resolution)
                crop = warp(rgb, a_gen.matrix, self.resolution)
        with timer("invert"):
            w_start = self.encoder(torch.from_numpy(model_input(crop, self.encoder_norm)))
        # --- the search, plainly: pycma + torch scorer + objective on tensors -------------------------
        t_search = time.perf_counter()
        score_on = s.score_on
        if score_on == "auto":  # as Beautifier.resolve
            score_on = (
                "output" if (self.has_crop_scorer or self.image_norms) and s.output_mode == "transfer" else "generated"
            )
        if score_on == "output":
            if not (self.has_crop_scorer or self.image_norms):
                raise SystemExit(
                    "torch reference: score_on=output needs beauty/identity models at the generator's size"
                )
            score_fn = self._output_scorer(w_start, crop, s.transfer)
            with timer("score_start"):
                score0, e_ref = score_fn(None)
        else:
            score_fn = self.scorer
            with timer("score_start"):
                score0, e_ref = score_fn(w_start)
        space = LatentSpace(s.space, self.num_ws, self.w_dim, self.w_std, self.groups)
        rows = torch.from_numpy(space.rows)
        rng = np.random.default_rng(s.seed)
        opts = {
            "randn": lambda *shape: rng.standard_normal(shape),
            "seed": np.nan,
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
            "verb_filenameprefix": "",
            "CMA_diagonal": space.dim > DIAGONAL_ABOVE if s.covariance == "auto" else s.covariance == "diagonal",
            "maxiter": s.generations,
            "tolfun": 0,
            "tolfunhist": 0,
            "tolflatfitness": 10**9,
            "tolstagnation": 10**9,
            "popsize": s.popsize,
            **({"CMA_mirrors": 0.5} if s.mirrored else {}),
        }
        x0 = space.from_w_direction(self.prior) if s.start == "prior" else np.zeros(space.dim)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            es = cma.CMAEvolutionStrategy(x0, s.sigma0, opts)
        wt = s.weights.resolved(self.objective_defaults)  # as Beautifier.resolve: unset weights from the bundle
        best_score, best_ws, best_cos = float(score0[0]), w_start.clone(), 1.0
        eval_t = 0.0
        for _ in range(s.generations):
            X = es.ask()
            Xt = torch.tensor(np.asarray(X), dtype=torch.float32).reshape(len(X), space.n_vectors, self.w_dim)
            ws = w_start + Xt[:, rows, :] * self.w_std_t
            t1 = time.perf_counter()
            score, emb = score_fn(ws)
            eval_t += time.perf_counter() - t1
            score, emb = score.double(), emb.double()
            cos = F.cosine_similarity(emb, e_ref.double(), dim=1)
            J = score - wt.identity_weight * torch.clamp(wt.identity_target - cos, min=0.0)
            J = J - wt.latent_weight * Xt.double().pow(2).mean(dim=(1, 2))
            J = torch.where(cos < wt.identity_floor, J - INFEASIBLE - 100.0 * (wt.identity_floor - cos), J)
            es.tell(X, (-J).tolist())
            feasible = cos >= wt.identity_floor
            if feasible.any():
                i = int(torch.where(feasible, score, torch.full_like(score, -float("inf"))).argmax())
                if float(score[i]) > best_score:
                    best_score, best_ws, best_cos = float(score[i]), ws[i : i + 1].clone(), float(cos[i])
        search_total = time.perf_counter() - t_search - timer.summary()["score_start"]
        timer.add("search", search_total)
        timer.add("search_eval", eval_t)
        timer.add("search_overhead", search_total - eval_t)
        with timer("synthesize"):
            imgs = self.G.synthesis(torch.cat([w_start, best_ws])).numpy()
        g_start, g_best = imgs[0], imgs[1]
        with timer("compose"):
            delta = edit_delta((g_best - g_start)[None], s.transfer)[0].transpose(1, 2, 0) * 127.5
            if aligned:  # the edit at the input crop's own size, as the runtime's compose stage
                from beautyrt.runtime.ops.imaging import add_edit

                out = add_edit(rgb, delta)
            else:  # warped once into the photo and added (numpy, shared with the runtime: not what is timed)
                from beautyrt.runtime.ops.blend import add_edits

                out = add_edits(rgb, [(a_gen, delta)])
        return {
            "image": out,
            "w_best": best_ws.numpy()[0],
            "score_before": float(score0[0]),
            "score_after": best_score,
            "identity": best_cos,
            "timings": timer.summary(),
            "generations_run": s.generations,
        }

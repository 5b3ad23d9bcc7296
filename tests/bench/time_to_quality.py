"""Delivered gain against work: how many candidate evaluations (and how much wall time) the search needs.

    python tests/bench/time_to_quality.py --bundle DIR [--limit 30] [--variants curve,fast] [--json OUT] [--plot PNG]

On MEBeauty val photos (``--limit`` of them, the same seeded sample ``beautyrt evaluate --limit`` takes), every photo
is decoded, detected, aligned and inverted ONCE; then each variant runs the search stage from that inversion
(``runtime.stages.search.search`` with the variant's settings, exactly what ``beautyrt optimize`` runs) and is
measured as ``evaluate`` measures the delivered photo: the bundle's regressor and identity network on the photo's
aligned crop plus the edit, against the crop itself (``gain_output`` / ``identity_output``). Per variant: mean /
median / min delivered gain, mean identity, candidate evaluations, search seconds, and optimize wall seconds per
photo (the search plus the photo's own decode/detect/align/invert/compose, measured once per photo).

Variants are named settings: ``curve`` = the earlier search (CMA-ES in W from the encoder's latent, 16 per
generation) at 5/10/20/30/50 generations; ``prior`` = the adopted one (from the bundle's search prior, 8 mirrored per
generation) at the same generations; the others are listed in VARIANTS (``defaults``: the bundle's recommendations;
``all``: everything). The load average is reported before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from beautyrt.runtime.api import Beautifier, ObjectiveWeights, Settings  # noqa: E402
from beautyrt.runtime.objective import cosine_to  # noqa: E402
from beautyrt.runtime.ops.imaging import add_edit, crop_to_unit, edit_in_grey_levels  # noqa: E402
from beautyrt.runtime.stages import compose, decode, invert, search  # noqa: E402
from beautyrt.runtime.timing import StageTimer  # noqa: E402
from beautyrt.runtime.tools.evaluate import list_images  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "mebeauty"


def curve() -> dict[str, dict]:
    """The search as it was before the search prior: CMA-ES from the encoder's latent, 16 per generation."""
    return {
        f"cma16x{g}": {"generations": g, "popsize": 16, "start": "origin", "mirrored": False}
        for g in (5, 10, 20, 30, 50)
    }


def prior_curve() -> dict[str, dict]:
    """The adopted search (the demo bundle's defaults): from the search prior, 8 mirrored per generation."""
    return {
        f"prior8x{g}m": {"generations": g, "popsize": 8, "start": "prior", "mirrored": True}
        for g in (5, 10, 20, 30, 50)
    }


VARIANTS: dict[str, dict] = {  # name -> Settings overrides; {} = the bundle's recommendations
    "defaults": {},
    "prior16x10": {"generations": 10, "popsize": 16, "start": "prior", "mirrored": False},
    "origin8x20m": {"generations": 20, "popsize": 8, "start": "origin", "mirrored": True},
    "linear": {"strategy": "linear"},
}


def prepare(bf: Beautifier, paths: list[Path]) -> list[dict]:
    out = []
    for p in paths:
        t0 = time.perf_counter()
        timer = StageTimer()
        photo = decode.decode(p)
        s = bf.resolve(Settings())
        try:
            faces, _ = bf.faces_to_edit(photo, s, False, timer)
        except Exception as e:  # noqa: BLE001 - a photo without a face is reported, not fatal
            print(f"skip {p.name}: {e}", file=sys.stderr)
            continue
        inv = invert.invert(bf.models, faces[0])
        fixed = time.perf_counter() - t0
        out.append({"path": p, "photo": photo, "aligned": faces[0], "inversion": inv, "fixed_s": fixed})
    return out


def run_variant(bf: Beautifier, prep: list[dict], overrides: dict) -> dict:
    rows = []
    for item in prep:
        kw = dict(overrides)
        weights = kw.pop("weights", None)
        s = Settings(**kw, **({"weights": ObjectiveWeights(**weights)} if weights else {}))
        s = bf.resolve(s)
        t0 = time.perf_counter()
        o = search.search(bf.models, item["aligned"], item["inversion"], s)
        edit = compose.render_edit(bf.models, item["inversion"], o, s)
        t1 = time.perf_counter()
        compose.compose_photo(item["photo"], [(item["aligned"], edit)], s.strength)
        t2 = time.perf_counter()
        crop = item["aligned"].crop
        delta = edit_in_grey_levels(item["inversion"].g_start, edit.g_best, s.transfer)
        sc = bf.models.score_crops(
            np.concatenate([crop_to_unit(c, bf.resolution) for c in (crop, add_edit(crop, delta))])
        )
        score, emb = sc["score"].astype(np.float64), sc["embedding"].astype(np.float64)
        rows.append(
            {
                "gain": float(score[1] - score[0]),
                "identity": float(cosine_to(emb[0], emb)[1]),
                "search_gain": o.gain,
                "evaluations": o.evaluations,
                "generations": o.generations,
                "search_s": t1 - t0,
                "wall_s": item["fixed_s"] + (t2 - t0),
            }
        )
    g = np.array([r["gain"] for r in rows])
    return {
        "settings": overrides,
        "photos": len(rows),
        "gain_mean": float(g.mean()),
        "gain_median": float(np.median(g)),
        "gain_min": float(g.min()),
        "identity_mean": float(np.mean([r["identity"] for r in rows])),
        "identity_min": float(np.min([r["identity"] for r in rows])),
        "evaluations_mean": float(np.mean([r["evaluations"] for r in rows])),
        "search_s_mean": float(np.mean([r["search_s"] for r in rows])),
        "wall_s_mean": float(np.mean([r["wall_s"] for r in rows])),
        "rows": rows,
    }


def plot(results: dict, path: Path) -> None:
    """Delivered gain against evaluations (PNG, Pillow only)."""
    from PIL import Image, ImageDraw

    W, H, m = 720, 420, 56
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    xs = [r["evaluations_mean"] for r in results.values()]
    ys = [r["gain_mean"] for r in results.values()]
    xmax, ymax = max(xs) * 1.05, max(1.2, max(ys) * 1.1)

    def px(x, y):
        return m + x / xmax * (W - 2 * m), H - m - y / ymax * (H - 2 * m)

    d.line([px(0, 0), px(xmax, 0)], fill="black")
    d.line([px(0, 0), px(0, ymax)], fill="black")
    for t in range(0, int(xmax) + 1, 100):
        d.text((px(t, 0)[0] - 8, H - m + 4), str(t), fill="black")
    for t in np.arange(0, ymax + 1e-9, 0.2):
        d.text((6, px(0, t)[1] - 6), f"{t:.1f}", fill="black")
    d.text((W // 2 - 90, H - 20), "candidate evaluations per photo", fill="black")
    d.text((m, 8), "delivered gain (bundle regressor, photo crop + edit vs crop), mean over photos", fill="black")
    names = [n for n in results if n != "defaults"]  # the bundle's defaults coincide with one of the curves' points
    for prefix, col in (("cma16x", (40, 90, 200)), ("prior8x", (200, 60, 40))):
        pts = [px(results[n]["evaluations_mean"], results[n]["gain_mean"]) for n in names if n.startswith(prefix)]
        if len(pts) > 1:
            d.line(pts, fill=col, width=2)
    d.text((W - 300, H - m - 40), "blue: origin start, 16/generation", fill=(40, 90, 200))
    d.text((W - 300, H - m - 26), "red: search prior, 8 mirrored/generation", fill=(200, 60, 40))
    for n in names:
        x, y = px(results[n]["evaluations_mean"], results[n]["gain_mean"])
        col = (40, 90, 200) if n.startswith("cma16x") else (200, 60, 40) if n.startswith("prior8x") else (90, 90, 90)
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=col)
        d.text((x + 6, y - 12), f"{n} id {results[n]['identity_mean']:.2f}", fill=col)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="curve", help="comma list: curve and/or names in VARIANTS, or 'all'")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    a = ap.parse_args(argv)
    paths = list_images(DATA / "images", DATA / "val.csv", limit=a.limit, seed=a.seed)
    want: dict[str, dict] = {}
    for v in a.variants.split(","):
        if v == "curve":
            want.update(curve())
        elif v == "prior":
            want.update(prior_curve())
        elif v == "all":
            want.update(curve())
            want.update(prior_curve())
            want.update(VARIANTS)
        else:
            want[v] = VARIANTS[v]
    load0 = os.getloadavg()
    res = {}
    with Beautifier(a.bundle, device="cpu") as bf:
        prep = prepare(bf, paths)
        for name, ov in want.items():
            res[name] = run_variant(bf, prep, ov)
            r = res[name]
            print(
                f"{name:<28} gain {r['gain_mean']:+.3f} (median {r['gain_median']:+.3f}, min {r['gain_min']:+.3f}) "
                f"identity {r['identity_mean']:.3f} (min {r['identity_min']:.2f}) evals {r['evaluations_mean']:.0f} "
                f"search {r['search_s_mean']:.2f}s wall {r['wall_s_mean']:.2f}s",
                flush=True,
            )
    out = {
        "bundle": a.bundle,
        "photos": len(prep),
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg(),
        "fixed_s_mean": float(np.mean([p["fixed_s"] for p in prep])),
        "variants": res,
    }
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    if a.plot:
        plot(res, Path(a.plot))
    print(
        f"load {load0} -> {out['loadavg_after']}; fixed (decode+detect+align+invert) {out['fixed_s_mean']:.3f}s/photo"
    )


if __name__ == "__main__":
    main()

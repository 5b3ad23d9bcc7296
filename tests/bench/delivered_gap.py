"""Where the report's estimate and the delivered photo part (issue 17 part 5).

    python tests/bench/delivered_gap.py --bundle DIR --data ../shared/data [--limit 10] [--seed 5]

For MEBeauty val photos (a seeded sample): the search as optimize runs it, the photo composed, then the search's
estimate minus the crop_scorer's score of (a) the composed photo cut through the search's own alignment (what
rendering, masking, resampling and rounding lose) and (b) the composed photo re-detected and re-aligned (what the
report's ``delivered`` block measures); (c) the re-detected crop of the *unedited* photo minus its own crop (the
detector's jitter alone). Prints one row per photo and the means."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args()
    from beautyrt.runtime.beautifier import Beautifier
    from beautyrt.runtime.errors import NoFaceError
    from beautyrt.runtime.ops.geometry import warp
    from beautyrt.runtime.ops.imaging import crop_to_unit
    from beautyrt.runtime.settings import Settings
    from beautyrt.runtime.stages import compose, decode, rescore
    from beautyrt.runtime.timing import StageTimer
    from beautyrt.runtime.tools.evaluate import list_images

    me = Path(a.data) / "mebeauty"
    files = list_images(me / "images", me / "val.csv", limit=a.limit, seed=a.seed)
    rows = []
    with Beautifier(a.bundle) as bf:
        s, R = bf.resolve(Settings()), bf.resolution
        for p in files:
            t, photo = StageTimer(), decode.decode(p)
            try:
                faces, _ = bf.faces_to_edit(photo, s, False, t)
            except NoFaceError:
                continue
            fe = bf.edit_face(faces[0], s, t)
            out = compose.compose_photo(photo, [(fe.aligned, fe.edit)], 1.0)
            assert fe.aligned.alignment is not None
            same = warp(out, fe.aligned.alignment.matrix, R)
            found = rescore.delivered_crop(bf.models, out, fe.aligned, s.min_face)
            again = rescore.delivered_crop(bf.models, photo.rgb, fe.aligned, s.min_face)
            if found is None or again is None:
                continue
            crops = [fe.aligned.crop, same, found[0], again[0]]
            sc = bf.models.score_crops(np.concatenate([crop_to_unit(c, R) for c in crops]))["score"]
            est = fe.outcome.score_after
            rows.append([est - sc[1], est - sc[2], sc[3] - sc[0]])
            print(f"{p.name[:28]:28s} " + " ".join(f"{v:+.3f}" for v in rows[-1]), flush=True)
    m = np.mean(rows, axis=0)
    print(f"mean over {len(rows)}: report - same alignment {m[0]:+.3f}; report - re-detected {m[1]:+.3f}; "
          f"detector jitter on the unedited photo {m[2]:+.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

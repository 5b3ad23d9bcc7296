"""Does the delivered photo keep the face's own texture? (issue 18)

    python tests/bench/texture.py --bundle ~/.cache/beautyrt/default [--out DIR]

On the example photo upscaled to 2048 px with seeded fine grain (and a 12 MP 4000 x 3000 canvas with the same
face), runs ``Beautifier.optimize`` with the bundle's defaults and reports the high-frequency energy (variance of
the Laplacian) inside the face mask after / before, whether every pixel outside the mask is bit-identical, the
compose stage's time, and -- for comparison -- what resampling the face through a 512 px work crop and pasting
it back (beautyrt <= 0.1's compose) does to the same texture. ``--out``: 100 % crops before | after.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from beautyrt.runtime.api import Beautifier, Settings  # noqa: E402
from beautyrt.runtime.ops.blend import image_mask, paste_back  # noqa: E402
from beautyrt.runtime.ops.geometry import ffhq_alignment, warp  # noqa: E402
from beautyrt.runtime.ops.imaging import add_edit  # noqa: E402
from tests.runtime.test_compose import laplacian_energy, textured_photo  # noqa: E402


def measure(b: Beautifier, photo: np.ndarray, out_dir, tag: str) -> dict:
    r = b.optimize(photo, Settings())
    fe = r.primary
    mask = image_mask(fe.aligned.alignment, photo.shape[:2])
    inside, outside = mask > 0.5, mask == 0
    ratio = laplacian_energy(r.image, inside) / laplacian_energy(photo, inside)
    # the earlier compose: photo -> 512 px work crop, + the edit, warped back and pasted (resamples the face twice)
    a512 = ffhq_alignment(fe.aligned.face.landmarks, 512)
    old = paste_back(photo, add_edit(warp(photo, a512.matrix, 512), fe.edit.delta), a512)
    old_ratio = laplacian_energy(old, inside) / laplacian_energy(photo, inside)
    res = {
        "photo": f"{photo.shape[1]}x{photo.shape[0]}",
        "face_pixels_in_mask": int(inside.sum()),
        "hf_energy_before": laplacian_energy(photo, inside),
        "hf_ratio_after_before": ratio,
        "hf_ratio_outside": laplacian_energy(r.image, outside) / laplacian_energy(photo, outside),
        "outside_bit_identical": bool(np.array_equal(r.image[outside], photo[outside])),
        "hf_ratio_work_crop_paste": old_ratio,
        "compose_s": r.timings["compose"],
        "total_s": r.timings["total"],
        "gain": r.score_after - r.score_before,
        "identity": r.identity,
    }
    if out_dir:
        ys, xs = np.nonzero(inside)
        cy, cx = int(ys.mean()), int(xs.mean())
        box = (slice(cy - 128, cy + 128), slice(cx - 128, cx + 128))
        sheet = np.concatenate([photo[box], r.image[box], old[box]], axis=1)
        Image.fromarray(sheet).save(Path(out_dir) / f"texture_{tag}.png")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--out", default=None, help="folder for 100 %% crops: before | after | work-crop paste")
    args = ap.parse_args()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    big = textured_photo(scale=4)
    canvas = np.full((3000, 4000, 3), 127, np.uint8)
    canvas[476 : 476 + 2048, 976 : 976 + 2048] = big
    with Beautifier(args.bundle) as b:
        rows = {"2048": measure(b, big, args.out, "2048"), "12MP": measure(b, canvas, args.out, "12mp")}
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

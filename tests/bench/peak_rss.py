"""Peak RSS of `beautyrt optimize` on the largest photo it accepts (64 MP), the figure README's Errors bullet
quotes.

    python tests/bench/peak_rss.py --bundle /tmp/tinyd      [--json]

Photos (8000 x 8000, written to a temporary directory): the example photo tiled 16 x 16 (256 faces; run
with and without --all-faces, which edits the 16 largest), 16 large faces (2000 px each, --all-faces, with
--side-by-side/--report/--plot), and a 64 MP noise PNG (no face: the detector's worst case). Each run is a
fresh process; its peak RSS is the kernel's ru_maxrss for that child. The bundle needs a detector; without
``--bundle`` the tiny preset is exported first (export extra). The load average is printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "astronaut.jpg"
SIDE = 8000


def photos(d: Path) -> dict:
    im = Image.open(EXAMPLE).convert("RGB")
    crowd = Image.new("RGB", (SIDE, SIDE))
    for x in range(0, SIDE, im.width):
        for y in range(0, SIDE, im.height):
            crowd.paste(im, (x, y))
    crowd.save(d / "crowd.jpg", quality=90)
    big = Image.new("RGB", (SIDE, SIDE), (128, 128, 128))
    face = im.resize((2000, 2000))
    for x in range(0, SIDE, 2000):
        for y in range(0, SIDE, 2000):
            big.paste(face, (x, y))
    big.save(d / "large_faces.jpg", quality=90)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(d / "noise.png", compress_level=1)
    return {"crowd": d / "crowd.jpg", "large_faces": d / "large_faces.jpg", "noise": d / "noise.png"}


def peak_of(args: list[str]) -> dict:
    """Exit code, seconds and peak RSS (MB) of one `beautyrt` process, read by a parent of its own (the
    children's ru_maxrss of that parent is this process alone)."""
    cli = "import sys; from beautyrt.cli.main import main; sys.argv = ['beautyrt'] + sys.argv[1:]; main()"
    parent = (
        "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, p.returncode)"
    )
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", parent, sys.executable, "-c", cli, *args], capture_output=True, text=True
    )
    mb, rc = (int(x) for x in out.stdout.split()[-2:])
    return {"exit": rc, "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        bundle = a.bundle
        if bundle is None:
            from beautyrt.export.api import export_preset

            bundle = export_preset("tiny", d / "bundle", detector=True)
        ph = photos(d)
        fast = ["--bundle", str(bundle), "-g", "1", "-p", "4", "-q", "-o", str(d / "out.jpg")]
        runs = {
            "noise (no face)": [str(ph["noise"])],
            "crowd, largest face": [str(ph["crowd"])],
            "crowd, --all-faces": [str(ph["crowd"]), "--all-faces"],
            "16 large faces, --all-faces + sheets": [
                str(ph["large_faces"]),
                "--all-faces",
                "--side-by-side",
                str(d / "s.jpg"),
                "--plot",
                str(d / "p.png"),
                "--report",
                str(d / "r.json"),
            ],
        }
        res = {name: peak_of(["optimize", *args, *fast]) for name, args in runs.items()}
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        for k, v in res.items():
            print(f"{k:40s} {v}")


if __name__ == "__main__":
    main()

"""Class 4, inputs that hang or exhaust memory: only regular files are read (a FIFO, /dev/zero, a socket, a
directory are refused at once, never waited on or read), with a byte cap; arrays and PIL images have the
same pixel cap as files (a 144 MP array is refused like a 144 MP file); float/NaN/odd-range images are
refused or converted correctly (never a silent flat image); the detector's work is bounded (P-Net in exact
strips, capped candidates) and --all-faces edits at most MAX_FACES faces.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beautyrt.runtime.errors import ImageDecodeError, ImageNotFoundError, ImageTooLargeError, UsageError
from tests.conftest import EXAMPLE
from tests.robustness.corpus import FAST, assert_one_line_error, char_device, cli_inproc, files


def _float_tiff(arr: np.ndarray, path: Path) -> Path:
    """An uncompressed little-endian float32 TIFF (1 or 3 samples per pixel), written by hand."""
    h, w = arr.shape[:2]
    spp = 1 if arr.ndim == 2 else arr.shape[2]
    data = np.ascontiguousarray(arr, "<f4").tobytes()
    tags = [
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, spp, 32),
        (259, 3, 1, 1),
        (262, 3, 1, 2 if spp == 3 else 1),
        (273, 4, 1, 8),
        (277, 3, 1, spp),
        (278, 4, 1, h),
        (279, 4, 1, len(data)),
        (284, 3, 1, 1),
        (339, 3, spp, 3),
    ]
    ifd_off = 8 + len(data)
    extra_off = ifd_off + 2 + 12 * len(tags) + 4
    ifd, extra = struct.pack("<H", len(tags)), b""
    for tag, typ, count, val in tags:
        if count > 1:
            ifd += struct.pack("<HHII", tag, typ, count, extra_off + len(extra))
            extra += struct.pack("<" + "H" * count, *([val] * count))
        else:
            ifd += struct.pack("<HHI", tag, typ, count) + (
                struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val)
            )
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_off) + data + ifd + struct.pack("<I", 0) + extra)
    return path


def _grey(d) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLE).convert("L"), np.float32)


def i_fifo(d):
    os.mkfifo(d / "fifo.jpg")
    return d / "fifo.jpg"


def i_dev_zero_symlink(d):
    os.symlink("/dev/zero", d / "zero.jpg")
    return d / "zero.jpg"


def i_dev_null(d):
    return char_device(d, "null.jpg")


def i_socket(d):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock.jpg"))
    s.close()
    return d / "sock.jpg"


def i_dangling_symlink(d):
    os.symlink(d / "nowhere.jpg", d / "dangling.jpg")
    return d / "dangling.jpg"


def i_symlink_loop(d):
    os.symlink(d / "loop.jpg", d / "loop.jpg")
    return d / "loop.jpg"


def i_sparse_300mb(d):
    p = d / "sparse.png"
    with open(p, "wb") as f:
        f.truncate(300 << 20)  # above the byte cap; sparse, so it costs no disk
    return p


def i_name_too_long(d):
    return d / ("n" * 300 + ".jpg")


def i_path_too_long(d):
    return d / ("d/" * 2100) / "x.jpg"


def i_float_nan(d):
    a = _grey(d) / 255.0
    a[10:20, 10:20] = np.nan
    return _float_tiff(a, d / "nan.tif")


def i_float_inf(d):
    a = _grey(d)
    a[0, 0] = np.inf
    return _float_tiff(a, d / "inf.tif")


def i_float_negative(d):
    return _float_tiff(_grey(d) / 255.0 - 0.5, d / "neg.tif")


def i_float_hdr(d):
    return _float_tiff(_grey(d) / 255.0 * 1.5, d / "hdr.tif")  # 0..1.5: neither unit nor grey levels


def i_float_huge(d):
    return _float_tiff(_grey(d) * 1e6, d / "huge.tif")


def i_float_rgb(d):
    a = np.asarray(Image.open(EXAMPLE).convert("RGB"), np.float32) / 255.0
    return _float_tiff(a, d / "rgb_float.tif")


CASES = {
    "fifo": (i_fifo, 32, r"fifo.jpg: is a FIFO \(named pipe\), not a regular file"),
    "dev_zero_symlink": (i_dev_zero_symlink, 32, r"zero.jpg: is a character device, not a regular file"),
    "dev_null": (i_dev_null, 32, r"null.jpg: is a character device"),
    "socket": (i_socket, 31, r"sock.jpg: cannot open"),
    "dangling_symlink": (i_dangling_symlink, 31, r"dangling.jpg: no such file"),
    "symlink_loop": (i_symlink_loop, 31, r"loop.jpg: cannot open \(too many levels of symbolic links\)"),
    "sparse_300MB": (i_sparse_300mb, 33, r"sparse.png: 314,572,800 bytes is above the limit of 268,435,456 bytes"),
    "name_too_long": (i_name_too_long, 31, r"cannot open \(file name or path too long\)"),
    "path_too_long": (i_path_too_long, 31, r"file name or path too long"),
    "float_nan": (i_float_nan, 32, r"nan.tif: the image has NaN or infinite pixel values"),
    "float_inf": (i_float_inf, 32, r"NaN or infinite"),
    "float_negative": (i_float_negative, 32, r"negative pixel values"),
    "float_0_to_1.5": (i_float_hdr, 32, r"pixel values span 0..1.5"),
    "float_huge": (i_float_huge, 32, r"pixel values span"),
    "float_rgb": (i_float_rgb, 32, r"rgb_float.tif: not an image Pillow can read"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_cli(case, tiny_bundle, tmp_path):
    build, code, pattern = CASES[case]
    d = tmp_path / "in"
    d.mkdir()
    src = build(d)
    out = tmp_path / "out"
    out.mkdir()
    before = files(d)
    t0 = time.perf_counter()
    rc, so, err = cli_inproc("optimize", src, "--aligned", "--bundle", tiny_bundle, "-o", out / "o.png", *FAST)
    assert_one_line_error(rc, err, code, pattern, so)
    assert time.perf_counter() - t0 < 20, "refused at once, not after reading"
    assert files(out) == [] and files(d) == before


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_api(case, tiny_bundle, tmp_path):
    from beautyrt.runtime.api import optimize_file
    from beautyrt.runtime.ops.imageio import load_image

    build, code, pattern = CASES[case]
    src = build(tmp_path)
    with pytest.raises((ImageNotFoundError, ImageDecodeError, ImageTooLargeError), match=pattern) as ei:
        load_image(src)
    assert ei.value.exit_code == code and "\n" not in str(ei.value)
    with pytest.raises(type(ei.value), match=pattern):
        optimize_file(src, tmp_path / "o.png", bundle=tiny_bundle, aligned=True)
    assert not (tmp_path / "o.png").exists()


def test_fifo_input_never_blocks_in_a_real_process(tiny_bundle, tmp_path):
    """A FIFO nobody writes to: the run ends at once with 32 (today's main waited forever)."""
    from tests.conftest import run_cli

    os.mkfifo(tmp_path / "f.jpg")
    r = run_cli("optimize", str(tmp_path / "f.jpg"), "--bundle", str(tiny_bundle), *FAST, timeout=60)
    assert r.returncode == 32, r.stderr
    assert_one_line_error(r.returncode, r.stderr, 32, r"is a FIFO", r.stdout)


def test_float_tiffs_in_range_are_converted_not_flattened(tmp_path):
    """A grey float TIFF on 0..1 or on 0..255 decodes to the same grey levels as the 8-bit photo (not flat)."""
    from beautyrt.runtime.ops.imageio import load_image

    g8 = np.asarray(Image.open(EXAMPLE).convert("L"), np.float64)
    for name, arr in (("unit", g8 / 255.0), ("levels", g8), ("unit_rounding", np.minimum(g8 / 255.0 * 1.0005, 1.0005))):
        got = load_image(_float_tiff(arr.astype(np.float32), tmp_path / f"{name}.tif"))[..., 0].astype(np.float64)
        assert got.std() > 30, name
        assert np.abs(got - g8).max() <= 1.0, name


@pytest.mark.parametrize(
    "make,exc,pattern",
    [
        (
            lambda: np.broadcast_to(np.zeros(3, np.uint8), (12000, 12000, 3)),
            ImageTooLargeError,
            r"12000x12000 pixels is above",
        ),
        (lambda: np.broadcast_to(np.zeros(1, np.uint8), (12000, 12000)), ImageTooLargeError, r"above the limit"),
        (lambda: np.zeros((64, 64, 3), np.float64), ImageDecodeError, r"arrays must be uint8"),
        (lambda: np.zeros((64, 64, 2), np.uint8), ImageDecodeError, r"must be \(H, W, 3\)"),
        (lambda: np.zeros((64, 64, 3, 1), np.uint8), ImageDecodeError, r"must be \(H, W, 3\)"),
        (lambda: np.zeros((64, 64, 3), object), ImageDecodeError, r"arrays must be uint8"),
        (lambda: None, UsageError, r"image must be a path, bytes, a PIL image or a uint8"),
        (lambda: {"x": 1}, UsageError, r"got dict"),
        (lambda: 123, UsageError, r"got int"),
        (lambda: 1.5, UsageError, r"got float"),
        (lambda: True, UsageError, r"got bool"),
        (lambda: b"", ImageDecodeError, r"empty"),
        (lambda: b"\x00" * 100, ImageDecodeError, r"not an image"),
        (lambda: "", ImageNotFoundError, r"empty"),
    ],
)
def test_odd_image_values_api(make, exc, pattern, tiny_bundle):
    """Beautifier.optimize with arrays, bytes and odd Python values: typed errors, never a bare TypeError or
    a MemoryError (the 144 MP array is a zero-copy broadcast: refused before anything is allocated)."""
    from beautyrt.runtime.api import Beautifier, Settings

    with Beautifier(tiny_bundle, device="cpu") as b:
        with pytest.raises(exc, match=pattern):
            b.optimize(make(), Settings(generations=1, popsize=4), aligned=True)


def test_pnet_strips_equal_one_call(tiny_bundle_with_detector):
    """P-Net on a large pyramid level in strips gives exactly the windows of one call on the whole level."""
    from beautyrt.runtime.api import Beautifier
    from beautyrt.runtime.ops import mtcnn

    with Beautifier(tiny_bundle_with_detector, device="cpu") as b:
        det = b.models.detector(40.0)
        name = det.pnet.inputs[0].name
        rng = np.random.default_rng(0)
        for h, w in ((1201, 700), (900, 1333)):
            im = rng.integers(0, 255, (1, h, w, 3), dtype=np.uint8)
            whole = mtcnn._outputs(det.pnet.run({name: det._normalise(im)}), ("reg", "prob"), "pnet")
            old = mtcnn.STRIP_PIXELS
            try:
                mtcnn.STRIP_PIXELS = 100_000  # many strips
                strips = det._pnet(im, name)
            finally:
                mtcnn.STRIP_PIXELS = old
            assert strips[0].shape == whole[0].shape and strips[1].shape == whole[1].shape
            assert np.array_equal(strips[1], whole[1]) and np.array_equal(strips[0], whole[0])


def test_crowd_is_bounded(tiny_bundle_with_detector, tmp_path, monkeypatch):
    """A crowd photo: the candidate caps and MAX_FACES hold (--all-faces edits at most MAX_FACES faces)."""
    from beautyrt.runtime.api import Beautifier, Settings
    from beautyrt.runtime.stages import detect

    monkeypatch.setattr(detect, "MAX_FACES", 3)
    im = Image.open(EXAMPLE).convert("RGB")
    crowd = Image.new("RGB", (im.width * 3, im.height * 2))
    for i in range(3):
        for j in range(2):
            crowd.paste(im, (i * im.width, j * im.height))
    with Beautifier(tiny_bundle_with_detector, device="cpu") as b:
        r = b.optimize(np.asarray(crowd), Settings(generations=1, popsize=4, all_faces=True))
    assert r.faces_found >= 4 and len(r.faces) == 3


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM")
def test_zip_bomb_checkpoint_refused_from_its_central_directory(tmp_path):
    """A .pt whose zip declares 512 MB (of zeros, ~0.5 MB compressed): refused with 52 before torch reads it,
    without the process growing (today's main inflated it to GBs)."""
    import zipfile

    p = tmp_path / "bomb.pt"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            block = b"\0" * (1 << 24)
            for _ in range(32):
                f.write(block)
    code = (
        "import sys\n"
        "from beautyrt.runtime.timing import peak_rss_bytes\n"
        "from beautyrt.export.loaders import load_checkpoint\n"
        "from beautyrt.export.errors import CheckpointError\n"
        "try:\n    load_checkpoint(sys.argv[1])\nexcept CheckpointError as e:\n    print('refused', e)\n"
        # VmHWM, not ru_maxrss: the latter carries over the peak of the forking pytest process (1.6 GB in CI)
        "print('peak', peak_rss_bytes() // 2**20)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
    assert "refused" in r.stdout and "zip bomb" in r.stdout, r.stdout + r.stderr
    peak = int(r.stdout.split("peak")[-1])
    assert peak < 1500, f"peak RSS {peak} MB"

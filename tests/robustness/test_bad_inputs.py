"""Bad-input corpus, generated here (nothing downloaded), run through the CLI and through the Python API.

Every FAILING case must give: one line on stderr naming the problem, the exit code of its kind (distinct per
kind), no traceback, and nothing written (no output image, no report, no temp file). The same failure must
surface in the API as the typed exception carrying that exit code. Decodable-but-odd images (alpha, 16-bit,
CMYK, grey, palette, EXIF-rotated, several faces) must SUCCEED.

About "unwritable output": the tests run as root, and root ignores directory permission bits
(``os.access(dir, W_OK)`` is True on a 0o500 directory), so a read-only directory cannot be simulated here.
Output failures are provoked with paths that no user can write: under a directory that does not exist, under
a regular FILE standing where the directory should be, onto an existing directory, and with an unknown
extension; plus a report path that is a directory (the image must then not be written either).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from beautyrt.engines.errors import BundleIntegrityError, BundleNotFoundError, BundleSchemaError, BundleVersionError
from beautyrt.runtime.errors import (
    ImageDecodeError,
    ImageNotFoundError,
    ImageTooLargeError,
    ImageTooSmallError,
    NoFaceError,
    OutputError,
)
from tests.conftest import edit_manifest

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "astronaut.jpg"
FAST = ["-g", "1", "-p", "4", "--seed", "0"]


# --- corpus builders: each writes one input into ``d`` and returns its path --------------------------------
def _photo() -> Image.Image:
    return Image.open(EXAMPLE).convert("RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h pixels, followed by a few bytes of image data (no real pixels)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _png16_rgb(rgb8: np.ndarray) -> bytes:
    """A real 48-bit (16 bits per channel) RGB PNG, written by hand (Pillow cannot write one)."""
    a16 = rgb8.astype(">u2") * 257
    h = a16.shape[0]
    raw = b"".join(b"\0" + a16[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", a16.shape[1], h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _gif_bomb(w: int, h: int) -> bytes:
    """GIF89a whose screen and frame claim w x h, with one code of LZW data."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", w, h, 0x80, 0, 0)
        + b"\0\0\0\xff\xff\xff"
        + b","
        + struct.pack("<HHHHB", 0, 0, w, h, 0)
        + b"\x02\x02\x44\x01\x00;"
    )


def b_zero_byte(d):
    p = d / "empty.jpg"
    p.write_bytes(b"")
    return p


def b_truncated_jpeg(d):
    p = d / "truncated.jpg"
    p.write_bytes(EXAMPLE.read_bytes()[:4000])
    return p


def b_text_as_jpg(d):
    p = d / "notes.jpg"
    p.write_text("this is a text file, not a JPEG\n")
    return p


def b_directory(d):
    p = d / "folder.jpg"
    p.mkdir()
    return p


def b_missing(d):
    return d / "does-not-exist.jpg"


def b_bomb_png(d):
    p = d / "bomb.png"
    p.write_bytes(_png_header_only(100_000, 100_000))
    return p


def b_bomb_gif(d):
    p = d / "bomb.gif"
    p.write_bytes(_gif_bomb(65_535, 65_535))
    return p


def b_large_png(d):  # 9000 x 9000 = 81 MP: under Pillow's own bomb threshold, above beautyrt's 64 MP limit
    p = d / "large.png"
    p.write_bytes(_png_header_only(9000, 9000))
    return p


def b_one_px(d):
    p = d / "one.png"
    Image.new("RGB", (1, 1), (200, 150, 120)).save(p)
    return p


def b_wide_strip(d):
    p = d / "strip.png"
    _photo().resize((4000, 20)).save(p)
    return p


def b_no_face(d):
    p = d / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(p)
    return p


def b_alpha_png(d):
    p = d / "alpha.png"
    im = _photo().convert("RGBA")
    a = np.full(im.size[::-1], 255, np.uint8)
    a[:40, :] = 0  # transparent band at the top, half-transparent at the bottom
    a[-40:, :] = 128
    im.putalpha(Image.fromarray(a))
    im.save(p)
    return p


def b_png16_rgb(d):
    p = d / "rgb16.png"
    p.write_bytes(_png16_rgb(np.asarray(_photo())))
    return p


def b_png16_grey(d):
    p = d / "grey16.png"
    g = np.asarray(_photo().convert("L"), np.uint16) * 257
    im = Image.fromarray(g)
    assert im.mode == "I;16"
    im.save(p)
    return p


def b_cmyk_jpeg(d):
    p = d / "cmyk.jpg"
    _photo().convert("CMYK").save(p, quality=95)
    return p


def b_grey_jpeg(d):
    p = d / "grey.jpg"
    _photo().convert("L").save(p, quality=95)
    return p


def b_palette_gif(d):
    p = d / "palette.gif"
    _photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(p)
    return p


def b_exif_rotated(d):
    """Pixels stored rotated by 90° with EXIF Orientation 6 (a viewer rotates them back by 90° clockwise)."""
    p = d / "rotated.jpg"
    im = _photo().crop((0, 0, 512, 400))  # not square, so the orientation is visible in the size
    stored = im.transpose(Image.Transpose.ROTATE_90)  # 400 x 512 stored, face lying on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: rotate 90° clockwise to view (Pillow's exif_transpose: ROTATE_270)
    stored.save(p, quality=95, exif=exif.tobytes())
    return p


def b_many_faces(d):
    p = d / "crowd.jpg"
    im = _photo()
    w, h = im.size
    tile = Image.new("RGB", (2 * w, 2 * h))
    for i in range(2):
        for j in range(2):
            tile.paste(im, (i * w, j * h))
    tile.save(p, quality=92)
    return p


def b_webp(d):
    p = d / "photo.webp"
    _photo().save(p, quality=90)
    return p


# --- bundle faults: each copies the good bundle and breaks one thing ------------------------------------------
def _copy_bundle(src, d):
    b = d / "bundle"
    shutil.copytree(src, b)
    return b


def f_bundle_absent(src, d):
    return d / "no-bundle-here"


def f_bundle_file_missing(src, d):
    b = _copy_bundle(src, d)
    (b / "scorer.onnx").unlink()
    return b


def f_bundle_truncated_onnx(src, d):
    """Truncated AND re-hashed (so it gets past the sha256 check): onnxruntime itself must refuse it."""
    import hashlib

    b = _copy_bundle(src, d)
    f = b / "synthesis.onnx"
    f.write_bytes(f.read_bytes()[:5000])
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    edit_manifest(b, lambda m: m["models"]["synthesis"].__setitem__("sha256", digest))
    return b


def f_bundle_tampered(src, d):
    b = _copy_bundle(src, d)
    f = b / "encoder.onnx"
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF
    f.write_bytes(bytes(data))
    return b


def f_bundle_newer(src, d):
    b = _copy_bundle(src, d)
    edit_manifest(b, lambda m: m.update(format_version=m["format_version"] + 1, beautyrt_version="99.0"))
    return b


def f_bundle_wrong_shapes(src, d):
    """The scorer's declared W+ input disagrees with the generator's (num_ws, w_dim)."""
    b = _copy_bundle(src, d)

    def bad(m):
        m["models"]["scorer"]["inputs"][0]["shape"] = ["batch", m["generator"]["num_ws"], 2 * m["generator"]["w_dim"]]

    edit_manifest(b, bad)
    return b


def f_bundle_not_json(src, d):
    b = _copy_bundle(src, d)
    (b / "manifest.json").write_text('{"format": "beautyrt-bundle", ')
    return b


# id -> (builder, exit code, exception, message regex); exit 0 = must succeed
IMAGE_CASES = {
    "zero_byte": (b_zero_byte, 32, ImageDecodeError, r"empty file"),
    "truncated_jpeg": (b_truncated_jpeg, 32, ImageDecodeError, r"image data is truncated"),
    "text_named_jpg": (b_text_as_jpg, 32, ImageDecodeError, r"not an image"),
    "directory": (b_directory, 32, ImageDecodeError, r"is a directory"),
    "missing_path": (b_missing, 31, ImageNotFoundError, r"no such file"),
    "bomb_png_100000x100000": (b_bomb_png, 33, ImageTooLargeError, r"claims 10,000,000,000 pixels"),
    "bomb_gif_65535x65535": (b_bomb_gif, 33, ImageTooLargeError, r"claims 4,294,836,225 pixels"),
    "large_png_9000x9000": (b_large_png, 33, ImageTooLargeError, r"9000x9000 pixels is above the limit"),
    "one_pixel": (b_one_px, 34, ImageTooSmallError, r"1x1 is too small"),
    "strip_4000x20": (b_wide_strip, 35, NoFaceError, r"no face"),
    "no_face": (b_no_face, 35, NoFaceError, r"no face found"),
    "alpha_png": (b_alpha_png, 0, None, None),
    "png16_rgb": (b_png16_rgb, 0, None, None),
    "png16_grey": (b_png16_grey, 0, None, None),
    "cmyk_jpeg": (b_cmyk_jpeg, 0, None, None),
    "grey_jpeg": (b_grey_jpeg, 0, None, None),
    "palette_gif": (b_palette_gif, 0, None, None),
    "exif_rotated": (b_exif_rotated, 0, None, None),
    "many_faces_2x2": (b_many_faces, 0, None, None),
    "webp": (b_webp, 0, None, None),
}


def _out_missing_dir(d):
    return ["-o", str(d / "out" / "nope" / "o.jpg")]


def _out_parent_is_file(d):
    (d / "out" / "afile").write_text("x")
    return ["-o", str(d / "out" / "afile" / "o.jpg")]


def _out_is_dir(d):
    (d / "out" / "o.jpg").mkdir()
    return ["-o", str(d / "out" / "o.jpg")]


def _out_bad_ext(d):
    return ["-o", str(d / "out" / "o.bmpx")]


def _report_is_dir(d):
    (d / "out" / "rep.json").mkdir()
    return ["-o", str(d / "out" / "o.png"), "--report", str(d / "out" / "rep.json")]


OUTPUT_CASES = {
    "out_dir_missing": (_out_missing_dir, 40, OutputError, r"does not exist"),
    "out_parent_is_a_file": (_out_parent_is_file, 40, OutputError, r"afile is a file, not a directory"),
    "out_is_a_directory": (_out_is_dir, 40, OutputError, r"is a directory"),
    "out_unknown_extension": (_out_bad_ext, 40, OutputError, r"unknown output extension"),
    "report_is_a_directory": (_report_is_dir, 40, OutputError, r"is a directory"),
}

BUNDLE_CASES = {
    "bundle_absent": (f_bundle_absent, 11, BundleNotFoundError, r"no bundle at .*beautyrt export"),
    "bundle_file_missing": (f_bundle_file_missing, 11, BundleNotFoundError, r"scorer.onnx .* is missing"),
    "bundle_truncated_onnx": (
        f_bundle_truncated_onnx,
        12,
        BundleIntegrityError,
        r"synthesis.onnx .* not a well-formed ONNX model",
    ),
    "bundle_tampered_file": (f_bundle_tampered, 12, BundleIntegrityError, r"encoder.onnx .* does not match its sha256"),
    "bundle_newer_version": (f_bundle_newer, 13, BundleVersionError, r"newer beautyrt"),
    "bundle_wrong_role_shapes": (f_bundle_wrong_shapes, 14, BundleSchemaError, r"scorer.*ws.*generator"),
    "bundle_manifest_not_json": (f_bundle_not_json, 14, BundleSchemaError, r"not valid JSON"),
}


# --- helpers -------------------------------------------------------------------------------------------------
def _layout(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir(parents=True)
    out.mkdir(parents=True)
    return inp, out


def _files(d: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def _one_line_error(r, pattern):
    import re

    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("beautyrt: error:"), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def _check_success_output(image_path: pathlib.Path, out: pathlib.Path, rep: dict):
    from beautyrt.runtime.ops.imageio import load_image

    src = load_image(image_path)
    got = Image.open(out)
    assert got.size == (src.shape[1], src.shape[0]), "output must have the (orientation-applied) input size"
    assert got.mode == "RGB"
    assert got.getexif().get(0x0112, 1) == 1, "orientation already applied: the output must not ask to rotate again"
    assert b"AI-edited by beautyrt" in got.info.get("xmp", b"")
    assert rep["faces_found"] >= 1


def _codes_distinct():
    kinds = {}
    for table in (IMAGE_CASES, OUTPUT_CASES, BUNDLE_CASES):
        for _, code, exc, _ in table.values():
            if exc is not None:
                kinds.setdefault(exc, set()).add(code)
    by_code = {}
    for exc, codes in kinds.items():
        assert len(codes) == 1
        by_code.setdefault(codes.pop(), []).append(exc)
    return by_code


def test_exit_codes_are_distinct_per_kind():
    by_code = _codes_distinct()
    assert all(len(v) == 1 for v in by_code.values()), by_code
    for code, (exc,) in by_code.items():
        assert exc.exit_code == code and code != 0


# --- the table through the CLI -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_image_case_cli(case, cli, tiny_bundle_with_detector, tmp_path):
    build, code, _, pattern = IMAGE_CASES[case]
    inp, out = _layout(tmp_path)
    image = build(inp)
    before_in = _files(inp)
    o, rep = out / "o.png", out / "rep.json"
    r = cli(
        "optimize",
        str(image),
        "-o",
        str(o),
        "--report",
        str(rep),
        "--bundle",
        str(tiny_bundle_with_detector),
        *FAST,
        "-q",
    )
    if code == 0:
        assert r.returncode == 0, r.stderr
        assert _files(out) == ["o.png", "rep.json"]
        _check_success_output(image, o, json.loads(rep.read_text()))
    else:
        assert r.returncode == code, (r.returncode, r.stderr)
        _one_line_error(r, pattern)
        assert _files(out) == [], "nothing may be written on failure"
    assert _files(inp) == before_in, "the input directory must be left alone"


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_output_case_cli(case, cli, tiny_bundle_with_detector, tmp_path):
    build, code, _, pattern = OUTPUT_CASES[case]
    inp, out = _layout(tmp_path)
    image = b_webp(inp)
    args = build(tmp_path)
    before = _files(out)
    r = cli("optimize", str(image), *args, "--bundle", str(tiny_bundle_with_detector), *FAST, "-q")
    assert r.returncode == code, (r.returncode, r.stderr)
    _one_line_error(r, pattern)
    assert _files(out) == before, "nothing may be written on failure"


@pytest.mark.parametrize("case", sorted(BUNDLE_CASES))
def test_bundle_case_cli(case, cli, tiny_bundle_with_detector, tmp_path):
    build, code, _, pattern = BUNDLE_CASES[case]
    inp, out = _layout(tmp_path)
    image = b_webp(inp)
    bundle = build(tiny_bundle_with_detector, tmp_path)
    r = cli("optimize", str(image), "-o", str(out / "o.jpg"), "--bundle", str(bundle), *FAST, "-q")
    assert r.returncode == code, (r.returncode, r.stderr)
    _one_line_error(r, pattern)
    assert _files(out) == []


# --- the same table through the Python API -------------------------------------------------------------------
@pytest.fixture(scope="module")
def beautifier(tiny_bundle_with_detector):
    from beautyrt.runtime.api import Beautifier

    with Beautifier(tiny_bundle_with_detector, device="cpu") as b:
        yield b


def test_image_cases_api(beautifier, tiny_bundle_with_detector, tmp_path):
    """Beautifier.optimize and optimize_file raise the typed error of each failing case; odd images succeed."""
    from beautyrt.runtime.api import Settings, optimize_file

    s = Settings(generations=1, popsize=4)
    for case, (build, code, exc, pattern) in sorted(IMAGE_CASES.items()):
        d = tmp_path / case
        inp, out = _layout(d)
        image = build(inp)
        if code == 0:
            r = beautifier.optimize(image, s)
            assert r.image.dtype == np.uint8 and r.faces_found >= 1, case
            rep = optimize_file(
                image, out / "o.jpg", bundle=tiny_bundle_with_detector, settings=s, report_path=out / "r.json"
            )
            assert _files(out) == ["o.jpg", "r.json"], case
            _check_success_output(image, out / "o.jpg", rep)
            continue
        with pytest.raises(exc, match=pattern) as ei:
            beautifier.optimize(image, s)
        assert type(ei.value) is exc and ei.value.exit_code == code and "\n" not in str(ei.value), case
        with pytest.raises(exc, match=pattern):
            optimize_file(
                image, out / "o.jpg", bundle=tiny_bundle_with_detector, settings=s, report_path=out / "r.json"
            )
        assert _files(out) == [], case


def test_output_cases_api(tiny_bundle_with_detector, tmp_path):
    from beautyrt.runtime.api import Settings, optimize_file

    for case, (build, code, exc, pattern) in sorted(OUTPUT_CASES.items()):
        d = tmp_path / case
        inp, out = _layout(d)
        image = b_webp(inp)
        argv = _rebuild(build, d)
        before = _files(out)
        with pytest.raises(exc, match=pattern) as ei:
            optimize_file(
                image,
                argv["out"],
                bundle=tiny_bundle_with_detector,
                settings=Settings(generations=1, popsize=4),
                report_path=argv.get("report"),
            )
        assert type(ei.value) is exc and ei.value.exit_code == code, case
        assert _files(out) == before, case


def _rebuild(build, d):
    shutil.rmtree(d / "out")
    (d / "out").mkdir()
    a = build(d)
    res = {}
    for flag, val in zip(a[::2], a[1::2]):
        res["out" if flag == "-o" else "report"] = pathlib.Path(val)
    return res


def test_bundle_cases_api(tiny_bundle_with_detector, tmp_path, face_crop):
    from beautyrt.runtime.api import Beautifier, Settings, optimize_file

    for case, (build, code, exc, pattern) in sorted(BUNDLE_CASES.items()):
        d = tmp_path / case
        inp, out = _layout(d)
        image = b_webp(inp)
        bundle = build(tiny_bundle_with_detector, d)
        with pytest.raises(exc, match=pattern) as ei:
            with Beautifier(bundle, device="cpu") as b:
                b.optimize(face_crop, Settings(generations=1, popsize=4), aligned=True)
        assert type(ei.value) is exc and ei.value.exit_code == code, case
        with pytest.raises(exc, match=pattern):
            optimize_file(image, out / "o.jpg", bundle=bundle, settings=Settings(generations=1, popsize=4))
        assert _files(out) == [], case


def test_exif_orientation_is_applied_in_output(beautifier, tmp_path):
    """The stored pixels are rotated; the output is upright (same as the un-rotated source) and untagged."""
    from beautyrt.runtime.api import Settings

    image = b_exif_rotated(tmp_path)
    upright = np.asarray(_photo().crop((0, 0, 512, 400)), np.int16)
    r = beautifier.optimize(image, Settings(generations=1, popsize=4))
    assert r.image.shape == (400, 512, 3)
    # far from the face the pixels are the (JPEG-recompressed) source: orientation is right, not mirrored/rotated
    corner = np.abs(r.image[:60, :100].astype(np.int16) - upright[:60, :100]).mean()
    assert corner < 6, corner

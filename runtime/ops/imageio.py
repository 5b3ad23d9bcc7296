"""Image decoding and atomic writing.

``load_image`` returns RGB uint8 (H, W, 3) with the EXIF orientation applied, from any mode Pillow
decodes (alpha is composited on white, 16-bit is scaled, CMYK/palette/grey converted). Sizes are
checked from the header BEFORE pixels are decoded (decompression-bomb guard) without touching Pillow's
global ``MAX_IMAGE_PIXELS``. ``save_image`` writes through a temporary file in the target directory and
renames it into place, so a failure never leaves a half-written output.
"""

from __future__ import annotations

import io
import logging
import numbers
import os
import re
import shutil
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from beautyrt.engines.files import deferred_signals, file_kind, open_regular, os_reason, printable

from ..errors import (
    ImageDecodeError,
    ImageNotFoundError,
    ImageTooLargeError,
    ImageTooSmallError,
    OutputError,
    UsageError,
)

log = logging.getLogger("beautyrt")

MAX_PIXELS = 64_000_000  # ~8000 x 8000
MAX_INPUT_BYTES = 256 << 20  # an input file larger than this is refused before it is read (33)
MIN_SIDE = 16
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
ImageLike = Union[str, os.PathLike, bytes, np.ndarray, Image.Image]


_LUT16 = np.clip(np.arange(65536, dtype=np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _float_to_grey(a: np.ndarray, label: str) -> np.ndarray:
    """A float/int32 single-channel image -> uint8 grey levels: values on 0..1 are taken as unit range,
    on 0..255 as grey levels, on 0..65535 as 16-bit; NaN/inf pixels and other ranges are refused (a guess
    would give a flat or saturated photo and a misleading 'no face')."""
    if not np.all(np.isfinite(a)):
        raise ImageDecodeError(f"{label}: the image has NaN or infinite pixel values")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-3:
        raise ImageDecodeError(f"{label}: negative pixel values ({lo:g}); beautyrt reads 0..1, 0..255 or 0..65535")
    if hi <= 1.0 + 1e-3:
        scale = 255.0
    elif 2.0 <= hi <= 255.0 + 1e-3:
        scale = 1.0
    elif 255.0 < hi <= 65535.0 + 1e-3:
        scale = 255.0 / 65535.0
    else:
        raise ImageDecodeError(
            f"{label}: pixel values span {lo:g}..{hi:g}, not 0..1, 0..255 or 0..65535 (HDR images are not read)"
        )
    a *= np.float32(scale)
    a += np.float32(0.5)
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


def _to_rgb(im: Image.Image, label: str = "image") -> Image.Image:
    if im.mode.startswith("I;16"):
        a = np.asarray(im)
        if a.dtype.kind != "u" or a.dtype.itemsize != 2:
            a = a.astype(np.uint16)
        im = Image.fromarray(_LUT16[a], "L")  # a table, not float64: 1 byte/pixel instead of 8 on a 64 MP photo
    elif im.mode in ("I", "F"):
        im = Image.fromarray(_float_to_grey(np.array(im, dtype=np.float32), label), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB") if im.mode != "RGB" else im


def load_image(src: ImageLike, max_pixels: int = MAX_PIXELS, name: Optional[str] = None) -> np.ndarray:
    """Decode ``src`` (path, bytes, PIL image or uint8 array) to RGB uint8 (H, W, 3).

    A path must be a regular file of at most ``MAX_INPUT_BYTES`` (a FIFO, device, socket or directory is
    refused without being read; opening never blocks); every source is refused above ``max_pixels``."""
    if isinstance(src, np.ndarray):
        return _array_to_rgb(src, printable(name or "array"), max_pixels)
    if isinstance(src, bool) or not isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        raise UsageError(
            f"image must be a path, bytes, a PIL image or a uint8 (H, W, 3) numpy array, got {type(src).__name__}"
        )
    label = printable(name or (src if isinstance(src, (str, os.PathLike)) else "image"))
    if isinstance(src, Image.Image):
        return _decode(src, label, max_pixels)
    if isinstance(src, (str, os.PathLike)):
        if isinstance(src, str) and not src:
            raise ImageNotFoundError("image path is empty")
        f, size = open_regular(
            src,
            max_bytes=MAX_INPUT_BYTES,
            not_found=ImageNotFoundError,
            bad=ImageDecodeError,
            too_large=ImageTooLargeError,
            label=label,
        )
        with f:
            if size == 0:
                raise ImageDecodeError(f"{label}: empty file (0 bytes)")
            return _decode(_open(f, label, max_pixels), label, max_pixels)
    data = bytes(src)
    if not data:
        raise ImageDecodeError(f"{label}: empty file (0 bytes)")
    if len(data) > MAX_INPUT_BYTES:
        raise ImageTooLargeError(f"{label}: {len(data):,} bytes is above the limit of {MAX_INPUT_BYTES:,} bytes")
    return _decode(_open(io.BytesIO(data), label, max_pixels), label, max_pixels)


def check_input(path: str | os.PathLike) -> None:
    """Refuse an input path that cannot be read as a photo file (missing, name too long, not a regular file,
    above the byte cap) without decoding it: what :func:`load_image` would refuse first."""
    f, _ = open_regular(
        path,
        max_bytes=MAX_INPUT_BYTES,
        not_found=ImageNotFoundError,
        bad=ImageDecodeError,
        too_large=ImageTooLargeError,
    )
    f.close()


def _open(fp, label: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp)
    except UnidentifiedImageError as e:
        raise ImageDecodeError(f"{label}: not an image Pillow can read") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow refuses in Image.open (the image object is lost): take the claimed size from its message
        m = re.search(r"\((\d+) pixels\)", str(e))
        claim = f"its header claims {int(m.group(1)):,} pixels" if m else "its header claims too many pixels"
        raise ImageTooLargeError(
            f"{label}: {claim}, above the limit of {max_pixels:,} pixels "
            f"(decompression-bomb guard; no pixels were decoded)"
        ) from e
    except Exception as e:
        raise ImageDecodeError(f"{label}: cannot decode ({type(e).__name__}: {printable(str(e)[:200])})") from e


def _rgb_array(im: Image.Image, rows: int = 512) -> np.ndarray:
    """An RGB image's pixels as (H, W, 3) uint8, copied in strips of ``rows`` (np.asarray would go through
    one bytes object of the whole image: a third copy of a 64 MP photo)."""
    w, h = im.size
    arr = np.empty((h, w, 3), np.uint8)
    for y in range(0, h, rows):
        y1 = min(h, y + rows)
        arr[y:y1] = np.frombuffer(im.crop((0, y, w, y1)).tobytes(), np.uint8).reshape(y1 - y, w, 3)
    return arr


def _decode(im: Image.Image, label: str, max_pixels: int) -> np.ndarray:
    w, h = im.size
    if w * h > max_pixels:
        raise ImageTooLargeError(f"{label}: {w}x{h} pixels is above the limit of {max_pixels:,} pixels")
    if min(w, h) < MIN_SIDE:
        raise ImageTooSmallError(f"{label}: {w}x{h} is too small (each side must be >= {MIN_SIDE} px)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # no second copy of a large photo
            im = _to_rgb(im, label)
            arr = _rgb_array(im)
            im.close()  # the decoded pixels are freed before the next stage (peak: two copies, not three)
    except (ImageTooLargeError, ImageDecodeError):
        raise
    except MemoryError as e:
        raise ImageTooLargeError(f"{label}: not enough memory to decode {w}x{h} pixels") from e
    except Exception as e:
        what = "image data is truncated" if "truncated" in str(e) else "cannot decode"
        raise ImageDecodeError(f"{label}: {what} ({type(e).__name__}: {printable(str(e)[:200])})") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] * arr.shape[1] > max_pixels:
        raise ImageDecodeError(f"{label}: decoded to an unexpected shape {list(arr.shape)}")
    return np.ascontiguousarray(arr)


def _array_to_rgb(a: np.ndarray, label: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    if a.dtype != np.uint8:
        raise ImageDecodeError(f"{label}: arrays must be uint8, got {a.dtype}")
    if a.ndim == 2:
        if a.shape[0] * a.shape[1] > max_pixels:
            raise ImageTooLargeError(f"{label}: {a.shape[1]}x{a.shape[0]} pixels is above the limit of {max_pixels:,}")
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ImageDecodeError(f"{label}: arrays must be (H, W, 3) RGB, got shape {a.shape}")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {a.shape[1]}x{a.shape[0]} pixels is above the limit of {max_pixels:,} pixels"
        )
    if min(a.shape[:2]) < MIN_SIDE:
        raise ImageTooSmallError(
            f"{label}: {a.shape[1]}x{a.shape[0]} is too small (each side must be >= {MIN_SIDE} px)"
        )
    return np.ascontiguousarray(a[:, :, :3])


def check_quality(quality) -> int:
    """JPEG/WebP quality, 1..100; checked for every format (PNG ignores it) so a typo fails before any work."""
    if isinstance(quality, bool) or not isinstance(quality, numbers.Integral) or not 1 <= int(quality) <= 100:
        raise UsageError(f"quality must be an integer in 1..100, got {quality!r}")
    return int(quality)


def output_format(path: str | os.PathLike) -> str:
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise OutputError(
            f"{printable(path)}: unknown output extension {printable(repr(ext))}; "
            f"use one of {', '.join(sorted(FORMATS))}"
        )
    return FORMATS[ext]


def default_output(image: str | os.PathLike) -> Path:
    """``<image>.beautified<ext>`` with an extension beautyrt can write (the input's own if it is one of
    FORMATS, else .png: a .gif/.tif/.bmp photo gets a .png)."""
    p = Path(image)
    ext = p.suffix.lower() if p.suffix.lower() in FORMATS else ".png"
    return p.with_name(f"{p.stem}.beautified{ext}")


def _stat(p: Path, follow: bool = True) -> Optional[os.stat_result]:
    """os.stat (None when the path does not exist); any other failure is an OutputError in words."""
    try:
        return os.stat(p) if follow else os.lstat(p)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise OutputError(f"{printable(p)}: cannot use it as an output ({os_reason(e)})") from e
    except ValueError as e:  # an embedded NUL
        raise OutputError(f"{printable(p)}: not a usable file name ({e})") from e


def check_writable(path: str | os.PathLike, image: bool = True) -> Path:
    """Fail early (before any work) when ``path`` cannot be written (``image``: also check the extension).
    Returns the file to write: ``path`` with symlinks resolved (an output that is a symlink is written
    through, the link is kept). A device, FIFO or socket is refused: outputs are renamed into place, which
    must never replace such a node (``/dev/null``, ``/dev/stdout`` ...)."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"output path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not str(path):
        raise OutputError("output path is empty")
    if image:
        output_format(p)
    if len(p.name.encode("utf-8", "surrogateescape")) > 255:
        raise OutputError(f"{printable(p)}: file name too long (more than 255 bytes)")
    st = _stat(p)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{printable(p)}: is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(
                f"{printable(p)}: is a {file_kind(st.st_mode)}, not a regular file; beautyrt writes outputs only "
                f"to regular files (it renames a finished file into place)"
            )
    lst = _stat(p, follow=False)
    if lst is not None and stat.S_ISLNK(lst.st_mode):
        try:
            p = Path(os.path.realpath(p))
        except (OSError, ValueError) as e:
            raise OutputError(f"{printable(path)}: cannot resolve the symlink ({e})") from e
        if st is None and (_stat(p.parent) is None):
            raise OutputError(f"{printable(path)}: a dangling symlink into a directory that does not exist")
    parent = p.parent if str(p.parent) else Path(".")
    pst = _stat(parent)
    if pst is None or not stat.S_ISDIR(pst.st_mode):
        blocker = _file_in_the_way(parent)
        if blocker is not None:
            raise OutputError(f"{printable(p)}: {printable(blocker)} is a file, not a directory")
        raise OutputError(f"{printable(p)}: directory {printable(parent)} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{printable(p)}: directory {printable(parent)} is not writable")
    return p


def _identity(p: Path) -> tuple:
    """What makes two paths the same file: (device, inode) when it exists, else its resolved path."""
    st = _stat(p)
    if st is not None:
        return ("inode", st.st_dev, st.st_ino)
    try:
        return ("path", os.path.normcase(os.path.realpath(p)))
    except (OSError, ValueError):
        return ("path", os.path.normcase(os.path.abspath(p)))


def check_outputs(
    outputs: Sequence[tuple[str, Optional[str | os.PathLike], bool]],
    *,
    inputs: Sequence[tuple[str, str | os.PathLike]] = (),
    protected_dirs: Sequence[tuple[str, str | os.PathLike]] = (),
) -> list[Path]:
    """Check every output location before any work: each writable (see :func:`check_writable`), none of them
    the same file as an input or as another output (however spelled: symlinks, hard links, ``./``), none
    inside a protected directory (the bundle). ``outputs``: (option name, path or None, is an image);
    returns the files to write, in order, for the paths that are not None."""
    seen: dict[tuple, str] = {}
    for opt, src in inputs:
        if isinstance(src, (str, os.PathLike)) and str(src):
            try:
                seen[_identity(Path(src))] = opt
            except OutputError:
                pass  # the input's own problem is reported when it is read
    guarded = []
    for opt, d in protected_dirs:
        try:
            guarded.append((opt, Path(os.path.realpath(d))))
        except (OSError, ValueError):
            pass
    out = []
    for opt, given, is_image in outputs:
        if given is None:
            continue
        p = given
        target = check_writable(p, image=is_image)
        key = _identity(target)
        if key in seen:
            what = seen[key]
            raise OutputError(
                f"{opt} {printable(p)} is the same file as {what}; refusing to overwrite it"
                if what != opt
                else f"{opt} {printable(p)} is given twice"
            )
        real = Path(os.path.realpath(target))
        for gopt, g in guarded:
            if real == g or g in real.parents:
                raise OutputError(f"{opt} {printable(p)} is inside the {gopt} directory; refusing to write there")
        seen[key] = opt
        out.append(target)
    return out


def _file_in_the_way(parent: Path) -> Optional[Path]:
    """The component of ``parent`` that exists but is not a directory (a file standing in the way), if any."""
    for a in reversed((parent, *parent.parents)):
        try:
            if a.exists() and not a.is_dir():
                return a
        except OSError:
            return None
    return None


def _file_mode(target: Path) -> int:
    """Permissions for a new output: the replaced file's, else 0o666 minus the umask (as open() would give).
    mkstemp alone would leave every output readable by its owner only (0o600)."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        pass
    try:  # read the umask without os.umask(), which changes process state and races with other threads
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def _mkstemp_for(p: Path, suffix: str = ".tmp") -> tuple[int, str]:
    # keep the temporary name within NAME_MAX (255) whatever the target's length
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name[:100]}.", suffix=suffix, dir=p.parent if str(p.parent) else ".")
    try:
        os.chmod(tmp, _file_mode(p))
    except OSError:
        pass
    return fd, tmp


def _backup(target: Path) -> Optional[str]:
    """A second name for an existing output (a hard link; a copy where links are not possible), so that a
    commit that fails half-way can put the original back. None when there is nothing to keep."""
    if _stat(target) is None:
        return None
    fd, tmp = _mkstemp_for(target, ".bak")
    os.close(fd)
    try:
        os.unlink(tmp)
        os.link(target, tmp)
    except OSError:
        shutil.copyfile(target, tmp)
    return tmp


def atomic_write_many(items: Sequence[tuple[str | os.PathLike, bytes]]) -> list[Path]:
    """Write several outputs all-or-nothing: every file goes to a temporary file next to its target first;
    only when all temporaries are complete are they renamed into place, in order. Existing targets get a
    second name (hard link) first, so a rename that fails half-way is rolled back to the files that were
    there: a failed call leaves the outputs as they were and no temporary file. SIGINT/SIGTERM/SIGHUP are
    held back (main thread) from the first temporary file to the last rename or cleanup, so an interrupt
    never leaves part of the set: it is delivered after the commit (or the cleanup) is complete."""
    staged: list[tuple[str, Path]] = []
    backups: list[tuple[Path, Optional[str]]] = []
    done: list[Path] = []
    failed: Optional[Path] = None
    with deferred_signals():
        try:
            for path, data in items:
                p = Path(path)
                failed = p
                target = check_writable(p, image=p.suffix.lower() in FORMATS)
                fd, tmp = _mkstemp_for(target)
                staged.append((tmp, target))
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            for _, target in staged:
                failed = target
                backups.append((target, _backup(target)))
            for tmp, target in staged:
                failed = target
                os.replace(tmp, target)
                done.append(target)
        except BaseException as e:
            for tmp, _ in staged[len(done) :]:
                _unlink(tmp)
            for target, bak in reversed(backups[: len(done)]):  # put back what was there
                try:
                    if bak is not None:
                        os.replace(bak, target)
                    else:
                        os.unlink(target)
                except OSError:
                    log.error("could not restore %s after a failed write", printable(target))
            for _, bak in backups[len(done) :]:
                if bak is not None:
                    _unlink(bak)
            if isinstance(e, OSError):
                raise OutputError(f"{printable(failed or '?')}: cannot write ({os_reason(e)})") from e
            raise
        for _, bak in backups:
            if bak is not None:
                _unlink(bak)
    return done


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write one output through a temporary file renamed into place (``atomic_write_many`` of one item)."""
    return atomic_write_many([(path, data)])[0]


def encode_image(
    rgb: np.ndarray, fmt: str, quality: int = 95, text: Optional[Mapping[str, str]] = None, xmp: Optional[bytes] = None
) -> bytes:
    """Encode RGB uint8 to bytes; ``text`` goes into PNG text chunks / EXIF, ``xmp`` into the XMP packet."""
    im = Image.fromarray(np.asarray(rgb, dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    kw: dict = {}
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for k, v in (text or {}).items():
            info.add_itxt(k, v)
        if xmp:
            info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"))
        kw.update(pnginfo=info, optimize=False)
    else:
        quality = check_quality(quality)
        kw["quality"] = quality
        exif = Image.Exif()
        if text:
            if "Software" in text:
                exif[0x0131] = text["Software"]
            if "Description" in text:
                exif[0x010E] = text["Description"]
        kw["exif"] = exif.tobytes()
        if xmp:
            kw["xmp"] = xmp
        if fmt == "JPEG":
            kw["subsampling"] = 0 if quality >= 90 else 2
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def save_image(
    rgb: np.ndarray,
    path: str | os.PathLike,
    quality: int = 95,
    text: Optional[Mapping[str, str]] = None,
    xmp: Optional[bytes] = None,
) -> Path:
    """Encode by extension and write atomically."""
    p = check_writable(path)
    return atomic_write_bytes(path, encode_image(rgb, output_format(p), quality, text, xmp))

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
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError, ImageNotFoundError, ImageTooLargeError, ImageTooSmallError, OutputError

log = logging.getLogger("beautyrt")

MAX_PIXELS = 64_000_000  # ~8000 x 8000
MIN_SIDE = 16
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
ImageLike = Union[str, os.PathLike, bytes, np.ndarray, Image.Image]


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(a * (255.0 if a.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB") if im.mode != "RGB" else im


def load_image(src: ImageLike, max_pixels: int = MAX_PIXELS, name: Optional[str] = None) -> np.ndarray:
    """Decode ``src`` (path, bytes, PIL image or uint8 array) to RGB uint8 (H, W, 3)."""
    if isinstance(src, np.ndarray):
        return _array_to_rgb(src, name or "array")
    label = name or (str(src) if isinstance(src, (str, os.PathLike)) else "image")
    if isinstance(src, Image.Image):
        im = src
    else:
        if isinstance(src, (str, os.PathLike)):
            p = Path(src)
            if not p.exists():
                raise ImageNotFoundError(f"{label}: no such file")
            if p.is_dir():
                raise ImageDecodeError(f"{label}: is a directory, not an image")
            try:
                data = p.read_bytes()
            except OSError as e:
                raise ImageNotFoundError(f"{label}: cannot read ({e.strerror or e})") from e
        else:
            data = bytes(src)
        if not data:
            raise ImageDecodeError(f"{label}: empty file (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
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
            raise ImageDecodeError(f"{label}: cannot decode ({type(e).__name__}: {e})") from e
    w, h = im.size
    if w * h > max_pixels:
        raise ImageTooLargeError(f"{label}: {w}x{h} pixels is above the limit of {max_pixels:,} pixels")
    if min(w, h) < MIN_SIDE:
        raise ImageTooSmallError(f"{label}: {w}x{h} is too small (each side must be >= {MIN_SIDE} px)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
            arr = np.asarray(im, dtype=np.uint8)
    except ImageTooLargeError:
        raise
    except Exception as e:
        what = "image data is truncated" if "truncated" in str(e) else "cannot decode"
        raise ImageDecodeError(f"{label}: {what} ({type(e).__name__}: {str(e)[:200]})") from e
    return np.ascontiguousarray(arr)


def _array_to_rgb(a: np.ndarray, label: str) -> np.ndarray:
    if a.dtype != np.uint8:
        raise ImageDecodeError(f"{label}: arrays must be uint8, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ImageDecodeError(f"{label}: arrays must be (H, W, 3) RGB, got shape {a.shape}")
    if min(a.shape[:2]) < MIN_SIDE:
        raise ImageTooSmallError(
            f"{label}: {a.shape[1]}x{a.shape[0]} is too small (each side must be >= {MIN_SIDE} px)"
        )
    return np.ascontiguousarray(a[:, :, :3])


def output_format(path: str | os.PathLike) -> str:
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise OutputError(f"{path}: unknown output extension {ext!r}; use one of {', '.join(sorted(FORMATS))}")
    return FORMATS[ext]


def check_writable(path: str | os.PathLike, image: bool = True) -> Path:
    """Fail early (before any work) when ``path`` cannot be written (``image``: also check the extension)."""
    p = Path(path)
    if image:
        output_format(p)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        blocker = _file_in_the_way(parent)
        if blocker is not None:
            raise OutputError(f"{p}: {blocker} is a file, not a directory")
        raise OutputError(f"{p}: directory {parent} does not exist")
    if p.is_dir():
        raise OutputError(f"{p}: is a directory")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{p}: directory {parent} is not writable")
    return p


def _file_in_the_way(parent: Path) -> Optional[Path]:
    """The component of ``parent`` that exists but is not a directory (a file standing in the way), if any."""
    for a in reversed((parent, *parent.parents)):
        if a.exists() and not a.is_dir():
            return a
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


def _mkstemp_for(p: Path) -> tuple[int, str]:
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    try:
        os.chmod(tmp, _file_mode(p))
    except OSError:
        pass
    return fd, tmp


def atomic_write_many(items: Sequence[tuple[str | os.PathLike, bytes]]) -> list[Path]:
    """Write several outputs all-or-nothing: every file goes to a temporary file next to its target first;
    only when all temporaries are complete are they renamed into place. On any failure (or interrupt) the
    temporaries are removed and outputs renamed so far are deleted again, so a failed call leaves nothing."""
    staged: list[tuple[str, Path]] = []
    done: list[Path] = []
    try:
        for path, data in items:
            p = Path(path)
            check_writable(p, image=p.suffix.lower() in FORMATS)
            fd, tmp = _mkstemp_for(p)
            staged.append((tmp, p))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for tmp, p in staged:
            os.replace(tmp, p)
            done.append(p)
    except BaseException as e:
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        for p in done:
            try:
                os.unlink(p)
            except OSError:
                pass
        if isinstance(e, OSError):
            failed = staged[len(done)][1] if len(done) < len(staged) else Path(items[len(staged)][0])
            raise OutputError(f"{failed}: cannot write ({e.strerror or e})") from e
        raise
    return done


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
        if not 1 <= int(quality) <= 100:
            raise OutputError(f"quality must be in 1..100, got {quality}")
        kw["quality"] = int(quality)
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
    return atomic_write_bytes(p, encode_image(rgb, output_format(p), quality, text, xmp))

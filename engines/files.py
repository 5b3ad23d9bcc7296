"""File-system helpers for everything beautyrt reads or names: printable names, capped reads of regular
files only, and paths that must stay inside a directory.

* :func:`printable` -- a user-given name as it may be shown on a terminal: control characters (ESC, BEL,
  newlines ...), other unprintable characters and the bytes of undecodable file names are escaped
  (``\\x1b``, ``\\n``, ``\\udc80`` -> ``\\x80``), so a file name cannot move the cursor, recolour the
  terminal or fake a second line of output.
* :func:`open_regular` / :func:`read_regular` -- open a file only if it is a regular file (a FIFO, a device
  such as ``/dev/zero``, a socket or a directory is refused without blocking: the file is opened with
  ``O_NONBLOCK`` and checked with ``fstat`` on the very descriptor that is read), with a byte cap.
* :func:`inside` -- ``root / name`` resolved (symlinks followed), refused unless it stays inside ``root``.
* :func:`deferred_signals` -- SIGINT/SIGTERM/SIGHUP held back over a short critical section (a commit).

Every failure is raised as the exception class the caller passes (its own typed ``BeautyrtError``), with
the reason in words; ``ENAMETOOLONG`` and friends never escape as bare ``OSError``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

__all__ = ["printable", "open_regular", "read_regular", "inside", "file_kind", "os_reason", "deferred_signals"]

ErrorFactory = Callable[[str], BaseException]


def printable(name: object, limit: int = 400) -> str:
    """``name`` (a path, str or bytes) with every unprintable character escaped; longer than ``limit``
    characters: cut in the middle (``...``) so one message stays one readable line."""
    if isinstance(name, bytes):
        s = name.decode("utf-8", "surrogateescape")
    else:
        s = os.fspath(name) if isinstance(name, os.PathLike) else str(name)
        if isinstance(s, bytes):
            s = s.decode("utf-8", "surrogateescape")
    out = []
    for ch in s:
        o = ord(ch)
        if ch == " " or (ch.isprintable() and not 0xD800 <= o <= 0xDFFF):
            out.append(ch)
        elif 0xDC80 <= o <= 0xDCFF:  # an undecodable byte of a file name (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    r = "".join(out)
    if len(r) > limit:
        r = r[: limit // 2 - 2] + "..." + r[-(limit // 2 - 1) :]
    return r


def os_reason(e: OSError) -> str:
    """A short reason for an OSError, in words (``file name too long``, ``permission denied`` ...)."""
    if e.errno == errno.ENAMETOOLONG:
        return "file name or path too long"
    if e.errno == errno.ELOOP:
        return "too many levels of symbolic links"
    return (e.strerror or type(e).__name__).lower()


def file_kind(mode: int) -> str:
    """What a stat mode is, in words."""
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def open_regular(
    path: str | os.PathLike,
    *,
    max_bytes: Optional[int],
    not_found: ErrorFactory,
    bad: ErrorFactory,
    too_large: Optional[ErrorFactory] = None,
    label: Optional[str] = None,
) -> tuple[BinaryIO, int]:
    """(binary file object, size) of ``path`` if it is a regular file of at most ``max_bytes`` bytes.

    ``not_found(msg)``: the path does not exist or cannot be opened (missing, permission, name too long);
    ``bad(msg)``: it exists but is not a regular file; ``too_large(msg)`` (default ``bad``): above the cap.
    Opening never blocks (``O_NONBLOCK``: a FIFO without a writer is refused, not waited on)."""
    name = printable(label if label is not None else path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as e:
        raise not_found(f"{name}: no such file") from e
    except IsADirectoryError as e:
        raise bad(f"{name}: is a directory, not a file") from e
    except OSError as e:
        raise not_found(f"{name}: cannot open ({os_reason(e)})") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise bad(f"{name}: is a {file_kind(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise (too_large or bad)(f"{name}: {st.st_size:,} bytes is above the limit of {max_bytes:,} bytes")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return f, st.st_size


def read_regular(
    path: str | os.PathLike,
    *,
    max_bytes: Optional[int],
    not_found: ErrorFactory,
    bad: ErrorFactory,
    too_large: Optional[ErrorFactory] = None,
    label: Optional[str] = None,
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular`); a file that grows
    past the cap while it is read is refused too."""
    f, _ = open_regular(path, max_bytes=max_bytes, not_found=not_found, bad=bad, too_large=too_large, label=label)
    with f:
        try:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except OSError as e:
            raise not_found(f"{printable(label if label is not None else path)}: cannot read ({os_reason(e)})") from e
    if max_bytes is not None and len(data) > max_bytes:
        raise (too_large or bad)(
            f"{printable(label if label is not None else path)}: more than {max_bytes:,} bytes (the limit)"
        )
    return data


def inside(root: str | os.PathLike, name: str, *, bad: ErrorFactory, what: str = "file") -> Path:
    """``root / name`` with symlinks resolved, refused (``bad``) when ``name`` is absolute, climbs out with
    ``..``, or resolves (through a symlink anywhere on the way) to a place outside ``root``."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise bad(f"{what} name must be a non-empty string, got {printable(repr(name))}")
    p = Path(name)
    if p.is_absolute() or p.drive or ".." in p.parts:
        raise bad(f"{what} {printable(name)} must be a name inside the bundle (no absolute path, no '..')")
    try:
        real_root = Path(os.path.realpath(root))
        real = Path(os.path.realpath(Path(root) / p))
    except (OSError, ValueError) as e:
        raise bad(f"{what} {printable(name)}: cannot resolve ({e})") from e
    if real != real_root and real_root not in real.parents:
        raise bad(f"{what} {printable(name)} resolves to {printable(real)}, outside the bundle (a symlink out of it)")
    return real


TERMINATING_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def deferred_signals() -> Iterator[Callable[[], bool]]:
    """Hold SIGINT/SIGTERM/SIGHUP back for the duration of a short critical section (a commit of several
    files, a cleanup), so that it runs to its end; a signal that arrives meanwhile is acted on when the section
    is left, as it would have been (the previous handler is called; a default disposition terminates the
    process). Yields ``pending()``: whether such a signal came.

    The Python-level handlers are swapped for the section (a thread mask would not do: onnxruntime's pool
    threads do not block signals, so the kernel hands a process-directed signal to one of them and Python runs
    its handler anyway). Python runs handlers in the main thread only, so elsewhere this is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    got: list[int] = []

    def hold(signum, frame) -> None:
        got.append(signum)

    old = {}
    for sig in TERMINATING_SIGNALS:
        try:
            old[sig] = signal.signal(sig, hold)
        except (ValueError, OSError):  # pragma: no cover - not settable here
            pass
    try:
        yield lambda: bool(got)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(got):
            handler = old.get(sig)
            if callable(handler):
                handler(sig, None)  # e.g. Python's default SIGINT handler raises KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                signal.raise_signal(sig)  # what the signal would have done (terminate)

"""Shared pieces of the hostile-input corpus (tests/robustness/test_hostile_*.py).

* :func:`cli_inproc` runs ``beautyrt ARGS`` in this process (the real ``main()``, stdout/stderr captured):
  ~100x cheaper than a subprocess, so every case of a table can go through the CLI as well as the API.
  Cases whose point is process behaviour (signals, a FIFO that would block, the real stderr) use
  :func:`tests.conftest.run_cli` in a subprocess instead.
* :func:`assert_one_line_error` is the CLI contract of a refusal: the exit code of its kind, ONE line on stderr
  starting ``beautyrt: error:``, no traceback, no control character that a terminal would act on.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import signal
import sys
from pathlib import Path

import numpy as np

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # what a terminal would act on (\n only ends the line)
FAST = ["-g", "1", "-p", "4", "--seed", "0", "-q"]


def cli_inproc(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``beautyrt ARGS`` run through ``beautyrt.cli.main.main`` in-process."""
    from beautyrt.cli.main import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    code = 0
    try:
        sys.argv = ["beautyrt", *map(str, args)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException as e:  # an escaped exception is an internal error, shown as such
                err.write(f"Traceback (escaped): {type(e).__name__}: {e}\n")
                code = 70
    finally:
        sys.argv = argv
        for s, h in handlers.items():
            signal.signal(s, h)
        import logging

        logging.getLogger("beautyrt").handlers[:] = []
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, stderr: str, want_code: int, pattern: str = "", stdout: str = "") -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == want_code, (code, stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("beautyrt: error:"), stderr
    assert "Traceback" not in stderr + stdout
    assert not CONTROL.search(stderr), repr(stderr)
    if pattern:
        assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def files(d: Path) -> list[str]:
    """Every entry under ``d`` (dotfiles, temporaries and links included), relative, sorted."""
    return sorted(str(p.relative_to(d)) for p in Path(d).rglob("*"))


def copy_bundle(src: Path, d: Path, name: str = "bundle") -> Path:
    b = Path(d) / name
    shutil.copytree(src, b, symlinks=True)
    return b


def crop_png(d: Path, name: str = "crop.png", size: int = 64) -> Path:
    """A small aligned face crop (the example photo's centre) for --aligned runs."""
    from PIL import Image

    from tests.conftest import EXAMPLE

    p = Path(d) / name
    Image.open(EXAMPLE).convert("RGB").crop((150, 40, 300, 190)).resize((size, size)).save(p)
    return p


def crop_array(size: int = 64) -> np.ndarray:
    from PIL import Image

    from tests.conftest import EXAMPLE

    return np.asarray(Image.open(EXAMPLE).convert("RGB").crop((150, 40, 300, 190)).resize((size, size)))


def char_device(d: Path, name: str) -> Path:
    """A private character device node (a copy of /dev/null's, 1:3) in ``d``: the device-file cases never
    point code under test at the machine's own /dev/null (code that renames over it would break the machine;
    today's main did). Skips where mknod is not allowed (not root)."""
    import os
    import stat

    import pytest

    p = Path(d) / name
    try:
        os.mknod(p, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot create a device node here ({e})")
    return p

"""Class 1, data loss and device files: an output that is the input (however spelled), another output, a
file of the bundle, a device, FIFO or socket is refused before any work, with nothing touched; an output
that is a symlink is written through (the link stays); a commit is all-or-nothing under a failing rename
and under SIGINT/SIGTERM (no half set, no temporary file, pre-existing outputs restored or replaced whole).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from beautyrt.runtime.errors import OutputError
from tests.robustness.corpus import FAST, assert_one_line_error, char_device, cli_inproc, crop_png, files


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


# --- the table: name -> builder(d, photo, bundle) returning extra CLI args (paths inside d) -------------------
def c_out_is_input(d, photo, b):
    return ["-o", str(photo)]


def c_out_is_input_dotted(d, photo, b):
    return ["-o", str(photo.parent / "." / photo.name)]


def c_out_is_input_via_dotdot(d, photo, b):
    (d / "sub").mkdir()
    return ["-o", str(d / "sub" / ".." / photo.name)]


def c_out_symlink_to_input(d, photo, b):
    os.symlink(photo, d / "link.png")
    return ["-o", str(d / "link.png")]


def c_out_hardlink_to_input(d, photo, b):
    os.link(photo, d / "hard.png")
    return ["-o", str(d / "hard.png")]


def c_report_is_input(d, photo, b):
    return ["-o", str(d / "o.png"), "--report", str(photo)]


def c_sbs_is_input(d, photo, b):
    return ["-o", str(d / "o.png"), "--side-by-side", str(photo)]


def c_plot_is_input(d, photo, b):
    return ["-o", str(d / "o.png"), "--plot", str(photo)]


def c_report_is_out(d, photo, b):
    return ["-o", str(d / "o.png"), "--report", str(d / "o.png")]


def c_sbs_is_plot(d, photo, b):
    return ["-o", str(d / "o.png"), "--side-by-side", str(d / "s.png"), "--plot", str(d / "s.png")]


def c_sbs_is_out_via_symlinked_dir(d, photo, b):
    (d / "real").mkdir()
    os.symlink(d / "real", d / "alias")
    return ["-o", str(d / "real" / "o.png"), "--side-by-side", str(d / "alias" / "o.png")]


def c_report_dev_null(d, photo, b):
    return ["-o", str(d / "o.png"), "--report", str(char_device(d, "null"))]


def c_out_dev_null_symlink(d, photo, b):
    os.symlink(char_device(d, "null"), d / "null.png")
    return ["-o", str(d / "null.png")]


def c_report_fifo(d, photo, b):
    os.mkfifo(d / "fifo.json")
    return ["-o", str(d / "o.png"), "--report", str(d / "fifo.json")]


def c_out_fifo(d, photo, b):
    os.mkfifo(d / "fifo.png")
    return ["-o", str(d / "fifo.png")]


def c_report_socket(d, photo, b):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock.json"))
    s.close()
    return ["-o", str(d / "o.png"), "--report", str(d / "sock.json")]


def c_report_in_bundle(d, photo, b):
    return ["-o", str(d / "o.png"), "--report", str(b / "manifest.json")]


def c_out_in_bundle(d, photo, b):
    return ["-o", str(b / "encoder.png")]


def c_out_name_too_long(d, photo, b):
    return ["-o", str(d / ("x" * 300 + ".png"))]


def c_out_path_too_long(d, photo, b):
    return ["-o", str(d / ("d/" * 2100) / "o.png")]


def c_report_name_too_long(d, photo, b):
    return ["-o", str(d / "o.png"), "--report", str(d / ("r" * 260 + ".json"))]


CASES = {
    "out_is_input": (c_out_is_input, r"same file as the input photo"),
    "out_is_input_dotted": (c_out_is_input_dotted, r"same file as the input photo"),
    "out_is_input_via_dotdot": (c_out_is_input_via_dotdot, r"same file as the input photo"),
    "out_symlink_to_input": (c_out_symlink_to_input, r"same file as the input photo"),
    "out_hardlink_to_input": (c_out_hardlink_to_input, r"same file as the input photo"),
    "report_is_input": (c_report_is_input, r"--report .* same file as the input photo"),
    "side_by_side_is_input": (c_sbs_is_input, r"--side-by-side .* same file as the input photo"),
    "plot_is_input": (c_plot_is_input, r"--plot .* same file as the input photo"),
    "report_is_out": (c_report_is_out, r"--report .* same file as -o"),
    "side_by_side_is_plot": (c_sbs_is_plot, r"--plot .* same file as --side-by-side"),
    "side_by_side_is_out_via_symlinked_dir": (c_sbs_is_out_via_symlinked_dir, r"same file as -o"),
    "report_dev_null": (c_report_dev_null, r"null: is a character device, not a regular file"),
    "out_symlink_to_dev_null": (c_out_dev_null_symlink, r"null.png: is a character device"),
    "report_fifo": (c_report_fifo, r"fifo.json: is a FIFO"),
    "out_fifo": (c_out_fifo, r"fifo.png: is a FIFO"),
    "report_socket": (c_report_socket, r"sock.json: is a socket"),
    "report_in_bundle": (c_report_in_bundle, r"inside the bundle directory"),
    "out_in_bundle": (c_out_in_bundle, r"inside the bundle directory"),
    "out_name_too_long": (c_out_name_too_long, r"file name too long"),
    "out_path_too_long": (c_out_path_too_long, r"too long"),
    "report_name_too_long": (c_report_name_too_long, r"file name too long"),
}


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    from tests.robustness.corpus import copy_bundle

    return copy_bundle(tiny_bundle, tmp_path / "bundles")


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_before_work_cli(case, bundle_copy, tmp_path):
    build, pattern = CASES[case]
    d = tmp_path / "w"
    d.mkdir()
    photo = crop_png(d, "photo.png")
    args = build(d, photo, bundle_copy)
    before, photo_sha, bundle_before = files(d), _sha(photo), files(bundle_copy)
    code, out, err = cli_inproc("optimize", photo, "--aligned", "--bundle", bundle_copy, *args, *FAST)
    assert_one_line_error(code, err, OutputError.exit_code, pattern, out)
    assert files(d) == before, "nothing may be written (no output, no temporary file)"
    assert _sha(photo) == photo_sha, "the input photo must be untouched"
    assert files(bundle_copy) == bundle_before
    for p in d.iterdir():
        if p.name == "null":
            assert p.is_char_device(), "a device node must never be replaced"


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_before_work_api(case, bundle_copy, tmp_path, monkeypatch):
    """The same through optimize_file; refused before the photo is decoded or the bundle loaded."""
    from beautyrt.runtime import api

    build, pattern = CASES[case]
    d = tmp_path / "w"
    d.mkdir()
    photo = crop_png(d, "photo.png")
    args = build(d, photo, bundle_copy)
    kw = {"-o": "out", "--report": "report_path", "--side-by-side": "side_by_side_path", "--plot": "plot_path"}
    call = {kw[k]: v for k, v in zip(args[::2], args[1::2])}
    before, photo_sha = files(d), _sha(photo)

    def no_work(*a, **k):
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(api, "load_image", no_work)
    monkeypatch.setattr(api, "Beautifier", no_work)
    with pytest.raises(OutputError, match=pattern) as ei:
        api.optimize_file(photo, bundle=bundle_copy, aligned=True, **call)
    assert type(ei.value) is OutputError and "\n" not in str(ei.value)
    assert files(d) == before and _sha(photo) == photo_sha


def test_symlinked_output_is_written_through(tiny_bundle, tmp_path):
    """-o naming a symlink to a file: the file gets the new photo, the link stays a link (not replaced)."""
    photo = crop_png(tmp_path, "photo.png")
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "target.png"
    target.write_bytes(b"old")
    os.symlink(target, tmp_path / "link.png")
    code, out, err = cli_inproc(
        "optimize", photo, "--aligned", "--bundle", tiny_bundle, "-o", tmp_path / "link.png", *FAST
    )
    assert code == 0, err
    assert (tmp_path / "link.png").is_symlink() and os.readlink(tmp_path / "link.png") == str(target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files(tmp_path / "real") == ["target.png"], "no temporary file next to the target"


def test_existing_outputs_replaced_whole(tiny_bundle, tmp_path):
    photo = crop_png(tmp_path, "photo.png")
    o, r = tmp_path / "o.png", tmp_path / "r.json"
    o.write_bytes(b"old image")
    r.write_bytes(b"old report")
    code, _, err = cli_inproc("optimize", photo, "--aligned", "--bundle", tiny_bundle, "-o", o, "--report", r, *FAST)
    assert code == 0, err
    assert o.read_bytes()[:4] == b"\x89PNG" and r.read_text().lstrip().startswith("{")
    assert files(tmp_path) == ["o.png", "photo.png", "r.json"]


def test_failed_rename_rolls_back_to_the_old_outputs(tmp_path, monkeypatch):
    """The 3rd rename of a 3-file commit fails: the two already renamed go back to their old contents, the
    new file that had no predecessor is removed, no temporary or backup file is left."""
    from beautyrt.runtime.ops import imageio

    a, b, c = tmp_path / "a.png", tmp_path / "b.json", tmp_path / "c.png"
    a.write_bytes(b"old a")
    b.write_bytes(b"old b")
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(imageio.os, "replace", flaky)
    with pytest.raises(OutputError, match=r"c.png: cannot write \(input/output error\)"):
        imageio.atomic_write_many([(a, b"new a"), (b, b"new b"), (c, b"new c")])
    monkeypatch.setattr(imageio.os, "replace", real)
    assert a.read_bytes() == b"old a" and b.read_bytes() == b"old b" and not c.exists()
    assert files(tmp_path) == ["a.png", "b.json"]


# --- signals at the commit phase, in a real process -----------------------------------------------------------
WRAPPER = r"""
import os, signal, sys
sig = getattr(signal, os.environ["HOSTILE_SIGNAL"])
at = int(os.environ["HOSTILE_AT"])
real = os.replace
n = [0]
def replace(src, dst):
    if str(dst).endswith((".png", ".json")) and ".tmp" not in os.path.basename(str(dst)):
        n[0] += 1
        if n[0] == at:
            os.kill(os.getpid(), sig)  # arrives while the outputs are being renamed into place
    return real(src, dst)
os.replace = replace
from beautyrt.cli.main import main
sys.argv = ["beautyrt"] + sys.argv[1:]
main()
"""


@pytest.mark.parametrize("sig,at", [("SIGTERM", 1), ("SIGTERM", 2), ("SIGINT", 2), ("SIGINT", 3), ("SIGHUP", 2)])
def test_signal_during_commit_is_all_or_nothing(sig, at, tiny_bundle, tmp_path):
    photo = crop_png(tmp_path, "photo.png")
    out = tmp_path / "out"
    out.mkdir()
    o, r, s = out / "o.png", out / "r.json", out / "s.png"
    old = {o: b"old o", r: b"old r"}  # two outputs exist already (a re-run), one is new
    for p, v in old.items():
        p.write_bytes(v)
    args = ["optimize", str(photo), "--aligned", "--bundle", str(tiny_bundle), "-o", str(o), "--report", str(r)]
    args += ["--side-by-side", str(s), *FAST]
    env = dict(os.environ, HOSTILE_SIGNAL=sig, HOSTILE_AT=str(at))
    env.pop("BEAUTYRT_DEBUG", None)
    p = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, env=env, timeout=120)
    names = files(out)
    assert names in (["o.png", "r.json"], ["o.png", "r.json", "s.png"]), (names, p.returncode, p.stderr)
    if names == ["o.png", "r.json"]:  # nothing committed: the old outputs are exactly as they were
        assert o.read_bytes() == b"old o" and r.read_bytes() == b"old r", p.stderr
    else:  # committed: every output is new
        assert o.read_bytes()[:4] == b"\x89PNG" and r.read_text().lstrip().startswith("{"), p.stderr
    assert p.returncode == 130, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and p.stderr.strip().splitlines()[-1] == "beautyrt: interrupted"


LIBRARY_WRAPPER = r"""
import os, signal, sys
from beautyrt.runtime.ops.imageio import atomic_write_many
real = os.replace
def replace(src, dst):
    if str(dst).endswith("a.png"):
        os.kill(os.getpid(), signal.SIGTERM)  # no handler installed: the default action is to terminate
    return real(src, dst)
os.replace = replace
d = sys.argv[1]
atomic_write_many([(d + "/a.png", b"new a"), (d + "/b.json", b"new b"), (d + "/c.png", b"new c")])
print("returned")
"""


def test_sigterm_with_default_action_still_commits_whole(tmp_path):
    """A library caller without a SIGTERM handler: the process still ends by SIGTERM, but only after the
    commit is complete (all three files, no temporary file), never between two renames."""
    p = subprocess.run(
        [sys.executable, "-c", LIBRARY_WRAPPER, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == -15, (p.returncode, p.stderr)
    assert "returned" not in p.stdout
    assert files(tmp_path) == ["a.png", "b.json", "c.png"]
    assert (tmp_path / "c.png").read_bytes() == b"new c"


def test_evaluate_sheet_checked_before_work(tiny_bundle, tmp_path, monkeypatch):
    """evaluate --sheet onto one of the photos (or a device) used to be found out after the whole run; now
    it is refused first, and written atomically when it is fine."""
    from beautyrt.runtime.tools import evaluate as ev

    photos = tmp_path / "photos"
    photos.mkdir()
    p = crop_png(photos, "a.png")
    sha = _sha(p)
    monkeypatch.setattr(ev, "Beautifier", lambda *a, **k: pytest.fail("work started"))
    for sheet, pattern in (
        (p, r"inside the --images directory"),
        (char_device(tmp_path, "dev.png"), r"character device"),
    ):
        with pytest.raises(OutputError, match=pattern):
            ev.evaluate(photos, tiny_bundle, sheet=sheet)
    code, out, err = cli_inproc("evaluate", "--images", photos, "--bundle", tiny_bundle, "--sheet", p)
    assert_one_line_error(code, err, 40, r"--sheet .*inside the --images directory", out)
    assert _sha(p) == sha

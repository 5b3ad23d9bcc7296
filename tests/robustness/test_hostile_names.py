"""Classes 6 and 7: names in messages are printed in printable form (a file name with ESC/BEL/CR/newlines or
undecodable bytes cannot drive the terminal or fake a line); every usage error is one line
``beautyrt: error: ...`` with exit 2 (no framed box); the default -o name has an extension beautyrt can write.
"""

from __future__ import annotations

import os

import pytest

from tests.robustness.corpus import CONTROL, FAST, assert_one_line_error, cli_inproc, crop_png

NAMES = {
    "esc_colour": "x\x1b[31mred\x1b[0m.jpg",
    "bel": "ding\x07.jpg",
    "carriage_return": "fake\rbeautyrt: ok.jpg",
    "newline": "two\nlines.jpg",
    "osc_title": "\x1b]0;owned\x07.jpg",
    "backspace": "abc\x08\x08\x08xyz.jpg",
    "c1_csi": "c1\x9b31m.jpg",
    "del": "del\x7f.jpg",
    "undecodable_bytes": os.fsdecode(b"bad\xff\xfe.jpg"),
}


@pytest.mark.parametrize("role", ["missing_input", "output_dir_missing", "bundle_missing", "bad_output_ext"])
@pytest.mark.parametrize("case", sorted(NAMES))
def test_names_escaped_cli(case, role, tiny_bundle, tmp_path):
    name = NAMES[case]
    photo = crop_png(tmp_path)
    if role == "missing_input":
        args, code = ["optimize", tmp_path / name, "--bundle", tiny_bundle], 31
    elif role == "output_dir_missing":
        args, code = ["optimize", photo, "--bundle", tiny_bundle, "-o", tmp_path / name / "o.png"], 40
    elif role == "bundle_missing":
        args, code = ["optimize", photo, "--aligned", "--bundle", tmp_path / name], 11
    else:
        args, code = ["optimize", photo, "--bundle", tiny_bundle, "-o", tmp_path / (name + ".gifx")], 40
    rc, out, err = cli_inproc(*args, *FAST)
    line = assert_one_line_error(rc, err, code, "", out)
    assert not CONTROL.search(line)
    from beautyrt.engines.files import printable

    assert printable(name) in line, line  # the name is shown, escaped (\x1b, \n, \xff ...)


def test_names_escaped_api(tmp_path):
    """The typed errors carry the escaped name too (a server writes them to its logs)."""
    from beautyrt.runtime.errors import ImageNotFoundError, OutputError
    from beautyrt.runtime.ops.imageio import check_writable, load_image

    for name in NAMES.values():
        with pytest.raises(ImageNotFoundError) as ei:
            load_image(tmp_path / name)
        assert not CONTROL.search(str(ei.value)) and "\n" not in str(ei.value)
        with pytest.raises(OutputError) as ei:
            check_writable(tmp_path / name / "o.png")
        assert not CONTROL.search(str(ei.value))


def test_names_escaped_on_the_real_stderr(tiny_bundle, tmp_path):
    """A subprocess: the bytes on stderr hold no ESC/BEL/CR, and the escape is shown as text."""
    from tests.conftest import run_cli

    r = run_cli("optimize", str(tmp_path / "x\x1b[2J\x07.jpg"), "--bundle", str(tiny_bundle), timeout=120)
    assert r.returncode == 31
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr and "\r" not in r.stderr
    assert "x\\x1b[2J\\x07.jpg" in r.stderr


def test_success_line_escapes_the_output_name(tiny_bundle, tmp_path):
    photo = crop_png(tmp_path)
    o = tmp_path / "o\x1b[31m.png"
    rc, out, err = cli_inproc("optimize", photo, "--aligned", "--bundle", tiny_bundle, "-o", o, "-g", "1", "-p", "4")
    assert rc == 0, err
    assert "\x1b" not in err and "o\\x1b[31m.png: score" in err
    assert o.exists()


# --- usage errors: one line, exit 2 ------------------------------------------------------------------------
USAGE = {
    "unknown_option": (["optimize", "x.jpg", "--bogus"], r"No such option: --bogus"),
    "missing_argument": (["optimize"], r"Missing argument"),
    "bad_int": (["optimize", "x.jpg", "--generations", "many"], r"Invalid value for '--generations'"),
    "bad_float": (["optimize", "x.jpg", "--sigma", "big"], r"Invalid value for '--sigma'"),
    "option_without_value": (["optimize", "x.jpg", "-o"], r"requires an argument"),
    "unknown_command": (["beautify", "x.jpg"], r"No such command 'beautify'"),
    "export_unknown_option": (["export", "--outt", "d"], r"No such option: --outt"),
    "bench_bad_int": (["bench", "--repeats", "x"], r"Invalid value for '--repeats'"),
    "audit_missing_images": (["audit"], r"Missing option '--images'"),
    "train_missing": (["train"], r"Missing argument"),
    "escape_in_option": (["optimize", "x.jpg", "--\x1b[31m"], r"No such option"),
}


@pytest.mark.parametrize("case", sorted(USAGE))
def test_usage_error_is_one_line(case):
    args, pattern = USAGE[case]
    rc, out, err = cli_inproc(*args)
    line = assert_one_line_error(rc, err, 2, pattern, out)
    assert not set(line) & set("╭╮╰╯│─"), line


def test_usage_error_in_a_real_process():
    from tests.conftest import run_cli

    r = run_cli("optimize", "x.jpg", "--nope", timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("beautyrt: error:"), r.stderr


def test_help_still_works():
    rc, out, err = cli_inproc("optimize", "--help")
    assert rc == 0 and "--bundle" in out


# --- the default output name ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,want",
    [
        ("p.gif", "p.beautified.png"),
        ("p.tif", "p.beautified.png"),
        ("p.tiff", "p.beautified.png"),
        ("p.bmp", "p.beautified.png"),
        ("p", "p.beautified.png"),
        ("p.JPG", "p.beautified.jpg"),
        ("p.jpeg", "p.beautified.jpeg"),
        ("p.webp", "p.beautified.webp"),
        ("p.PNG", "p.beautified.png"),
    ],
)
def test_default_output_has_a_writable_extension(name, want, tiny_bundle, tmp_path):
    from PIL import Image

    src = crop_png(tmp_path)
    p = tmp_path / name
    fmt = {".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", "": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
    Image.open(src).convert("RGB").save(p, format=fmt.get(p.suffix.lower(), p.suffix.lower()[1:].upper()))
    rc, out, err = cli_inproc("optimize", p, "--aligned", "--bundle", tiny_bundle, *FAST)
    assert rc == 0, err
    assert (tmp_path / want).is_file(), sorted(os.listdir(tmp_path))

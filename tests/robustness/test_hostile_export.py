"""Class 1 on the export side: ``--force`` replaces only a directory that is a bundle beautyrt wrote (its
manifest's bundle_id matches the ``.beautyrt-bundle-id`` marker and the directory holds nothing the manifest
does not list -- a stray manifest.json next to someone's files is not enough); ``--out`` naming a file (or
under a file) is a clean error before any work; SIGTERM/SIGINT during an export leave no ``.tmp`` directory
and the previous bundle untouched.

The export itself is replaced by a stand-in that writes one small model file (``_export_all``): what is
tested is the publication around it, in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the export stage needs the export extra")

from beautyrt.export.errors import ExportError  # noqa: E402
from tests.robustness.corpus import assert_one_line_error, cli_inproc, files  # noqa: E402


def fake_export_all(ms, d: Path, progress) -> dict:
    (d / "m.onnx").write_bytes(b"model bytes")
    return {
        "format": "beautyrt-bundle",
        "format_version": 1,
        "models": {"m": {"file": "m.onnx", "sha256": hashlib.sha256(b"model bytes").hexdigest()}},
    }


@pytest.fixture()
def fake_export(monkeypatch):
    from beautyrt.export import bundle

    monkeypatch.setattr(bundle, "_export_all", fake_export_all)
    return bundle


def _own_bundle(bundle_mod, d: Path) -> Path:
    return bundle_mod.write_bundle(None, d)


def _snapshot(d: Path) -> dict:
    return {p: (d / p).read_bytes() for p in files(d) if (d / p).is_file()}


# --- refusals: name -> builder(tmp) -> (out path, what must stay untouched) -----------------------------------
def r_out_is_file(t):
    (t / "thesis.docx").write_text("years of work")
    return t / "thesis.docx", t


def r_out_under_a_file(t):
    (t / "afile").write_text("x")
    return t / "afile" / "bundle", t


def r_foreign_files(t):
    (t / "photos").mkdir()
    (t / "photos" / "a.jpg").write_text("holiday")
    (t / "photos" / "b.jpg").write_text("wedding")
    return t / "photos", t / "photos"


def r_stray_manifest(t):
    """A manifest.json that looks like a bundle's, next to the user's own files."""
    (t / "proj").mkdir()
    (t / "proj" / "manifest.json").write_text(json.dumps({"format": "beautyrt-bundle", "models": {}}))
    (t / "proj" / "notes.txt").write_text("mine")
    return t / "proj", t / "proj"


def r_forged_marker(t, bundle_mod=None):
    """Every file listed, but the marker does not match the manifest's bundle_id."""
    d = t / "forged"
    d.mkdir()
    (d / "m.onnx").write_text("mine")
    (d / "manifest.json").write_text(
        json.dumps(
            {
                "format": "beautyrt-bundle",
                "bundle_id": "a" * 32,
                "models": {"m": {"file": "m.onnx", "sha256": "0" * 64}},
            }
        )
    )
    (d / ".beautyrt-bundle-id").write_text("beautyrt-bundle " + "b" * 32 + "\n")
    return d, d


def r_legacy_mismatch(t):
    """No marker (an old bundle): every listed file must match its sha256 -- this one does not."""
    d = t / "old"
    d.mkdir()
    (d / "m.onnx").write_text("someone's model")
    (d / "manifest.json").write_text(
        json.dumps({"format": "beautyrt-bundle", "models": {"m": {"file": "m.onnx", "sha256": "0" * 64}}})
    )
    return d, d


def r_bundle_plus_user_file(t, bundle_mod):
    d = _own_bundle(bundle_mod, t / "b")
    (d / "my-notes.txt").write_text("do not delete")
    return d, d


def r_bundle_plus_subdir(t, bundle_mod):
    d = _own_bundle(bundle_mod, t / "b")
    (d / "cache").mkdir()
    (d / "cache" / "x").write_text("x")
    return d, d


def r_name_too_long(t):
    return t / ("b" * 300), t


REFUSALS = {
    "out_is_a_file": (r_out_is_file, False, r"thesis.docx is a file, not a bundle directory"),
    "out_under_a_file": (r_out_under_a_file, False, r"afile is a file, not a directory"),
    "force_foreign_files": (
        r_foreign_files,
        True,
        r"not a bundle beautyrt wrote \(it has no readable beautyrt manifest.json\)",
    ),
    "force_stray_manifest": (r_stray_manifest, True, r"holds files the bundle does not list \(notes.txt\)"),
    "force_forged_marker": (r_forged_marker, True, r"\.beautyrt-bundle-id does not match the manifest"),
    "force_legacy_hash_mismatch": (r_legacy_mismatch, True, r"m.onnx does not match its sha256"),
    "force_bundle_plus_user_file": (r_bundle_plus_user_file, True, r"does not list \(my-notes.txt\)"),
    "force_bundle_plus_subdir": (r_bundle_plus_subdir, True, r"does not list \(cache\)"),
    "exists_without_force": (r_foreign_files, False, r"already exists; pass --force"),
    "name_too_long": (r_name_too_long, True, r"too long"),
}


def _build(case, t, bundle_mod):
    build = REFUSALS[case][0]
    try:
        return build(t, bundle_mod)
    except TypeError:
        return build(t)


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_export_refusal_cli(case, tmp_path, fake_export, monkeypatch):
    from beautyrt.export import api

    out, keep, pattern = (*_build(case, tmp_path, fake_export), REFUSALS[case][2])
    force = REFUSALS[case][1]
    before = _snapshot(keep) if keep.is_dir() else None
    monkeypatch.setattr(api, "build_preset", lambda *a, **k: pytest.fail("models were built before the check"))
    rc, so, err = cli_inproc(
        "export", "--preset", "tiny", "--no-detector", "--out", out, *(["--force"] if force else [])
    )
    assert_one_line_error(rc, err, ExportError.exit_code, pattern, so)
    if before is not None:
        assert _snapshot(keep) == before, "nothing of the user's may change"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p]


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_export_refusal_api(case, tmp_path, fake_export):
    from beautyrt.export.api import export_preset

    out, keep = _build(case, tmp_path, fake_export)
    before = _snapshot(keep) if keep.is_dir() else None
    from beautyrt.export import api

    api_build = api.build_preset
    api.build_preset = lambda *a, **k: pytest.fail("models were built before the check")
    try:
        with pytest.raises(ExportError, match=REFUSALS[case][2]):
            export_preset("tiny", out, overwrite=REFUSALS[case][1], detector=False)
    finally:
        api.build_preset = api_build
    with pytest.raises(ExportError, match=REFUSALS[case][2]):
        fake_export.write_bundle(None, out, overwrite=REFUSALS[case][1])
    if before is not None:
        assert _snapshot(keep) == before


def test_force_replaces_its_own_bundle_whole(tmp_path, fake_export):
    d = _own_bundle(fake_export, tmp_path / "b")
    first = json.loads((d / "manifest.json").read_text())["bundle_id"]
    assert (d / ".beautyrt-bundle-id").read_text().split()[1] == first
    d2 = fake_export.write_bundle(None, d, overwrite=True)
    assert d2 == d and json.loads((d / "manifest.json").read_text())["bundle_id"] != first
    assert sorted(os.listdir(tmp_path)) == ["b"], "no .tmp-/.old- directory left"


def test_force_accepts_an_empty_dir_and_a_legacy_bundle(tmp_path, fake_export):
    (tmp_path / "empty").mkdir()
    fake_export.write_bundle(None, tmp_path / "empty", overwrite=True)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "m.onnx").write_bytes(b"x")
    (legacy / "manifest.json").write_text(
        json.dumps(
            {
                "format": "beautyrt-bundle",
                "models": {"m": {"file": "m.onnx", "sha256": hashlib.sha256(b"x").hexdigest()}},
            }
        )
    )
    fake_export.write_bundle(None, legacy, overwrite=True)
    assert (legacy / ".beautyrt-bundle-id").is_file()


def test_out_through_a_symlink_is_written_at_its_target(tmp_path, fake_export):
    os.symlink(tmp_path / "target", tmp_path / "link")
    fake_export.write_bundle(None, tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "target" / "manifest.json").is_file()


def test_real_export_writes_the_marker(tiny_bundle):
    from beautyrt.export.bundle import _why_not_own_bundle

    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert (tiny_bundle / ".beautyrt-bundle-id").read_text().strip() == f"beautyrt-bundle {m['bundle_id']}"
    assert _why_not_own_bundle(tiny_bundle) is None


SIGNAL_WRAPPER = r"""
import os, signal, sys
from beautyrt.export import bundle
sig = getattr(signal, os.environ["HOSTILE_SIGNAL"])
def export_all(ms, d, progress):
    (d / "m.onnx").write_bytes(b"half-written model")
    os.kill(os.getpid(), sig)  # mid-export, the temporary directory full of files
    import time
    time.sleep(5)
    raise SystemExit("not interrupted")
bundle._export_all = export_all
from beautyrt.export import api
api.build_preset = lambda *a, **k: None
from beautyrt.cli.main import main
sys.argv = ["beautyrt"] + sys.argv[1:]
main()
"""


@pytest.mark.parametrize("sig,existing", [("SIGTERM", False), ("SIGTERM", True), ("SIGINT", True), ("SIGHUP", False)])
def test_signal_during_export_leaves_no_tmp(sig, existing, tmp_path, fake_export):
    out = tmp_path / "b"
    if existing:
        _own_bundle(fake_export, out)
    before = _snapshot(out) if existing else None
    env = dict(os.environ, HOSTILE_SIGNAL=sig)
    args = ["export", "--preset", "tiny", "--no-detector", "--out", str(out), "--force"]
    p = subprocess.run(
        [sys.executable, "-c", SIGNAL_WRAPPER, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == 130, (p.returncode, p.stderr)
    assert p.stderr.strip() == "beautyrt: interrupted", p.stderr
    assert sorted(os.listdir(tmp_path)) == (["b"] if existing else []), "no .tmp- directory may be left"
    if existing:
        assert _snapshot(out) == before, "the previous bundle must be untouched"

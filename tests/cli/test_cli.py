"""The command line, in subprocesses, as a user runs it."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from beautyrt.engines.errors import BundleIntegrityError, BundleNotFoundError
from beautyrt.runtime.errors import ImageDecodeError, ImageNotFoundError, OutputError


@pytest.fixture()
def crop_file(tmp_path, face_crop):
    p = tmp_path / "face.png"
    Image.fromarray(face_crop).save(p)
    return p


def _one_line_error(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("beautyrt: error:"), r.stderr
    assert "Traceback" not in r.stderr


def test_help_is_instant_and_lists_commands(cli):
    r = cli("--help", block_torch=True)
    assert r.returncode == 0
    for c in ("optimize", "export", "bench", "doctor"):
        assert c in r.stdout


def test_optimize_without_torch_writes_image_and_report(cli, tiny_bundle, crop_file, tmp_path):
    out, rep = tmp_path / "out.jpg", tmp_path / "rep.json"
    r = cli(
        "optimize",
        str(crop_file),
        "--aligned",
        "-o",
        str(out),
        "--bundle",
        str(tiny_bundle),
        "--generations",
        "8",
        "--popsize",
        "8",
        "--seed",
        "2",
        "--json",
        "--report",
        str(rep),
        block_torch=True,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert json.loads(rep.read_text())["score_after"] == report["score_after"]
    best = [h["best_score"] for h in report["history"]]
    assert all(b >= a for a, b in zip(best, best[1:]))
    assert report["score_after"] > report["score_before"]
    assert report["identity"] >= 0.6 and len(report["bundle_hash"]) == 64
    assert report["settings"]["seed"] == 2 and report["timings"]["total"] > 0
    im = Image.open(out)
    assert im.size == Image.open(crop_file).size
    assert "beautyrt" in im.getexif().get(0x0131, "")
    assert b"AI-edited by beautyrt" in im.info.get("xmp", b"")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left behind"


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("tensorrt") is not None,
    reason="TensorRT is installed: the missing-TensorRT path cannot be exercised",
)
def test_backend_tensorrt_without_tensorrt_and_ort_same_bytes_as_default(cli, tiny_bundle, crop_file, tmp_path):
    from beautyrt.engines.errors import MissingDependencyError

    r = cli(
        "optimize",
        str(crop_file),
        "--aligned",
        "-o",
        str(tmp_path / "t.png"),
        "--bundle",
        str(tiny_bundle),
        "--backend",
        "tensorrt",
        block_torch=True,
    )
    assert r.returncode == MissingDependencyError.exit_code == 23
    _one_line_error(r)
    assert "pip install 'beautyrt[trt]'" in r.stderr and not (tmp_path / "t.png").exists()
    outs = {}
    for backend in ("auto", "ort"):
        o = tmp_path / f"{backend}.png"
        r = cli(
            "optimize",
            str(crop_file),
            "--aligned",
            "-o",
            str(o),
            "--bundle",
            str(tiny_bundle),
            "-g",
            "3",
            "-p",
            "4",
            "-q",
            "--backend",
            backend,
            block_torch=True,
        )
        assert r.returncode == 0, r.stderr
        outs[backend] = o.read_bytes()
    assert outs["auto"] == outs["ort"]
    r = cli("optimize", str(crop_file), "--aligned", "--bundle", str(tiny_bundle), "--backend", "openvino")
    assert r.returncode == 2 and "openvino" in r.stderr


def test_optimize_is_deterministic(cli, tiny_bundle, crop_file, tmp_path):
    outs = []
    for i in range(2):
        o = tmp_path / f"o{i}.png"
        r = cli(
            "optimize",
            str(crop_file),
            "--aligned",
            "-o",
            str(o),
            "--bundle",
            str(tiny_bundle),
            "-g",
            "3",
            "-p",
            "4",
            "-q",
        )
        assert r.returncode == 0, r.stderr
        outs.append(o.read_bytes())
    assert outs[0] == outs[1]


def test_missing_image(cli, tiny_bundle, tmp_path):
    r = cli("optimize", str(tmp_path / "nope.jpg"), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "o.jpg"))
    assert r.returncode == ImageNotFoundError.exit_code
    _one_line_error(r)
    assert not (tmp_path / "o.jpg").exists()


def test_not_an_image(cli, tiny_bundle, tmp_path):
    p = tmp_path / "text.jpg"
    p.write_text("hello")
    r = cli("optimize", str(p), "--aligned", "--bundle", str(tiny_bundle), "-o", str(tmp_path / "o.jpg"))
    assert r.returncode == ImageDecodeError.exit_code
    _one_line_error(r)


def test_missing_bundle(cli, crop_file, tmp_path):
    r = cli(
        "optimize", str(crop_file), "--aligned", "--bundle", str(tmp_path / "nobundle"), "-o", str(tmp_path / "o.png")
    )
    assert r.returncode == BundleNotFoundError.exit_code
    _one_line_error(r)
    assert "beautyrt export" in r.stderr


def test_default_bundle_from_env(cli, tiny_bundle, crop_file, tmp_path):
    r = cli(
        "optimize",
        str(crop_file),
        "--aligned",
        "-g",
        "1",
        "-p",
        "4",
        "-q",
        "-o",
        str(tmp_path / "o.png"),
        env={"BEAUTYRT_BUNDLE": str(tiny_bundle)},
    )
    assert r.returncode == 0, r.stderr


def test_tampered_bundle(cli, tiny_bundle, crop_file, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    (b / "scorer.onnx").write_bytes(b"garbage")
    r = cli("optimize", str(crop_file), "--aligned", "--bundle", str(b), "-o", str(tmp_path / "o.png"))
    assert r.returncode == BundleIntegrityError.exit_code
    _one_line_error(r)


def test_unwritable_output(cli, tiny_bundle, crop_file, tmp_path):
    r = cli("optimize", str(crop_file), "--aligned", "--bundle", str(tiny_bundle), "-o", str(tmp_path / "no" / "o.png"))
    assert r.returncode == OutputError.exit_code
    _one_line_error(r)
    r = cli("optimize", str(crop_file), "--aligned", "--bundle", str(tiny_bundle), "-o", str(tmp_path / "o.gifx"))
    assert r.returncode == OutputError.exit_code


def test_bad_option_value(cli, tiny_bundle, crop_file, tmp_path):
    r = cli(
        "optimize",
        str(crop_file),
        "--aligned",
        "--bundle",
        str(tiny_bundle),
        "--space",
        "zz",
        "-o",
        str(tmp_path / "o.png"),
    )
    assert r.returncode == 2
    _one_line_error(r)


def test_bench_json(cli, tiny_bundle):
    r = cli("bench", "--bundle", str(tiny_bundle), "-p", "4", "-g", "2", "--repeats", "2", "--json", block_torch=True)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["candidates_per_s"] > 0
    for stage in ("generation", "scorer_call", "invert", "synthesize"):
        assert set(res["stages"][stage]) == {"p50", "p90", "p99"}
        assert res["stages"][stage]["p50"] <= res["stages"][stage]["p99"]
    # the process held the bundle's models in memory: its peak RSS is at least their size
    model_bytes = sum(p.stat().st_size for p in tiny_bundle.glob("*.onnx"))
    assert res["peak_rss_bytes"] >= model_bytes + 20 * 2**20


def test_doctor(cli, tiny_bundle, tmp_path):
    r = cli("doctor", "--bundle", str(tiny_bundle), "--json", block_torch=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["bundle"]["ok"] and "CPUExecutionProvider" in rep["providers"]["usable"]
    r = cli("doctor", "--bundle", str(tmp_path / "none"), "--json", block_torch=True)
    assert r.returncode == BundleNotFoundError.exit_code


def test_export_tiny_cli(cli, tmp_path):
    out = tmp_path / "b"
    r = cli("export", "--preset", "tiny", "--out", str(out), "--no-detector")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"]["preset"] == "tiny"
    assert all(e["parity"]["max_rel"] <= e["parity"]["tolerance"] for e in m["models"].values())
    r = cli("export", "--preset", "tiny", "--out", str(out), "--no-detector")
    assert r.returncode != 0 and "--force" in r.stderr
    _one_line_error(r)
    r = cli("export", "--preset", "nope", "--out", str(tmp_path / "c"))
    assert r.returncode != 0
    _one_line_error(r)
    assert not (tmp_path / "c").exists()


def test_export_without_torch_names_the_extra(cli, tmp_path):
    r = cli("export", "--preset", "tiny", "--out", str(tmp_path / "b"), block_torch=True)
    # find_spec still finds torch on disk; importing it fails -> must still be one line, no traceback
    assert r.returncode != 0
    _one_line_error(r)

"""Class 5, arguments and API values: every value is validated up front (typed, finite, ranged) with the
option's name in the message -- a typed UsageError (exit 2) from the API, one line from the CLI -- BEFORE any
work (no decode, no bundle load, no search); numpy scalars are accepted and the report stays JSON.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from beautyrt.engines.errors import UsageError
from tests.robustness.corpus import FAST, assert_one_line_error, cli_inproc, crop_array, crop_png

# --- Settings / ObjectiveWeights fields ---------------------------------------------------------------------
BAD_SETTINGS = {
    "generations_zero": ({"generations": 0}, r"generations must be in 1..10000"),
    "generations_float": ({"generations": 2.0}, r"generations must be an integer"),
    "generations_str": ({"generations": "5"}, r"generations must be an integer"),
    "generations_bool": ({"generations": True}, r"generations must be an integer"),
    "popsize_one": ({"popsize": 1}, r"popsize must be in 2..1024"),
    "popsize_huge": ({"popsize": 10**9}, r"popsize must be in"),
    "popsize_str": ({"popsize": "8"}, r"popsize must be an integer"),  # (None: the bundle's recommendation)
    "start_unknown": ({"start": "middle"}, r"start must be one of origin, prior"),
    "mirrored_str": ({"mirrored": "yes"}, r"mirrored must be true or false"),
    "covariance_unknown": ({"covariance": "sparse"}, r"covariance must be one of"),
    "seed_negative": ({"seed": -1}, r"seed must be in 0..4294967295"),
    "seed_numpy_negative": ({"seed": np.int64(-5)}, r"seed must be in"),
    "seed_2_64": ({"seed": 2**64}, r"seed must be in"),
    "seed_float": ({"seed": 1.5}, r"seed must be an integer"),
    "seed_np_bool": ({"seed": np.bool_(True)}, r"seed must be an integer"),
    "sigma_nan": ({"sigma0": float("nan")}, r"sigma must be a finite number"),
    "sigma_inf": ({"sigma0": float("inf")}, r"sigma must be a finite number"),
    "sigma_zero": ({"sigma0": 0.0}, r"sigma must be in \(0, 10\]"),
    "sigma_str": ({"sigma0": "0.5"}, r"sigma must be a number"),
    "space_unknown": ({"space": "z"}, r"space must be one of w, groups, wplus"),
    "space_none": ({"space": None}, r"space must be one of"),
    "mode_unknown": ({"output_mode": "paste"}, r"mode must be one of"),
    "face_negative": ({"face": -1}, r"face must be in 0..1000"),
    "face_str": ({"face": "0"}, r"face must be an integer"),
    "all_faces_str": ({"all_faces": "yes"}, r"all_faces must be true or false"),
    "all_faces_and_face": ({"all_faces": True, "face": 0}, r"either a face index"),
    "min_face_nan": ({"min_face": float("nan")}, r"min_face must be a finite number"),
    "min_face_small": ({"min_face": 1.0}, r"min_face must be in \[12, 4096\]"),
    "score_on_unknown": ({"score_on": "both"}, r"score-on must be one of"),
    "transfer_unknown": ({"transfer": "magic"}, r"transfer must be one of"),
    "strength_nan": ({"strength": float("nan")}, r"strength must be a finite number"),
    "strength_3": ({"strength": 3.0}, r"strength must be in \[0, 2\]"),
    "strength_none": ({"strength": None}, r"strength must be a number"),
    "strategy_unknown": ({"strategy": "random"}, r"strategy must be one of"),
    "weights_str": ({"weights": "strong"}, r"weights must be an ObjectiveWeights"),
    "weights_int": ({"weights": 5}, r"weights must be an ObjectiveWeights"),
    "weights_nan_identity_weight": (
        {"weights": {"identity_weight": float("nan")}},
        r"identity-weight must be a finite",
    ),
    "weights_inf_latent_weight": ({"weights": {"latent_weight": float("inf")}}, r"latent-weight must be a finite"),
    "weights_negative": ({"weights": {"latent_weight": -1.0}}, r"latent-weight must be in \[0, 1e\+06\]"),
    "weights_floor_2": ({"weights": {"identity_floor": 2.0}}, r"identity-floor must be in \[-1, 1\]"),
    "weights_str_value": ({"weights": {"identity_target": "0.8"}}, r"identity-target must be a number"),
    "weights_unknown_key": ({"weights": {"beauty_weight": 1.0}}, r"unknown objective weight\(s\): 'beauty_weight'"),
    "unknown_setting": ({"generation": 5}, r"unknown setting\(s\): 'generation'"),
    "non_str_key": ({7: 5}, r"unknown setting\(s\): 7"),
}


UNKNOWN_KEYS = {"weights_unknown_key", "unknown_setting", "non_str_key"}  # a dict only: Settings(**) is Python's


@pytest.fixture(scope="module")
def beautifier(tiny_bundle):
    from beautyrt.runtime.api import Beautifier

    with Beautifier(tiny_bundle, device="cpu", threads=1) as b:
        yield b


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_api(case, beautifier, monkeypatch):
    """Beautifier.optimize: a typed UsageError naming the field, raised before any model runs, whether the
    settings are a Settings or a dict of its fields."""
    from beautyrt.runtime import bundle as bundle_mod
    from beautyrt.runtime.api import Settings

    kw, pattern = BAD_SETTINGS[case]
    forms = [kw] if case in UNKNOWN_KEYS else [Settings(**kw), kw]
    monkeypatch.setattr(bundle_mod.Models, "synthesize", lambda *a, **k: pytest.fail("work started"))
    for settings in forms:
        with pytest.raises(UsageError, match=pattern) as ei:
            beautifier.optimize(crop_array(), settings, aligned=True)
        assert type(ei.value) is UsageError and ei.value.exit_code == 2


def test_numpy_scalars_accepted_and_report_is_json(tiny_bundle, tmp_path):
    from beautyrt.runtime.api import ObjectiveWeights, Settings, optimize_file

    s = Settings(
        generations=np.int64(1),
        popsize=np.int32(4),
        seed=np.uint32(3),
        sigma0=np.float32(0.5),
        strength=np.float64(0.5),
        all_faces=np.bool_(False),
        weights=ObjectiveWeights(identity_weight=np.float32(2.0), latent_weight=np.int64(0)),
    )
    rep = optimize_file(
        crop_png(tmp_path),
        tmp_path / "o.png",
        bundle=tiny_bundle,
        settings=s,
        aligned=True,
        report_path=tmp_path / "r.json",
        quality=np.int64(90),
        threads=np.int64(1),
    )
    json.dumps(rep)  # plain Python values
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["settings"]["generations"] == 1 and saved["settings"]["popsize"] == 4
    assert type(saved["settings"]["seed"]) is int and saved["settings"]["seed"] == 3


def test_settings_dict_and_weights_none_accepted(tiny_bundle):
    from beautyrt.runtime.api import Beautifier, Settings

    with Beautifier(tiny_bundle, device="cpu") as b:
        r1 = b.optimize(crop_array(), {"generations": 1, "popsize": 4, "weights": None}, aligned=True)
        r2 = b.optimize(crop_array(), Settings(generations=1, popsize=4, weights=None), aligned=True)
    assert r1.result_id == r2.result_id


# --- optimize_file / Beautifier arguments --------------------------------------------------------------------
def _call(tmp_path, bundle_dir, **over):
    from beautyrt.runtime.api import optimize_file

    kw = dict(image=crop_png(tmp_path), out=tmp_path / "o.png", bundle=bundle_dir, aligned=True)
    kw.update(over)
    return optimize_file(kw.pop("image"), kw.pop("out"), **kw)


BAD_ARGS = {
    "image_none": ({"image": None}, UsageError, r"image must be a path"),
    "image_dict": ({"image": {"path": "x"}}, UsageError, r"image must be a path"),
    "image_int": ({"image": 3}, UsageError, r"image must be a path"),
    "out_none": ({"out": None}, UsageError, r"out must be a path"),
    "out_float": ({"out": 1.5}, UsageError, r"out must be a path"),
    "bundle_none": ({"bundle": None}, UsageError, r"bundle must be a path"),
    "bundle_list": ({"bundle": ["b"]}, UsageError, r"bundle must be a path"),
    "quality_zero_png": ({"quality": 0}, UsageError, r"quality must be an integer in 1..100, got 0"),
    "quality_101": ({"quality": 101}, UsageError, r"quality must be an integer in 1..100"),
    "quality_str": ({"quality": "95"}, UsageError, r"quality must be an integer"),
    "quality_bool": ({"quality": True}, UsageError, r"quality must be an integer"),
    "quality_float": ({"quality": 95.0}, UsageError, r"quality must be an integer"),
    "threads_zero": ({"threads": 0}, UsageError, r"threads must be in 1\.\."),
    "threads_negative": ({"threads": -1}, UsageError, r"threads must be in 1\.\."),
    "threads_1000": ({"threads": 1000}, UsageError, r"threads must be in 1\.\."),
    "threads_str": ({"threads": "4"}, UsageError, r"threads must be an integer"),
    "threads_float": ({"threads": 4.5}, UsageError, r"threads must be an integer"),
    "device_unknown": ({"device": "gpu"}, UsageError, r"unknown device 'gpu'"),
    "device_none": ({"device": None}, UsageError, r"unknown device None"),
    "backend_int": ({"backend": 1}, UsageError, r"backend must be a string"),
    "backend_unknown": ({"backend": "openvino"}, UsageError, r"unknown backend 'openvino'"),
    "aligned_str": ({"aligned": "yes"}, UsageError, r"aligned must be true or false"),
    "progress_not_callable": ({"progress": 5}, UsageError, r"progress must be callable"),
    "cancel_not_callable": ({"cancel": "stop"}, UsageError, r"cancel must be callable"),
    "settings_str": ({"settings": "fast"}, UsageError, r"settings must be a beautyrt Settings"),
    "settings_list": ({"settings": [1]}, UsageError, r"settings must be a beautyrt Settings"),
    "beautifier_str": ({"beautifier": "b"}, UsageError, r"beautifier must be a Beautifier"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments_api(case, tiny_bundle, tmp_path, monkeypatch):
    from beautyrt.runtime import api

    over, exc, pattern = BAD_ARGS[case]
    monkeypatch.setattr(api, "load_image", lambda *a, **k: pytest.fail("the photo was decoded before the check"))
    with pytest.raises(exc, match=pattern) as ei:
        _call(tmp_path, tiny_bundle, **over)
    assert type(ei.value) is exc
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    "kw,pattern",
    [
        ({"bundle": None}, r"bundle must be a path"),
        ({"bundle": 5}, r"bundle must be a path"),
        ({"threads": -1}, r"threads must be in"),
        ({"threads": 10_000}, r"threads must be in"),
        ({"device": "tpu"}, r"unknown device"),
        ({"backend": None}, r"backend must be a string"),
        ({"device_id": -1}, r"device_id must be an integer"),
    ],
)
def test_bad_beautifier_arguments(kw, pattern, tiny_bundle):
    from beautyrt.runtime.api import Beautifier

    args = {"bundle": tiny_bundle, **kw}
    with pytest.raises(UsageError, match=pattern):
        Beautifier(args.pop("bundle"), **args)


def test_compose_and_detect_values(tiny_bundle_with_detector):
    from beautyrt.runtime.api import Beautifier, Settings

    with Beautifier(tiny_bundle_with_detector, device="cpu") as b:
        r = b.optimize(crop_array(), Settings(generations=1, popsize=4), aligned=True)
        for bad in (None, {"image": 1}, "result"):
            with pytest.raises(UsageError, match=r"compose\(\) needs a Result"):
                b.compose(bad, 1.0)
        for s in (float("nan"), "1", None, 5.0):
            with pytest.raises(UsageError, match=r"strength must be"):
                b.compose(r, s)
        for mf in ("40", float("nan"), 0, None):
            with pytest.raises(UsageError, match=r"min_face must be"):
                b.detect(crop_array(), min_face=mf)


def test_threads_capped_does_not_spawn_hundreds(tiny_bundle):
    """--threads 1000 used to create ~900 threads; now it is refused before any session exists."""
    import threading

    from beautyrt.runtime.api import Beautifier

    before = threading.active_count()
    with pytest.raises(UsageError):
        Beautifier(tiny_bundle, threads=1000)
    assert threading.active_count() == before


# --- the CLI: one line, exit 2, before any work ---------------------------------------------------------------
BAD_CLI = {
    "quality_0_png": (["--quality", "0"], r"quality must be an integer in 1..100, got 0"),
    "quality_101_jpg": (["--quality", "101", "-o", "{d}/o.jpg"], r"quality must be"),
    "threads_negative": (["--threads", "-1"], r"threads must be in 1\.\."),
    "threads_1000": (["--threads", "1000"], r"threads must be in 1\.\."),
    "threads_zero": (["--threads", "0"], r"threads must be in 1\.\."),
    "seed_negative": (["--seed", "-1"], r"seed must be in 0..4294967295, got -1"),
    "seed_huge": (["--seed", "99999999999999999999999"], r"seed must be in"),
    "seed_not_int": (["--seed", "abc"], r"Invalid value for '--seed'"),
    "identity_weight_nan": (["--identity-weight", "nan"], r"identity-weight must be a finite number"),
    "latent_weight_inf": (["--latent-weight", "inf"], r"latent-weight must be a finite number"),
    "latent_weight_neg_inf": (["--latent-weight=-inf"], r"latent-weight must be a finite number"),
    "naturalness_weight_negative": (["--naturalness-weight=-0.5"], r"naturalness-weight must be in \[0, 1e\+06\]"),
    "identity_floor_nan": (["--identity-floor", "nan"], r"identity-floor must be a finite"),
    "sigma_nan": (["--sigma", "nan"], r"sigma must be a finite"),
    "strength_inf": (["--strength", "inf"], r"strength must be a finite"),
    "generations_zero": (["-g", "0"], r"generations must be in 1..10000"),
    "popsize_one": (["-p", "1"], r"popsize must be in 2..1024"),
    "device_unknown": (["--device", "gpu"], r"unknown device 'gpu'"),
    "backend_unknown": (["--backend", "openvino"], r"unknown backend 'openvino'"),
    "face_and_all_faces": (["--face", "0", "--all-faces"], r"either a face index"),
    "space_unknown": (["--space", "z"], r"space must be one of"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLI))
def test_bad_cli_values_before_any_work(case, tmp_path):
    """Refused with exit 2 even with a bundle that does not exist and an input that is not a photo: the value
    check comes before the decode and the bundle load (which would be exits 32 and 11)."""
    args, pattern = BAD_CLI[case]
    args = [a.replace("{d}", str(tmp_path)) for a in args]
    junk = tmp_path / "junk.png"
    junk.write_text("not a photo")
    o = [] if "-o" in args else ["-o", str(tmp_path / "o.png")]
    fast = (
        [a for a in FAST if a not in ("-g", "1", "-p", "4", "--seed", "0")]
        if any(a in args for a in ("-g", "-p", "--seed"))
        else FAST
    )
    code, out, err = cli_inproc("optimize", junk, "--bundle", tmp_path / "no-bundle", *o, *args, *fast)
    assert_one_line_error(code, err, 2, pattern, out)
    assert not (tmp_path / "o.png").exists()


def test_export_seed_negative_refused_before_work(tmp_path):
    pytest.importorskip("torch")
    code, out, err = cli_inproc("export", "--preset", "tiny", "--no-detector", "--seed", "-1", "--out", tmp_path / "b")
    assert_one_line_error(code, err, 2, r"seed must be an integer in 0..4294967295, got -1", out)
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


def test_nan_weights_never_reach_the_search(tiny_bundle, tmp_path, monkeypatch):
    """NaN weights used to fail mid-run in CMA-ES ('tell() got non-finite objective values')."""
    from beautyrt.runtime.api import ObjectiveWeights, Settings, optimize_file
    from beautyrt.runtime.stages import search

    monkeypatch.setattr(search, "search", lambda *a, **k: pytest.fail("the search started"))
    for w in (ObjectiveWeights(identity_weight=math.nan), ObjectiveWeights(latent_weight=math.inf)):
        with pytest.raises(UsageError):
            optimize_file(
                crop_png(tmp_path),
                tmp_path / "o.png",
                bundle=tiny_bundle,
                aligned=True,
                settings=Settings(generations=1, popsize=4, weights=w),
            )


def test_non_finite_model_outputs_are_typed():
    """A model that returns NaN for a candidate: that candidate ranks last; NaN for all: EngineRuntimeError."""
    from beautyrt.engines.errors import EngineRuntimeError
    from beautyrt.runtime.objective import ObjectiveWeights, objective

    w = ObjectiveWeights(0.6, 0.8, 5.0, 0.1)
    X = np.zeros((3, 4))
    J = objective(np.array([1.0, np.nan, 2.0]), np.array([0.9, 0.9, np.nan]), X, w)
    assert np.all(np.isfinite(J)) and J[1] < J[0] and J[2] < J[0]
    with pytest.raises(EngineRuntimeError, match="NaN/inf"):
        objective(np.array([np.nan, np.nan]), np.array([0.9, 0.9]), np.zeros((2, 4)), w)

"""Ray-free parts of the scale-out: the bundle check every worker runs, serve_config.yaml, the app builder."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from beautyrt.engines import load_manifest
from beautyrt.engines.errors import BundleIntegrityError, UsageError
from beautyrt.runtime.scale.common import bundle_for_nodes, open_verified
from tests.conftest import REPO

HAVE_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("fastapi") is not None


def test_open_verified_checks_every_file_and_the_drivers_hash(tiny_bundle, tmp_path):
    h = load_manifest(tiny_bundle).bundle_hash
    assert open_verified(tiny_bundle, h).bundle_hash == h
    with pytest.raises(BundleIntegrityError, match="expects"):
        open_verified(tiny_bundle, "f" * 64)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    model = next(p for p in sorted(bad.iterdir()) if p.suffix == ".onnx")
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError):
        open_verified(bad, h)


def test_bundle_for_nodes(tiny_bundle):
    path, env = bundle_for_nodes(tiny_bundle, ship=False)
    assert path == str(tiny_bundle.resolve()) and env == {}
    path, env = bundle_for_nodes(tiny_bundle, ship=True)
    assert path == "." and env == {"working_dir": str(tiny_bundle.resolve())}


@pytest.mark.skipif(not HAVE_RAY, reason="needs the ray extra: pip install -e '.[ray]'")
def test_serve_config_yaml_is_a_valid_serve_config_and_builds(tiny_bundle):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from beautyrt.runtime.scale.serve_ray import build

    text = (REPO / "runtime" / "scale" / "serve_config.yaml").read_text()
    cfg = ServeDeploySchema.model_validate(yaml.safe_load(text))
    assert cfg.http_options.request_timeout_s > 120  # longer than the app's own timeout below
    app_cfg = cfg.applications[0]
    assert app_cfg.import_path == "beautyrt.runtime.scale.serve_ray:build"
    args = dict(app_cfg.args, bundle=str(tiny_bundle))
    app = build(args)
    d = app._bound_deployment
    assert d.num_replicas == args["replicas"]
    assert d.ray_actor_options["num_cpus"] == args["cpus_per_replica"]
    assert d.init_args[1] == load_manifest(tiny_bundle).bundle_hash
    a = build({"bundle": str(tiny_bundle), "autoscale": "1:3"})
    auto = a._bound_deployment._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas) == (1, 3)
    for bad, pat in [({"bundle": str(tiny_bundle), "nope": 1}, "unknown"), ({}, "bundle"),
                     ({"bundle": str(tiny_bundle), "autoscale": "3"}, "MIN:MAX"),
                     ({"bundle": str(tiny_bundle), "replicas": 0}, "--replicas")]:  # fmt: skip
        with pytest.raises(UsageError, match=pat):
            build(bad)

"""Provider selection from what really loads (this CI machine has no GPU)."""

from __future__ import annotations

import pytest

from beautyrt.engines.backends import ort as ortb
from beautyrt.engines.errors import ProviderError, UsageError


def test_probe_lists_cpu_and_explains_unusable():
    p = ortb.probe_providers()
    assert p["usable"][-1] == ortb.CPU
    for prov in p["listed"]:
        assert prov in p["usable"] or prov in p["unusable"], prov


@pytest.mark.skipif(ortb._cuda_device_count() > 0, reason="machine has a CUDA device")
def test_cpu_only_machine_resolves_to_cpu_and_refuses_gpu():
    assert ortb.resolve_providers("auto") == [ortb.CPU]
    assert ortb.resolve_providers("cpu") == [ortb.CPU]
    with pytest.raises(ProviderError, match="cuda was asked for"):
        ortb.resolve_providers("cuda")
    with pytest.raises(ProviderError):
        ortb.resolve_providers("tensorrt")


def test_unknown_device():
    with pytest.raises(UsageError):
        ortb.resolve_providers("tpu")


def test_auto_prefers_gpu_when_it_loads(monkeypatch):
    monkeypatch.setattr(ortb, "_cuda_device_count", lambda: 1)
    monkeypatch.setattr(ortb, "_tensorrt_loadable", lambda: False)
    listed = ortb._ort().get_available_providers()
    if ortb.CUDA not in listed:
        pytest.skip("this onnxruntime build has no CUDA provider")
    assert ortb.resolve_providers("auto") == [ortb.CUDA, ortb.CPU]


def test_silent_fallback_is_refused(tiny_bundle, monkeypatch):
    """If onnxruntime hands back CPU when CUDA was asked for, the engine refuses instead of running slowly."""
    from beautyrt.engines import load_manifest, open_engine

    monkeypatch.setattr(ortb, "resolve_providers", lambda device: [ortb.CUDA, ortb.CPU])
    if ortb.CUDA not in ortb._ort().get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider to fall back from")
    if ortb._cuda_device_count() > 0:
        pytest.skip("machine has a CUDA device: no fallback happens")
    with pytest.raises(ProviderError, match="silent fallback"):
        open_engine(load_manifest(tiny_bundle), "scorer", device="cuda")

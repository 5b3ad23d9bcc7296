"""Checkpoint loaders: small checkpoints in the real layouts, loaded and compared with independent references.

* rosinality: a direct re-implementation of rosinality's forward (grouped fused modconv, upfirdn2d blur,
  EqualLinear) over the raw ``g_ema`` tensors is the reference for the converted Generator;
* NVIDIA pickle: a persistence-shaped object graph (``torch_utils.persistence._reconstruct_persistent_obj``
  with a meta dict, ``dnnlib.util.EasyDict`` kwargs, ``torch._utils`` tensor rebuilds, ``_load_from_bytes``
  storages) emitted by pickle itself through stand-in modules; its weights also go through the rosinality
  reference after renaming;
* pSp / e4e / IR-SE50: a functional forward over the raw state dict by the projects' key names;
* malicious pickles are refused and their marker file never appears.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from beautyrt.export.errors import CheckpointError, UnsafePickleError  # noqa: E402
from beautyrt.export.loaders import load_checkpoint  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SQRT2 = math.sqrt(2)


# ----------------------------------------------------------------------------- rosinality reference
def make_kernel(k=(1, 3, 3, 1)):
    k = torch.tensor(k, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d_ref(x, kernel, up=1, pad=(0, 0)):
    """rosinality's upfirdn2d_native (down=1): zero-insert, pad, true convolution."""
    b, c, h, w = x.shape
    out = x.reshape(b * c, h, 1, w, 1)
    out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1])
    out = out.reshape(b * c, 1, h * up, w * up)
    out = F.pad(out, [pad[0], pad[1], pad[0], pad[1]])
    wk = torch.flip(kernel, [0, 1]).reshape(1, 1, *kernel.shape)
    out = F.conv2d(out, wk)
    return out.reshape(b, c, out.shape[-2], out.shape[-1])


def ros_equal_linear(sd, p, x, lr_mul=1.0, act=False):
    w = sd[f"{p}.weight"]
    out = F.linear(x, w * (lr_mul / math.sqrt(w.shape[1])))
    b = sd[f"{p}.bias"] * lr_mul
    return F.leaky_relu(out + b, 0.2) * SQRT2 if act else out + b


def ros_modconv(sd, p, x, style, demod=True, up=False):
    w = sd[f"{p}.weight"]  # [1, O, I, k, k]
    _, O, I, k, _ = w.shape
    B = x.shape[0]
    s = ros_equal_linear(sd, f"{p}.modulation", style).reshape(B, 1, I, 1, 1)
    weight = w / math.sqrt(I * k * k) * s
    if demod:
        d = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
        weight = weight * d.reshape(B, O, 1, 1, 1)
    if up:
        weight = weight.transpose(1, 2).reshape(B * I, O, k, k)
        out = F.conv_transpose2d(x.reshape(1, B * I, *x.shape[2:]), weight, padding=0, stride=2, groups=B)
        out = out.reshape(B, O, *out.shape[2:])
        return upfirdn2d_ref(out, make_kernel() * 4, pad=(1, 1))
    out = F.conv2d(x.reshape(1, B * I, *x.shape[2:]), weight.reshape(B * O, I, k, k), padding=k // 2, groups=B)
    return out.reshape(B, O, *out.shape[2:])


def ros_styled(sd, p, x, style, noise, up=False):
    out = ros_modconv(sd, f"{p}.conv", x, style, up=up)
    out = out + sd[f"{p}.noise.weight"] * noise
    return F.leaky_relu(out + sd[f"{p}.activate.bias"].reshape(1, -1, 1, 1), 0.2) * SQRT2


def ros_torgb(sd, p, x, style, skip):
    out = ros_modconv(sd, f"{p}.conv", x, style, demod=False) + sd[f"{p}.bias"]
    if skip is not None:
        out = out + upfirdn2d_ref(skip, make_kernel() * 4, up=2, pad=(2, 1))
    return out


def ros_synthesis(sd, latent):
    n_rgbs = len({k.split(".")[1] for k in sd if k.startswith("to_rgbs.")})
    B = latent.shape[0]
    out = sd["input.input"].repeat(B, 1, 1, 1)
    out = ros_styled(sd, "conv1", out, latent[:, 0], sd["noises.noise_0"])
    skip = ros_torgb(sd, "to_rgb1", out, latent[:, 1], None)
    i = 1
    for j in range(n_rgbs):
        out = ros_styled(sd, f"convs.{2 * j}", out, latent[:, i], sd[f"noises.noise_{2 * j + 1}"], up=True)
        out = ros_styled(sd, f"convs.{2 * j + 1}", out, latent[:, i + 1], sd[f"noises.noise_{2 * j + 2}"])
        skip = ros_torgb(sd, f"to_rgbs.{j}", out, latent[:, i + 2], skip)
        i += 2
    return skip


def ros_mapping(sd, z, n_mlp):
    x = z * torch.rsqrt(torch.mean(z**2, dim=1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        x = ros_equal_linear(sd, f"style.{i}", x, lr_mul=0.01, act=True)
    return x


def make_rosinality_g_ema(size=32, style_dim=16, n_mlp=3, channels=None, seed=0) -> dict:
    """A g_ema state dict with rosinality's key names, nesting and buffers (reduced channels)."""
    g = torch.Generator().manual_seed(seed)
    ch = channels or {4: 16, 8: 16, 16: 16, 32: 8}
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {}
    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"] = r(style_dim, style_dim) / 0.01
        sd[f"style.{i}.bias"] = r(style_dim) * 0.1

    def styled(p, cin, cout, up):
        sd[f"{p}.conv.weight"] = r(1, cout, cin, 3, 3)
        sd[f"{p}.conv.modulation.weight"] = r(cin, style_dim)
        sd[f"{p}.conv.modulation.bias"] = 1 + 0.1 * r(cin)
        if up:
            sd[f"{p}.conv.blur.kernel"] = make_kernel() * 4
        sd[f"{p}.noise.weight"] = 0.3 * r(1)
        sd[f"{p}.activate.bias"] = 0.1 * r(cout)

    def torgb(p, cin, up):
        if up:
            sd[f"{p}.upsample.kernel"] = make_kernel() * 4
        sd[f"{p}.conv.weight"] = r(1, 3, cin, 1, 1)
        sd[f"{p}.conv.modulation.weight"] = r(cin, style_dim)
        sd[f"{p}.conv.modulation.bias"] = 1 + 0.1 * r(cin)
        sd[f"{p}.bias"] = 0.1 * r(1, 3, 1, 1)

    sd["input.input"] = r(1, ch[4], 4, 4)
    styled("conv1", ch[4], ch[4], False)
    torgb("to_rgb1", ch[4], False)
    log_size = int(math.log2(size))
    for j, res in enumerate(2**k for k in range(3, log_size + 1)):
        styled(f"convs.{2 * j}", ch[res // 2], ch[res], True)
        styled(f"convs.{2 * j + 1}", ch[res], ch[res], False)
        torgb(f"to_rgbs.{j}", ch[res], True)
    for k in range((log_size - 2) * 2 + 1):
        res = 2 ** ((k + 5) // 2)
        sd[f"noises.noise_{k}"] = r(1, 1, res, res)
    return sd


def save_rosinality_ckpt(path):
    """A rosinality-layout checkpoint (g_ema, latent_avg, args) of the small generator at ``path``."""
    sd = make_rosinality_g_ema()
    la = ros_mapping(sd, torch.randn(256, 16, generator=torch.Generator().manual_seed(1)), 3).mean(0)
    torch.save({"g_ema": sd, "latent_avg": la, "args": __import__("argparse").Namespace(size=32, n_mlp=3)}, path)
    return sd, la


@pytest.fixture(scope="module")
def ros_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ros") / "550000.pt"
    sd, la = save_rosinality_ckpt(path)
    return path, sd, la


def test_rosinality_matches_reference(ros_ckpt):
    path, sd, la = ros_ckpt
    ck = load_checkpoint(path)
    assert ck.kind == "stylegan2-rosinality"
    G = ck.generator
    assert (G.img_resolution, G.num_ws, G.w_dim, G.z_dim) == (32, 8, 16, 16)
    g = torch.Generator().manual_seed(5)
    ws = torch.randn(3, G.num_ws, G.w_dim, generator=g)
    z = torch.randn(3, 16, generator=g)
    with torch.no_grad():
        ours, ref = G.synthesis(ws), ros_synthesis(sd, ws)
        m_ours, m_ref = G.mapping(z)[:, 0], ros_mapping(sd, z, 3)
    err = (ours - ref).abs().max().item() / ref.abs().max().item()
    merr = (m_ours - m_ref).abs().max().item() / m_ref.abs().max().item()
    print(f"rosinality synthesis max rel err {err:.2e}, mapping {merr:.2e}")
    assert err < 1e-5 and merr < 1e-5
    assert np.allclose(ck.w_avg, la.numpy())


def test_rosinality_weight_mismatch_named(ros_ckpt, tmp_path):
    _, sd, la = ros_ckpt
    bad = dict(sd)
    del bad["convs.1.conv.modulation.bias"]
    torch.save({"g_ema": bad, "latent_avg": la}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match=r"convs\.1\.conv\.modulation\.bias"):
        load_checkpoint(tmp_path / "a.pt")
    bad = dict(sd)
    bad["to_rgbs.1.conv.modulation.weight"] = torch.zeros(5, 16)
    torch.save({"g_ema": bad}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"torgb\.affine\.weight.*\[5, 16\]"):
        load_checkpoint(tmp_path / "b.pt")


# ----------------------------------------------------------------------------- NVIDIA pickle
def _nvidia_to_rosinality(state: dict, res_list) -> dict:
    """Rename NVIDIA-layout tensors into rosinality's (for the independent reference forward)."""
    sd = {}
    i = 0
    while f"mapping.fc{i}.weight" in state:
        sd[f"style.{i + 1}.weight"], sd[f"style.{i + 1}.bias"] = (
            state[f"mapping.fc{i}.weight"],
            state[f"mapping.fc{i}.bias"],
        )
        i += 1

    def conv(src, dst):
        sd[f"{dst}.conv.weight"] = state[f"{src}.weight"][None]
        sd[f"{dst}.conv.modulation.weight"] = state[f"{src}.affine.weight"]
        sd[f"{dst}.conv.modulation.bias"] = state[f"{src}.affine.bias"]

    def styled(src, dst, k):
        conv(src, dst)
        sd[f"{dst}.noise.weight"] = state[f"{src}.noise_strength"].reshape(1)
        sd[f"{dst}.activate.bias"] = state[f"{src}.bias"]
        sd[f"noises.noise_{k}"] = state[f"{src}.noise_const"][None, None]

    sd["input.input"] = state["synthesis.b4.const"][None]
    styled("synthesis.b4.conv1", "conv1", 0)
    conv("synthesis.b4.torgb", "to_rgb1")
    sd["to_rgb1.bias"] = state["synthesis.b4.torgb.bias"].reshape(1, 3, 1, 1)
    for j, r in enumerate(res_list[1:]):
        styled(f"synthesis.b{r}.conv0", f"convs.{2 * j}", 2 * j + 1)
        styled(f"synthesis.b{r}.conv1", f"convs.{2 * j + 1}", 2 * j + 2)
        conv(f"synthesis.b{r}.torgb", f"to_rgbs.{j}")
        sd[f"to_rgbs.{j}.bias"] = state[f"synthesis.b{r}.torgb.bias"].reshape(1, 3, 1, 1)
    return sd


@pytest.fixture()
def nvidia_stand_ins(monkeypatch):
    """Stand-in ``torch_utils.persistence`` / ``dnnlib.util`` modules so pickle emits NVIDIA's GLOBALs."""
    tu, tup = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    dn, dnu = types.ModuleType("dnnlib"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # never called: only its name goes into the pickle
        raise AssertionError("not for loading")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    tup._reconstruct_persistent_obj, dnu.EasyDict = _reconstruct_persistent_obj, EasyDict
    tu.persistence, dn.util = tup, dnu
    for name, mod in (("torch_utils", tu), ("torch_utils.persistence", tup), ("dnnlib", dn), ("dnnlib.util", dnu)):
        monkeypatch.setitem(sys.modules, name, mod)
    return _reconstruct_persistent_obj, EasyDict


class Persistent:
    """Pickles like a ``persistence.persistent_class`` instance: REDUCE(_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, fn, class_name, state, src="import os\nos.system('echo module source executed')\n"):
        self.fn, self.meta = fn, dict(type="class", version=6, module_src=src, class_name=class_name, state=state)

    def __reduce__(self):
        return self.fn, (self.meta,)


def persistent_tree(fn, module: torch.nn.Module, class_name: str, init_kwargs=None, extra_state=None) -> Persistent:
    """Mirror a torch module tree as persistence-wrapped objects with nn.Module's ``__dict__`` layout."""
    od = collections.OrderedDict
    state = {
        "training": False,
        "_parameters": od(
            (k, torch.nn.Parameter(v.detach().clone(), requires_grad=False))
            for k, v in module._parameters.items()
            if v is not None
        ),
        "_buffers": od((k, v.detach().clone()) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": od(),
        "_forward_hooks": od(),
        "_forward_pre_hooks": od(),
        "_state_dict_hooks": od(),
        "_load_state_dict_pre_hooks": od(),
        "_modules": od((k, persistent_tree(fn, m, type(m).__name__)) for k, m in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": init_kwargs if init_kwargs is not None else {},
    }
    state.update(extra_state or {})
    return Persistent(fn, class_name, state)


def write_nvidia_pickle(path, G, fn, EasyDict, protocol=4, mapping_layers=2, conv_clamp=256, g_extra=None):
    kw = EasyDict(
        z_dim=G.z_dim,
        c_dim=0,
        w_dim=G.w_dim,
        img_resolution=G.img_resolution,
        img_channels=3,
        mapping_kwargs=EasyDict(num_layers=mapping_layers),
        synthesis_kwargs=EasyDict(
            channel_base=512, channel_max=16, num_fp16_res=0, conv_clamp=conv_clamp, architecture="skip"
        ),
    )
    g_ema = persistent_tree(fn, G, "Generator", kw, {"z_dim": G.z_dim, "c_dim": 0, **(g_extra or {})})
    D = Persistent(
        fn,
        "Discriminator",
        {
            "_parameters": collections.OrderedDict(w=torch.nn.Parameter(torch.ones(2, 2))),
            "_buffers": collections.OrderedDict(),
            "_modules": collections.OrderedDict(),
            "arr": np.arange(6, dtype=np.float32).reshape(2, 3),
            "beta": np.float64(0.99),
            "_init_kwargs": EasyDict(c_dim=0),
        },
    )
    data = dict(
        G=g_ema,
        D=D,
        G_ema=g_ema,
        augment_pipe=None,
        training_set_kwargs=EasyDict(path="ffhq.zip", resolution=G.img_resolution, use_labels=False),
    )
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)


@pytest.fixture(scope="module")
def src_generator():
    from beautyrt.export.nets.stylegan2 import Generator

    torch.manual_seed(3)
    G = Generator(
        z_dim=16, w_dim=16, img_resolution=32, channel_base=512, channel_max=16, mapping_layers=2, conv_clamp=256
    ).eval()
    with torch.no_grad():
        for n, p in G.named_parameters():
            if n.endswith("noise_strength"):
                p.fill_(0.2)
            elif n.endswith(".bias") and "affine" not in n:
                p.normal_(0, 0.1)
        G.mapping.w_avg.normal_()
    return G


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_nvidia_pickle_loads_without_running_code(src_generator, nvidia_stand_ins, tmp_path, protocol):
    G = src_generator
    fn, EasyDict = nvidia_stand_ins
    path = tmp_path / "network-snapshot-000100.pkl"
    write_nvidia_pickle(path, G, fn, EasyDict, protocol=protocol)
    for m in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
        sys.modules.pop(m)  # the loader must not need them
    ck = load_checkpoint(path)
    assert ck.kind == "stylegan2-nvidia" and ck.info["config"]["conv_clamp"] == 256
    H = ck.generator
    sd_src = G.state_dict()
    for k, v in H.state_dict().items():
        assert torch.equal(v, sd_src[k]), k
    ws = torch.randn(2, H.num_ws, H.w_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = H.synthesis(ws)
        ref = ros_synthesis(_nvidia_to_rosinality(sd_src, H.synthesis.block_resolutions), ws)
        z = torch.randn(2, 16)
        assert torch.allclose(
            H.mapping(z)[:, 0], ros_mapping(_nvidia_to_rosinality(sd_src, [4]), z, 2), rtol=1e-5, atol=1e-6
        )
    err = (ours - ref).abs().max().item() / ref.abs().max().item()
    print(f"nvidia (protocol {protocol}) vs rosinality-reference rel err {err:.2e}")
    assert err < 1e-5
    assert np.array_equal(ck.w_avg, G.mapping.w_avg.numpy())


def test_nvidia_pickle_mismatch_and_stylegan3(src_generator, nvidia_stand_ins, tmp_path):
    fn, EasyDict = nvidia_stand_ins
    from beautyrt.export.nets.stylegan2 import Generator

    G = Generator(z_dim=16, w_dim=16, img_resolution=32, channel_base=512, channel_max=16, mapping_layers=2)
    del G.synthesis.b16.torgb.bias  # a network whose state lacks one tensor
    G.synthesis.b16.torgb.register_parameter("bias", None)
    write_nvidia_pickle(tmp_path / "a.pkl", G, fn, EasyDict)
    with pytest.raises(CheckpointError, match=r"synthesis\.b16\.torgb\.bias"):
        load_checkpoint(tmp_path / "a.pkl")
    G3 = src_generator
    write_nvidia_pickle(tmp_path / "sg3.pkl", G3, fn, EasyDict)
    # stylegan3 has synthesis.input and L0_36_512-style layers
    data = open(tmp_path / "sg3.pkl", "rb").read()
    g3 = persistent_tree(
        fn, torch.nn.Module(), "Generator", EasyDict(z_dim=16, w_dim=16, img_resolution=32, img_channels=3)
    )
    syn = persistent_tree(fn, torch.nn.Module(), "SynthesisNetwork")
    syn.meta["state"]["_modules"]["input"] = persistent_tree(fn, torch.nn.Module(), "SynthesisInput")
    g3.meta["state"]["_modules"]["synthesis"] = syn
    with open(tmp_path / "sg3.pkl", "wb") as f:
        pickle.dump({"G_ema": g3}, f, protocol=4)
    assert data  # (the StyleGAN2 file was valid; the new one replaces it)
    with pytest.raises(CheckpointError, match="StyleGAN3.*not supported yet"):
        load_checkpoint(tmp_path / "sg3.pkl")


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "builtins.exec", "nested-in-state", "storage-blob", "torch-zip"])
def test_malicious_pickle_refused(how, tmp_path, nvidia_stand_ins):
    fn, EasyDict = nvidia_stand_ins
    marker = tmp_path / "PWNED"
    path = tmp_path / ("evil.pt" if how == "torch-zip" else "evil.pkl")
    shell = f"touch {marker}"
    pycode = f"open({str(marker)!r}, 'w').write('x')"
    if how == "os.system":
        obj = {"G_ema": _Evil(os.system, shell)}
    elif how == "builtins.exec":
        obj = {"G_ema": _Evil(exec, pycode)}
    elif how == "nested-in-state":
        obj = {"G_ema": Persistent(fn, "Generator", {"_init_kwargs": EasyDict(z_dim=_Evil(os.system, shell))})}
    elif how == "storage-blob":  # a "_load_from_bytes" whose legacy torch payload carries os.system
        blob = pickle.dumps(_Evil(os.system, shell), protocol=2)
        from torch.storage import _load_from_bytes

        obj = {"G_ema": _Evil(_load_from_bytes, blob)}
    else:
        torch.save({"g_ema": {"x": _Evil(os.system, shell)}}, path)
        obj = None
    if obj is not None:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=4)
    with pytest.raises(UnsafePickleError) as ei:
        load_checkpoint(path)
    assert not marker.exists(), "the pickle's payload ran"
    msg = str(ei.value)
    assert "\n" not in msg and ("nothing" in msg or "refus" in msg)
    if how in ("os.system", "nested-in-state"):
        assert "posix.system" in msg or "os.system" in msg or "nt.system" in msg
    if how == "builtins.exec":
        assert "builtins.exec" in msg


# ----------------------------------------------------------------------------- pSp / e4e / IR-SE50
WIDTHS, UNITS, RED, WD = (8, 16, 24, 32), (1, 2, 2, 1), 4, 32


def make_ir_sd(g, prefix="", widths=WIDTHS, units=UNITS, red=RED) -> dict:
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {}

    def bn(p, c):
        sd[f"{p}.weight"], sd[f"{p}.bias"] = 1 + 0.1 * r(c), 0.1 * r(c)
        sd[f"{p}.running_mean"], sd[f"{p}.running_var"] = 0.1 * r(c), 0.5 + torch.rand(c, generator=g)
        sd[f"{p}.num_batches_tracked"] = torch.tensor(100)

    sd[f"{prefix}input_layer.0.weight"] = r(widths[0], 3, 3, 3) * 0.3
    bn(f"{prefix}input_layer.1", widths[0])
    sd[f"{prefix}input_layer.2.weight"] = torch.full((widths[0],), 0.25)
    i, cin = 0, widths[0]
    for w, n in zip(widths, units):
        for _ in range(n):
            p = f"{prefix}body.{i}"
            if cin != w:
                sd[f"{p}.shortcut_layer.0.weight"] = r(w, cin, 1, 1) / math.sqrt(cin)
                bn(f"{p}.shortcut_layer.1", w)
            bn(f"{p}.res_layer.0", cin)
            sd[f"{p}.res_layer.1.weight"] = r(w, cin, 3, 3) / math.sqrt(9 * cin)
            sd[f"{p}.res_layer.2.weight"] = 0.25 + 0.05 * r(w)
            sd[f"{p}.res_layer.3.weight"] = r(w, w, 3, 3) / math.sqrt(9 * w)
            bn(f"{p}.res_layer.4", w)
            sd[f"{p}.res_layer.5.fc1.weight"] = r(w // red, w, 1, 1)
            sd[f"{p}.res_layer.5.fc2.weight"] = r(w, w // red, 1, 1)
            cin, i = w, i + 1
    return sd


def ref_bn(sd, p, x):
    return F.batch_norm(
        x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd.get(f"{p}.weight"), sd.get(f"{p}.bias"), False, 0.0, 1e-5
    )


def ref_ir(sd, x, prefix="", widths=WIDTHS, units=UNITS, taps=()):
    x = F.prelu(
        ref_bn(sd, f"{prefix}input_layer.1", F.conv2d(x, sd[f"{prefix}input_layer.0.weight"], padding=1)),
        sd[f"{prefix}input_layer.2.weight"],
    )
    feats, i, cin = {}, 0, widths[0]
    for w, n in zip(widths, units):
        for j in range(n):
            p, s = f"{prefix}body.{i}", 2 if j == 0 else 1
            if cin == w:
                short = x[:, :, ::s, ::s]  # MaxPool2d(1, stride)
            else:
                short = ref_bn(sd, f"{p}.shortcut_layer.1", F.conv2d(x, sd[f"{p}.shortcut_layer.0.weight"], stride=s))
            y = ref_bn(sd, f"{p}.res_layer.0", x)
            y = F.prelu(F.conv2d(y, sd[f"{p}.res_layer.1.weight"], padding=1), sd[f"{p}.res_layer.2.weight"])
            y = ref_bn(sd, f"{p}.res_layer.4", F.conv2d(y, sd[f"{p}.res_layer.3.weight"], stride=s, padding=1))
            a = F.adaptive_avg_pool2d(y, 1)
            a = torch.sigmoid(
                F.conv2d(F.relu(F.conv2d(a, sd[f"{p}.res_layer.5.fc1.weight"])), sd[f"{p}.res_layer.5.fc2.weight"])
            )
            x = y * a + short
            if i in taps:
                feats[i] = x
            cin, i = w, i + 1
    return x, feats


def make_styles_sd(g, n_styles, enc_res, wd=WD) -> dict:
    sd = {}
    s = enc_res // 16
    for i in range(n_styles):
        spatial = s if i < 3 else (2 * s if i < 7 else 4 * s)
        for k in range(int(math.log2(spatial))):
            sd[f"styles.{i}.convs.{2 * k}.weight"] = torch.randn(wd, wd, 3, 3, generator=g) / math.sqrt(9 * wd)
            sd[f"styles.{i}.convs.{2 * k}.bias"] = 0.1 * torch.randn(wd, generator=g)
        sd[f"styles.{i}.linear.weight"] = torch.randn(wd, wd, generator=g)
        sd[f"styles.{i}.linear.bias"] = 0.1 * torch.randn(wd, generator=g)
    sd["latlayer1.weight"], sd["latlayer1.bias"] = (
        torch.randn(wd, WIDTHS[2], 1, 1, generator=g) * 0.2,
        0.1 * torch.randn(wd, generator=g),
    )
    sd["latlayer2.weight"], sd["latlayer2.bias"] = (
        torch.randn(wd, WIDTHS[1], 1, 1, generator=g) * 0.2,
        0.1 * torch.randn(wd, generator=g),
    )
    return sd


def ref_style(sd, i, x):
    k = 0
    while f"styles.{i}.convs.{2 * k}.weight" in sd:
        x = F.leaky_relu(
            F.conv2d(
                x, sd[f"styles.{i}.convs.{2 * k}.weight"], sd[f"styles.{i}.convs.{2 * k}.bias"], stride=2, padding=1
            ),
            0.01,
        )
        k += 1
    x = x.reshape(x.shape[0], -1)
    w = sd[f"styles.{i}.linear.weight"]
    return F.linear(x, w / math.sqrt(w.shape[1]), sd[f"styles.{i}.linear.bias"])


def ref_encoder(sd, x, n_styles, e4e):
    ends = list(np.cumsum(UNITS) - 1)
    _, f = ref_ir(sd, x, taps=ends)
    c1, c2, c3 = f[ends[1]], f[ends[2]], f[ends[3]]
    up = lambda a, b: F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=True) + b  # noqa: E731
    p2 = up(c3, F.conv2d(c2, sd["latlayer1.weight"], sd["latlayer1.bias"]))
    p1 = up(p2, F.conv2d(c1, sd["latlayer2.weight"], sd["latlayer2.bias"]))
    feat = lambda i: c3 if i < 3 else (p2 if i < 7 else p1)  # noqa: E731
    if not e4e:
        return torch.stack([ref_style(sd, i, feat(i)) for i in range(n_styles)], 1)
    w0 = ref_style(sd, 0, c3)
    w = w0.repeat(n_styles, 1, 1).permute(1, 0, 2).clone()
    for i in range(1, n_styles):
        w[:, i] += ref_style(sd, i, feat(i))
    return w


def write_psp(path, e4e: bool, enc_res=64, with_decoder=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_styles = 8  # a 32 px generator
    enc = {**make_ir_sd(g), **make_styles_sd(g, n_styles, enc_res)}
    sd = {f"encoder.{k}": v for k, v in enc.items()}
    if with_decoder:
        dec = make_rosinality_g_ema(style_dim=WD, channels={4: 16, 8: 16, 16: 16, 32: 8}, seed=seed + 1)
        sd.update({f"decoder.{k}": v for k, v in dec.items()})
    opts = {
        "encoder_type": "Encoder4Editing" if e4e else "GradualStyleEncoder",
        "input_nc": 3,
        "start_from_latent_avg": True,
        "learn_in_w": False,
        "checkpoint_path": None,
    }
    opts["stylegan_size" if e4e else "output_size"] = 32
    la = torch.randn(WD, generator=g) if e4e else torch.randn(n_styles, WD, generator=g)
    torch.save({"state_dict": sd, "opts": opts, "latent_avg": la}, path)
    return enc, la, n_styles


@pytest.mark.parametrize("e4e", [False, True])
def test_psp_e4e_match_reference(tmp_path, e4e):
    path = tmp_path / ("e4e.pt" if e4e else "psp.pt")
    enc_sd, la, n = write_psp(path, e4e)
    ck = load_checkpoint(path)
    assert ck.kind == ("e4e" if e4e else "psp")
    assert ck.generator is not None and ck.generator.num_ws == n
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(9)) * 2 - 1
    with torch.no_grad():
        ours = ck.encoder(x)
        ref = ref_encoder(enc_sd, x, n, e4e) + la.reshape(-1, WD)[None]
    err = (ours - ref).abs().max().item() / ref.abs().max().item()
    print(f"{'e4e' if e4e else 'pSp'} encoder max rel err {err:.2e}")
    assert ours.shape == (2, n, WD) and err < 1e-5
    assert ck.encoder_norm == {"size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}


def test_psp_mismatch_named(tmp_path):
    g = torch.Generator().manual_seed(0)
    enc = {**make_ir_sd(g), **make_styles_sd(g, 8, 64)}
    enc["styles.2.linear.weight"] = torch.zeros(WD, WD + 1)
    torch.save(
        {
            "state_dict": {f"encoder.{k}": v for k, v in enc.items()},
            "opts": {"encoder_type": "GradualStyleEncoder"},
            "latent_avg": torch.zeros(8, WD),
        },
        tmp_path / "x.pt",
    )
    with pytest.raises(CheckpointError, match=r"styles\.2\.linear\.weight \[32, 33\]"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save(
        {
            "state_dict": {f"encoder.{k}": v for k, v in enc.items()},
            "opts": {"encoder_type": "BackboneEncoderUsingLastLayerIntoW"},
        },
        tmp_path / "y.pt",
    )
    with pytest.raises(CheckpointError, match="BackboneEncoderUsingLastLayerIntoW.*not supported"):
        load_checkpoint(tmp_path / "y.pt")


def make_irse50_sd(g, emb=16):
    sd = make_ir_sd(g)
    c = WIDTHS[3]
    sd["output_layer.0.weight"], sd["output_layer.0.bias"] = (
        1 + 0.1 * torch.randn(c, generator=g),
        0.1 * torch.randn(c, generator=g),
    )
    sd["output_layer.0.running_mean"], sd["output_layer.0.running_var"] = (
        0.1 * torch.randn(c, generator=g),
        torch.ones(c),
    )
    sd["output_layer.0.num_batches_tracked"] = torch.tensor(5)
    sd["output_layer.3.weight"] = torch.randn(emb, c * 49, generator=g) / math.sqrt(c * 49)
    sd["output_layer.3.bias"] = 0.1 * torch.randn(emb, generator=g)
    sd["output_layer.4.weight"], sd["output_layer.4.bias"] = (
        1 + 0.1 * torch.randn(emb, generator=g),
        0.1 * torch.randn(emb, generator=g),
    )
    sd["output_layer.4.running_mean"], sd["output_layer.4.running_var"] = (
        0.1 * torch.randn(emb, generator=g),
        torch.ones(emb),
    )
    sd["output_layer.4.num_batches_tracked"] = torch.tensor(5)
    return sd


def ref_irse50(sd, x):
    x, _ = ref_ir(sd, x)
    x = ref_bn(sd, "output_layer.0", x).flatten(1)
    x = F.linear(x, sd["output_layer.3.weight"], sd["output_layer.3.bias"])
    x = ref_bn(sd, "output_layer.4", x)
    return x / torch.norm(x, 2, 1, True)


def test_irse50_identity_matches_reference(tmp_path):
    sd = make_irse50_sd(torch.Generator().manual_seed(2))
    torch.save(sd, tmp_path / "model_ir_se50.pth")
    ck = load_checkpoint(tmp_path / "model_ir_se50.pth")  # default: pSp's crop of a 256 px aligned face
    assert ck.kind == "arcface-irse50" and ck.identity_norm["size"] == 256
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ours = ck.identity(x)
        ref = ref_irse50(sd, F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], (112, 112)))  # pSp IDLoss.extract_feats
    err = (ours - ref).abs().max().item()
    print(f"IR-SE50 (pSp crop) max abs err {err:.2e}")
    assert err < 1e-5 and torch.allclose(ours.norm(dim=1), torch.ones(2))
    ck2 = load_checkpoint(tmp_path / "model_ir_se50.pth", identity_crop=None)
    with torch.no_grad():
        assert (ck2.identity(x[:, :, :112, :112]) - ref_irse50(sd, x[:, :, :112, :112])).abs().max() < 1e-5


def test_external_onnx_spec(tmp_path):
    from beautyrt.export.loaders.onnx_model import parse_input_spec

    class Emb(torch.nn.Module):
        def forward(self, x):
            return F.normalize(x.mean(dim=[2, 3]), dim=1)

    p = tmp_path / "emb.onnx"
    torch.onnx.export(
        Emb(),
        (torch.zeros(1, 3, 24, 24),),
        str(p),
        input_names=["input.1"],
        output_names=["fc1"],
        dynamic_axes={"input.1": {0: "n"}},
        dynamo=False,
    )
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text('size = 24\ncolor_order = "BGR"\nmean = 127.5\nstd = 127.5\nscale = "pixel"\n')
    ck = load_checkpoint(p, input_spec=spec_file)
    assert ck.kind == "onnx" and ck.external_onnx.input_name == "input.1"
    norm = ck.external_onnx.spec.normalisation()
    assert norm["color_order"] == "BGR" and norm["mean"] == [0.5] * 3 and norm["size"] == 24
    assert parse_input_spec("size=24,color=RGB,mean=0.5,std=0.25").std == (0.25,) * 3
    with pytest.raises(CheckpointError, match="size 32"):
        load_checkpoint(p, input_spec={"size": 32})
    with pytest.raises(CheckpointError, match="input spec"):
        load_checkpoint(p)


# ----------------------------------------------------------------------------- CLI round trip
def _cli(*args, timeout=300):
    return run_cli(*map(str, args), timeout=timeout, cwd=REPO)


def test_cli_export_checkpoints_then_optimize(tmp_path, ros_ckpt):
    from PIL import Image

    from beautyrt.export.nets.beauty import BeautyRegressor

    ros_path, _, _ = ros_ckpt
    # e4e trained against a 32 px generator with w_dim 16 is what we need: build one matching ros_ckpt
    g = torch.Generator().manual_seed(0)
    enc = {**make_ir_sd(g, widths=(8, 12, 14, 16)), **make_styles_sd(g, 8, 64, wd=16)}
    enc["latlayer1.weight"], enc["latlayer2.weight"] = torch.randn(16, 14, 1, 1) * 0.2, torch.randn(16, 12, 1, 1) * 0.2
    e4e_path = tmp_path / "e4e.pt"
    torch.save(
        {
            "state_dict": {f"encoder.{k}": v for k, v in enc.items()},
            "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 32, "start_from_latent_avg": True},
            "latent_avg": torch.zeros(16),
        },
        e4e_path,
    )
    torch.save(make_irse50_sd(torch.Generator().manual_seed(4)), tmp_path / "model_ir_se50.pth")
    torch.manual_seed(0)
    beauty = BeautyRegressor(resolution=32, widths=(8, 16), blocks=(1, 1), stem_stride=1)
    torch.save(
        {
            "format": "beautyrt-beauty",
            "config": dict(resolution=32, widths=[8, 16], blocks=[1, 1], stem_stride=1),
            "normalisation": {"size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "state_dict": beauty.state_dict(),
        },
        tmp_path / "beauty.pt",
    )
    out = tmp_path / "bundle"
    r = _cli(
        "export",
        "--stylegan",
        ros_path,
        "--encoder",
        e4e_path,
        "--identity",
        tmp_path / "model_ir_se50.pth",
        "--beauty",
        tmp_path / "beauty.pt",
        "--no-detector",
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr
    import json

    man = json.loads((out / "manifest.json").read_text())
    assert man["source"]["roles"]["generator"]["kind"] == "stylegan2-rosinality"
    assert man["models"]["identity"]["normalisation"]["size"] == 256
    assert man["generator"]["num_ws"] == 8
    img = tmp_path / "face.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(img)
    r = _cli(
        "optimize",
        img,
        "--aligned",
        "--bundle",
        out,
        "-g",
        "2",
        "-p",
        "4",
        "-o",
        tmp_path / "o.png",
        "--json",
        "-q",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o.png").is_file() and json.loads(r.stdout)["score_after"] >= json.loads(r.stdout)[
        "score_before"
    ] - 1e-6


def test_cli_missing_part_needs_explicit_preset(tmp_path, ros_ckpt):
    r = _cli("export", "--stylegan", ros_ckpt[0], "--no-detector", "--out", tmp_path / "b")
    assert r.returncode == 52, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("beautyrt: error")]
    assert len(lines) == 1 and "--encoder" in lines[0] and "--preset" in lines[0], r.stderr

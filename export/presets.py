"""Named network configurations: one table, used by ``beautyrt export --preset``.

``tiny`` exports in seconds and exists for tests; ``stylegan2-256`` / ``stylegan2-1024`` are full-size
architectures with random weights for latency benchmarking (the FFHQ configs of stylegan2-ada-pytorch:
channel_base 16384 / 32768, channel_max 512, 8 mapping layers; a ResNet-18 beauty regressor at 224 px;
an iresnet50 identity embedder at 112 px). Random weights make the numbers honest about cost only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ExportError

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    generator: dict
    encoder: dict
    beauty: dict
    identity: dict
    score_resolution: int | None = None  # None: score at the generator's full resolution
    beauty_norm: dict = field(default_factory=lambda: dict(IMAGENET))
    identity_norm: dict = field(default_factory=lambda: dict(HALF))
    parity_batches: tuple[int, ...] = (1, 3)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        description="32 px, a few hundred k params: exports in seconds, for tests",
        generator=dict(z_dim=32, w_dim=32, img_resolution=32, channel_base=1024, channel_max=32, mapping_layers=2),
        encoder=dict(resolution=32, channels=(16, 16, 32, 32)),
        beauty=dict(resolution=32, widths=(16, 32), blocks=(1, 1), stem_stride=1),
        identity=dict(resolution=32, layers=(1, 1), widths=(16, 32), embedding_dim=32),
    ),
    "stylegan2-256": Preset(
        name="stylegan2-256",
        description="StyleGAN2 256 px FFHQ config, ResNet-18 beauty, iresnet50 identity; random weights",
        generator=dict(z_dim=512, w_dim=512, img_resolution=256, channel_base=16384, channel_max=512),
        encoder=dict(resolution=256, channels=(32, 64, 128, 256)),
        beauty=dict(resolution=224),
        identity=dict(resolution=112, layers=(3, 4, 14, 3), widths=(64, 128, 256, 512), embedding_dim=512),
        parity_batches=(1, 2),
    ),
    "stylegan2-1024": Preset(
        name="stylegan2-1024",
        description="StyleGAN2 1024 px FFHQ config, ResNet-18 beauty, iresnet50 identity; random weights",
        generator=dict(z_dim=512, w_dim=512, img_resolution=1024, channel_base=32768, channel_max=512),
        encoder=dict(resolution=256, channels=(32, 64, 128, 256)),
        beauty=dict(resolution=224),
        identity=dict(resolution=112, layers=(3, 4, 14, 3), widths=(64, 128, 256, 512), embedding_dim=512),
        parity_batches=(1, 2),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError as e:
        raise ExportError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from e

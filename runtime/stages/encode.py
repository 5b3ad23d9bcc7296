"""encode: a result -> image file bytes (JPEG / PNG / WebP) carrying provenance metadata that says the photo
was AI-edited (EXIF Software/ImageDescription or PNG iTXt, an XMP packet with IPTC's DigitalSourceType)."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

from ..ops.imageio import encode_image
from ..types import Result

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"


def beautyrt_version() -> str:
    try:
        return version("beautyrt")
    except PackageNotFoundError:
        return "0+unknown"


def provenance(result: Result) -> tuple[dict, bytes]:
    """Metadata saying the image was AI-edited: text fields (PNG iTXt / EXIF) and an XMP packet."""
    v = beautyrt_version()
    digest = result.settings.digest()
    desc = (
        f"AI-edited by beautyrt {v}: face beautified by StyleGAN latent search "
        f"(bundle {result.bundle_hash[:16]}, settings {digest})"
    )
    info = {
        "tool": "beautyrt",
        "version": v,
        "ai_edited": True,
        "bundle_hash": result.bundle_hash,
        "settings_hash": digest,
        "score_before": round(result.score_before, 4),
        "score_after": round(result.score_after, 4),
        "identity": round(result.identity, 4),
        "strength": result.strength,
    }
    text = {"Software": f"beautyrt {v}", "Description": desc, "beautyrt": json.dumps(info, sort_keys=True)}

    def esc(s: str) -> str:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")

    xmp = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        'xmlns:beautyrt="https://github.com/beautyrt/beautyrt/ns/1.0/" '
        f'xmp:CreatorTool="beautyrt {esc(v)}" '
        f'Iptc4xmpExt:DigitalSourceType="{DIGITAL_SOURCE_TYPE}" '
        f'beautyrt:AIEdited="True" beautyrt:BundleHash="{esc(result.bundle_hash)}" '
        f'beautyrt:SettingsHash="{esc(digest)}">'
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{esc(desc)}</rdf:li></rdf:Alt></dc:description>'
        '</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>'
    ).encode("utf-8")
    return text, xmp


def encode(result: Result, fmt: str = "JPEG", quality: int = 95) -> bytes:
    """The delivered image as ``fmt`` ("JPEG" | "PNG" | "WEBP") bytes, with provenance."""
    text, xmp = provenance(result)
    return encode_image(result.image, fmt, quality, text, xmp)

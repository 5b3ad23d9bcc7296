"""The Python API in one place: what the CLI and embedding servers call.

    from beautyrt.runtime.api import Beautifier, Settings
    with Beautifier("~/.cache/beautyrt/default") as b:
        result = b.optimize("photo.jpg", Settings(generations=20, seed=1))
        result.image        # uint8 RGB, the whole photo with the face edited
        result.report()     # JSON-able dict: scores, identity, history, timings, settings, bundle hash
"""
from __future__ import annotations

import importlib.util
import json
import logging
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

from beautyrt.engines.errors import BeautyrtError, MissingDependencyError

from .errors import OutputError
from .imageio import atomic_write_bytes, check_writable, encode_image, load_image, output_format
from .objective import ObjectiveWeights
from .pipeline import Beautifier, Progress, Result, Settings

log = logging.getLogger("beautyrt")

__all__ = ["Beautifier", "Settings", "ObjectiveWeights", "Result", "optimize_file", "provenance", "doctor_report",
           "beautyrt_version", "require_export_extra"]


def beautyrt_version() -> str:
    try:
        return version("beautyrt")
    except PackageNotFoundError:
        return "0+unknown"


def provenance(result: Result) -> tuple[dict, bytes]:
    """Metadata saying the image was AI-edited: text fields (PNG iTXt / EXIF) and an XMP packet."""
    v = beautyrt_version()
    desc = (f"AI-edited by beautyrt {v}: face beautified by StyleGAN latent search "
            f"(bundle {result.bundle_hash[:16]}, settings {result.settings.digest()})")
    info = {"tool": "beautyrt", "version": v, "ai_edited": True, "bundle_hash": result.bundle_hash,
            "settings_hash": result.settings.digest(), "score_before": round(result.score_before, 4),
            "score_after": round(result.score_after, 4), "identity": round(result.identity, 4)}
    text = {"Software": f"beautyrt {v}", "Description": desc, "beautyrt": json.dumps(info, sort_keys=True)}
    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")  # noqa: E731
    xmp = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        'xmlns:beautyrt="https://github.com/beautyrt/beautyrt/ns/1.0/" '
        f'xmp:CreatorTool="beautyrt {esc(v)}" '
        'Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia" '
        f'beautyrt:AIEdited="True" beautyrt:BundleHash="{esc(result.bundle_hash)}" '
        f'beautyrt:SettingsHash="{esc(result.settings.digest())}">'
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{esc(desc)}</rdf:li></rdf:Alt></dc:description>'
        '</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>'
    ).encode("utf-8")
    return text, xmp


def optimize_file(image: str | Path, out: str | Path, *, bundle: str | Path, settings: Optional[Settings] = None,
                  aligned: bool = False, report_path: Optional[str | Path] = None, quality: int = 95,
                  device: str = "auto", threads: Optional[int] = None, progress: Optional[Progress] = None) -> dict:
    """Optimise one photo file and write the output image (and report) atomically; returns the report.

    Output locations are checked before any work, and nothing is written unless everything succeeded.
    """
    fmt = output_format(out)
    check_writable(out)
    if report_path is not None and not Path(report_path).resolve().parent.is_dir():
        raise OutputError(f"{report_path}: directory {Path(report_path).parent} does not exist")
    settings = (settings or Settings()).validate()
    rgb = load_image(image)  # cheap checks first: a bad photo is refused before the bundle is loaded
    with Beautifier(bundle, device=device, threads=threads) as b:
        result = b.optimize(rgb, settings, aligned=aligned, progress=progress)
    text, xmp = provenance(result)
    data = encode_image(result.image, fmt, quality, text, xmp)
    rep = result.report()
    rep.update({"input": str(image), "output": str(out), "beautyrt_version": beautyrt_version(), "aligned_input": aligned})
    report_bytes = (json.dumps(rep, indent=1) + "\n").encode()
    atomic_write_bytes(out, data)
    if report_path is not None:
        atomic_write_bytes(report_path, report_bytes)
    return rep


def require_export_extra() -> None:
    missing = [m for m in ("torch", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"`beautyrt export` needs the export extra ({', '.join(missing)} missing): "
                                     f"pip install 'beautyrt[export]'")


def doctor_report(bundle: str | Path) -> dict:
    from beautyrt.engines.ort import probe_providers

    rep: dict = {"beautyrt": beautyrt_version(), "python": platform.python_version(),
                 "platform": f"{platform.system()} {platform.machine()}"}
    for pkg in ("numpy", "pillow", "cma", "onnxruntime", "onnxruntime-gpu", "torch", "onnx", "tensorrt"):
        try:
            rep[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    rep["providers"] = probe_providers()
    try:
        from beautyrt.engines import load_manifest

        m = load_manifest(bundle)
        rep["bundle"] = {"ok": True, "path": str(m.root), "hash": m.bundle_hash, "roles": sorted(m.models),
                         "source": m.data.get("source"), "resolution": m.generator["resolution"],
                         "exported_with": m.data.get("versions")}
    except BeautyrtError as e:
        rep["bundle"] = {"ok": False, "path": str(bundle), "error": str(e), "exit_code": e.exit_code}
    return rep

"""``beautyrt`` command line: thin commands over beautyrt.runtime / beautyrt.export.

Heavy imports happen inside the commands so that ``beautyrt --help`` is instant, and ``optimize`` /
``bench`` / ``doctor`` never import torch. Every beautyrt error is printed as ONE line on stderr and
exits with the error's own code (see ``beautyrt.engines.errors``); a traceback is shown only with
``BEAUTYRT_DEBUG=1``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from beautyrt.engines.backends import CHOICES as BACKEND_CHOICES
from beautyrt.engines.backends import DEFAULT_BACKEND
from beautyrt.engines.errors import BeautyrtError
from beautyrt.engines.files import printable
from beautyrt.runtime.objective import DEFAULT_WEIGHTS, SPACES
from beautyrt.runtime.settings import (
    COVARIANCES,
    DEFAULT_COVARIANCE,
    DEFAULT_FINALISTS,
    DEFAULT_GENERATIONS,
    DEFAULT_POPSIZE,
    DEFAULT_SIGMA0,
    DEFAULT_START,
    DEFAULT_STRATEGY,
    OUTPUT_MODES,
    SCORE_ON,
    STARTS,
    STRENGTH_RANGE,
    Settings,
)
from beautyrt.runtime.strategies import STRATEGIES

_D = Settings()  # the defaults every command quotes

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="beautyrt: regression-guided face beautification (StyleGAN + CMA-ES) on an exported bundle.",
)
log = logging.getLogger("beautyrt")

ENV_BUNDLE = "BEAUTYRT_BUNDLE"
INTERNAL_ERROR = 70


def default_bundle() -> Path:
    """``$BEAUTYRT_BUNDLE`` if set, else ``~/.cache/beautyrt/default``."""
    env = os.environ.get(ENV_BUNDLE)
    return Path(env).expanduser() if env else Path("~/.cache/beautyrt/default").expanduser()


class _PrintableFormatter(logging.Formatter):
    """Log lines on the terminal with control characters escaped (a file name cannot inject escapes)."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(printable(line) for line in super().format(record).splitlines())


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


class _Progress:
    """Progress on stderr: one updating line on a terminal, a few plain lines otherwise."""

    def __init__(self, label: str, enabled: bool = True, every_step: bool = False):
        # every_step: a line per step off a terminal too, with the time so far (export: few, long steps)
        self.label, self.enabled, self.every_step = label, enabled, every_step
        self.tty = sys.stderr.isatty()
        self._last = -1
        self._last_extra = ""
        self._t0 = time.monotonic()

    def __call__(self, i: int, n: int, extra: str = "") -> None:
        if not self.enabled or n <= 0:
            return
        pct = int(100 * i / n)
        if self.tty:
            bar = "#" * (pct // 5) + "-" * (20 - pct // 5)
            sys.stderr.write(f"\r{self.label} [{bar}] {i}/{n} {extra}   ")
            if i >= n:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif self.every_step and (extra != self._last_extra or i >= n):
            sys.stderr.write(f"{self.label}: {i}/{n} {extra} ({time.monotonic() - self._t0:.0f} s)\n")
            sys.stderr.flush()
        elif not self.every_step and (pct // 25 != self._last // 25 or i >= n):
            sys.stderr.write(f"{self.label}: {i}/{n} {extra}\n")
            sys.stderr.flush()
        self._last_extra = extra
        self._last = pct


def _bundle_arg(bundle: Optional[Path]) -> Path:
    return bundle if bundle is not None else default_bundle()


def _line(msg: object) -> str:
    """One printable line: whitespace runs (newlines too) become one space, control characters are escaped."""
    return printable(" ".join(str(msg).split()), limit=2000)


def _fail(e: BaseException) -> "typer.Exit":
    """Print one line for an error and return the Exit carrying its code."""
    if isinstance(e, BeautyrtError):
        sys.stderr.write(f"beautyrt: error: {_line(e)}\n")
        return typer.Exit(e.exit_code)
    if isinstance(e, KeyboardInterrupt):
        sys.stderr.write("beautyrt: interrupted\n")
        return typer.Exit(130)
    if isinstance(e, MemoryError):
        sys.stderr.write("beautyrt: error: out of memory\n")
        return typer.Exit(INTERNAL_ERROR)
    sys.stderr.write(
        f"beautyrt: internal error: {type(e).__name__}: {_line(e)[:300]} (set BEAUTYRT_DEBUG=1 for the traceback)\n"
    )
    return typer.Exit(INTERNAL_ERROR)


def _guarded(fn):
    """Run a command; beautyrt errors become one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (Exception, KeyboardInterrupt) as e:
            if os.environ.get("BEAUTYRT_DEBUG"):
                raise
            raise _fail(e) from None

    return wrapper


_FINALISTS_HELP = (
    "Of the search's K best candidates keep the one whose delivered photo (re-detected, re-aligned) scores "
    f"highest; 1: the search's best. Default: the bundle's, else {DEFAULT_FINALISTS}."
)


# search and objective options shared by optimize, evaluate and batch (one definition, one help text)
_SIGMA = typer.Option(
    None,
    "--sigma",
    help=f"Initial step in units of W's std (default: the bundle's recommendation, else {DEFAULT_SIGMA0}).",
)
_IDENTITY_FLOOR = typer.Option(
    None,
    "--identity-floor",
    help=f"Hard floor on identity cosine to the start (default: the bundle's, else {DEFAULT_WEIGHTS['identity_floor']}).",
)
_IDENTITY_TARGET = typer.Option(
    None,
    "--identity-target",
    help=f"Soft penalty below this cosine (default: the bundle's, else {DEFAULT_WEIGHTS['identity_target']}).",
)
_IDENTITY_WEIGHT = typer.Option(
    None,
    "--identity-weight",
    help=f"Penalty per unit of cosine below the target (default: the bundle's, else {DEFAULT_WEIGHTS['identity_weight']}).",
)
_LATENT_WEIGHT = typer.Option(
    None,
    "--latent-weight",
    help=f"Penalty per unit of mean squared step (default: the bundle's, else {DEFAULT_WEIGHTS['latent_weight']}).",
)
_NATURALNESS_WEIGHT = typer.Option(
    None,
    "--naturalness-weight",
    help="Penalty per unit of the delivered edit's cost (its RMS plus its fine part's over the face, in 10 grey "
    f"levels; --score-on output only); default: the bundle's, else {DEFAULT_WEIGHTS['naturalness_weight']}.",
)
_START = typer.Option(
    None,
    "--start",
    help=f"{' | '.join(STARTS)}: where CMA-ES starts (prior: the encoder's latent plus the bundle's search prior); default: the bundle's, else {DEFAULT_START}.",
)
_MIRRORED = typer.Option(
    None,
    "--mirrored/--no-mirrored",
    help="Mirrored sampling (half of each population mirrors the other); default: the bundle's, else off.",
)
_COVARIANCE = typer.Option(
    None,
    "--covariance",
    help=f"{' | '.join(COVARIANCES)}: CMA-ES covariance (auto: diagonal above 256 dimensions); default: the bundle's, else {DEFAULT_COVARIANCE}.",
)
_FINALISTS = typer.Option(None, "--finalists", help=_FINALISTS_HELP)


@app.command()
@_guarded
def optimize(
    image: Path = typer.Argument(
        ..., help="Photo to beautify (JPEG/PNG/WebP/...); with --aligned an aligned face crop."
    ),
    out: Optional[Path] = typer.Option(
        None, "-o", "--out", help="Output image (.jpg/.png/.webp). Default: <image>.beautified<ext>."
    ),
    bundle: Optional[Path] = typer.Option(
        None, "--bundle", help=f"Bundle directory. Default: ${ENV_BUNDLE} or ~/.cache/beautyrt/default."
    ),
    generations: Optional[int] = typer.Option(
        None,
        "--generations",
        "-g",
        help=f"Search generations (default: the bundle's recommendation, else {DEFAULT_GENERATIONS}).",
    ),
    popsize: Optional[int] = typer.Option(
        None,
        "--popsize",
        "-p",
        help=f"Candidates per generation, scored in one engine call (default: the bundle's recommendation, else {DEFAULT_POPSIZE}).",
    ),
    seed: int = typer.Option(
        _D.seed, "--seed", help="Search seed: same input, bundle, seed and backend give the same output."
    ),
    space: str = typer.Option(_D.space, "--space", help=f"Search space: {' | '.join(SPACES)}."),
    sigma: Optional[float] = _SIGMA,
    identity_floor: Optional[float] = _IDENTITY_FLOOR,
    identity_target: Optional[float] = _IDENTITY_TARGET,
    identity_weight: Optional[float] = _IDENTITY_WEIGHT,
    latent_weight: Optional[float] = _LATENT_WEIGHT,
    naturalness_weight: Optional[float] = _NATURALNESS_WEIGHT,
    strength: float = typer.Option(
        _D.strength,
        "--strength",
        help=f"Scale of the edit on the photo, {STRENGTH_RANGE[0]:g}..{STRENGTH_RANGE[1]:g} (0: the photo unchanged).",
    ),
    strategy: str = typer.Option(
        DEFAULT_STRATEGY,
        "--strategy",
        help=f"Search strategy: {' | '.join(STRATEGIES)} (linear: walk the bundle's beauty direction).",
    ),
    start: Optional[str] = _START,
    mirrored: Optional[bool] = _MIRRORED,
    covariance: Optional[str] = _COVARIANCE,
    finalists: Optional[int] = _FINALISTS,
    aligned: bool = typer.Option(False, "--aligned", help="The input is already an aligned square face crop."),
    face: Optional[int] = typer.Option(None, "--face", help="Which face (0 = largest). Default: the largest."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Edit every detected face (largest first)."),
    mode: str = typer.Option(
        _D.output_mode,
        "--mode",
        help=f"{' | '.join(OUTPUT_MODES)}: apply the edit to the photo, or paste the generated face.",
    ),
    score_on: str = typer.Option(
        _D.score_on,
        "--score-on",
        help=f"{' | '.join(SCORE_ON)}: output scores the photo plus each candidate's edit (what you get); generated: the generated face; auto: output where the bundle allows.",
    ),
    transfer: str = typer.Option(
        _D.transfer,
        "--transfer",
        help="detail: the edit's local light and shape only (no broad brightening, the photo keeps its colours); luma: all of its brightness change; rgb: colours too.",
    ),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the JSON report to this file."),
    side_by_side: Optional[Path] = typer.Option(
        None, "--side-by-side", help="Also write a before|after image with the scores on it (.png/.jpg/.webp)."
    ),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Also write a plot of score and identity per generation (.png)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report on stdout."),
    quality: int = typer.Option(95, "--quality", help="JPEG/WebP quality 1..100."),
    backend: str = typer.Option(
        DEFAULT_BACKEND,
        "--backend",
        help=f"{' | '.join(BACKEND_CHOICES)}: engine backend, chosen per role (tensorrt: the bundle's .plan files; roles without one run on onnxruntime).",
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto | cpu | cuda | tensorrt (onnxruntime's execution provider)."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op threads (default: all cores)."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
):
    """Beautify the face in IMAGE and write the edited photo (and a JSON report)."""
    _setup_logging(verbose, quiet or as_json)
    from beautyrt.runtime import api

    settings = api.Settings(
        generations=generations,
        popsize=popsize,
        seed=seed,
        space=space,
        sigma0=sigma,
        weights=api.ObjectiveWeights(
            identity_floor, identity_target, identity_weight, latent_weight, naturalness_weight
        ),
        output_mode=mode,
        face=face,
        all_faces=all_faces,
        score_on=score_on,
        transfer=transfer,
        strength=strength,
        strategy=strategy,
        start=start,
        mirrored=mirrored,
        covariance=covariance,
        finalists=finalists,
    ).validate()
    out = out or api.default_output(image)
    prog = _Progress("search", enabled=not (quiet or as_json))
    rep = api.optimize_file(
        image,
        out,
        bundle=_bundle_arg(bundle),
        settings=settings,
        aligned=aligned,
        report_path=report,
        quality=quality,
        device=device,
        threads=threads,
        backend=backend,
        side_by_side_path=side_by_side,
        plot_path=plot,
        progress=lambda g, n, best: prog(g, n, f"best {best:.3f}"),
    )
    if as_json:
        sys.stdout.write(json.dumps(rep, indent=1) + "\n")
    else:
        typer.echo(
            f"{printable(out)}: score {rep['score_before']:.3f} -> {rep['score_after']:.3f}, identity {rep['identity']:.3f}, "
            f"{rep['timings']['total']:.2f}s",
            err=True,
        )


@app.command("export")
@_guarded
def export_cmd(
    out: Optional[Path] = typer.Option(
        None, "--out", help="Bundle directory to write. Default: the default bundle location."
    ),
    preset: Optional[str] = typer.Option(
        None,
        "--preset",
        help="demo (the committed self-trained pack, export/demo_pack) | tiny | stylegan2-256 | stylegan2-1024 (random weights). Default demo without checkpoints; with checkpoints it only fills the parts not given.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random-weight presets."),
    pack: Optional[Path] = typer.Option(
        None,
        "--pack",
        help="A demo pack folder written by `beautyrt train pack` (default: the committed export/demo_pack).",
    ),
    stylegan: Optional[Path] = typer.Option(
        None, "--stylegan", help="Generator: stylegan2-ada-pytorch .pkl (G_ema) or rosinality .pt (g_ema)."
    ),
    encoder: Optional[Path] = typer.Option(
        None, "--encoder", help="Encoder: pSp / e4e checkpoint (its decoder is the generator if --stylegan is absent)."
    ),
    identity: Optional[Path] = typer.Option(
        None,
        "--identity",
        help="Identity: dlib (dlib's face descriptor from face-recognition-models) or the path of its .dat file, model_ir_se50.pth, or an ONNX embedder (e.g. insightface w600k_r50.onnx) with --identity-spec, used as it is and fused into the scorer.",
    ),
    beauty: Optional[Path] = typer.Option(
        None,
        "--beauty",
        help="Beauty: beautyrt's trainer output, or an ONNX regressor ([N] or [N,1] output) with --beauty-spec, used as it is and fused into the scorer.",
    ),
    identity_spec: Optional[str] = typer.Option(
        None,
        "--identity-spec",
        help="Input spec of an ONNX identity model: JSON/TOML file or inline size=112,color=BGR,mean=127.5,std=127.5,scale=pixel[,crop=arcface][,output=NAME] (mean/std in the model's channel order; scale=unit: on pixel/255; crop: resize the generator's crop, or arcface: insightface's 5-point template).",
    ),
    beauty_spec: Optional[str] = typer.Option(
        None, "--beauty-spec", help="Input spec of an ONNX beauty model (as --identity-spec)."
    ),
    identity_crop: str = typer.Option(
        "psp",
        "--identity-crop",
        help="IR-SE50 input: psp (crop/pool a 256 px aligned face as pSp's ID loss) | none (112 px).",
    ),
    trt: bool = typer.Option(
        False, "--trt", help="Also build TensorRT engines (.plan) for this GPU (needs pip install 'beautyrt[trt]')."
    ),
    fp16: bool = typer.Option(False, "--fp16", help="TensorRT: allow fp16 kernels."),
    trt_popsize: int = typer.Option(
        16, "--trt-popsize", help="TensorRT: the scorer's static batch (the search population)."
    ),
    trt_max_batch: int = typer.Option(
        8, "--trt-max-batch", help="TensorRT: max batch of the dynamic profiles of the other models."
    ),
    timing_cache: Optional[Path] = typer.Option(
        None, "--timing-cache", help="TensorRT timing cache file (default ~/.cache/beautyrt/trt-timing.cache)."
    ),
    detector: bool = typer.Option(
        True,
        "--detector/--no-detector",
        help="Include the MTCNN face detector (needs the facenet-pytorch wheel, fetched by pip).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
):
    """Export networks to an ONNX bundle with a manifest (needs the export extra: pip install 'beautyrt\\[export]')."""
    _setup_logging(verbose)
    from beautyrt.runtime.api import require_export_extra

    require_export_extra()
    if trt:
        from beautyrt.export.trt_build import require_tensorrt

        require_tensorrt()  # fail before minutes of ONNX export
    from beautyrt.export.api import export_checkpoints, export_preset

    prog = _Progress("export", every_step=True)
    progress = lambda msg, i, n: prog(i, n, msg)  # noqa: E731
    ident = str(identity) if identity is not None else None
    dlib_ident = ident is not None and (ident == "dlib" or ident.lower().endswith(".dat"))  # same network either way
    if any(p is not None for p in (stylegan, encoder, beauty)) or (ident is not None and not dlib_ident):
        path = export_checkpoints(
            out or default_bundle(),
            overwrite=force,
            detector=detector,
            progress=progress,
            stylegan=stylegan,
            encoder=encoder,
            identity=identity,
            beauty=beauty,
            preset=preset,
            seed=seed,
            identity_spec=identity_spec,
            beauty_spec=beauty_spec,
            identity_crop=None if identity_crop == "none" else identity_crop,
        )
    else:
        path = export_preset(
            preset or "demo",
            out or default_bundle(),
            seed=seed,
            overwrite=force,
            detector=detector,
            progress=progress,
            identity=ident if dlib_ident else "preset",
            pack=pack,
        )
    if trt:
        from beautyrt.export.trt_build import build_engines

        build_engines(path, fp16=fp16, scorer_batch=trt_popsize, max_batch=trt_max_batch, timing_cache=timing_cache)
    typer.echo(f"bundle written: {printable(path)}", err=True)


@app.command()
@_guarded
def bench(
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Bundle to time (default location if omitted)."),
    popsize: int = typer.Option(DEFAULT_POPSIZE, "--popsize", "-p"),
    generations: int = typer.Option(10, "--generations", "-g", help="Generations timed per repeat."),
    repeats: int = typer.Option(3, "--repeats"),
    backend: str = typer.Option(DEFAULT_BACKEND, "--backend", help=f"{' | '.join(BACKEND_CHOICES)} (as optimize)."),
    device: str = typer.Option("auto", "--device"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    vs_torch: bool = typer.Option(
        False,
        "--vs-torch",
        help="Also run the plain PyTorch eager reference (source "
        "checkout + export extra) alternately and report `speedup` = torch / beautyrt.",
    ),
    image: Optional[Path] = typer.Option(
        None,
        "--image",
        help="With --vs-torch: photo to detect/align/paste (default: an aligned crop rendered by the bundle).",
    ),
    torch_threads: Optional[int] = typer.Option(
        None,
        "--torch-threads",
        help="With --vs-torch: torch threads of the reference (default: --threads; 1 is often faster on busy cores).",
    ),
    engine_batch: Optional[int] = typer.Option(
        None,
        "--engine-batch",
        help="Candidates per backend call of the image-sized engines (default: by resolution and device; 2 at 1024 px on a CPU).",
    ),
):
    """Per-stage latency (p50/p90/p99) and candidates/s of the search loop on a bundle."""
    _setup_logging(verbose, as_json)
    if vs_torch:
        vs = _load_vs_torch()
        res = vs.run_vs_torch(
            _bundle_arg(bundle),
            image=image,
            popsize=popsize,
            generations=generations,
            repeats=repeats,
            threads=threads,
            device=device if device != "auto" else "cpu",
            torch_threads=torch_threads,
            engine_batch=engine_batch,
        )
        sys.stdout.write(json.dumps(res, indent=1) + "\n") if as_json else typer.echo(vs.format_vs(res))
        return
    from beautyrt.runtime.tools.bench import format_table, run_bench

    res = run_bench(
        _bundle_arg(bundle),
        popsize=popsize,
        generations=generations,
        repeats=repeats,
        device=device,
        threads=threads,
        backend=backend,
        engine_batch=engine_batch,
    )
    if as_json:
        sys.stdout.write(json.dumps(res, indent=1) + "\n")
    else:
        typer.echo(format_table(res))


def _load_vs_torch():
    """tests/bench/vs_torch.py of a source checkout, imported only for --vs-torch (it imports torch)."""
    import importlib.util

    from beautyrt.engines.errors import MissingDependencyError

    script = Path(__file__).resolve().parents[1] / "tests" / "bench" / "vs_torch.py"
    if not script.is_file() or importlib.util.find_spec("torch") is None:
        raise MissingDependencyError(
            "--vs-torch needs a source checkout (tests/bench/vs_torch.py) and the export "
            "extra (torch): pip install -e '.[export]'"
        )
    spec = importlib.util.spec_from_file_location("beautyrt_bench_vs_torch", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@app.command()
@_guarded
def doctor(
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Bundle to check (default location if omitted)."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Versions, execution providers that really load here, and a bundle check."""
    from beautyrt.runtime.api import doctor_report

    rep = doctor_report(_bundle_arg(bundle))
    if as_json:
        sys.stdout.write(json.dumps(rep, indent=1) + "\n")
    else:
        for k, v in rep.items():
            typer.echo(f"{k}: {v}")
    if rep["bundle"].get("ok") is False:
        raise typer.Exit(rep["bundle"].get("exit_code", 10))


@app.command()
@_guarded
def audit(
    images: Path = typer.Option(
        ..., "--images", help="Labelled folder: each sub-directory (e.g. <gender>/<ethnicity>/) is a group."
    ),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Bundle directory (default location if omitted)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most N photos per group (first N in sorted order)."),
    generations: Optional[int] = typer.Option(
        None, "--generations", "-g", help=f"Default: the bundle's recommendation, else {DEFAULT_GENERATIONS}."
    ),
    popsize: Optional[int] = typer.Option(
        None, "--popsize", "-p", help=f"Default: the bundle's, else {DEFAULT_POPSIZE}."
    ),
    seed: int = typer.Option(_D.seed, "--seed"),
    aligned: bool = typer.Option(False, "--aligned", help="The photos are aligned square face crops."),
    backend: str = typer.Option(DEFAULT_BACKEND, "--backend", help=f"{' | '.join(BACKEND_CHOICES)} (as optimize)."),
    device: str = typer.Option("auto", "--device"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    as_json: bool = typer.Option(False, "--json", help="Print the full result (groups, overall, every photo) as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet"),
):
    """Per-group audit: count, mean/median gain, identity, failures by type and time per photo for each group."""
    _setup_logging(False, quiet or as_json)
    from beautyrt.runtime.tools.audit import format_table, run_audit

    prog = _Progress("audit", enabled=not (quiet or as_json))
    res = run_audit(
        images,
        _bundle_arg(bundle),
        settings=Settings(generations=generations, popsize=popsize, seed=seed),
        limit=limit,
        aligned=aligned,
        device=device,
        threads=threads,
        backend=backend,
        progress=lambda i, n, g: prog(i, n, g),
    )
    if as_json:
        sys.stdout.write(json.dumps(res, indent=1) + "\n")
    else:
        typer.echo(format_table(res))


@app.command()
@_guarded
def train(
    what: str = typer.Argument(..., help="generator | beauty | pack (checkpoints -> export/demo_pack)"),
    data: Path = typer.Option(..., "--data", help="The shared data folder (mebeauty/, omi/)."),
    out: Path = typer.Option(..., "--out", help="Output folder (checkpoint, loss log)."),
    minutes: float = typer.Option(30.0, "--minutes", help="generator: wall-clock budget."),
    max_steps: int = typer.Option(1_000_000, "--max-steps", help="generator: step limit."),
    resume: bool = typer.Option(False, "--resume", help="generator: continue OUT/generator.pt."),
    id_weight: float = typer.Option(0.0, "--id-weight", help="generator: weight of the dlib identity loss (0: none)."),
    generator: Optional[Path] = typer.Option(
        None, "--generator", help="beauty/pack: generator checkpoint (beauty: adds reconstructions as training inputs)."
    ),
    beauty: Optional[Path] = typer.Option(None, "--beauty", help="pack: beauty checkpoint (beauty.pt)."),
    hard_bundle: Optional[Path] = typer.Option(
        None,
        "--hard-bundle",
        help="beauty: a bundle with a first regressor; its search results on training faces become hard negatives.",
    ),
    hard_n: int = typer.Option(150, "--hard-n", help="beauty: how many training faces to mine hard negatives on."),
    head: str = typer.Option(
        "ridge",
        "--head",
        help="beauty: faceres (ridge on HSE FaceRes [+ dlib] features, chosen by CV) | ridge (on dlib block features) "
        "| mlp (MLP on the descriptor).",
    ),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads", help="torch threads (1 is fastest on a shared 2-core machine)."),
    cache: Optional[Path] = typer.Option(
        None, "--cache", help="Aligned-face cache folder (default ~/.cache/beautyrt/train)."
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
):
    """Train the demo pack's generator+encoder or beauty regressor (needs the export extra and the data)."""
    _setup_logging(verbose)
    from beautyrt.runtime.api import require_export_extra

    require_export_extra()
    from beautyrt.export.train import api as tapi

    if what == "generator":
        res = tapi.train_generator_cmd(
            data,
            out,
            minutes=minutes,
            seed=seed,
            max_steps=max_steps,
            threads=threads,
            cache=cache,
            resume=resume,
            id_weight=id_weight,
        )
    elif what == "beauty":
        res = tapi.train_beauty_cmd(
            data,
            out,
            generator=generator,
            seed=seed,
            threads=threads,
            cache=cache,
            hard_bundle=hard_bundle,
            hard_n=hard_n,
            head=head,
        )
    elif what == "pack":
        if generator is None or beauty is None:
            from beautyrt.runtime.errors import UsageError

            raise UsageError("train pack needs --generator CKPT and --beauty CKPT")
        res = tapi.build_pack_cmd(data, out, generator=generator, beauty=beauty, cache=cache, threads=threads)
    else:
        from beautyrt.runtime.errors import UsageError

        raise UsageError(f"train what? {what!r}: choose generator, beauty or pack")
    sys.stdout.write(json.dumps(res, indent=1) + "\n")


@app.command()
@_guarded
def evaluate(
    images: Path = typer.Option(..., "--images", help="Folder of photos (searched recursively)."),
    bundle: Optional[Path] = typer.Option(
        None, "--bundle", help=f"Bundle directory. Default: ${ENV_BUNDLE} or ~/.cache/beautyrt/default."
    ),
    csv_path: Optional[Path] = typer.Option(
        None, "--csv", help="Only photos listed in this CSV's 'image' column (relative to the CSV)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="A seeded sample of this many photos."),
    generations: Optional[int] = typer.Option(
        None, "--generations", "-g", help="Default: the bundle's recommendation, else 20."
    ),
    popsize: Optional[int] = typer.Option(
        None, "--popsize", "-p", help=f"Default: the bundle's recommendation, else {DEFAULT_POPSIZE}."
    ),
    identity_floor: Optional[float] = _IDENTITY_FLOOR,
    identity_target: Optional[float] = _IDENTITY_TARGET,
    identity_weight: Optional[float] = _IDENTITY_WEIGHT,
    latent_weight: Optional[float] = _LATENT_WEIGHT,
    naturalness_weight: Optional[float] = _NATURALNESS_WEIGHT,
    sigma: Optional[float] = _SIGMA,
    seed: int = typer.Option(_D.seed, "--seed"),
    score_on: str = typer.Option(_D.score_on, "--score-on", help=f"{' | '.join(SCORE_ON)} (as optimize)."),
    transfer: str = typer.Option(_D.transfer, "--transfer", help="detail | luma | rgb (as optimize)."),
    strategy: str = typer.Option(DEFAULT_STRATEGY, "--strategy", help=f"{' | '.join(STRATEGIES)} (as optimize)."),
    start: Optional[str] = _START,
    mirrored: Optional[bool] = _MIRRORED,
    covariance: Optional[str] = _COVARIANCE,
    finalists: Optional[int] = _FINALISTS,
    backend: str = typer.Option(DEFAULT_BACKEND, "--backend", help=f"{' | '.join(BACKEND_CHOICES)} (as optimize)."),
    sheet: Optional[Path] = typer.Option(
        None, "--sheet", help="Write a contact sheet (before | search | linear) PNG here."
    ),
    judge: Optional[Path] = typer.Option(
        None,
        "--judge",
        help="Another bundle whose crop_scorer (a regressor on networks the search did not use) also scores the "
        "delivered photos and the baselines: the cross-network check.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON report on stdout."),
    threads: Optional[int] = typer.Option(None, "--threads"),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
):
    """Optimise a folder of photos; report beauty gain, identity, failures, time, and the linear-direction baseline."""
    _setup_logging(verbose, as_json)
    from beautyrt.runtime import api
    from beautyrt.runtime.tools.evaluate import evaluate as run_eval
    from beautyrt.runtime.tools.evaluate import format_summary

    settings = api.Settings(
        generations=generations,
        popsize=popsize,
        seed=seed,
        sigma0=sigma,
        weights=api.ObjectiveWeights(
            identity_floor, identity_target, identity_weight, latent_weight, naturalness_weight
        ),
        score_on=score_on,
        transfer=transfer,
        strategy=strategy,
        start=start,
        mirrored=mirrored,
        covariance=covariance,
        finalists=finalists,
    ).validate()
    prog = _Progress("evaluate", enabled=not as_json)
    rep = run_eval(
        images,
        _bundle_arg(bundle),
        settings=settings,
        limit=limit,
        csv_path=csv_path,
        sheet=sheet,
        seed=seed,
        threads=threads,
        backend=backend,
        progress=lambda i, n: prog(i, n),
        judge=judge,
    )
    if as_json:
        sys.stdout.write(json.dumps(rep, indent=1) + "\n")
    else:
        typer.echo(format_summary(rep))


@app.command()
@_guarded
def batch(
    input: Path = typer.Argument(
        ..., help="A folder of photos, a text file of paths (one a line) or a CSV with a path column."
    ),
    out_dir: Path = typer.Argument(..., help="Folder for the outputs and results.jsonl (created if missing)."),
    bundle: Optional[Path] = typer.Option(
        None, "--bundle", help=f"Bundle directory. Default: ${ENV_BUNDLE} or ~/.cache/beautyrt/default."
    ),
    workers: int = typer.Option(
        1, "--workers", "-j", help="Worker processes (local) or Ray actors (--ray); each loads the bundle once."
    ),
    use_ray: bool = typer.Option(
        False, "--ray", help="Run on Ray Data (needs the ray extra): an actor pool of Beautifiers."
    ),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="With --ray: auto | HOST:PORT | ray://HOST:PORT of a running cluster (default: start one here).",
    ),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="With --ray: CPUs each actor reserves."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="With --ray: GPUs each actor reserves."),
    ship_bundle: bool = typer.Option(
        False,
        "--ship-bundle",
        help="With --ray: ship the bundle to every node with the job (else its path must be the same bundle on every node).",
    ),
    generations: Optional[int] = typer.Option(
        None, "--generations", "-g", help="Search generations (default: the bundle's recommendation)."
    ),
    popsize: Optional[int] = typer.Option(
        None, "--popsize", "-p", help="Candidates per generation (default: the bundle's recommendation)."
    ),
    sigma: Optional[float] = _SIGMA,
    identity_floor: Optional[float] = _IDENTITY_FLOOR,
    identity_target: Optional[float] = _IDENTITY_TARGET,
    identity_weight: Optional[float] = _IDENTITY_WEIGHT,
    latent_weight: Optional[float] = _LATENT_WEIGHT,
    naturalness_weight: Optional[float] = _NATURALNESS_WEIGHT,
    start: Optional[str] = _START,
    mirrored: Optional[bool] = _MIRRORED,
    covariance: Optional[str] = _COVARIANCE,
    finalists: Optional[int] = _FINALISTS,
    seed: int = typer.Option(_D.seed, "--seed", help="Search seed (as optimize)."),
    strength: float = typer.Option(
        _D.strength, "--strength", help=f"Scale of the edit, {STRENGTH_RANGE[0]:g}..{STRENGTH_RANGE[1]:g}."
    ),
    space: str = typer.Option(_D.space, "--space", help=f"Search space: {' | '.join(SPACES)}."),
    strategy: str = typer.Option(DEFAULT_STRATEGY, "--strategy", help=f"Search strategy: {' | '.join(STRATEGIES)}."),
    mode: str = typer.Option(_D.output_mode, "--mode", help=f"{' | '.join(OUTPUT_MODES)} (as optimize)."),
    score_on: str = typer.Option(_D.score_on, "--score-on", help=f"{' | '.join(SCORE_ON)} (as optimize)."),
    transfer: str = typer.Option(_D.transfer, "--transfer", help="detail | luma | rgb (as optimize)."),
    face: Optional[int] = typer.Option(None, "--face", help="Which face (0 = largest)."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Edit every detected face."),
    aligned: bool = typer.Option(False, "--aligned", help="The inputs are aligned square face crops."),
    quality: int = typer.Option(95, "--quality", help="JPEG/WebP quality 1..100."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="Intra-op threads per worker (default: cores / workers locally, CPUs per actor on Ray)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
):
    """Beautify every photo INPUT names into OUT_DIR, resumably (results.jsonl: one line per photo)."""
    _setup_logging(verbose, quiet or as_json)
    from beautyrt.runtime import api
    from beautyrt.runtime.tools import batch as B

    settings = api.Settings(
        generations=generations,
        popsize=popsize,
        seed=seed,
        space=space,
        sigma0=sigma,
        weights=api.ObjectiveWeights(
            identity_floor, identity_target, identity_weight, latent_weight, naturalness_weight
        ),
        output_mode=mode,
        face=face,
        all_faces=all_faces,
        score_on=score_on,
        transfer=transfer,
        strength=strength,
        strategy=strategy,
        start=start,
        mirrored=mirrored,
        covariance=covariance,
        finalists=finalists,
    ).validate()
    from beautyrt.engines.errors import UsageError

    if threads is not None and not 1 <= threads <= 1024:
        raise UsageError(f"--threads must be 1..1024, got {threads}")
    spec = B.BatchSpec(
        bundle=str(_bundle_arg(bundle)), settings=settings.to_dict(), aligned=aligned, quality=quality, threads=threads
    )
    if use_ray:
        from beautyrt.runtime.scale.batch_ray import RayExecutor

        executor: object = RayExecutor(address, workers, cpus_per_worker, gpus_per_worker, ship_bundle)
    else:
        if address is not None or ship_bundle:
            raise UsageError("--address and --ship-bundle need --ray")
        executor = B.LocalPool(workers)
    inputs = B.list_inputs(input)
    prog = _Progress("batch", enabled=not (quiet or as_json))
    summary = B.run_batch(inputs, out_dir, spec, executor, progress=prog)  # type: ignore[arg-type]
    if as_json:
        sys.stdout.write(json.dumps(summary.to_dict()) + "\n")
    else:
        typer.echo(f"{printable(out_dir)}: {summary.line()}", err=True)
    if summary.failed:
        raise typer.Exit(3)


@app.command()
@_guarded
def serve(
    bundle: Optional[Path] = typer.Option(
        None, "--bundle", help=f"Bundle directory. Default: ${ENV_BUNDLE} or ~/.cache/beautyrt/default."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (default loopback only; 0.0.0.0 for all)."
    ),
    port: int = typer.Option(8000, "--port", help="TCP port (0: any free port)."),
    workers: int = typer.Option(1, "--workers", help="Worker threads running searches, sharing one loaded bundle."),
    max_queue: int = typer.Option(
        8, "--max-queue", help="Requests that may wait for a worker; beyond that: 503 + Retry-After."
    ),
    max_upload_mb: float = typer.Option(
        20.0, "--max-upload-mb", help="Largest request body in MiB (413 before it is read whole)."
    ),
    timeout: float = typer.Option(
        120.0, "--timeout", help="Seconds from arrival to answer; past it the search is cancelled (504)."
    ),
    api_key_env: Optional[str] = typer.Option(
        None,
        "--api-key-env",
        help="Name of the environment variable holding the bearer token every API request must send.",
    ),
    cors_origin: Optional[list[str]] = typer.Option(
        None, "--cors-origin", help="Allow this browser origin (repeatable; * for any). Default: no CORS."
    ),
    results: int = typer.Option(16, "--results", help="Results kept for /v1/compose and job results (LRU)."),
    results_mb: float = typer.Option(1024.0, "--results-mb", help="...and at most this many MiB of them."),
    job_abandon: float = typer.Option(
        30.0, "--job-abandon", help="A job (POST /v1/jobs) nobody polls for this many seconds is cancelled."
    ),
    shutdown_grace: float = typer.Option(
        10.0, "--shutdown-grace", help="On SIGTERM, seconds running searches get to finish before they are cancelled."
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="Intra-op threads per engine call (default: cores / workers)."
    ),
    backend: str = typer.Option(DEFAULT_BACKEND, "--backend", help=f"{' | '.join(BACKEND_CHOICES)} (as optimize)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | tensorrt (as optimize)."),
    use_ray: bool = typer.Option(
        False, "--ray", help="Deploy the same app on Ray Serve (needs the ray extra), one Beautifier per replica."
    ),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="With --ray: auto | HOST:PORT | ray://HOST:PORT of a running cluster (default: start one here).",
    ),
    replicas: Optional[int] = typer.Option(
        None, "--replicas", help="With --ray: a fixed number of replicas (default 1)."
    ),
    autoscale: Optional[str] = typer.Option(
        None, "--autoscale", help="With --ray: MIN:MAX replicas, scaled by Serve on the requests in flight."
    ),
    cpus_per_replica: float = typer.Option(1.0, "--cpus-per-replica", help="With --ray: CPUs each replica reserves."),
    gpus_per_replica: float = typer.Option(0.0, "--gpus-per-replica", help="With --ray: GPUs each replica reserves."),
    ship_bundle: bool = typer.Option(
        False,
        "--ship-bundle",
        help="With --ray: ship the bundle to every node with the app (else its path must hold the same bundle on every node).",
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
):
    """Serve the HTTP API and the web page (needs the serve extra: pip install 'beautyrt\\[serve]'; --ray: the ray extra)."""
    _setup_logging(verbose)
    import importlib.util

    missing = [
        m
        for m in ("fastapi", "uvicorn", "python_multipart", "prometheus_client")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        from beautyrt.engines.errors import MissingDependencyError

        raise MissingDependencyError(
            f"`beautyrt serve` needs the serve extra ({', '.join(missing)} missing): pip install 'beautyrt[serve]'"
        )
    from beautyrt.runtime.api import Beautifier
    from beautyrt.runtime.serve.config import ServeConfig
    from beautyrt.runtime.serve.run import serve as run_server

    config = ServeConfig(
        bundle=_bundle_arg(bundle),
        host=host,
        port=port,
        workers=workers,
        max_queue=max_queue,
        max_upload_mb=max_upload_mb,
        timeout=timeout,
        api_key_env=api_key_env,
        cors_origins=tuple(cors_origin or ()),
        results=results,
        results_mb=results_mb,
        shutdown_grace=shutdown_grace,
        job_abandon_s=job_abandon,
        threads=threads,
        backend=backend,
        device=device,
    ).validate()
    if use_ray:
        from beautyrt.runtime.scale.common import require_ray

        require_ray("ray.serve")
        from beautyrt.runtime.scale.serve_ray import serve_on_ray

        code = serve_on_ray(
            config,
            address=address,
            replicas=replicas,
            autoscale=autoscale,
            cpus_per_replica=cpus_per_replica,
            gpus_per_replica=gpus_per_replica,
            ship_bundle=ship_bundle,
        )
        if code:
            raise typer.Exit(code)
        return
    if address is not None or replicas is not None or autoscale is not None or ship_bundle:
        from beautyrt.engines.errors import UsageError

        raise UsageError("--address, --replicas, --autoscale and --ship-bundle need --ray")
    # load before listening: a bad bundle is the usual one-line error and exit code, and no port is opened
    beautifier = Beautifier(config.bundle, backend=backend, device=device, threads=config.engine_threads)
    try:
        code = run_server(config, beautifier, log_level="debug" if verbose else "info")
    finally:
        beautifier.close()
    if code:
        raise typer.Exit(code)


def _click_exceptions():
    """The click exception module typer uses (typer >= 0.2x vendors click as ``typer._click``)."""
    try:
        from typer._click import exceptions as ce  # type: ignore[import-not-found]
    except ImportError:  # older typer: the click package
        from click import exceptions as ce  # type: ignore[no-redef]
    return ce


def _terminated(signum, frame) -> None:
    """SIGTERM / SIGHUP end the command like Ctrl-C does: the cleanups run (no temporary files or
    half-committed outputs are left) and the exit code is 130."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[list] = None) -> None:
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _terminated)
    ce = _click_exceptions()
    try:
        rc = app(args=argv, prog_name="beautyrt", standalone_mode=False)
    except ce.UsageError as e:  # every usage error (bad option, missing argument, bad value): one line, exit 2
        if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:
            sys.stdout.write(e.ctx.get_help() + "\n")
            sys.exit(0)
        where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        sys.stderr.write(f"beautyrt: error: {_line(e.format_message())}{where}\n")
        sys.exit(2)
    except ce.ClickException as e:
        sys.stderr.write(f"beautyrt: error: {_line(e.format_message())}\n")
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.stderr.write("beautyrt: interrupted\n")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.stderr.write("beautyrt: interrupted\n")
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()

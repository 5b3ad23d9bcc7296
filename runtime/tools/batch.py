"""``beautyrt batch``: beautify a whole catalogue, on a local process pool or on Ray Data, resumably.

The input list: a folder (its images, recursively, sorted), a text file of paths (one a line; ``#`` comments and
blank lines skipped) or a CSV file with a ``path`` column (relative paths are taken from the list's folder).

Each photo gets one output name inside OUT_DIR, ``<stem>.<8 hex of its absolute path><ext>``: unique even for
two inputs of the same file name in different folders, and never outside OUT_DIR. Outputs are written
atomically (``api.optimize_file``: temporary file renamed into place, the CLI's exact encoding). ``results.jsonl``
in OUT_DIR has one JSON line per photo (see :func:`record`); a line is appended with one ``write`` + ``fsync``
after the output's rename, so after a crash (even SIGKILL) every recorded output is complete. A re-run first
rewrites ``results.jsonl`` atomically keeping the last complete line of each photo it will not redo (a torn
last line is dropped), so the file never holds two lines for one photo; then it skips every photo whose output
exists and whose record says done with the same bundle hash and settings hash, and redoes the rest.
A failing photo is recorded (error code, kind, message) and never stops the job.

Executors: :class:`LocalPool` (a process pool on this machine, each worker process loads the bundle once) and
``beautyrt.runtime.scale.batch_ray.RayExecutor`` (Ray Data ``map_batches`` over an actor pool).
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Protocol

from beautyrt.engines.errors import BeautyrtError, UsageError
from beautyrt.engines.files import printable

from ..errors import ClusterError, InputImageError
from ..settings import Settings

log = logging.getLogger("beautyrt")

RESULTS = "results.jsonl"
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
OUT_EXT = {".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png", ".webp": ".webp"}  # other inputs give PNG
MAX_INPUTS = 10_000_000


# --- the input list ---------------------------------------------------------------------------------------------
def list_inputs(src: str | os.PathLike) -> list[Path]:
    """The photos INPUT names (absolute paths, in order, duplicates removed)."""
    p = Path(src).expanduser()
    if not p.exists():
        raise UsageError(f"INPUT {printable(p)} does not exist (a folder, a text file of paths or a CSV file)")
    if p.is_dir():
        found = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXT and q.is_file())
    elif p.suffix.lower() == ".csv":
        found = _from_csv(p)
    else:
        found = _from_text(p)
    out, seen = [], set()
    for q in found:
        a = Path(os.path.abspath(q))
        if a not in seen:
            seen.add(a)
            out.append(a)
        if len(out) > MAX_INPUTS:
            raise UsageError(f"INPUT {printable(p)} names more than {MAX_INPUTS} photos: split the job")
    if not out:
        raise UsageError(f"INPUT {printable(p)} names no photos")
    return out


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"INPUT {printable(p)} is not UTF-8 text (a folder, a text file of paths or a CSV)") from e
    except OSError as e:
        raise UsageError(f"INPUT {printable(p)}: cannot read ({e.strerror or e})") from e


def _from_text(p: Path) -> list[Path]:
    base = p.parent
    lines = (ln.strip() for ln in _read_text(p).splitlines())
    return [base / Path(ln).expanduser() for ln in lines if ln and not ln.startswith("#")]


def _from_csv(p: Path) -> list[Path]:
    rows = list(csv.reader(_read_text(p).splitlines()))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    if "path" not in header:
        raise UsageError(f"INPUT {printable(p)}: a CSV needs a 'path' column (its header has {rows[0]!r})")
    i = header.index("path")
    return [p.parent / Path(r[i].strip()).expanduser() for r in rows[1:] if len(r) > i and r[i].strip()]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def output_name(src: Path) -> str:
    """``<stem>.<8 hex of the absolute path><ext>``: one plain file name (no separator, no leading dot)."""
    stem = _UNSAFE.sub("_", src.stem).strip("._")[:80] or "photo"
    tag = hashlib.sha256(os.fsencode(os.path.abspath(src))).hexdigest()[:8]
    return f"{stem}.{tag}{OUT_EXT.get(src.suffix.lower(), '.png')}"


# --- the job ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    key: str  # the output's file name: the photo's identity in results.jsonl
    input: str
    output: str


@dataclass(frozen=True)
class BatchSpec:
    """What every worker needs: the bundle, the settings and how to write; picklable."""

    bundle: str
    settings: dict  # Settings.to_dict()
    aligned: bool = False
    quality: int = 95
    threads: Optional[int] = None
    backend: str = "onnxruntime"
    device: str = "auto"

    def settings_obj(self) -> Settings:
        return Settings.from_dict(self.settings)

    def settings_hash(self) -> str:
        """Everything but the bundle that decides an output's bytes (the bundle's defaults are in its hash)."""
        d = {"settings": self.settings, "aligned": self.aligned, "quality": self.quality, "backend": self.backend}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def record(task: Task, bundle_hash: str, settings_hash: str, *, report=None, error=None, seconds=0.0) -> dict:
    """One line of results.jsonl: ``{"key", "input", "output", "status": "done"|"failed", "bundle_hash",
    "settings_hash", "seconds", "report": {...}}`` or, failed, ``"error": {"code", "kind", "message"}``."""
    r: dict = {
        "key": task.key,
        "input": task.input,
        "output": task.output,
        "status": "done" if error is None else "failed",
        "bundle_hash": bundle_hash,
        "settings_hash": settings_hash,
        "seconds": round(float(seconds), 4),
    }
    if error is None:
        r["report"] = report
    else:
        r["error"] = error
    return r


def error_info(e: BaseException) -> dict:
    if isinstance(e, BeautyrtError):
        return {"code": e.exit_code, "kind": type(e).__name__, "message": " ".join(str(e).split())[:2000]}
    return {"code": 70, "kind": "InternalError", "message": f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"}


class Worker:
    """One loaded bundle and the per-photo work (in a pool process or a Ray actor)."""

    def __init__(self, spec: BatchSpec, expect_hash: Optional[str] = None):
        from ..beautifier import Beautifier
        from ..scale.common import open_verified

        self.spec = spec
        self.settings = spec.settings_obj()
        self.settings_hash = spec.settings_hash()
        open_verified(spec.bundle, expect_hash)  # every file's sha256, and the same bundle as the driver's
        self.beautifier = Beautifier(spec.bundle, backend=spec.backend, device=spec.device, threads=spec.threads)

    def run(self, task: Task) -> dict:
        from .. import api

        t0 = time.perf_counter()
        bh = self.beautifier.bundle_hash
        try:
            rep = api.optimize_file(
                task.input,
                task.output,
                bundle=self.spec.bundle,
                settings=self.settings,
                aligned=self.spec.aligned,
                quality=self.spec.quality,
                beautifier=self.beautifier,
            )
        except Exception as e:  # recorded, never stops the job
            if not isinstance(e, (BeautyrtError, InputImageError)):
                log.error("beautyrt: internal error on %s", printable(task.input), exc_info=e)
            return record(task, bh, self.settings_hash, error=error_info(e), seconds=time.perf_counter() - t0)
        return record(task, bh, self.settings_hash, report=rep, seconds=time.perf_counter() - t0)


# --- results.jsonl ----------------------------------------------------------------------------------------------
def read_results(path: Path) -> dict[str, dict]:
    """The last complete record per key (a torn or unparsable line is ignored)."""
    out: dict[str, dict] = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out
    for line in data.split(b"\n"):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and isinstance(r.get("key"), str):
            out[r["key"]] = r
    return out


class ResultsLog:
    """results.jsonl: compacted atomically at start, then one whole line per record (one write + fsync)."""

    def __init__(self, path: Path, records: dict[str, dict]):
        self.path = path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            for r in records.values():
                f.write(_line(r))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def append(self, r: dict) -> None:
        data = _line(r)
        n = os.write(self._fd, data)
        if n != len(data):  # a short write: finish the line so the file stays line-aligned
            os.write(self._fd, data[n:])
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _line(r: dict) -> bytes:
    return (json.dumps(r, separators=(",", ":"), ensure_ascii=True) + "\n").encode()


# --- executors --------------------------------------------------------------------------------------------------
class Executor(Protocol):
    def run(self, spec: BatchSpec, bundle_hash: str, tasks: list[Task]) -> Iterator[dict]: ...


_WORKER: Optional[Worker] = None  # one per pool *process* (set by its initializer), never in the caller's


def _init_worker(spec: BatchSpec, bundle_hash: str) -> None:
    global _WORKER
    _WORKER = Worker(spec, bundle_hash)


def _run_task(task: Task) -> dict:
    assert _WORKER is not None
    return _WORKER.run(task)


class LocalPool:
    """A process pool on this machine: ``workers`` processes, each loading the bundle once."""

    def __init__(self, workers: int = 1):
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
            raise UsageError(f"--workers must be an integer in 1..256, got {workers!r}")
        self.workers = workers

    def run(self, spec: BatchSpec, bundle_hash: str, tasks: list[Task]) -> Iterator[dict]:
        if spec.threads is None:
            spec = dataclasses.replace(spec, threads=max(1, (os.cpu_count() or 1) // self.workers))
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding threads
        with cf.ProcessPoolExecutor(
            self.workers, mp_context=ctx, initializer=_init_worker, initargs=(spec, bundle_hash)
        ) as ex:
            futs = [ex.submit(_run_task, t) for t in tasks]
            try:
                for f in cf.as_completed(futs):
                    yield f.result()
            except cf.process.BrokenProcessPool as e:
                raise ClusterError(f"a batch worker process died ({e}); re-run the same command to resume") from e
            finally:
                for f in futs:
                    f.cancel()


# --- the driver -------------------------------------------------------------------------------------------------
@dataclass
class Summary:
    total: int
    done: int
    skipped: int
    failed: Counter
    seconds: float

    @property
    def photos_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.failed.items()))
        failed = sum(self.failed.values())
        return (
            f"{self.total} photos: {self.done} done, {self.skipped} skipped, {failed} failed"
            + (f" ({kinds})" if kinds else "")
            + f"; {self.seconds:.1f} s, {self.photos_per_s:.2f} photos/s"
        )

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "done": self.done,
            "skipped": self.skipped,
            "failed": dict(self.failed),
            "seconds": round(self.seconds, 3),
            "photos_per_s": round(self.photos_per_s, 4),
        }


def plan(inputs: Iterable[Path], out_dir: Path) -> list[Task]:
    tasks, names = [], {}
    for src in inputs:
        name = output_name(src)
        if name in names:  # 8 hex digits of two different paths collided: lengthen this one's tag
            name = f"{Path(name).stem}{hashlib.sha256(os.fsencode(str(src))).hexdigest()[8:16]}{Path(name).suffix}"
        names[name] = src
        tasks.append(Task(key=name, input=str(src), output=str(out_dir / name)))
    return tasks


def run_batch(
    inputs: list[Path],
    out_dir: str | os.PathLike,
    spec: BatchSpec,
    executor: Executor,
    *,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> Summary:
    """Run (or resume) the job; returns the summary. Raises only for job-level problems (bad OUT_DIR, bad
    bundle): a photo's failure is a record."""
    from beautyrt.engines import load_manifest

    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT_DIR {printable(out)} exists and is not a folder")
    manifest = load_manifest(spec.bundle)  # checks every file's sha256 before anything is written
    bundle_hash = manifest.bundle_hash
    Settings.from_dict(spec.settings).validate()
    if spec.quality not in range(1, 101):
        raise UsageError(f"--quality must be 1..100, got {spec.quality}")
    out.mkdir(parents=True, exist_ok=True)
    out = Path(os.path.abspath(out))
    tasks = plan(inputs, out)
    shash = spec.settings_hash()
    old = read_results(out / RESULTS)
    todo, skipped = [], 0
    for t in tasks:
        r = old.get(t.key)
        if (
            r is not None
            and r.get("status") == "done"
            and r.get("bundle_hash") == bundle_hash
            and r.get("settings_hash") == shash
            and r.get("input") == t.input
            and Path(t.output).is_file()
        ):
            skipped += 1
        else:
            todo.append(t)
    redo = {t.key for t in todo}
    # the photos to (re)do lose their old line now: each gets exactly one new line, so the file never holds
    # two lines for one photo, even if this run is killed half-way
    results = ResultsLog(out / RESULTS, {k: r for k, r in old.items() if k not in redo})
    failed: Counter = Counter()
    done = 0
    t0 = time.perf_counter()
    n = len(todo)
    if progress is not None and n:
        progress(0, n, "")
    try:
        for i, r in enumerate(executor.run(spec, bundle_hash, todo) if todo else (), 1):
            results.append(r)
            if r["status"] == "done":
                done += 1
            else:
                failed[r["error"]["kind"]] += 1
            if progress is not None:
                progress(i, n, f"{done} done, {sum(failed.values())} failed")
    finally:
        results.close()
    if progress is not None and not n:
        progress(1, 1, f"{skipped} skipped")
    return Summary(len(tasks), done, skipped, failed, time.perf_counter() - t0)

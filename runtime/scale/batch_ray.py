"""``beautyrt batch --ray``: the job's photo list as a Ray Dataset, ``map_batches`` over an actor pool of
``Worker``s (each actor loads and verifies the bundle once), the records streamed back to the driver, which
appends them to results.jsonl (``tools.batch.run_batch`` does the bookkeeping, the same as for the local pool).

Inputs and OUT_DIR are paths the actors open: on one machine any path; on a cluster a folder every node sees.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ..tools.batch import BatchSpec, Task, Worker
from .common import bundle_for_nodes, connect, require_ray

log = logging.getLogger("beautyrt")


class _Actor:
    """A Ray Data actor: one ``Worker`` (bundle loaded once); a batch of tasks in, their records (JSON) out."""

    def __init__(self, spec: dict, bundle_hash: str):
        self.worker = Worker(BatchSpec(**spec), bundle_hash)

    def __call__(self, batch: dict) -> dict:
        out = []
        for key, src, dst in zip(batch["key"], batch["input"], batch["output"]):
            r = self.worker.run(Task(key=str(key), input=str(src), output=str(dst)))
            out.append(json.dumps(r, separators=(",", ":")))
        return {"record": np.array(out, dtype=object)}


class RayExecutor:
    """``actors`` Ray actors of ``cpus_per_actor`` CPUs (and ``gpus_per_actor`` GPUs) each."""

    def __init__(
        self,
        address: Optional[str] = None,
        actors: int = 1,
        cpus_per_actor: float = 1.0,
        gpus_per_actor: float = 0.0,
        ship_bundle: bool = False,
        init_kw: Optional[dict] = None,
    ):
        require_ray("ray.data")
        from beautyrt.engines.errors import UsageError

        if isinstance(actors, bool) or not isinstance(actors, int) or not 1 <= actors <= 4096:
            raise UsageError(f"--workers must be an integer in 1..4096, got {actors!r}")
        if not 0 < float(cpus_per_actor) <= 1024:
            raise UsageError(f"--cpus-per-worker must be a number in (0, 1024], got {cpus_per_actor!r}")
        if not 0 <= float(gpus_per_actor) <= 64:
            raise UsageError(f"--gpus-per-worker must be a number in [0, 64], got {gpus_per_actor!r}")
        self.address, self.actors = address, actors
        self.cpus, self.gpus = float(cpus_per_actor), float(gpus_per_actor)
        self.ship, self.init_kw = ship_bundle, dict(init_kw or {})

    def run(self, spec: BatchSpec, bundle_hash: str, tasks: list[Task]) -> Iterator[dict]:
        import ray
        import ray.data

        path, runtime_env = bundle_for_nodes(Path(spec.bundle), self.ship)
        kw = dict(self.init_kw)
        if runtime_env:
            kw["runtime_env"] = runtime_env  # Ray uploads a local folder only as the job's working_dir
        started = connect(self.address, **kw)
        try:
            threads = spec.threads if spec.threads is not None else max(1, int(self.cpus))
            spec = dataclasses.replace(spec, bundle=path, threads=threads)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # the CLI draws its own
            rows = [{"key": t.key, "input": t.input, "output": t.output} for t in tasks]
            ds: Any = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
            remote: dict = {"num_cpus": self.cpus}
            if self.gpus:
                remote["num_gpus"] = self.gpus
            ds = ds.map_batches(
                _Actor,
                fn_constructor_kwargs={"spec": dataclasses.asdict(spec), "bundle_hash": bundle_hash},
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=self.actors),
                **remote,
            )
            for row in ds.iter_rows():
                yield json.loads(row["record"])
        finally:
            if started:
                ray.shutdown()

"""Bulk mode as a Ray Data pipeline: chunks of lines, ``map_batches`` over a pool of actors that each hold
one engine (a local model, on a GPU when ``num_gpus`` is given, or a served endpoint), results back in
input order.

Each actor runs :func:`~kgen.bulk.engine.run_chunk` on the same chunks the single-process run makes
(``batch_size`` lines, aligned on the line index), so the output is the same whatever the number of
actors. An actor that dies is restarted by Ray Data and its chunk run again (Ray Data's defaults for actor
pools: unlimited restarts and task retries); the driver writes the results, so the output stays resumable.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .engine import BulkLine, ChunkResult, EngineSpec, RunSettings, chunks_of, run_chunk
from .sources import MissingExtraError

LOCAL = "local"  # --ray without an address: start a Ray for this job


def import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingExtraError(
            f'--ray needs Ray Data ({exc}); install it with `pip install -e ".[ray]"`'
        ) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    address: str = LOCAL  # "local", "auto" or a cluster address (ray://host:10001, host:6379)
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    local_cpus: int | None = None  # CPUs of a local Ray started for the job (None: all)

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError("--ray-actors must be >= 1")


class ChunkWorker:
    """A Ray Data actor: builds its engine once, then turns pickled chunks into pickled ChunkResults."""

    def __init__(self, engine: EngineSpec, run: RunSettings) -> None:
        self.run = run
        self.backend = engine.build()

    def process(self, lines: list[BulkLine]) -> ChunkResult:
        return run_chunk(self.backend, self.run, lines)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy

        results = [pickle.dumps(self.process(pickle.loads(payload))) for payload in batch["payload"]]
        return {"chunk": batch["chunk"], "result": numpy.array(results, dtype=object)}


class RayExecutor:
    """Runs a job's chunks on Ray actors; ``results`` yields them in input order."""

    def __init__(
        self,
        engine: EngineSpec,
        run: RunSettings,
        batch_size: int,
        options: RayOptions,
        worker: type[ChunkWorker] = ChunkWorker,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        self.ray = import_ray()
        self.engine, self.run, self.batch_size = engine, run, batch_size
        self.options, self.worker = options, worker
        self.started_ray = False
        if not self.ray.is_initialized():
            address = None if options.address == LOCAL else options.address
            init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None and options.local_cpus is not None:
                init["num_cpus"] = options.local_cpus
            if runtime_env:
                init["runtime_env"] = runtime_env
            self.ray.init(address=address, **init)
            self.started_ray = True

    def _dataset(self, chunks: list[list[BulkLine]]):
        ray = self.ray
        items = [{"chunk": i, "payload": pickle.dumps(chunk)} for i, chunk in enumerate(chunks)]
        dataset = ray.data.from_items(
            items, override_num_blocks=max(1, min(len(items), 4 * self.options.actors))
        )
        mapped = dataset.map_batches(
            self.worker,
            fn_constructor_args=(self.engine, self.run),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.options.actors),
            num_cpus=self.options.cpus_per_actor,
            num_gpus=self.options.gpus_per_actor or None,
        )
        mapped.context.execution_options.preserve_order = True
        mapped.context.enable_progress_bars = False
        return mapped

    def results(self, lines: Sequence[BulkLine]) -> Iterator[ChunkResult]:
        chunks = list(chunks_of(lines, self.batch_size))
        if not chunks:
            return
        waiting: dict[int, ChunkResult] = {}
        next_chunk = 0
        for row in self._dataset(chunks).iter_rows():
            waiting[int(row["chunk"])] = pickle.loads(row["result"])
            while next_chunk in waiting:  # preserve_order keeps them in order; this makes it certain
                yield waiting.pop(next_chunk)
                next_chunk += 1
        if next_chunk != len(chunks):
            raise RuntimeError(f"Ray returned {next_chunk} of {len(chunks)} chunks")

    def close(self) -> None:
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False

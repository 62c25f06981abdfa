"""What turns bulk requests into output lines: the engine (a local model or a served endpoint), the run
settings, and the executors that keep the results in input order.

``run_chunk`` is the one function that makes output lines; the single-process executors and the Ray
actors all call it, so the output does not depend on where or how concurrently a line ran. A line's seed
comes from its request alone (resolved when the input is read), never from scheduling.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.served import ServedBackend, ServerOptions, ServerUnavailableError
from ..generation import Backend, SamplingSettings
from ..pipeline import UpsampleRequest, UpsampleResult, upsample_many, upsample_variants
from ..variants import variant_sampler


@dataclass(frozen=True)
class BulkLine:
    """One input line: its request, or why it has none."""

    index: int
    request: UpsampleRequest | None
    error: str | None = None


@dataclass(frozen=True)
class RunSettings:
    """How every request of a job is run (the same in every worker)."""

    model_spec: Any = None  # kgen.models.registry.ModelSpec, or None for a local model (TIPO v1 conventions)
    sampling: SamplingSettings | None = None
    variants: int = 1
    tgts_policy: str = "rw-mcts"


@dataclass(frozen=True)
class EngineSpec:
    """How to build the engine; picklable, so each Ray actor builds its own."""

    model: str
    models_dir: str | None = None
    offline: bool = False
    device: str = "auto"
    dtype: str | None = None
    server: ServerOptions | None = None

    def build(self) -> Backend:
        """The backend; raises the loader's or the server's errors."""
        if self.server is not None:
            return ServedBackend(self.server)
        from ..models.loader import LoadOptions, build_backend
        from ..models.store import ModelStore

        store = ModelStore(self.models_dir, offline=self.offline or None)
        loaded = build_backend(
            model_ref_for(self.model), store, LoadOptions(device=self.device, dtype=self.dtype)
        )
        return loaded.backend


def model_spec_for(name: str):
    """The registry entry for a model argument, or None for local paths (TIPO v1 conventions)."""
    from ..models.registry import UnknownModelError, parse_model_choice

    if Path(name).expanduser().exists():
        return None
    try:
        return parse_model_choice(name)[0]
    except UnknownModelError:
        return None


def model_ref_for(name: str):
    from ..models.registry import parse_model_choice
    from ..models.store import ModelRef

    path = Path(name).expanduser()
    if path.exists():
        return ModelRef(path=path)
    spec, gguf = parse_model_choice(name)
    if gguf is None and not spec.transformers_native:
        gguf = spec.gguf_files[0]  # only its GGUF files can be loaded
    return ModelRef(spec=spec, gguf_file=gguf)


@dataclass(frozen=True)
class ChunkResult:
    """Output lines (JSON, no newline) for consecutive input lines, and what they cost."""

    first_index: int
    lines: list[str]
    failed: int = 0
    tokens: int = 0
    seconds: float = 0.0


def result_record(outcome: UpsampleResult | list[UpsampleResult]) -> dict[str, Any]:
    """A line's JSON record: the ``--json`` fields without the wall time, which would make reruns differ."""
    if isinstance(outcome, UpsampleResult):
        record = outcome.to_dict()
        record.pop("seconds", None)
        return record
    return {"variants": [result_record(result) for result in outcome]}


def _tokens(outcome: UpsampleResult | list[UpsampleResult]) -> int:
    results = [outcome] if isinstance(outcome, UpsampleResult) else outcome
    return sum(result.prompt_tokens + result.completion_tokens for result in results)


def _outcomes(backend: Backend, run: RunSettings, requests: list[UpsampleRequest]) -> list[object]:
    if run.variants <= 1:
        return upsample_many(
            requests, backend, model=run.model_spec, sampling=run.sampling, return_exceptions=True
        )
    sampler = variant_sampler(backend, run.tgts_policy)
    outcomes: list[object] = []
    for request in requests:
        try:
            outcomes.append(
                upsample_variants(
                    request, backend, run.variants, run.model_spec, run.sampling, sampler=sampler
                )
            )
        except ServerUnavailableError:
            raise
        except Exception as exc:  # one bad request must not end the bulk run
            outcomes.append(exc)
    return outcomes


def _outcomes_isolating_failures(
    backend: Backend, run: RunSettings, requests: list[UpsampleRequest]
) -> list[object]:
    """Outcomes of the requests together; when the backend fails the whole batch (a server refusing one
    request, a prompt too long for llama.cpp), each request alone, so only the failing ones fail."""
    try:
        return _outcomes(backend, run, requests)
    except ServerUnavailableError:
        raise
    except Exception as exc:
        if len(requests) == 1:
            return [exc]
    return [_outcomes_isolating_failures(backend, run, [request])[0] for request in requests]


def run_chunk(backend: Backend, run: RunSettings, lines: Sequence[BulkLine]) -> ChunkResult:
    """Output lines for ``lines``, in order; a failed line gets an ``{"error": ...}`` record.

    Raises ServerUnavailableError (the job stops there and can be resumed) instead of failing lines."""
    started = time.perf_counter()
    runnable = [line for line in lines if line.request is not None]
    outcomes = _outcomes_isolating_failures(backend, run, [line.request for line in runnable])
    for outcome in outcomes:
        if isinstance(outcome, ServerUnavailableError):
            raise outcome
    by_index = dict(zip((line.index for line in runnable), outcomes, strict=True))
    texts: list[str] = []
    failed = tokens = 0
    for line in lines:
        outcome = by_index.get(line.index)
        if line.request is None or isinstance(outcome, Exception):
            failed += 1
            record: dict[str, Any] = {"error": line.error or f"line {line.index + 1}: {outcome}"}
        else:
            record = result_record(outcome)
            tokens += _tokens(outcome)
        texts.append(json.dumps(record, ensure_ascii=False))
    first = lines[0].index if lines else 0
    return ChunkResult(first, texts, failed, tokens, time.perf_counter() - started)


def chunks_of(lines: Sequence[BulkLine], size: int) -> Iterator[list[BulkLine]]:
    """Consecutive lines grouped by ``index // size``, so a resumed job batches as the first run did."""
    size = max(1, size)
    chunk: list[BulkLine] = []
    for line in lines:
        if chunk and line.index // size != chunk[0].index // size:
            yield chunk
            chunk = []
        chunk.append(line)
    if chunk:
        yield chunk


class BatchedExecutor:
    """One engine in this process; ``batch_size`` requests are generated together."""

    def __init__(self, backend: Backend, run: RunSettings, batch_size: int) -> None:
        self.backend, self.run, self.batch_size = backend, run, batch_size

    def results(self, lines: Sequence[BulkLine]) -> Iterator[ChunkResult]:
        for chunk in chunks_of(lines, self.batch_size):
            yield run_chunk(self.backend, self.run, chunk)

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def merge_chunks(parts: Sequence[ChunkResult]) -> ChunkResult:
    return ChunkResult(
        parts[0].first_index,
        [text for part in parts for text in part.lines],
        sum(part.failed for part in parts),
        sum(part.tokens for part in parts),
        sum(part.seconds for part in parts),
    )


class ConcurrentExecutor:
    """Up to ``concurrency`` requests in flight at once (threads; for a served engine), each request on its
    own; results come back in input order, ``commit_size`` lines at a time."""

    def __init__(self, backend: Backend, run: RunSettings, concurrency: int, commit_size: int) -> None:
        if concurrency < 1:
            raise ValueError("--concurrency must be >= 1")
        self.backend, self.run = backend, run
        self.concurrency, self.commit_size = concurrency, max(1, commit_size)

    def results(self, lines: Sequence[BulkLine]) -> Iterator[ChunkResult]:
        pending: deque[Future[ChunkResult]] = deque()
        ready: list[ChunkResult] = []
        upcoming = iter(lines)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="kgen-bulk") as pool:
            try:
                for line in upcoming:
                    pending.append(pool.submit(run_chunk, self.backend, self.run, [line]))
                    if len(pending) >= self.concurrency:
                        ready.append(pending.popleft().result())
                    if len(ready) >= self.commit_size:
                        yield merge_chunks(ready)
                        ready = []
                while pending:
                    ready.append(pending.popleft().result())
                if ready:
                    yield merge_chunks(ready)
            finally:
                for future in pending:
                    future.cancel()

    def close(self) -> None:
        pass

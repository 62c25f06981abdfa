"""The drivers: run a request's protocol steps against a backend, one request or many at once.

The protocols (``kgen.protocol.tipo_steps`` for TIPO, ``kgen.protocol.dtg`` for DanTagGen, chosen by
``kgen.protocol.steps``) are step generators: they yield :class:`GenerationCall` and receive the
:class:`Completion`, and know of the model only its :class:`kgen.protocol.budget.TokenBudget`. This
module sends the calls to a :class:`kgen.generation.Backend`: :func:`upsample` drives one request,
:func:`upsample_many` drives several in lockstep so that each round of generation steps goes to the
backend as one batch (a request's results are the same alone or in a batch), and
:func:`upsample_variants` gives several results for one request, its shared first model input
answered by one :data:`VariantSampler` call.

The guarantees on what a result holds are the protocols' (``kgen.protocol.tipo_steps`` lists them).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from .generation import Backend, Completion, SamplingSettings
from .protocol import dtg
from .protocol.budget import PromptTooLongError, TokenBudget
from .protocol.request import (
    DEFAULT_FORMAT,
    SEED_LIMIT,
    Attempt,
    GenerationCall,
    RequestError,
    RetryPolicy,
    UpsampleRequest,
    UpsampleResult,
)
from .protocol.steps import first_model_input, request_steps
from .protocol.tags import TagMap

__all__ = [
    "DEFAULT_FORMAT",
    "SEED_LIMIT",
    "Attempt",
    "GenerationCall",
    "PromptTooLongError",
    "RequestError",
    "RetryPolicy",
    "UpsampleRequest",
    "UpsampleResult",
    "VariantSampler",
    "first_model_input",
    "generate_tags",
    "independent_variants",
    "token_budget",
    "upsample",
    "upsample_many",
    "upsample_variants",
]

Result = TypeVar("Result")


def token_budget(backend: Backend) -> TokenBudget:
    """What the protocol steps need to know of the backend's model."""
    return TokenBudget(backend.context_length, backend.count_tokens)


def drive(steps: Generator[GenerationCall, Completion, Result], backend: Backend) -> Result:
    """Run one step generator to its end, each call a single-prompt ``backend.generate``."""
    try:
        call = next(steps)
        while True:
            completion = backend.generate([call.prompt], call.settings, [call.seed])[0]
            call = steps.send(completion)
    except StopIteration as done:
        return done.value


def _steps(
    request: UpsampleRequest,
    backend: Backend,
    model: Any,
    sampling: SamplingSettings | None,
    policy: RetryPolicy,
) -> Generator[GenerationCall, Completion, UpsampleResult]:
    return request_steps(request, token_budget(backend), model, sampling, policy)


def generate_tags(backend: Backend, tags: TagMap, **options: Any) -> dtg.DtgResult:
    """DanTagGen's extend-and-retry loop on the user's tags alone; ``options`` are the keywords of
    ``kgen.protocol.dtg.tag_steps`` (``length``, ``seed``, ``ban``, ``settings``, ...)."""
    return drive(dtg.tag_steps(tags, token_budget(backend), **options), backend)


def upsample(
    request: UpsampleRequest,
    backend: Backend,
    model: Any = None,
    sampling: SamplingSettings | None = None,
    policy: RetryPolicy | None = None,
) -> UpsampleResult:
    """Run one request against ``backend``. ``model`` is the
    ``kgen.models.registry.ModelSpec`` (None: TIPO v1);
    ``sampling`` None uses the protocol's defaults."""
    return drive(_steps(request, backend, model, sampling, policy or RetryPolicy()), backend)


def upsample_many(
    requests: Sequence[UpsampleRequest],
    backend: Backend,
    model: Any = None,
    sampling: SamplingSettings | None = None,
    policy: RetryPolicy | None = None,
    *,
    return_exceptions: bool = False,
) -> list[UpsampleResult | Exception]:
    """Run several requests in lockstep: each round, the pending model inputs of all requests that share
    sampling settings go to ``backend.generate`` as one batch. Results keep the request order.

    ``return_exceptions``: a request that fails (e.g. :class:`PromptTooLongError`) gives its exception in
    its slot instead of aborting the batch.
    """
    lockstep = _Lockstep(len(requests), return_exceptions)
    policy = policy or RetryPolicy()
    for index, request in enumerate(requests):
        lockstep.start(index, lambda r=request: _steps(r, backend, model, sampling, policy))
    return lockstep.run(backend)


# A variant sampler continues one model input ``n`` times: (prompt, n, settings, seed) -> n completions.
VariantSampler = Callable[[str, int, SamplingSettings, int], list[Completion]]


def independent_variants(backend: Backend) -> VariantSampler:
    """The baseline variant sampler: ``n`` independent samples, seeds ``seed .. seed + n - 1``, one batch."""

    def sample(prompt: str, n: int, settings: SamplingSettings, seed: int) -> list[Completion]:
        return backend.generate([prompt] * n, settings, [(seed + i) % SEED_LIMIT for i in range(n)])

    return sample


def upsample_variants(
    request: UpsampleRequest,
    backend: Backend,
    n: int,
    model: Any = None,
    sampling: SamplingSettings | None = None,
    policy: RetryPolicy | None = None,
    *,
    sampler: VariantSampler | None = None,
) -> list[UpsampleResult]:
    """``n`` different results for one request (one per image of a batch).

    Variant ``i`` is the request with seed ``seed + i``, so variant 0 equals :func:`upsample` of the request
    when ``sampler`` is the independent one. The first model input is the same for every variant: it goes
    once to ``sampler`` (e.g. TGTS, which shares the computation of common prefixes) for ``n`` completions;
    each variant then runs its own retries and later tasks, batched in lockstep.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RequestError(f"the number of variants must be a positive integer, not {n!r}")
    policy = policy or RetryPolicy()
    sampler = sampler or independent_variants(backend)
    lockstep = _Lockstep(n, return_exceptions=False)
    for i in range(n):
        variant = replace(request, seed=(request.seed + i) % SEED_LIMIT)
        lockstep.start(i, lambda r=variant: _steps(r, backend, model, sampling, policy))
    first = {index: call for index, (_, call) in lockstep.pending.items()}
    prompts = {(call.prompt, call.settings) for call in first.values()}
    if len(first) == n and len(prompts) == 1:
        call = first[0]
        completions = sampler(call.prompt, n, call.settings, call.seed)
        if len(completions) != n:
            raise RuntimeError(f"the variant sampler returned {len(completions)} completions for {n}")
        for index, completion in enumerate(completions):
            lockstep.advance(index, completion)
    return lockstep.run(backend)  # type: ignore[return-value]


class _Lockstep:
    """Drives request step generators together, batching each round's model inputs per sampling settings."""

    def __init__(self, size: int, return_exceptions: bool) -> None:
        self.results: list[UpsampleResult | Exception | None] = [None] * size
        self.pending: dict[int, tuple[Generator, GenerationCall]] = {}
        self.return_exceptions = return_exceptions

    def _fail(self, index: int, exc: Exception) -> None:
        self.pending.pop(index, None)
        if not self.return_exceptions:
            raise exc
        self.results[index] = exc

    def start(self, index: int, make_steps: Callable[[], Generator]) -> None:
        try:
            steps = make_steps()
            self.pending[index] = (steps, next(steps))
        except StopIteration as done:
            self.results[index] = done.value
        except Exception as exc:
            self._fail(index, exc)

    def advance(self, index: int, completion: Completion) -> None:
        steps = self.pending[index][0]
        try:
            self.pending[index] = (steps, steps.send(completion))
        except StopIteration as done:
            self.results[index] = done.value
            self.pending.pop(index, None)
        except Exception as exc:
            self._fail(index, exc)

    def run(self, backend: Backend) -> list[UpsampleResult | Exception]:
        while self.pending:
            groups: dict[SamplingSettings, list[int]] = {}
            for index, (_, call) in self.pending.items():
                groups.setdefault(call.settings, []).append(index)
            for settings, indices in groups.items():
                calls = [self.pending[i][1] for i in indices]
                completions = backend.generate([c.prompt for c in calls], settings, [c.seed for c in calls])
                for index, completion in zip(indices, completions, strict=True):
                    self.advance(index, completion)
        return self.results  # type: ignore[return-value]

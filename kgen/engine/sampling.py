"""Token sampling as a chain of small steps, like llama.cpp's sampler chain.

Each step narrows or reshapes a batch of ``Candidates`` (one row per sequence); the chain ends with a draw.
Order: repetition penalty, top-k, temperature, top-p, min-p, then draw. That is transformers' order
(penalty, temperature, top-k, ...) with temperature moved after top-k, which selects the same tokens
(temperature keeps the ranking) and scales k scores instead of the whole vocabulary. Temperature 0 means
greedy. Randomness comes only from one ``torch.Generator`` per row, so a row's
tokens depend on its own seed and logits, never on the other rows of the batch or on the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..generation import SamplingSettings


@dataclass(frozen=True)
class Candidates:
    """Scores of the tokens still in play.

    ``logits`` is (rows, n) float32 with ``-inf`` for tokens ruled out. ``token_ids`` (rows, n) maps
    columns to vocabulary ids; ``None`` means column == token id (the full vocabulary, before top-k).
    ``descending`` says the columns are sorted by logit, highest first.
    """

    logits: torch.Tensor
    token_ids: torch.Tensor | None = None
    descending: bool = False

    def ids(self) -> torch.Tensor:
        if self.token_ids is not None:
            return self.token_ids
        rows, n = self.logits.shape
        return torch.arange(n, device=self.logits.device).expand(rows, n)

    def sorted(self) -> Candidates:
        if self.descending:
            return self
        logits, order = torch.sort(self.logits, dim=-1, descending=True)
        return Candidates(logits, self.ids().gather(-1, order), descending=True)


@dataclass(frozen=True)
class SamplingContext:
    """What steps may look at besides the scores: the tokens in each row so far, as ``seen`` (rows, vocab)
    bool and/or ``history`` (rows, n) token ids (repeats allowed; rows padded with one of their own ids).
    With both, they must agree; ``history`` is the fast one for a full vocabulary (gather/scatter of n
    scores instead of a pass over every score)."""

    seen: torch.Tensor | None = None
    history: torch.Tensor | None = None


class SamplerStep(Protocol):
    def __call__(self, candidates: Candidates, context: SamplingContext) -> Candidates: ...


@dataclass(frozen=True)
class RepetitionPenalty:
    """CTRL-style penalty on every token already in the row: positive logits divided, negative multiplied."""

    penalty: float

    def __call__(self, candidates: Candidates, context: SamplingContext) -> Candidates:
        if self.penalty == 1.0 or (context.seen is None and context.history is None):
            return candidates
        logits = candidates.logits
        if context.history is not None and candidates.token_ids is None:
            history = context.history.to(logits.device)
            scores = logits.gather(-1, history)
            penalized = torch.where(scores > 0, scores / self.penalty, scores * self.penalty)
            return Candidates(logits.scatter(-1, history, penalized), None, candidates.descending)
        if context.history is not None:
            history = context.history.to(logits.device)
            seen = (candidates.token_ids.unsqueeze(-1) == history.unsqueeze(1)).any(-1)
        else:
            seen = context.seen
            if candidates.token_ids is not None:
                seen = seen.gather(-1, candidates.token_ids)
        penalized = torch.where(logits > 0, logits / self.penalty, logits * self.penalty)
        return Candidates(torch.where(seen, penalized, logits), candidates.token_ids)


@dataclass(frozen=True)
class Temperature:
    temperature: float

    def __call__(self, candidates: Candidates, context: SamplingContext) -> Candidates:
        if self.temperature == 1.0:
            return candidates
        return Candidates(candidates.logits / self.temperature, candidates.token_ids, candidates.descending)


@dataclass(frozen=True)
class TopK:
    """Keep the ``k`` highest-scoring tokens (0: keep all). Narrows the candidates to k sorted columns."""

    k: int

    def __call__(self, candidates: Candidates, context: SamplingContext) -> Candidates:
        n = candidates.logits.shape[-1]
        if self.k <= 0 or self.k >= n:
            return candidates
        logits, columns = torch.topk(candidates.logits, self.k, dim=-1, largest=True, sorted=True)
        return Candidates(logits, candidates.ids().gather(-1, columns), descending=True)


@dataclass(frozen=True)
class TopP:
    """Nucleus: keep the smallest set of best tokens whose probability reaches ``p`` (at least one)."""

    p: float

    def __call__(self, candidates: Candidates, context: SamplingContext) -> Candidates:
        if self.p >= 1.0:
            return candidates
        ranked = candidates.sorted()
        probs = torch.softmax(ranked.logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the better tokens
        drop = before >= self.p
        drop[:, 0] = False
        return Candidates(ranked.logits.masked_fill(drop, float("-inf")), ranked.token_ids, True)


@dataclass(frozen=True)
class MinP:
    """Drop tokens less likely than ``p`` times the most likely one."""

    p: float

    def __call__(self, candidates: Candidates, context: SamplingContext) -> Candidates:
        if self.p <= 0.0:
            return candidates
        probs = torch.softmax(candidates.logits, dim=-1)
        floor = probs.amax(dim=-1, keepdim=True) * self.p
        logits = candidates.logits.masked_fill(probs < floor, float("-inf"))
        return Candidates(logits, candidates.token_ids, candidates.descending)


class Selector(Protocol):
    def __call__(self, candidates: Candidates, generators: Sequence[torch.Generator]) -> torch.Tensor: ...


def greedy(candidates: Candidates, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """The best token of each row (ties: the lowest id, as ``argmax`` over the vocabulary)."""
    column = torch.argmax(candidates.logits, dim=-1, keepdim=True)
    return candidates.ids().gather(-1, column).squeeze(-1)


def draw(candidates: Candidates, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row from softmax(logits), by inverse CDF with one uniform from the row's generator."""
    probs = torch.softmax(candidates.logits.double(), dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    uniforms = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
    targets = uniforms.to(cdf.device).unsqueeze(-1) * cdf[:, -1:]
    column = torch.searchsorted(cdf, targets, right=True).clamp_(max=cdf.shape[-1] - 1)
    return candidates.ids().gather(-1, column).squeeze(-1)


@dataclass(frozen=True)
class SamplerChain:
    steps: tuple[SamplerStep, ...]
    select: Selector

    def __call__(
        self,
        logits: torch.Tensor,
        generators: Sequence[torch.Generator],
        seen: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next token id of each row of ``logits`` (rows, vocab); one generator per row.

        ``seen`` / ``history``: the tokens of each row so far (see ``SamplingContext``)."""
        if len(generators) != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} rows of logits but {len(generators)} generators")
        candidates = Candidates(logits.float())
        context = SamplingContext(seen=seen, history=history)
        for step in self.steps:
            candidates = step(candidates, context)
        return self.select(candidates, generators)

    @property
    def uses_history(self) -> bool:
        return any(isinstance(step, RepetitionPenalty) and step.penalty != 1.0 for step in self.steps)


def build_chain(settings: SamplingSettings) -> SamplerChain:
    """The sampler chain for ``settings``; temperature 0 is greedy (after the repetition penalty)."""
    penalty: tuple[SamplerStep, ...] = ()
    if settings.repetition_penalty != 1.0:
        penalty = (RepetitionPenalty(settings.repetition_penalty),)
    if settings.temperature == 0:
        return SamplerChain(penalty, greedy)
    steps: list[SamplerStep] = list(penalty)
    if settings.top_k > 0:
        steps.append(TopK(settings.top_k))
    steps.append(Temperature(settings.temperature))
    if settings.top_p < 1.0:
        steps.append(TopP(settings.top_p))
    if settings.min_p > 0.0:
        steps.append(MinP(settings.min_p))
    return SamplerChain(tuple(steps), draw)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from any Python int (negative and huge seeds are folded into 64 bits)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed % (1 << 63))
    return generator

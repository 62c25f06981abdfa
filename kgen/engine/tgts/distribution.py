"""Next-token distributions for tree nodes, computed by the backends' sampler chain (one code path)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...generation import SamplingSettings
from ..sampling import Candidates, SamplerChain, SamplingContext, build_chain, draw, greedy


def allowed_probabilities(
    logits: torch.Tensor, seen: torch.Tensor, settings: SamplingSettings | SamplerChain
) -> torch.Tensor:
    """Sampling probabilities ``[rows, vocab]`` as the chain's draw uses them; zero outside the allowed set.

    ``seen`` ``[rows, vocab]`` (bool) marks the tokens already in each row (repetition penalty).
    """
    chain = settings if isinstance(settings, SamplerChain) else build_chain(settings)
    candidates = Candidates(logits.float())
    context = SamplingContext(seen=seen)
    for step in chain.steps:
        candidates = step(candidates, context)
    if chain.select is greedy:
        best = greedy(candidates, [])
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, best[:, None], 1.0)
    column_probs = torch.softmax(candidates.logits, dim=-1)
    dense = torch.zeros_like(logits, dtype=torch.float32)
    return dense.scatter_(-1, candidates.ids(), column_probs)


def sample_rows(
    chain: SamplerChain, logits: torch.Tensor, seen: torch.Tensor, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """One token per row, exactly as the backends sample (same chain, one generator per row)."""
    return chain(logits, generators, seen)


@dataclass(frozen=True)
class NextToken:
    """A cached next-token distribution: allowed ids, their sampling probabilities and raw probabilities."""

    ids: torch.Tensor  # [k] long
    probs: torch.Tensor  # [k] float, sums to 1
    raw_probs: torch.Tensor  # [k] float, softmax of the unprocessed logits (for node scores)

    @classmethod
    def from_row(cls, probs: torch.Tensor, raw_probs: torch.Tensor) -> NextToken:
        ids = torch.nonzero(probs > 0).reshape(-1)
        return cls(ids, probs[ids], raw_probs[ids])

    def sample(self, generator: torch.Generator) -> tuple[int, float]:
        """One token id (drawn like the chain's ``draw``) and its raw probability."""
        candidates = Candidates(torch.log(self.probs)[None], self.ids[None])
        token = int(draw(candidates, [generator])[0])
        pick = int(torch.nonzero(self.ids == token)[0, 0])
        return token, float(self.raw_probs[pick])

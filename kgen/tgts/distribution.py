"""Next-token distributions under the sampling settings, shared by every tree node and growing sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.base import SamplingSettings


def allowed_probabilities(logits: torch.Tensor, seen: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Sampling probabilities ``[batch, vocab]``: zero outside the allowed top-k/top-p/min-p set.

    ``seen`` ``[batch, vocab]`` (bool) marks tokens already in each row's sequence, for the repetition penalty.
    """
    return _filtered_probabilities(logits, seen, settings)


def _filtered_probabilities(logits: torch.Tensor, seen: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    # Same order as transformers' generate: repetition penalty, temperature, top-k, top-p, min-p.
    logits = logits.float()
    if settings.repetition_penalty != 1.0:
        penalised = torch.where(
            logits > 0, logits / settings.repetition_penalty, logits * settings.repetition_penalty
        )
        logits = torch.where(seen, penalised, logits)
    if settings.temperature == 0:
        best = logits.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(logits).scatter_(-1, best, 1.0)
    logits = logits / settings.temperature
    if 0 < settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < settings.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= 1 - settings.top_p
        drop_sorted[:, -1] = False
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    probs = logits.softmax(dim=-1)
    if settings.min_p > 0:
        floor = settings.min_p * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


@dataclass(frozen=True)
class NextToken:
    """A cached next-token distribution: the allowed ids, their sampling probabilities and raw probabilities."""

    ids: torch.Tensor  # [k] long
    probs: torch.Tensor  # [k] float, sums to 1
    raw_probs: torch.Tensor  # [k] float, softmax of the unprocessed logits (for node scores)

    @classmethod
    def from_row(cls, probs: torch.Tensor, raw_probs: torch.Tensor) -> NextToken:
        ids = torch.nonzero(probs > 0).reshape(-1)
        return cls(ids, probs[ids], raw_probs[ids])

    def sample(self, generator: torch.Generator) -> tuple[int, float]:
        """One token id and its raw probability."""
        pick = torch.multinomial(self.probs, 1, generator=generator).item()
        return int(self.ids[pick]), float(self.raw_probs[pick])

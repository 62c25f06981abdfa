"""Fitting a model input into the model's context window, for every protocol.

A protocol step builds its model input from the user's own text plus fed-back content (tags or
sentences a previous attempt produced). :func:`fit_prompt` leaves fed-back items out until the input
leaves room to generate, then shrinks ``max_new_tokens`` to the room left; when even the user's text
alone leaves less than ``min_new_tokens`` of room, :class:`PromptTooLongError`. No model input it
returns exceeds ``TokenBudget.context_length`` minus the ``max_new_tokens`` it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from ..generation import SamplingSettings


@dataclass(frozen=True)
class TokenBudget:
    """What a protocol needs to know of the model: its window and how it counts a prompt's tokens."""

    context_length: int  # maximum prompt + completion tokens
    count_tokens: Callable[[str], int]  # tokens the model sees for a prompt (BOS included)

    def room(self, prompt: str) -> int:
        """Tokens left for generation after ``prompt``."""
        return self.context_length - self.count_tokens(prompt)


class PromptTooLongError(ValueError):
    """The model input cannot fit the context window even without fed-back content.

    ``prompt`` is that input (the user's own text only), ``prompt_tokens`` its size and
    ``min_new_tokens`` the generation room it would have needed.
    """

    def __init__(self, prompt: str, prompt_tokens: int, context_length: int, min_new_tokens: int, hint: str):
        super().__init__(
            f"the model input needs {prompt_tokens} tokens but the context window is {context_length} "
            f"tokens and at least {min_new_tokens} must stay free for generation; {hint}"
        )
        self.prompt = prompt
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length
        self.min_new_tokens = min_new_tokens
        self._hint = hint

    def __reduce__(self):  # picklable (bulk results cross process boundaries)
        return type(self), (
            self.prompt,
            self.prompt_tokens,
            self.context_length,
            self.min_new_tokens,
            self._hint,
        )


class TrimRule(Enum):
    """How fed-back items are left out when the full model input leaves too little room."""

    # Keep the most items that still leave room for all of ``max_new_tokens`` (binary search; TIPO).
    KEEP_MOST = "keep-most"
    # Drop a quarter of the items at a time until ``min_new_tokens`` fit (few token counts; DanTagGen).
    DROP_QUARTERS = "drop-quarters"


@dataclass(frozen=True)
class FittedPrompt:
    """A model input that fits, how many fed-back items it kept and the settings to generate with."""

    prompt: str
    kept: int
    settings: SamplingSettings
    trimmed: bool  # some fed-back items were left out


def fit_prompt(
    budget: TokenBudget,
    build: Callable[[int], str],
    fed_items: int,
    settings: SamplingSettings,
    *,
    min_new_tokens: int,
    rule: TrimRule,
    hint: str = "shorten the tags or the caption",
) -> FittedPrompt:
    """The model input ``build(k)`` with the most fed-back items ``k <= fed_items`` the rule allows.

    ``build(k)`` must grow with ``k``; ``build(0)`` is the user's text alone. ``max_new_tokens`` is cut
    to the room left; at least ``min(min_new_tokens, settings.max_new_tokens)`` must stay free.
    """
    needed = min(min_new_tokens, settings.max_new_tokens)
    if rule is TrimRule.KEEP_MOST:
        kept = _most_fitting(fed_items, lambda k: budget.room(build(k)) >= settings.max_new_tokens)
    else:
        kept = _drop_quarters(fed_items, lambda k: budget.room(build(k)) >= needed)
    prompt = build(kept)
    room = budget.room(prompt)
    if room < needed:
        raise PromptTooLongError(prompt, budget.count_tokens(prompt), budget.context_length, needed, hint)
    if room < settings.max_new_tokens:
        settings = replace(settings, max_new_tokens=room)
    return FittedPrompt(prompt, kept, settings, kept < fed_items)


def _most_fitting(n: int, fits: Callable[[int], bool]) -> int:
    """Largest k in [0, n] with fits(k) (monotone), or 0 when none fits."""
    if fits(n):
        return n
    if n == 0 or not fits(0):
        return 0
    low, high = 0, n - 1  # fits(low) holds; fits(n) fails
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _drop_quarters(n: int, fits: Callable[[int], bool]) -> int:
    """From k = n down, dropping a quarter (at least one) at a time, the first k with fits(k); else 0."""
    kept = n
    while kept and not fits(kept):
        kept = max(0, min(kept - 1, kept * 3 // 4))
    return kept

"""The contract between the prompt pipeline and a text-generation backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling knobs. Defaults are the reference WebUI extension's TIPO settings."""

    temperature: float = 0.5
    top_k: int = 80
    top_p: float = 0.95
    min_p: float = 0.1
    repetition_penalty: float = 1.17
    max_new_tokens: int = 512
    stop_on_eos: bool = True

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0 disables it)")
        if not 0 <= self.top_p <= 1:
            raise ValueError("top_p must be within [0, 1]")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be within [0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0 (1 disables it)")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")


@dataclass(frozen=True)
class Completion:
    """One generated continuation.

    ``text`` is the continuation only (not the prompt), decoded without BOS/EOS/padding tokens;
    the model's own added tokens such as ``<|long|>`` stay in the text.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float = 0.0
    finished: bool = True  # False when cut at max_new_tokens


class AttemptTotals:
    """Totals over ``self.attempts``, a list of records that each hold a ``prompt`` and its ``completion``."""

    attempts: list

    @property
    def model_inputs(self) -> list[str]:
        return [a.prompt for a in self.attempts]

    @property
    def prompt_tokens(self) -> int:
        return sum(a.completion.prompt_tokens for a in self.attempts)

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion.completion_tokens for a in self.attempts)

    @property
    def generation_seconds(self) -> float:
        """Time spent in the backend (wall time of the whole run may be longer)."""
        return sum(a.completion.seconds for a in self.attempts)


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from a model. Implementations own their model and tokenizer."""

    name: str
    context_length: int  # maximum prompt + completion tokens

    def count_tokens(self, text: str) -> int:
        """Number of tokens the model sees for ``text`` as a prompt (BOS included)."""
        ...

    def generate(
        self, prompts: Sequence[str], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[Completion]:
        """Continue each prompt; ``seeds[i]`` alone determines the randomness of prompt ``i``."""
        ...

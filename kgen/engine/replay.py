"""A scripted backend: returns given completions and records every model input.

It makes the whole pipeline testable without a model, and it behaves like a strict real backend
where that matters to the pipeline: it refuses a prompt that leaves no room for ``max_new_tokens``
inside ``context_length`` (llama.cpp raises "exceeds context window" in that case) and it cuts a
completion at ``max_new_tokens``, reporting ``finished=False``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..generation import Completion, SamplingSettings

_TOKEN = re.compile(r"<\|[^|<>\s]*\|>|</?s>|\w+|[^\w\s]", re.UNICODE)


def count_simple_tokens(text: str) -> int:
    """Deterministic stand-in for a tokenizer: words, single punctuation marks, ``<s>``, ``</s>`` and
    ``<|special|>`` tokens count one each."""
    return len(_TOKEN.findall(text))


class ContextWindowExceeded(RuntimeError):
    """Raised by the replay backend, like llama.cpp, when a prompt cannot fit its context window."""


class ReplayExhausted(RuntimeError):
    """More generate calls than scripted completions."""


@dataclass(frozen=True)
class ModelInput:
    """What one prompt of one ``generate`` call looked like."""

    prompt: str
    settings: SamplingSettings
    seed: int
    prompt_tokens: int


Script = Sequence[str | Completion] | Callable[[str, int], str | Completion]


@dataclass
class ReplayBackend:
    """Backend that answers from a script.

    ``completions`` is either a sequence of completion texts (or :class:`Completion` objects, returned with
    their text and ``finished`` flag as they are), handed out in order across all prompts
    (``when_exhausted``: "error" raises :class:`ReplayExhausted`, "repeat_last" repeats the last one,
    "empty" returns ""), or a callable ``(prompt, seed) -> text``.
    Token counts use ``token_counter`` (default: :func:`count_simple_tokens`); a prompt counts one
    extra token for BOS. A completion longer than ``max_new_tokens`` is cut there (with a custom
    ``token_counter`` it is only marked ``finished=False``, its text kept whole).
    Every prompt is recorded in ``inputs`` (flat) and ``calls`` (one list per ``generate`` call).
    """

    completions: Script = ()
    context_length: int = 4096
    token_counter: Callable[[str], int] = count_simple_tokens
    when_exhausted: str = "error"
    name: str = "replay"
    inputs: list[ModelInput] = field(default_factory=list, init=False)
    calls: list[list[ModelInput]] = field(default_factory=list, init=False)
    _next: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.when_exhausted not in {"error", "repeat_last", "empty"}:
            raise ValueError(
                f"when_exhausted must be 'error', 'repeat_last' or 'empty', not {self.when_exhausted!r}"
            )
        if self.context_length < 1:
            raise ValueError("context_length must be >= 1")
        if not callable(self.completions):
            self.completions = list(self.completions)

    @property
    def prompts(self) -> list[str]:
        """Every prompt sent so far, in order."""
        return [item.prompt for item in self.inputs]

    @property
    def seeds(self) -> list[int]:
        return [item.seed for item in self.inputs]

    def count_tokens(self, text: str) -> int:
        return self.token_counter(text) + 1  # BOS

    def _script(self, prompt: str, seed: int) -> str | Completion:
        if callable(self.completions):
            return self.completions(prompt, seed)
        scripted: list[str | Completion] = self.completions  # type: ignore[assignment]
        if self._next < len(scripted):
            text = scripted[self._next]
            self._next += 1
            return text
        if self.when_exhausted == "repeat_last" and scripted:
            return scripted[-1]
        if self.when_exhausted == "empty":
            return ""
        raise ReplayExhausted(f"replay backend ran out of completions after {len(scripted)} generations")

    def _truncate(self, text: str, max_tokens: int) -> tuple[str, int, bool]:
        used = self.token_counter(text)
        if used <= max_tokens:
            return text, used, True
        # Cut just before the first token past the budget; keep preceding whitespace like a detokenizer.
        matches = list(_TOKEN.finditer(text))
        if self.token_counter is count_simple_tokens and len(matches) > max_tokens:
            return text[: matches[max_tokens].start()], max_tokens, False
        return text, used, False

    def generate(
        self, prompts: Sequence[str], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[Completion]:
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        batch: list[ModelInput] = []
        results: list[Completion] = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            prompt_tokens = self.count_tokens(prompt)
            record = ModelInput(prompt, settings, int(seed), prompt_tokens)
            batch.append(record)
            self.inputs.append(record)
            if prompt_tokens + settings.max_new_tokens > self.context_length:
                self.calls.append(batch)
                raise ContextWindowExceeded(
                    f"Requested tokens ({prompt_tokens} + {settings.max_new_tokens}) exceed context window "
                    f"of {self.context_length}"
                )
            scripted = self._script(prompt, int(seed))
            if isinstance(scripted, Completion):  # scripted as is, e.g. to simulate a cut completion
                text, used, finished = scripted.text, self.token_counter(scripted.text), scripted.finished
            else:
                text, used, finished = self._truncate(scripted, settings.max_new_tokens)
            results.append(Completion(text, prompt_tokens, used, 0.0, finished))
        self.calls.append(batch)
        return results


def replay(completions: Iterable[str] | Callable[[str, int], str], **options: Any) -> ReplayBackend:
    """Shorthand: ``replay(["tag: a, b", ...], context_length=2048)``."""
    script = completions if callable(completions) else list(completions)
    return ReplayBackend(script, **options)

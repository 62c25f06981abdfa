"""The text of generated tokens as it reads after the prompt (the tokenizer's spacing at the seam)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

_RAW = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}


class ContinuationDecoder:
    """Decodes continuations of one prompt; the ids in ``hidden`` (BOS/EOS/padding) are dropped."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], hidden: Collection[int]) -> None:
        self.tokenizer = tokenizer
        self.hidden = frozenset(hidden)
        self.head = [t for t in prompt_ids if t not in self.hidden]
        self._before: str | None = None

    def __call__(self, generated: Sequence[int]) -> str:
        tail = [t for t in generated if t not in self.hidden]
        if not tail:
            return ""
        decode = self.tokenizer.decode
        if self._before is None:
            self._before = decode(self.head, **_RAW)
        full = decode(self.head + tail, **_RAW)
        if full.startswith(self._before):
            return full[len(self._before) :]
        return decode(tail, **_RAW)

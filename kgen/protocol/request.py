"""A request to upsample, the generation calls its protocol steps make and the result they return.

Pure data and validation (no backend, no torch): :class:`UpsampleRequest` checks every field up front
and raises :class:`RequestError` naming the field; the protocol step generators
(``kgen.protocol.steps``) yield :class:`GenerationCall` and return :class:`UpsampleResult`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..generation import AttemptTotals, Completion, SamplingSettings
from . import formats, tipo
from .lengths import Length
from .postprocess import BanList, split_tags
from .tags import TagCategory, TagMap

DEFAULT_FORMAT = formats.DEFAULT_FORMAT
SEED_LIMIT = 2**32  # backends get seeds in [0, 2**32)


class RequestError(ValueError):
    """A request that cannot be run; the message names the field and the problem."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard each TIPO task tries to reach its length target (the reference allows 11 attempts)."""

    max_attempts: int = 11
    max_stalls: int = 3  # attempts in a row that add nothing end the task
    min_new_tokens: int = 64  # least generation room worth a call when the prompt alone is long

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_stalls < 1:
            raise ValueError("max_stalls must be >= 1")
        if self.min_new_tokens < 1:
            raise ValueError("min_new_tokens must be >= 1")


@dataclass
class UpsampleRequest:
    """One prompt to upsample.

    ``tags``: a comma-separated string or a list. ``nl``: the natural-language caption. Lengths accept
    ``Length`` or text (``"very short"``, ``"very_short"``). ``seed`` None or negative draws a random
    seed (reported in the result). ``ban_tags``: comma-separated string or list of ban rules (plain
    text or regex, see ``kgen.protocol.postprocess``). ``format``: a preset name of
    ``kgen.protocol.formats`` or a
    template with ``<|general|>``-style placeholders. ``extra_nl``: also generate a caption from the
    tags; None decides from the format like the reference extension (the format shows
    ``<|generated|>``, or ``<|extended|>`` without a user caption). ``no_formatting``: the final prompt
    is the user's text with the new content appended, instead of the formatted one.
    """

    tags: str | Sequence[str] = ""
    nl: str = ""
    tag_length: Length | str = Length.LONG
    nl_length: Length | str = Length.LONG
    aspect_ratio: float | None = 1.0
    seed: int | None = 0
    ban_tags: str | Sequence[str] = ""
    format: str = DEFAULT_FORMAT
    expand_tags: bool = True
    expand_nl: bool = True
    tag_first: bool = True
    extra_nl: bool | None = None
    no_formatting: bool = False
    add_quality: bool = True
    # Derived in __post_init__:
    tag_list: list[str] = field(init=False, repr=False)  # the tags, split and stripped
    bans: BanList = field(init=False, repr=False)  # compiled ban rules
    template: str = field(init=False, repr=False)  # the format template the preset name stands for

    def __post_init__(self) -> None:
        if isinstance(self.tags, str):
            self.tag_list = split_tags(self.tags)
        elif isinstance(self.tags, Iterable):
            items = list(self.tags)
            bad = [t for t in items if not isinstance(t, str)]
            if bad:
                raise RequestError(f"tags must be strings, got {bad[0]!r}")
            self.tag_list = split_tags(items)
        else:
            raise RequestError(f"tags must be a comma-separated string or a list, not {self.tags!r}")
        if self.nl is None:
            self.nl = ""
        if not isinstance(self.nl, str):
            raise RequestError(f"nl must be a string, not {type(self.nl).__name__}")
        try:
            self.tag_length = Length.parse(self.tag_length, Length.LONG)
        except ValueError as exc:
            raise RequestError(f"tag_length: {exc}") from None
        try:
            self.nl_length = Length.parse(self.nl_length, Length.LONG)
        except ValueError as exc:
            raise RequestError(f"nl_length: {exc}") from None
        for name in ("expand_tags", "expand_nl", "tag_first", "no_formatting", "add_quality"):
            if not isinstance(getattr(self, name), bool):
                raise RequestError(f"{name} must be true or false, not {getattr(self, name)!r}")
        if self.extra_nl is not None and not isinstance(self.extra_nl, bool):
            raise RequestError(f"extra_nl must be true, false or None (by format), not {self.extra_nl!r}")
        if isinstance(self.aspect_ratio, str):
            try:
                self.aspect_ratio = float(self.aspect_ratio)
            except ValueError:
                raise RequestError(f"aspect_ratio must be a number, not {self.aspect_ratio!r}") from None
        if self.aspect_ratio is not None:
            ratio = self.aspect_ratio
            is_number = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
            if not is_number or not math.isfinite(ratio) or ratio <= 0:
                raise RequestError(f"aspect_ratio must be a positive number (width / height), not {ratio!r}")
            self.aspect_ratio = float(ratio)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise RequestError(f"seed must be an integer, not {self.seed!r}")
        if self.seed is None or self.seed < 0:
            self.seed = random.SystemRandom().randrange(2**31 - 1)
        self.bans = BanList.parse(self.ban_tags)  # raises BanTagError naming a bad rule
        if not isinstance(self.format, str):
            raise RequestError(f"format must be a preset name or a template string, not {self.format!r}")
        self.template = _resolve_template(self.format)

    @property
    def tags_text(self) -> str:
        """The tags as the user typed them (a list is joined with ``, ``)."""
        return self.tags if isinstance(self.tags, str) else ", ".join(self.tag_list)

    @property
    def wants_extra_nl(self) -> bool:
        if self.extra_nl is not None:
            return bool(self.extra_nl)
        return tipo.wants_extra_nl(self.nl, self.template)


def _resolve_template(name_or_template: str) -> str:
    try:
        return formats.resolve_template(name_or_template)
    except ValueError as exc:
        raise RequestError(f"format: {exc}") from None


@dataclass(frozen=True)
class GenerationCall:
    """One model input a pipeline step needs generated."""

    prompt: str
    settings: SamplingSettings
    seed: int


@dataclass(frozen=True)
class Attempt:
    """One generation pass and what came of it."""

    task: str
    attempt: int
    seed: int
    prompt: str
    completion: Completion
    added_tags: tuple[str, ...] = ()
    added_sentences: tuple[str, ...] = ()
    rejected: bool = False  # the completion was judged garbage and nothing was taken from it
    trimmed: bool = False  # fed-back content was left out of the prompt to fit the context window


@dataclass
class UpsampleResult(AttemptTotals):
    """The final fields, the final prompt and how they were made.

    ``tags``: every category, the user's tags first then new ones. ``extended``: the user's caption
    with its extension; ``generated``: a caption generated from the tags. ``new_tags`` / ``new_nl``:
    only what the model added (for "no formatting"). ``prompt`` is the final prompt: ``formatted``
    unless the request asked for no formatting, then ``appended``.
    """

    tags: TagMap
    extended: str
    generated: str
    new_tags: list[str]
    new_nl: str
    prompt: str
    formatted: str
    appended: str
    seed: int
    protocol: str
    attempts: list[Attempt] = field(default_factory=list)
    banned: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def generate_passes(self) -> int:
        return len(self.attempts)

    def fields(self) -> dict[str, Any]:
        """Category lists plus ``extended`` / ``generated`` text: what a format template shows."""
        out: dict[str, Any] = {c.value: list(self.tags.get(c)) for c in TagCategory}
        out["extended"] = self.extended
        out["generated"] = self.generated
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``--json``)."""
        return {
            **self.fields(),
            "new_tags": list(self.new_tags),
            "new_nl": self.new_nl,
            "prompt": self.prompt,
            "seed": self.seed,
            "protocol": self.protocol,
            "banned": list(self.banned),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "generate_passes": self.generate_passes,
            "seconds": round(self.seconds, 4),
            "model_inputs": self.model_inputs,
        }

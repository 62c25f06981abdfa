"""DanTagGen: its model input, completion parsing and the extend-and-retry loop.

A DanTagGen model reads a block of metadata lines ending in ``general: <tags><|input_end|>`` and
continues with more general tags. The prompt follows the format on the DanTagGen model cards (the
same text tipo-kgen 0.3.1 builds); the loop (:func:`tag_steps`, a step generator that yields generation
calls and never sees a backend) asks for more tags until the request's tag count target is met,
feeding accepted tags back into the next prompt as the reference does.

Deliberate differences from tipo-kgen 0.3.1 (README "DanTagGen"):

* No quality tag given: a quality-aware model reads ``quality: masterpiece`` (the reference's
  intended default; through its WebUI path it wrote an empty ``quality: `` line instead).
* Completions are cut at the first line break or end-of-text token, special tokens are removed as
  whole tokens and separate tags, empty / runaway tags are dropped, a tag cut by the token limit is
  dropped, and tags the user already has do not count as new. The reference counted an empty
  completion as one tag, fed such garbage back into the next prompt and added duplicates.
* Ban rules are :class:`kgen.protocol.postprocess.BanList`'s, the same as for TIPO, checked up front (an
  invalid regex is a clear error naming it; the reference crashed mid-generation with ``re.error``).
* The loop is bounded (``max_attempts``), stops after ``max_unchanged`` rounds that add nothing, and
  never sends a prompt that leaves no room to generate in the model's context window (fed-back tags
  are dropped first, ``kgen.protocol.budget``). Randomness is ``random.Random(seed + attempt)``, never
  the global RNG.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field

from ..generation import AttemptTotals, Completion, SamplingSettings
from .budget import FittedPrompt, PromptTooLongError, TokenBudget, TrimRule, fit_prompt
from .lengths import DTG_TAG_TARGET, Length
from .postprocess import BanList, is_plausible_tag, tag_key
from .request import GenerationCall
from .tags import TagMap

INPUT_END = "<|input_end|>"
EMPTY = "<|empty|>"
DEFAULT_QUALITY = "masterpiece"
# Sampling of the reference WebUI extension's DanTagGen script (no repetition penalty).
DTG_SAMPLING = SamplingSettings(
    temperature=1.35, top_k=100, top_p=0.95, min_p=0.0, repetition_penalty=1.0, max_new_tokens=256
)
MIN_NEW_TOKENS = 16  # a round with less room than this cannot add a tag worth the call

# Text after which nothing belongs to the tag list: a new line starts another record.
_END_OF_LIST = re.compile(r"\n|\r|</s>|<\|endoftext\|>")
# Any other special token is removed and separates tags.
_SPECIAL_TOKEN = re.compile(r"<\|[^|<>\n]*\|>|<s>|<pad>|<unk>")
# A prompt field that leaked into the tag list ("rating: safe") is not a tag.
_FIELD_LINE = re.compile(
    r"^(quality|rating|artist|characters|copyrights|aspect ratio|target|general)\s*:", re.IGNORECASE
)


def _clean(tags: Iterable[str]) -> list[str]:
    """Tags as they may appear in the model input: one line, no special-token text, no blanks."""
    out = []
    for tag in tags:
        text = _SPECIAL_TOKEN.sub(" ", _END_OF_LIST.sub(" ", tag))
        text = " ".join(text.split())
        if text:
            out.append(text)
    return out


def _field(tags: Iterable[str]) -> str:
    return ", ".join(_clean(tags)) or EMPTY


def format_aspect_ratio(aspect_ratio: float) -> str:
    if not isinstance(aspect_ratio, (int, float)) or not math.isfinite(aspect_ratio) or aspect_ratio <= 0:
        raise ValueError(f"aspect ratio must be a positive number (width / height), not {aspect_ratio!r}")
    return f"{aspect_ratio:.1f}"


def build_prompt(
    tags: TagMap,
    length: Length | str = Length.LONG,
    aspect_ratio: float = 1.0,
    *,
    with_quality: bool,
    default_quality: str = DEFAULT_QUALITY,
) -> str:
    """The DanTagGen model input for the user's tags.

    ``with_quality``: write the ``quality:`` line (only DanTagGen delta / delta-rev2 were trained with
    it; see ``ModelSpec.has_quality``). Person-count tags lead the ``general:`` line; as in the
    model-card format the line always starts ``general: <person-count>, `` even when one side is
    empty, and it ends with ``<|input_end|>`` where the model continues.
    """
    length = Length.parse(length)
    lines = []
    if with_quality:
        lines.append(f"quality: {', '.join(_clean(tags.quality)) or default_quality}")
    lines += [
        f"rating: {_field(tags.rating)}",
        f"artist: {_field(tags.artist)}",
        f"characters: {_field(tags.characters)}",
        f"copyrights: {_field(tags.copyrights)}",
        f"aspect ratio: {format_aspect_ratio(aspect_ratio)}",
        f"target: <|{length.value}|>",
        f"general: {', '.join(_clean(tags.special))}, {', '.join(_clean(tags.general))}{INPUT_END}",
    ]
    return "\n".join(lines)


def parse_completion(text: str, *, finished: bool = True) -> list[str]:
    """The tags of the tag list that follows ``<|input_end|>``, in order, deduplicated.

    ``text`` is what comes after ``<|input_end|>`` (fed-back tags plus the model's continuation).
    ``finished`` False means the backend stopped at its token limit: the last tag may be cut short
    and is dropped, unless the list had already ended (line break or end-of-text token).
    """
    end = _END_OF_LIST.search(text)
    list_ended = end is not None
    if end is not None:
        text = text[: end.start()]
    parts = [" ".join(p.split()) for p in _SPECIAL_TOKEN.sub(",", text).split(",")]
    if not finished and not list_ended:
        parts = parts[:-1]
    tags: list[str] = []
    seen: set[str] = set()
    for part in parts:
        key = tag_key(part)
        if part and is_plausible_tag(part) and not _FIELD_LINE.match(part) and key not in seen:
            seen.add(key)
            tags.append(part)
    return tags


def feed_back_prompt(base_prompt: str, fed_tags: Iterable[str]) -> str:
    """The next round's model input: the base prompt continued by already accepted tags.

    No trailing comma: the model was trained on ``<|input_end|>tag, tag`` and continues with ``, ``.
    """
    return base_prompt + ", ".join(fed_tags)


@dataclass(frozen=True)
class DtgAttempt:
    """One round of the loop."""

    prompt: str
    seed: int
    completion: Completion
    new_tags: tuple[str, ...]  # tags this round added
    fed_tags: tuple[str, ...]  # tags fed back in this round's prompt


@dataclass
class DtgResult(AttemptTotals):
    """Accepted new tags (in the order found) and how the loop got there.

    ``stop_reason``: ``"target"`` (enough tags), ``"unchanged"`` (rounds stopped adding tags),
    ``"attempts"`` (ran out of attempts) or ``"context"`` (no room left in the context window).
    """

    new_tags: list[str]
    target: int
    stop_reason: str
    attempts: list[DtgAttempt] = field(default_factory=list)

    @property
    def reached_target(self) -> bool:
        return self.stop_reason == "target"

    @property
    def seconds(self) -> float:
        return self.generation_seconds


BanSpec = BanList | str | Iterable[str] | Callable[[str], bool] | None


def _ban_predicate(ban: BanSpec) -> Callable[[str], bool]:
    if ban is None:
        return lambda _tag: False
    if callable(ban):
        return ban
    return BanList.parse(ban).bans


def _fit_round(
    budget: TokenBudget, base_prompt: str, fed: list[str], settings: SamplingSettings
) -> FittedPrompt:
    """This round's model input: the base prompt with as many fed-back tags as leave room to generate."""
    return fit_prompt(
        budget,
        lambda kept: feed_back_prompt(base_prompt, fed[:kept]),
        len(fed),
        settings,
        min_new_tokens=MIN_NEW_TOKENS,
        rule=TrimRule.DROP_QUARTERS,
        hint="remove some tags",
    )


def tag_steps(
    tags: TagMap,
    budget: TokenBudget,
    *,
    length: Length | str = Length.LONG,
    aspect_ratio: float = 1.0,
    seed: int = 0,
    with_quality: bool = False,
    ban: BanSpec = None,
    settings: SamplingSettings = DTG_SAMPLING,
    max_attempts: int = 20,
    max_unchanged: int = 5,
    default_quality: str = DEFAULT_QUALITY,
) -> Generator[GenerationCall, Completion, DtgResult]:
    """Extend the user's tags with DanTagGen until ``DTG_TAG_TARGET[length]`` tags are reached.

    A step generator: each round yields its :class:`GenerationCall` and receives the completion.

    The target counts the user's person-count and general tags plus the new ones, as the reference
    does; there is always at least one round. Round ``i`` (0-based) uses seed ``seed + i``; after a
    round short of the target the accepted new tags are shuffled with ``random.Random(seed + i)`` and
    fed back. ``ban`` is a ban-tag string
    or list (``kgen.protocol.postprocess.BanList`` rules), a ``BanList`` or a predicate.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    if max_unchanged < 1:
        raise ValueError("max_unchanged must be >= 1")
    length = Length.parse(length)
    banned = _ban_predicate(ban)
    target = DTG_TAG_TARGET[length]
    base_prompt = build_prompt(
        tags, length, aspect_ratio, with_quality=with_quality, default_quality=default_quality
    )
    user_keys = {tag_key(t) for t in tags.all_tags()}
    user_count = len(tags.special) + len(tags.general)

    accepted: list[str] = []
    accepted_keys: set[str] = set()
    fed: list[str] = []
    attempts: list[DtgAttempt] = []
    unchanged = 0
    stop_reason = "attempts"
    for attempt in range(max_attempts):
        round_seed = seed + attempt
        try:
            fitted = _fit_round(budget, base_prompt, fed, settings)
        except PromptTooLongError:
            if not attempts:
                raise
            stop_reason = "context"
            break
        prompt, fed = fitted.prompt, fed[: fitted.kept]
        completion = yield GenerationCall(prompt, fitted.settings, round_seed)
        # Parse fed tags and continuation together: the model may extend the last fed tag.
        found = parse_completion(", ".join(fed) + completion.text, finished=completion.finished)
        added = []
        for tag in found:
            key = tag_key(tag)
            if key in user_keys or key in accepted_keys or banned(tag):
                continue
            accepted_keys.add(key)
            accepted.append(tag)
            added.append(tag)
        attempts.append(DtgAttempt(prompt, round_seed, completion, tuple(added), tuple(fed)))
        unchanged = 0 if added else unchanged + 1
        if user_count + len(accepted) >= target:
            stop_reason = "target"
            break
        if unchanged >= max_unchanged:
            stop_reason = "unchanged"
            break
        # Shuffle in the order this round listed the tags, as the reference does.
        listed = [t for t in found if tag_key(t) in accepted_keys]
        listed_keys = {tag_key(t) for t in listed}
        fed = listed + [t for t in accepted if tag_key(t) not in listed_keys]
        random.Random(round_seed).shuffle(fed)
    return DtgResult(new_tags=accepted, target=target, stop_reason=stop_reason, attempts=attempts)

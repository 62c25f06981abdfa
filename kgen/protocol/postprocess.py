"""Post-processing of generated content: ban lists, dedupe, shuffle of new content, length caps.

Rules (see README "Differences from tipo-kgen"):

* What the user typed is never removed: their tags and sentences always stay, first and in order;
  ban rules, caps and dedupe apply to generated content only.
* Only new content is shuffled, with a ``random.Random`` the caller seeds from the request seed.
* Caps: tags use the tag-length bound, sentences the NL-length bound (the reference capped tags
  with the NL bound).
* A ban rule is one comma-separated entry. A tag is banned when the rule's text occurs in it
  (case-insensitive, ``_`` and space equal), or when the rule, read as a regular expression,
  matches at the start of the tag (``re.match`` against the first :data:`MAX_TAG_CHARS` characters).
  Every rule is compiled up front; an invalid or unsafe one raises :class:`BanTagError` naming it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .tags import tag_key

try:  # The stdlib regex parser: public as sre_parse up to 3.10, private re._parser from 3.11.
    from re import _parser as _sre_parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre_parser  # type: ignore[no-redef]

MAX_TAG_CHARS = 128  # longer "tags" are runaway generations and are dropped
MAX_TAG_WORDS = 10
MAX_SENTENCE_CHARS = 1000
MAX_BAN_PATTERN_CHARS = 200
MAX_BAN_UNBOUNDED_REPEATS = 4  # bounds polynomial backtracking on a MAX_TAG_CHARS-long tag

_SPACES = re.compile(r"\s+")
_SPECIAL_TOKEN = re.compile(r"<\|[^|]*\|>|</?s>|<pad>|<unk>")


class BanTagError(ValueError):
    """A ban-tag entry that cannot be used; ``pattern`` is the entry as the user typed it."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"invalid ban tag {pattern!r}: {reason}")
        self.pattern = pattern
        self.reason = reason


# ---------------------------------------------------------------------------- text helpers


def split_tags(text: str | Iterable[str] | None) -> list[str]:
    """``"a, b,,c "`` -> ``["a", "b", "c"]``; a list is stripped and emptied of blanks."""
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else list(text)
    return [part.strip() for part in parts if part and part.strip()]


def split_sentences(text: str | None) -> list[str]:
    """Sentences as the TIPO pipeline counts them: split on ``.``, stripped, blanks dropped."""
    if not text:
        return []
    return [part.strip() for part in text.split(".") if part.strip()]


def join_sentences(sentences: Sequence[str]) -> str:
    return ". ".join(sentences)


def sentence_key(sentence: str) -> str:
    return _SPACES.sub(" ", sentence).strip().lower()


def dedupe(items: Iterable[str], key=tag_key) -> list[str]:
    seen: set[str] = set()
    kept = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            kept.append(item)
    return kept


def is_plausible_tag(tag: str) -> bool:
    """A generated tag worth keeping: short, one line, no leftover special tokens."""
    tag = tag.strip()
    return (
        0 < len(tag) <= MAX_TAG_CHARS
        and "\n" not in tag
        and "<|" not in tag
        and "|>" not in tag
        and _SPECIAL_TOKEN.search(tag) is None
        and len(tag.split()) <= MAX_TAG_WORDS
    )


def is_plausible_sentence(sentence: str) -> bool:
    sentence = sentence.strip()
    return (
        0 < len(sentence) <= MAX_SENTENCE_CHARS
        and "<|" not in sentence
        and _SPECIAL_TOKEN.search(sentence) is None
    )


# ---------------------------------------------------------------------------- ban list


def _unbounded_repeats(parsed) -> tuple[int, bool]:
    """(number of unbounded repeats, whether a repeat nests a repeat or an alternation)."""
    count = 0
    nested = False
    for op, arg in parsed:
        name = str(op)
        if name in {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}:
            _low, high, body = arg
            inner_count, inner_nested = _unbounded_repeats(body)
            repeats_more_than_once = high is _sre_parser.MAXREPEAT or high > 1
            if repeats_more_than_once and _contains(body, {"BRANCH", "MAX_REPEAT", "MIN_REPEAT"}):
                nested = True
            if high is _sre_parser.MAXREPEAT:
                count += 1
            count += inner_count
            nested = nested or inner_nested
        else:
            for sub in _children(op, arg):
                sub_count, sub_nested = _unbounded_repeats(sub)
                count += sub_count
                nested = nested or sub_nested
    return count, nested


def _children(op, arg) -> list:
    name = str(op)
    if name == "SUBPATTERN":
        return [arg[-1]]
    if name == "BRANCH":
        return list(arg[1])
    if name in {"ASSERT", "ASSERT_NOT"}:
        return [arg[1]]
    if name == "ATOMIC_GROUP":
        return [arg]
    if name == "GROUPREF_EXISTS":
        return [branch for branch in arg[1:] if branch is not None]
    return []


def _contains(parsed, names: set[str]) -> bool:
    for op, arg in parsed:
        if str(op) in names:
            return True
        if str(op) in {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}:
            if _contains(arg[2], names):
                return True
        elif any(_contains(sub, names) for sub in _children(op, arg)):
            return True
    return False


def compile_ban_pattern(entry: str) -> re.Pattern[str]:
    """Compile one ban entry as a regex, refusing patterns that could backtrack catastrophically."""
    if len(entry) > MAX_BAN_PATTERN_CHARS:
        raise BanTagError(entry, f"longer than {MAX_BAN_PATTERN_CHARS} characters")
    try:
        compiled = re.compile(entry)
    except re.error as exc:
        raise BanTagError(
            entry, f"not a valid regular expression ({exc}); escape special characters with \\, e.g. \\("
        ) from None
    count, nested = _unbounded_repeats(_sre_parser.parse(entry))
    if nested:
        raise BanTagError(
            entry, "nested repetition such as (a+)+ or (a|b)* can take exponential time; simplify the pattern"
        )
    if count > MAX_BAN_UNBOUNDED_REPEATS:
        raise BanTagError(entry, f"more than {MAX_BAN_UNBOUNDED_REPEATS} unbounded repeats (*, +, {{n,}})")
    return compiled


@dataclass(frozen=True)
class BanRule:
    source: str  # as typed
    needle: str  # plain-text form compared as a substring
    pattern: re.Pattern[str]

    @classmethod
    def parse(cls, entry: str) -> BanRule:
        entry = entry.strip()
        if not entry:
            raise BanTagError(entry, "empty")
        return cls(entry, tag_key(entry), compile_ban_pattern(entry))

    def matches(self, tag: str) -> bool:
        if self.needle and self.needle in tag_key(tag):
            return True
        return self.pattern.match(tag.strip()[:MAX_TAG_CHARS]) is not None


@dataclass(frozen=True)
class BanList:
    rules: tuple[BanRule, ...] = ()

    @classmethod
    def parse(cls, spec: str | Iterable[str] | BanList | None) -> BanList:
        """``"hat, .*text"`` or ``["hat", ".*text"]``; raises :class:`BanTagError` for a bad entry."""
        if isinstance(spec, BanList):
            return spec
        entries = split_tags(spec)
        return cls(tuple(BanRule.parse(entry) for entry in dedupe(entries, key=str)))

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def sources(self) -> list[str]:
        return [rule.source for rule in self.rules]

    def bans(self, tag: str) -> bool:
        return any(rule.matches(tag) for rule in self.rules)


# ---------------------------------------------------------------------------- merging


@dataclass(frozen=True)
class TagMerge:
    added: list[str]  # accepted new tags, shuffled, capped
    banned: list[str]
    implausible: list[str]
    capped: list[str]  # dropped by the length cap


def merge_tags(
    existing: Sequence[str],
    candidates: Iterable[str],
    *,
    room: int | None,
    bans: BanList,
    rng: random.Random,
    shuffle: bool = True,
) -> TagMerge:
    """New tags from ``candidates``: not already in ``existing``, not banned, plausible, deduped,
    shuffled with ``rng``, and at most ``room`` of them (``None`` = no cap)."""
    seen = {tag_key(tag) for tag in existing}
    fresh: list[str] = []
    banned: list[str] = []
    implausible: list[str] = []
    for raw in candidates:
        tag = raw.strip()
        key = tag_key(tag)
        if not key or key in seen:
            continue
        seen.add(key)
        if not is_plausible_tag(tag):
            implausible.append(tag)
        elif bans.bans(tag):
            banned.append(tag)
        else:
            fresh.append(tag)
    if shuffle:
        rng.shuffle(fresh)
    limit = len(fresh) if room is None else max(room, 0)
    return TagMerge(fresh[:limit], banned, implausible, fresh[limit:])


@dataclass(frozen=True)
class SentenceMerge:
    base: list[str]  # the existing sentences; the last may be replaced by its continuation
    added: list[str]  # accepted new sentences (after ``base``)
    implausible: list[str]
    capped: list[str]

    @property
    def sentences(self) -> list[str]:
        return self.base + self.added


def merge_sentences(
    existing: Sequence[str],
    candidates: Iterable[str],
    *,
    room: int | None,
    rng: random.Random,
    shuffle: bool = True,
) -> SentenceMerge:
    """Merge generated sentences after ``existing`` ones.

    When the first new sentence contains the last existing one (the model continued an unfinished
    sentence), it replaces it, so the original text survives inside it. New sentences except the last are
    shuffled with ``rng`` (as the reference does); at most ``room`` are added.
    """
    base = list(existing)
    seen = {sentence_key(s) for s in base}
    fresh: list[str] = []
    implausible: list[str] = []
    for raw in candidates:
        sentence = raw.strip()
        key = sentence_key(sentence)
        if not key or key in seen:
            continue
        seen.add(key)
        if is_plausible_sentence(sentence):
            fresh.append(sentence)
        else:
            implausible.append(sentence)
    # Raw (case-insensitive) containment, so the replaced sentence survives verbatim inside its continuation.
    if fresh and base and base[-1].strip().lower() in fresh[0].lower():
        base[-1] = fresh.pop(0)
    if shuffle and len(fresh) > 1:
        head = fresh[:-1]
        rng.shuffle(head)
        fresh = [*head, fresh[-1]]
    limit = len(fresh) if room is None else max(room, 0)
    return SentenceMerge(base, fresh[:limit], implausible, fresh[limit:])

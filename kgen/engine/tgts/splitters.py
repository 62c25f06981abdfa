"""Where one token group (a tree node) ends and the next begins."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


class GroupSplitter(Protocol):
    def __call__(self, group: Sequence[int]) -> bool:
        """True when the group (token ids generated since the node started) is complete."""
        ...


@dataclass(frozen=True)
class SeparatorSplitter:
    """Close a group right after its ``count``-th separator token (e.g. the 4th comma: about four tags)."""

    separator_ids: frozenset[int]
    count: int = 4

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("a group needs at least one separator (count >= 1)")
        if not self.separator_ids:
            raise ValueError("SeparatorSplitter needs at least one separator token id")

    def __call__(self, group: Sequence[int]) -> bool:
        return (
            bool(group)
            and group[-1] in self.separator_ids
            and (sum(token in self.separator_ids for token in group) >= self.count)
        )


@dataclass(frozen=True)
class TextSplitter:
    """Close a group when ``predicate(decoded group text)`` holds; ``decode`` maps ids to text."""

    predicate: Callable[[str], bool]
    decode: Callable[[Sequence[int]], str]

    def __call__(self, group: Sequence[int]) -> bool:
        return self.predicate(self.decode(group))


@dataclass(frozen=True)
class AnySplitter:
    """Close a group when any of the splitters says so."""

    splitters: tuple[GroupSplitter, ...]

    def __call__(self, group: Sequence[int]) -> bool:
        return any(splitter(group) for splitter in self.splitters)


def never_split(group: Sequence[int]) -> bool:
    """The whole completion is one group (independent sampling)."""
    return False


def separator_token_ids(tokenizer, separator: str = ",") -> frozenset[int]:
    """Ids of every vocabulary token whose text, stripped of spaces, is exactly ``separator``."""
    found = set()
    for token, index in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if text.strip() == separator:
            found.add(index)
    if not found:
        raise ValueError(f"the tokenizer has no token for the separator {separator!r}")
    return frozenset(found)


def tag_splitter(tokenizer, tags_per_group: int = 4, separator: str = ",") -> SeparatorSplitter:
    """The default TGTS splitter: a group is about ``tags_per_group`` tags."""
    return SeparatorSplitter(separator_token_ids(tokenizer, separator), tags_per_group)

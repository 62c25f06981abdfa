"""Tag knowledge: which Danbooru category a tag belongs to, and its canonical spelling.

Categories come from two sources:

* three small lists written here (person counts, quality/aesthetic/year/score tags, ratings);
* the Danbooru artist, character, copyright and meta lists shipped compressed in ``kgen/data``
  (provenance in ``kgen/protocol/data/NOTICE``), loaded on the first lookup, not at import.

Lookups are forgiving: case, ``_`` versus space, WebUI escapes (``\\(`` ``\\)`` ``\\[`` ``\\]``
``\\\\``) and runs of whitespace do not matter. A tag found in a list comes back spelled as in
that list; any other tag is general and keeps its own spelling, cleaned: escapes removed, spaces
collapsed and, from 4 characters up, ``_`` turned into spaces (shorter ones such as ``^_^`` are
emoticons and keep theirs). Tags that clean to nothing are dropped.

A tag in more than one list takes the first category of ``CATEGORY_PRECEDENCE``. The shipped
lists do not overlap, so today the order never decides anything; it is fixed so that it never
depends on the file system.
"""

from __future__ import annotations

import lzma
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property, lru_cache
from pathlib import Path
from types import MappingProxyType


class TagCategory(str, Enum):
    SPECIAL = "special"  # person-count tags: 1girl, 2boys, ...
    CHARACTERS = "characters"
    COPYRIGHTS = "copyrights"
    ARTIST = "artist"
    GENERAL = "general"
    META = "meta"
    QUALITY = "quality"
    RATING = "rating"


CATEGORY_PRECEDENCE: tuple[TagCategory, ...] = (
    TagCategory.SPECIAL,
    TagCategory.QUALITY,
    TagCategory.RATING,
    TagCategory.META,
    TagCategory.COPYRIGHTS,
    TagCategory.CHARACTERS,
    TagCategory.ARTIST,
)
"""Which category wins when a tag is in several lists (first wins). General is the fallback."""

SPECIAL_TAGS: tuple[str, ...] = (
    *(f"{n}girl" if n == "1" else f"{n}girls" for n in ("1", "2", "3", "4", "5", "6+")),
    "multiple girls",
    *(f"{n}boy" if n == "1" else f"{n}boys" for n in ("1", "2", "3", "4", "5", "6+")),
    "multiple boys",
    "male focus",
    *(f"{n}other" if n == "1" else f"{n}others" for n in ("1", "2", "3", "4", "5", "6+")),
    "multiple others",
)
QUALITY_TAGS: tuple[str, ...] = (
    # quality ladder
    "masterpiece", "best quality", "great quality", "good quality", "normal quality", "low quality",
    "worse quality",
    # aesthetic ladder
    "very aesthetic", "aesthetic", "displeasing", "very displeasing",
    # year buckets
    "newest", "recent", "mid", "early", "old",
    # Pony-style score and source tags, written with underscores by convention
    "score_9", *(f"score_{n}_up" for n in range(8, 3, -1)),
    *(f"source_{kind}" for kind in ("anime", "cartoon", "furry", "pony")),
)  # fmt: skip
RATING_TAGS: tuple[str, ...] = ("safe", "general", "sfw", "sensitive", "nsfw", "explicit")

BUILTIN_LISTS: Mapping[TagCategory, tuple[str, ...]] = MappingProxyType(
    {
        TagCategory.SPECIAL: SPECIAL_TAGS,
        TagCategory.QUALITY: QUALITY_TAGS,
        TagCategory.RATING: RATING_TAGS,
    }
)
DANBOORU_CATEGORIES: tuple[TagCategory, ...] = (
    TagCategory.META,
    TagCategory.COPYRIGHTS,
    TagCategory.CHARACTERS,
    TagCategory.ARTIST,
)
"""Categories whose lists ship in ``kgen/protocol/data/DATA_FILE``."""

DATA_FILE = "danbooru_tags.bin"
PACKED_HEADER = "kgen-tag-chunks v1"
BLOCK_SEPARATOR = "\x1e"
# One-letter codes of the categories inside the packed data.
CATEGORY_CODES: Mapping[TagCategory, str] = MappingProxyType(
    {
        TagCategory.META: "m",
        TagCategory.COPYRIGHTS: "p",
        TagCategory.CHARACTERS: "c",
        TagCategory.ARTIST: "a",
    }
)
CATEGORY_BY_CODE: Mapping[str, TagCategory] = MappingProxyType({c: cat for cat, c in CATEGORY_CODES.items()})

_WEBUI_ESCAPE = re.compile(r"\\([\\()\[\]])")


def clean_tag(text: str) -> str:
    """Remove WebUI escapes and collapse whitespace; case and underscores are kept.

    Escapes are removed until none is left (``\\\\)`` -> ``\\)`` -> ``)``), so a cleaned tag cleans to itself:
    a backslash before a bracket is never part of a tag's name."""
    while True:
        unescaped = _WEBUI_ESCAPE.sub(r"\1", text)
        if unescaped == text:
            return " ".join(text.split())
        text = unescaped


def tag_key(text: str) -> str:
    """The lookup key of a tag: cleaned, ``_`` as space, lower case."""
    return " ".join(clean_tag(text).replace("_", " ").split()).lower()


def general_spelling(text: str) -> str:
    """How a tag found in no list is written: cleaned, ``_`` as space unless shorter than 4 characters."""
    cleaned = clean_tag(text)
    if len(cleaned) < 4:
        return cleaned
    return " ".join(cleaned.replace("_", " ").split())


@dataclass(frozen=True)
class ClassifiedTag:
    category: TagCategory
    name: str
    """Canonical spelling: the list's spelling for listed tags, ``general_spelling`` otherwise."""


@dataclass
class TagMap:
    """Tags grouped by category, each list in input order."""

    special: list[str] = field(default_factory=list)
    characters: list[str] = field(default_factory=list)
    copyrights: list[str] = field(default_factory=list)
    artist: list[str] = field(default_factory=list)
    general: list[str] = field(default_factory=list)
    meta: list[str] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)
    rating: list[str] = field(default_factory=list)

    def get(self, category: TagCategory | str) -> list[str]:
        return getattr(self, TagCategory(category).value)

    def add(self, tag: ClassifiedTag) -> None:
        self.get(tag.category).append(tag.name)

    def items(self) -> Iterator[tuple[TagCategory, list[str]]]:
        """(category, tags) pairs in ``TagCategory`` order."""
        for category in TagCategory:
            yield category, self.get(category)

    def all_tags(self) -> list[str]:
        """Every tag, grouped by category in ``TagCategory`` order."""
        return [tag for _, tags in self.items() for tag in tags]

    def __len__(self) -> int:
        return sum(len(tags) for _, tags in self.items())

    def copy(self) -> TagMap:
        return TagMap(**{category.value: list(tags) for category, tags in self.items()})


@dataclass(frozen=True)
class _Chunk:
    """Sorted lines ``key<TAB>code<TAB>spelling`` cut into blocks; ``first_keys[i]`` starts block ``i``."""

    first_keys: list[str]
    blocks: list[str]

    @classmethod
    def parse(cls, text: str) -> _Chunk:
        blocks = text.split(BLOCK_SEPARATOR)
        return cls([block[1 : block.index("\t")] for block in blocks], blocks)

    def find(self, key: str) -> ClassifiedTag | None:
        block = self.blocks[max(bisect_right(self.first_keys, key) - 1, 0)]
        start = block.find(f"\n{key}\t")
        if start < 0:
            return None
        _, code, spelling = block[start + 1 : block.index("\n", start + 1)].split("\t")
        return ClassifiedTag(CATEGORY_BY_CODE[code], spelling or key)

    def lines(self) -> Iterator[str]:
        for block in self.blocks:
            yield from block[1:-1].split("\n")


@dataclass(frozen=True)
class _PackedIndex:
    first_keys: list[str]
    spans: list[tuple[int, int]]  # (offset, length) of each compressed chunk in the file


class TagDatabase:
    """Category lists looked up by ``tag_key``; the packed Danbooru lists load piece by piece, on use.

    Packed format (written by ``python -m kgen.protocol.data.pack_tags``): the text line
    ``{PACKED_HEADER} <n>``, then ``n`` lines ``<compressed length><TAB><first key>``, then the ``n``
    chunks, each an xz stream. All entries, sorted by key, are cut into chunks, a chunk's lines into
    blocks of a few dozen (``BLOCK_SEPARATOR`` between blocks, each block starting with ``\\n``).
    A line is ``key<TAB>category code<TAB>spelling``, the spelling left empty when it equals the key.
    A lookup decompresses only the chunk that may hold the key (about 64 KB of text).
    """

    def __init__(self, data: bytes | None = None) -> None:
        """``data``: packed lists as written by ``pack_tags``; default: the file shipped in ``kgen/data``."""
        self._given_data = data
        self._chunks: dict[int, _Chunk] = {}

    @cached_property
    def _builtin(self) -> dict[str, ClassifiedTag]:
        entries: dict[str, ClassifiedTag] = {}
        for category in reversed(CATEGORY_PRECEDENCE):
            for spelling in BUILTIN_LISTS.get(category, ()):
                entries[tag_key(spelling)] = ClassifiedTag(category, spelling)
        return entries

    @cached_property
    def _data(self) -> bytes:
        if self._given_data is not None:
            return self._given_data
        return (Path(__file__).parent / "data" / DATA_FILE).read_bytes()

    @cached_property
    def _index(self) -> _PackedIndex:
        data = self._data
        line_end = data.find(b"\n")
        name, _, count = data[:line_end].decode("utf-8", "replace").rpartition(" ")
        if name != PACKED_HEADER or not count.isdigit():
            raise ValueError(f"tag data: unexpected header {data[:60]!r}, expected {PACKED_HEADER!r} <n>")
        first_keys, lengths = [], []
        for _ in range(int(count)):
            start, line_end = line_end + 1, data.index(b"\n", line_end + 1)
            length, first_key = data[start:line_end].decode("utf-8").split("\t")
            lengths.append(int(length))
            first_keys.append(first_key)
        spans, offset = [], line_end + 1
        for length in lengths:
            spans.append((offset, length))
            offset += length
        if offset != len(data):
            raise ValueError(f"tag data: chunks end at byte {offset}, the data has {len(data)}")
        return _PackedIndex(first_keys, spans)

    def _chunk(self, number: int) -> _Chunk:
        chunk = self._chunks.get(number)
        if chunk is None:
            offset, length = self._index.spans[number]
            try:
                text = lzma.decompress(self._data[offset : offset + length]).decode("utf-8")
            except (lzma.LZMAError, UnicodeDecodeError) as exc:
                raise ValueError(f"tag data: chunk {number} at byte {offset} is damaged: {exc}") from exc
            chunk = self._chunks.setdefault(number, _Chunk.parse(text))
        return chunk

    def load(self) -> TagDatabase:
        """Decompress everything now instead of on use."""
        for number in range(len(self._index.spans)):
            self._chunk(number)
        return self

    def _packed_entry(self, key: str) -> ClassifiedTag | None:
        number = bisect_right(self._index.first_keys, key) - 1
        return self._chunk(number).find(key) if number >= 0 else None

    def packed_lists(self) -> dict[TagCategory, list[str]]:
        """Every spelling of the packed lists, per category, sorted by key."""
        lists: dict[TagCategory, list[str]] = {category: [] for category in DANBOORU_CATEGORIES}
        for number in range(len(self._index.spans)):
            for line in self._chunk(number).lines():
                key, code, spelling = line.split("\t")
                lists[CATEGORY_BY_CODE[code]].append(spelling or key)
        return lists

    def lookup(self, tag: str) -> ClassifiedTag | None:
        """The listed category and spelling of ``tag``; ``None`` when it is in no list."""
        key = tag_key(tag)
        if not key:
            return None
        return self._builtin.get(key) or self._packed_entry(key)

    def classify_tag(self, tag: str) -> ClassifiedTag | None:
        """Category and canonical spelling of one tag; ``None`` when it cleans to nothing."""
        found = self.lookup(tag)
        if found is not None:
            return found
        name = general_spelling(tag)
        return ClassifiedTag(TagCategory.GENERAL, name) if name else None

    def classify(self, tags: Iterable[str]) -> TagMap:
        if isinstance(tags, str):
            raise TypeError("classify() takes a list of tags, not a string: split the prompt first")
        tag_map = TagMap()
        for tag in tags:
            classified = self.classify_tag(tag)
            if classified is not None:
                tag_map.add(classified)
        return tag_map


@lru_cache(maxsize=1)
def default_database() -> TagDatabase:
    """The shared database of the shipped lists (loaded on its first lookup)."""
    return TagDatabase()


def classify_tag(tag: str, database: TagDatabase | None = None) -> ClassifiedTag | None:
    """Category and canonical spelling of one tag; ``None`` for a tag that cleans to nothing."""
    return (database or default_database()).classify_tag(tag)


def classify(tags: Iterable[str], database: TagDatabase | None = None) -> TagMap:
    """Group tags by category (input order kept, no deduplication), canonically spelled."""
    return (database or default_database()).classify(tags)

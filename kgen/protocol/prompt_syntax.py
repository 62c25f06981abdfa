"""WebUI prompt syntax: find the plain tags in a prompt and put new content back without disturbing the rest.

A prompt is cut, losslessly, into segments (their texts concatenated give the prompt back):

* ``SEPARATOR``   commas, newlines and the spaces around them, at bracket depth 0
* ``BREAK`` / ``AND`` keywords at depth 0 (``AND`` with its optional ``:weight`` suffix kept in the chunk
before)
* ``EXTRA_NETWORK`` a chunk made only of ``<lora:name:0.8>``-style items
* ``EDITING``     a chunk holding prompt editing ``[a:b:0.5]`` / ``[a:0.5]`` or alternation ``[a|b]``:
never touched,
                  never sent to the model (its words change over the steps)
* ``TAGS``        a chunk with plain text, possibly inside attention brackets ``(tag:1.2)`` ``[tag]``
``((tag))``
                  and escapes ``\\(``; the model sees its tags unescaped, each with its attention weight
* ``TEXT``        anything else (stray brackets, a lone ``:``)

The weights follow the WebUI's ``parse_prompt_attention``: ``(x)`` ×1.1, ``[x]`` ÷1.1, ``(x:w)`` ×w, unclosed
brackets apply to the rest of the prompt. Pure Python, no WebUI import.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from . import prompt_hazards as hazards

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # as modules/extra_networks.py
_ESCAPES = {"\\(", "\\)", "\\[", "\\]", "\\\\"}  # as modules/prompt_parser.py re_attention
_ATTENTION_WEIGHT = re.compile(r":\s*([+-]?[.\d]+)\s*$")  # "(tag:1.2)" -> 1.2, as re_attention
_SCHEDULE_TAIL = re.compile(r":\s*[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)\s*$")
_BOUNDARY = re.compile(r"(?P<keyword>\bBREAK\b|\bAND\b)|(?P<sep>[ \t\r\f\v,]*[,\n][\s,]*)")
_AND_WEIGHT = re.compile(r"\s*:\s*[-+]?(?:\d+\.?|\d*\.\d+)\s*$")  # "a cat :1.2 AND ..." (re_weight)
_KEYWORD_WORDS = re.compile(r"\bBREAK\b|\bAND\b")
_SPACES = re.compile(r"\s+")
_WORD_CHAR = re.compile(r"\w")


class SegmentKind(str, Enum):
    SEPARATOR = "separator"
    BREAK = "break"
    AND = "and"
    EXTRA_NETWORK = "extra_network"
    EDITING = "editing"
    TAGS = "tags"
    TEXT = "text"


@dataclass(frozen=True)
class PromptTag:
    """One tag as the model should see it."""

    text: str  # unescaped, spaces normalised: "artist (style)"
    weight: float  # attention multiplier, 1.0 for plain text
    segment: int  # index of its TAGS segment


@dataclass(frozen=True)
class Segment:
    kind: SegmentKind
    text: str  # exactly as typed
    start: int
    tags: tuple[PromptTag, ...] = ()

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    @property
    def is_boundary(self) -> bool:
        return self.kind in (SegmentKind.BREAK, SegmentKind.AND)


@dataclass(frozen=True)
class ParsedPrompt:
    text: str
    segments: tuple[Segment, ...]

    @property
    def tags(self) -> list[PromptTag]:
        return [tag for segment in self.segments for tag in segment.tags]

    def tag_texts(self) -> list[str]:
        return [tag.text for tag in self.tags]

    def weights(self) -> dict[str, float]:
        """Tag text -> weight for tags whose weight is not 1."""
        return {tag.text: tag.weight for tag in self.tags if abs(tag.weight - 1.0) > 1e-9}

    def sections(self) -> list[range]:
        """Segment index ranges between BREAK / AND keywords."""
        ranges, start = [], 0
        for index, segment in enumerate(self.segments):
            if segment.is_boundary:
                ranges.append(range(start, index))
                start = index + 1
        ranges.append(range(start, len(self.segments)))
        return ranges

    def main_section(self) -> range:
        """The first section holding tags (else the first section): where new content goes."""
        sections = self.sections()
        for section in sections:
            if any(self.segments[i].kind is SegmentKind.TAGS for i in section):
                return section
        return sections[0]

    def main_units(self) -> list[Segment]:
        return [self.segments[i] for i in self.main_section() if self.segments[i].kind is SegmentKind.TAGS]

    def main_unit_indexes(self) -> list[int]:
        return [i for i in self.main_section() if self.segments[i].kind is SegmentKind.TAGS]

    def rearrange_hazard(self) -> str | None:
        """Why the WebUI may read this prompt otherwise than its segments say (then it is kept as typed),
        or None."""
        counts = Counter(segment.kind for segment in self.segments)
        reason = hazards.rearrange_hazard(self.text, counts[SegmentKind.AND], counts[SegmentKind.BREAK])
        return reason or self._subprompt_weight_hazard()

    def _subprompt_weight_hazard(self) -> str | None:
        subprompt: list[Segment] = []
        for segment in (*self.segments, None):
            if segment is not None and segment.kind is not SegmentKind.AND:
                subprompt.append(segment)
                continue
            text = "".join(part.text for part in subprompt)
            content = [part for part in subprompt if part.kind is not SegmentKind.SEPARATOR]
            if hazards.subprompt_weighted(text) and not (content and _is_subprompt_weight(content[-1])):
                return "a ':weight' of a sub-prompt that is not at its end once extra networks are cut out"
            subprompt = []
        return None


# --------------------------------------------------------------------------------------------- parsing


@dataclass
class _Node:
    kind: str  # "text" | "net" | "group" | "opaque"
    start: int
    end: int
    raw: str = ""
    opener: str = ""
    weight: float | None = None  # explicit (x:w) weight
    closed: bool = True
    children: list[_Node] = field(default_factory=list)


@dataclass
class _Frame:
    opener: str
    start: int
    children: list[_Node] = field(default_factory=list)


def _parse_tree(text: str) -> list[_Node]:
    stack = [_Frame("", 0)]
    pos, n = 0, len(text)
    text_start: int | None = None

    def flush(until: int) -> None:
        nonlocal text_start
        if text_start is not None and until > text_start:
            stack[-1].children.append(_Node("text", text_start, until, text[text_start:until]))
        text_start = None

    while pos < n:
        char = text[pos]
        if char == "\\" and text[pos : pos + 2] in _ESCAPES:
            text_start = pos if text_start is None else text_start
            pos += 2
            continue
        if char == "<":
            match = _EXTRA_NETWORK.match(text, pos)
            if match:
                flush(pos)
                stack[-1].children.append(_Node("net", pos, match.end(), match.group(0)))
                pos = match.end()
                continue
        if char in "([":
            flush(pos)
            stack.append(_Frame(char, pos))
            pos += 1
            continue
        if char in ")]" and len(stack) > 1 and stack[-1].opener == ("(" if char == ")" else "["):
            flush(pos)
            frame = stack.pop()
            stack[-1].children.append(_close(text, frame, pos + 1))
            pos += 1
            continue
        text_start = pos if text_start is None else text_start
        pos += 1
    flush(n)
    while len(stack) > 1:  # unclosed brackets run to the end, as in parse_prompt_attention
        frame = stack.pop()
        node = _Node(
            "group", frame.start, n, text[frame.start : n], frame.opener, None, False, frame.children
        )
        stack[-1].children.append(node)
    return stack[0].children


def _close(text: str, frame: _Frame, end: int) -> _Node:
    raw = text[frame.start : end]
    children = frame.children
    if frame.opener == "[":
        own_text = "".join(child.raw for child in children if child.kind == "text")
        if "|" in own_text:
            return _Node("opaque", frame.start, end, raw, "[", children=children)
        last = children[-1] if children else None
        if last is not None and last.kind == "text" and _SCHEDULE_TAIL.search(last.raw):
            return _Node("opaque", frame.start, end, raw, "[", children=children)
        return _Node("group", frame.start, end, raw, "[", children=children)
    weight = None
    last = children[-1] if children else None
    if last is not None and last.kind == "text":
        match = _ATTENTION_WEIGHT.search(last.raw)
        if match:
            try:
                weight = float(match.group(1))
            except ValueError:
                weight = None
            if weight is not None:
                kept = last.raw[: match.start()]
                children = children[:-1] + (
                    [_Node("text", last.start, last.start + len(kept), kept)] if kept else []
                )
    return _Node("group", frame.start, end, raw, "(", weight, True, children)


def _contains_opaque(nodes: Iterable[_Node]) -> bool:
    return any(
        node.kind == "opaque" or (node.kind == "group" and _contains_opaque(node.children)) for node in nodes
    )


def _leaves(nodes: Iterable[_Node], multiplier: float = 1.0) -> list[tuple[str, float]]:
    found: list[tuple[str, float]] = []
    for node in nodes:
        if node.kind == "text":
            found.append((node.raw, multiplier))
        elif node.kind == "group":
            if node.opener == "(":
                factor = node.weight if node.weight is not None else ROUND_MULTIPLIER
            else:
                factor = SQUARE_MULTIPLIER
            found.extend(_leaves(node.children, multiplier * factor))
    return found


def unescape(text: str) -> str:
    """``artist \\(style\\)`` -> ``artist (style)`` (the WebUI's escapes)."""
    out, pos = [], 0
    while pos < len(text):
        pair = text[pos : pos + 2]
        if pair in _ESCAPES:
            out.append(pair[1])
            pos += 2
        else:
            out.append(text[pos])
            pos += 1
    return "".join(out)


def escape(text: str) -> str:
    """Make model output literal in a WebUI prompt: ``ganyu (genshin impact)`` -> ``ganyu \\(genshin
    impact\\)`` (see :func:`kgen.protocol.prompt_hazards.escape_generated` for all it neutralises)."""
    return hazards.escape_generated(text)


def _tags_of(nodes: list[_Node], segment: int) -> tuple[PromptTag, ...]:
    tags: list[PromptTag] = []
    current: list[str] = []
    weight: float | None = None

    def finish() -> None:
        nonlocal weight
        text = _SPACES.sub(" ", unescape("".join(current))).strip()
        if text:
            tags.append(PromptTag(text, weight if weight is not None else 1.0, segment))
        current.clear()
        weight = None

    for raw, multiplier in _leaves(nodes):
        for piece in re.split(r"(,|\n|\bBREAK\b|\bAND\b)", raw):
            if piece in (",", "\n", "BREAK", "AND"):
                finish()
            elif piece:
                if weight is None and piece.strip():
                    weight = multiplier
                current.append(piece)
    finish()
    return tuple(tags)


def _classify(text: str, start: int, index: int) -> Segment:
    nodes = _parse_tree(text)
    if all(node.kind == "net" or (node.kind == "text" and not node.raw.strip()) for node in nodes):
        return Segment(SegmentKind.EXTRA_NETWORK, text, start)
    if _contains_opaque(nodes):
        return Segment(SegmentKind.EDITING, text, start)
    tags = _tags_of(nodes, index)
    return Segment(SegmentKind.TAGS if tags else SegmentKind.TEXT, text, start, tags)


def _boundaries(text: str) -> list[tuple[int, int, SegmentKind]]:
    """Separator and keyword spans at bracket depth 0."""
    spans: list[tuple[int, int, SegmentKind]] = []
    for node in _parse_tree(text):
        if node.kind != "text":
            continue
        for match in _BOUNDARY.finditer(node.raw):
            if match.start() == match.end():
                continue
            kind = SegmentKind.SEPARATOR
            if match.group("keyword"):
                kind = SegmentKind.BREAK if match.group("keyword") == "BREAK" else SegmentKind.AND
            spans.append((node.start + match.start(), node.start + match.end(), kind))
    return spans


def parse(text: str) -> ParsedPrompt:
    """Cut a WebUI prompt into segments (see the module docstring)."""
    segments: list[Segment] = []

    def add_chunk(start: int, end: int) -> None:
        chunk = text[start:end]
        stripped = chunk.strip()
        if not stripped:
            if chunk:
                segments.append(Segment(SegmentKind.SEPARATOR, chunk, start))
            return
        lead = len(chunk) - len(chunk.lstrip())
        trail = len(chunk) - len(chunk.rstrip())
        if lead:
            segments.append(Segment(SegmentKind.SEPARATOR, chunk[:lead], start))
        segments.append(_classify(stripped, start + lead, len(segments)))
        if trail:
            segments.append(Segment(SegmentKind.SEPARATOR, chunk[len(chunk) - trail :], end - trail))

    pos = 0
    for span_start, span_end, kind in _boundaries(text):
        add_chunk(pos, span_start)
        segments.append(Segment(kind, text[span_start:span_end], span_start))
        pos = span_end
    add_chunk(pos, len(text))
    segments = _split_and_weights(segments)
    return ParsedPrompt(text, tuple(_merge_separators(segments)))


def _split_and_weights(segments: list[Segment]) -> list[Segment]:
    """``a cat :1.2 AND a dog``: the ``:1.2`` is the weight of the sub-prompt (the last one too, with or
    without AND), not part of a tag."""
    out: list[Segment] = []
    for index, segment in enumerate(segments):
        following = next((s for s in segments[index + 1 :] if s.text.strip()), None)
        ends_subprompt = following is None or following.kind is SegmentKind.AND  # only whitespace between
        match = (
            _AND_WEIGHT.search(segment.text) if segment.kind is SegmentKind.TAGS and ends_subprompt else None
        )
        if match and match.start() == 0:
            out.append(Segment(SegmentKind.TEXT, segment.text, segment.start))
        elif match:
            head = segment.text[: match.start()]
            out.append(_classify(head, segment.start, len(out)))
            out.append(
                Segment(SegmentKind.TEXT, segment.text[match.start() :], segment.start + match.start())
            )
        else:
            out.append(segment)
    return out


def _merge_separators(segments: list[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for segment in segments:
        if merged and segment.kind is SegmentKind.SEPARATOR and merged[-1].kind is SegmentKind.SEPARATOR:
            previous = merged.pop()
            segment = Segment(SegmentKind.SEPARATOR, previous.text + segment.text, previous.start)
        merged.append(segment)
    # segment indexes inside the tags must match the final positions
    return [
        Segment(s.kind, s.text, s.start, tuple(PromptTag(t.text, t.weight, i) for t in s.tags))
        for i, s in enumerate(merged)
    ]


# --------------------------------------------------------------------------------------------- rebuilding


def _join_new(new_tags: Sequence[str], nl: str) -> str:
    parts = ", ".join(escape(tag) for tag in new_tags if tag.strip())
    nl = escape(nl.strip())
    if parts and nl:
        return f"{parts},\n{nl}"
    return parts or nl


def _needs_space(left: str, right: str) -> bool:
    """Two texts meeting where something was put in or taken out: a space keeps ``BREAK`` / ``AND`` and
    the words around them apart."""
    return bool(left and right and _WORD_CHAR.match(left[-1]) and _WORD_CHAR.match(right[0]))


def _insertion_point(parsed: ParsedPrompt) -> tuple[int, bool]:
    """Where new content goes (right after the main section's last tag chunk, else after its last element,
    else where the section starts) and whether it follows an element (then it needs a ", " first)."""
    section = parsed.main_section()
    units = parsed.main_unit_indexes()
    if units:
        return parsed.segments[units[-1]].end, True
    kept = [i for i in section if parsed.segments[i].kind is not SegmentKind.SEPARATOR]
    if kept and _is_subprompt_weight(parsed.segments[kept[-1]]):
        kept.pop()  # new content goes before the sub-prompt's ":weight"
        if not kept:
            return parsed.segments[section.start].start, False
    if kept:
        return parsed.segments[kept[-1]].end, True
    return _section_start(parsed, section), False


def _is_subprompt_weight(segment: Segment) -> bool:
    return segment.kind is SegmentKind.TEXT and bool(_AND_WEIGHT.fullmatch(segment.text))


def insert_addition(parsed: ParsedPrompt, addition: str) -> str:
    """``addition`` (already escaped) put at the insertion point of the main section, the rest as typed."""
    if not addition:
        return parsed.text
    at, after_element = _insertion_point(parsed)
    before, after = parsed.text[:at], parsed.text[at:]
    if after_element:
        middle = f", {addition}"
        glue = " " if _needs_space(middle, after) else ""
    else:
        middle = " " + addition if _needs_space(before, addition) else addition
        glue = "" if not after.strip() or after.lstrip(" \t")[:1] in (",", "\n") else ", "
    return f"{before}{middle}{glue}{after}"


def append_content(parsed: ParsedPrompt, new_tags: Sequence[str], nl: str = "") -> str:
    """No-formatting mode: the prompt exactly as typed, with the new tags (escaped) and the new
    natural-language text inserted right after the last tag of the main section (so they share its BREAK/AND
    chunk)."""
    return insert_addition(parsed, _join_new(new_tags, nl))


def prepend_content(parsed: ParsedPrompt, new_tags: Sequence[str], nl: str = "") -> str:
    """A prompt the WebUI may read otherwise than its segments say (see ``rearrange_hazard``): kept
    byte-for-byte, the new content (escaped) in front of it, where no bracket or open extra network of the
    user's can reach it and it reaches nothing of the user's."""
    addition = _join_new(new_tags, nl)
    if not addition or not parsed.text.strip():
        return addition + parsed.text if addition else parsed.text
    return f"{addition},{chr(10) if nl.strip() else ' '}{parsed.text}"


def _section_start(parsed: ParsedPrompt, section: range) -> int:
    if section.start < len(parsed.segments):
        return parsed.segments[section.start].start
    return len(parsed.text)


def replace_tag_block(parsed: ParsedPrompt, block: str, placed: Collection[int] | None = None) -> str:
    """Formatted mode: ``block`` (the formatted user tags + new content) takes the place of the first of
    the ``placed`` TAGS segments (default: all of the main section's); the other placed segments are removed
    (their text is in ``block``) together with one neighbouring separator. Everything else stays where it
    was, as typed; with nothing placed, ``block`` goes where :func:`append_content` puts new content."""
    block = block.strip()
    units = sorted(parsed.main_unit_indexes() if placed is None else placed)
    if not units:
        return insert_addition(parsed, block)
    segments = parsed.segments
    removed: set[int] = set()
    for index in units[1:]:
        removed.add(index)
        nxt, prev = index + 1, index - 1
        if prev >= 0 and segments[prev].kind is SegmentKind.SEPARATOR and prev not in removed:
            removed.add(prev)
        elif nxt < len(segments) and segments[nxt].kind is SegmentKind.SEPARATOR:
            removed.add(nxt)
    pieces: list[str] = []
    touched: list[bool] = []
    cut = False
    for index, segment in enumerate(segments):
        if index in removed:
            cut = True
            continue
        pieces.append(block if index == units[0] else segment.text)
        touched.append(index == units[0] or cut)
        cut = False
    out = pieces[:1]
    for index in range(1, len(pieces)):
        if (touched[index] or touched[index - 1]) and _needs_space(out[-1], pieces[index]):
            out.append(" ")
        out.append(pieces[index])
    return "".join(out)


def reads_the_same(parsed: ParsedPrompt, rewritten: str, rearranged: bool = True) -> bool:
    """Whether the WebUI reads ``rewritten`` with the extra networks, sub-prompt weights and BREAKs of
    ``parsed`` (and, for a rearranged prompt, nothing the segmentation cannot follow)."""
    if hazards.reading(rewritten) != hazards.reading(parsed.text):
        return False
    return not rearranged or parse(rewritten).rearrange_hazard() is None


def surfaces_by_first_tag(units: Sequence[Segment]) -> list[tuple[str, str]]:
    """(first tag text, segment text as typed) of each TAGS segment: how user tags are placed by a format."""
    return [(unit.tags[0].text, unit.text) for unit in units if unit.tags]


def plain_text(text: str) -> str:
    """The words of a prompt without attention brackets, weights, escapes or extra networks
    (``a (red:1.2) \\(hat\\)`` -> ``a red (hat)``): how a natural-language box is shown to the model."""
    leaves = _leaves(_parse_tree(text))
    return _SPACES.sub(" ", unescape("".join(raw for raw, _ in leaves))).strip()

"""The TIPO prompt protocol: which generation tasks a request needs, the exact model input for
each task, and parsing a completion back into fields.

Pure Python (no torch). The text layout follows what the TIPO models were trained on, as built
by ``tipo-kgen`` 0.3.1 driven by the reference WebUI extension, except for these deliberate
differences (README "Differences from the reference"; tests/test_tipo_oracle.py checks each):

* the aspect-ratio key is ``aspect ratio:`` (training format), not ``aspect_ratio:``;
* length targets are always written in their underscore form (``<|very_long|>``, never
  ``<|very long|>``, which the reference's bounds lookup cannot handle);
* with tags and a caption, expanding the caption but not the tags targets the NL length
  (the reference passes the tag length to that caption task);
* the extra NL task is not appended when the plan already ends with that same task;
* a plan with nothing to generate is an empty list, not a crash;
* a blank (whitespace-only) caption counts as no caption everywhere;
* captions and tags are written on one line, without surrounding whitespace and without
  special-token text (``</s>``, ``<|...|>``), so user text cannot break the line format;
* a task that does not expand its output field leaves that field open instead of writing it twice;
* parsing ends at the first EOS token and removes special tokens as whole tokens (the reference
  strips their characters: ``blue eyes</s>`` became ``blue eye``), drops the unfinished last item
  of a truncated field, treats a line with an unknown ``key:`` as text of the current field, and
  lets a later occurrence of a field fill it when the first one was empty.

A model input looks like::

    rating: general
    artist: some artist
    quality: masterpiece
    aspect ratio: 0.7
    target: <|long|> <|short_to_tag|>
    short: a girl in a park
    tag: 1girl, solo
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .dialects import TIPO_V1, V1_MODES, TipoDialect
from .lengths import Length
from .tags import TagCategory, TagMap, classify

__all__ = [
    "LONG_FIELD",
    "MODES",
    "SHORT_FIELD",
    "TAG_FIELD",
    "TIPO_V1",
    "MetaLine",
    "ParsedOutput",
    "TipoDialect",
    "TipoRequest",
    "TipoTask",
    "build_prompt",
    "first_prompt",
    "format_aspect_ratio",
    "general_text",
    "meta_lines",
    "parse_output",
    "plan_tasks",
    "single_line",
    "wants_extra_nl",
]

# ---------------------------------------------------------------------------------------------
# Tasks and planning

TAG_FIELD = "tag"
SHORT_FIELD = "short"  # a caption given as input / extended by the model ("extended" output)
LONG_FIELD = "long"  # a caption generated from the tags ("generated" output)

#: The task modes the planner uses (TIPO v1 names); ``None`` means "tags only". A dialect may
#: know more (``TipoDialect.tasks``); any ``field_to_field...`` chain of tag/short/long is accepted.
MODES = V1_MODES
_MODE_SHAPE = re.compile(r"(tag|short|long)(_to_(tag|short|long))+")


@dataclass(frozen=True)
class TipoTask:
    """One generation step: the task mode (``None`` = tags only), its length target, and whether
    the model continues the last content field (``expand``) or writes it from scratch."""

    mode: str | None
    length: Length
    expand: bool

    def __post_init__(self) -> None:
        if self.mode is not None and not _MODE_SHAPE.fullmatch(self.mode):
            raise ValueError(
                f"unknown TIPO task mode {self.mode!r}: expected None or a chain of tag/short/long such as "
                f"{', '.join(MODES)}"
            )
        object.__setattr__(self, "length", Length.parse(self.length))

    @property
    def fields(self) -> tuple[str, ...]:
        """Content fields in the order the model sees them, the output field last."""
        return tuple(self.mode.split("_to_")) if self.mode else (TAG_FIELD,)

    @property
    def output_field(self) -> str:
        return self.fields[-1]

    @property
    def caption_field(self) -> str:
        """Which field a caption given as input is written to."""
        return SHORT_FIELD if SHORT_FIELD in self.fields else LONG_FIELD

    def __str__(self) -> str:
        verb = "expand" if self.expand else "generate"
        return f"{self.mode or 'tag'} ({self.length.value}, {verb})"


def plan_tasks(
    *,
    has_tags: bool,
    has_nl: bool,
    expand_tags: bool = True,
    expand_nl: bool = True,
    tag_first: bool = True,
    extra_nl: bool = False,
    tag_length: Length | str = Length.LONG,
    nl_length: Length | str = Length.LONG,
) -> list[TipoTask]:
    """The task sequence for a request.

    ``has_tags``: the request has general or person-count tags (other categories go to the meta
    lines and do not count). ``has_nl``: it has a non-blank caption. ``extra_nl``: also generate a
    separate caption from the tags (the "generated" field; see :func:`wants_extra_nl`).
    An empty list means there is nothing to generate.
    """
    tag_len = Length.parse(tag_length, Length.LONG)
    nl_len = Length.parse(nl_length, Length.LONG)

    tasks: list[TipoTask]
    if not has_tags and not has_nl:
        tasks = [TipoTask(None, tag_len, True)]
        nl_task = TipoTask("tag_to_long", nl_len, True)
    elif not has_nl:
        tasks = [TipoTask(None, tag_len, True)] if expand_tags else []
        nl_task = TipoTask("tag_to_long", nl_len, False)
    elif not has_tags:
        # "expand" here continues the caption before the tags are written.
        tasks = [TipoTask("long_to_tag", tag_len, expand_nl)]
        nl_task = TipoTask("short_to_tag_to_long", nl_len, False)
    elif not expand_tags and not expand_nl:
        tasks = []
        nl_task = TipoTask("short_to_tag_to_long", nl_len, False)
    elif expand_tags and not expand_nl:
        tasks = [TipoTask("short_to_tag", tag_len, True), TipoTask("short_to_tag_to_long", nl_len, False)]
        nl_task = TipoTask("short_to_tag_to_long", nl_len, False)
    elif not expand_tags:  # expand the caption only
        tasks = [TipoTask("tag_to_long", nl_len, True), TipoTask("tag_to_short_to_long", nl_len, False)]
        nl_task = TipoTask("tag_to_short_to_long", nl_len, False)
    elif tag_first:
        tasks = [TipoTask("short_to_tag", tag_len, True), TipoTask("tag_to_long", nl_len, True)]
        nl_task = TipoTask("short_to_tag_to_long", nl_len, False)
    else:
        tasks = [TipoTask("tag_to_long", nl_len, True), TipoTask("long_to_tag", tag_len, True)]
        nl_task = TipoTask("tag_to_short_to_long", nl_len, False)
    if extra_nl and (not tasks or tasks[-1] != nl_task):
        tasks.append(nl_task)
    return tasks


def wants_extra_nl(nl: str, template: str) -> bool:
    """Whether an output format needs a caption generated from the tags: it shows
    ``<|generated|>``, or it shows ``<|extended|>`` and the user gave no caption to extend."""
    return "<|generated|>" in template or (not nl.strip() and "<|extended|>" in template)


# ---------------------------------------------------------------------------------------------
# Model input


@dataclass(frozen=True)
class MetaLine:
    key: str
    value: str


_MARKER = re.compile(r"<\|[^<>|\n]*\|>")


def single_line(text: str, dialect: TipoDialect = TIPO_V1) -> str:
    """User text as it may appear in a model input: a single line without special-token text."""
    for token in (*dialect.end_tokens, *dialect.strip_tokens):
        text = text.replace(token, " ")
    text = _MARKER.sub(" ", text)
    lines = text.splitlines()  # every line boundary the parser knows, not only "\n"
    if len(lines) > 1:
        text = " ".join(part.strip() for part in lines if part.strip())
    return text.strip()


def format_aspect_ratio(ratio: float) -> str:
    return f"{ratio:.1f}"


def meta_lines(
    tags: TagMap,
    aspect_ratio: float | None = None,
    dialect: TipoDialect = TIPO_V1,
    add_quality: bool = True,
) -> list[MetaLine]:
    """The ``key: value`` lines above ``target:``; empty categories are left out."""
    lines = []
    for category in dialect.meta_order:
        if category is TagCategory.QUALITY and not (dialect.has_quality or add_quality):
            continue
        values = [single_line(v, dialect) for v in dialect.meta_values(category, tags.get(category))]
        value = ", ".join(v for v in values if v)
        if value:
            lines.append(MetaLine(category.value, value))
    if aspect_ratio is not None:
        lines.append(MetaLine(dialect.aspect_ratio_key, format_aspect_ratio(aspect_ratio)))
    return lines


def general_text(tags: TagMap | Iterable[str], dialect: TipoDialect = TIPO_V1) -> str:
    """The ``tag:`` line content: person-count tags, then general tags."""
    if isinstance(tags, TagMap):
        tags = [t for c in dialect.general_categories for t in tags.get(c)]
    cleaned = (single_line(t, dialect) for t in tags)
    return ", ".join(t for t in cleaned if t)


def build_prompt(
    meta: Sequence[MetaLine],
    general: str | Iterable[str],
    nl: str,
    task: TipoTask,
    gen_meta: bool = False,
    dialect: TipoDialect = TIPO_V1,
) -> str:
    """The model input for one task. ``general`` is the tag line content (or its tags), ``nl``
    the caption so far (written to ``short:`` or ``long:`` depending on the task)."""
    general = general if isinstance(general, str) else general_text(general, dialect)
    content = {TAG_FIELD: single_line(general, dialect), task.caption_field: single_line(nl, dialect)}

    lines = [f"{line.key}: {single_line(line.value, dialect)}" for line in meta if line.value.strip()]
    lines.append(f"target: {dialect.target_line(task.mode, task.length, gen_meta)}")

    last = len(task.fields) - 1
    for index, key in enumerate(task.fields):
        value = content.get(key, "")
        if index == last and not task.expand:
            lines.append(f"{key}:")  # the model writes this field from scratch
        elif value:
            lines.append(f"{key}: {value}")
        elif index < last:
            lines.append(f"{key}: ")
    # Expanding: the model continues the text as it stands (no trailing newline).
    return "\n".join(lines).strip() if task.expand else "\n".join(lines)


@dataclass(frozen=True)
class TipoRequest:
    """Everything the TIPO protocol needs from a request, tags already classified."""

    tags: TagMap = field(default_factory=TagMap)
    nl: str = ""
    tag_length: Length = Length.LONG
    nl_length: Length = Length.LONG
    expand_tags: bool = True
    expand_nl: bool = True
    tag_first: bool = True
    extra_nl: bool = False
    aspect_ratio: float | None = None
    add_quality: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag_length", Length.parse(self.tag_length, Length.LONG))
        object.__setattr__(self, "nl_length", Length.parse(self.nl_length, Length.LONG))

    def general(self, dialect: TipoDialect = TIPO_V1) -> str:
        return general_text(self.tags, dialect)

    def caption(self, dialect: TipoDialect = TIPO_V1) -> str:
        return single_line(self.nl, dialect)

    def meta(self, dialect: TipoDialect = TIPO_V1) -> list[MetaLine]:
        return meta_lines(self.tags, self.aspect_ratio, dialect, self.add_quality)

    def plan(self, dialect: TipoDialect = TIPO_V1) -> list[TipoTask]:
        return plan_tasks(
            has_tags=bool(self.general(dialect)),
            has_nl=bool(self.caption(dialect)),
            expand_tags=self.expand_tags,
            expand_nl=self.expand_nl,
            tag_first=self.tag_first,
            extra_nl=self.extra_nl,
            tag_length=self.tag_length,
            nl_length=self.nl_length,
        )


def first_prompt(request: TipoRequest, dialect: TipoDialect = TIPO_V1, gen_meta: bool = False) -> str | None:
    """The model input of the first generation step, or ``None`` when the plan is empty."""
    tasks = request.plan(dialect)
    if not tasks:
        return None
    return build_prompt(
        request.meta(dialect), request.general(dialect), request.caption(dialect), tasks[0], gen_meta, dialect
    )


# ---------------------------------------------------------------------------------------------
# Completion parsing

OUTPUT_NAMES = {SHORT_FIELD: "extended", LONG_FIELD: "generated"}
_CATEGORY_KEYS = {c.value: c for c in TagCategory}
_SENTENCE_END = re.compile(r"[.!?。！？][\"')\]]*(?=\s|$)")
_ENDS_WITH_SENTENCE = re.compile(r"[.!?。！？][\"')\]]*$")


@dataclass
class ParsedOutput:
    """The fields of a TIPO text (model input + completion).

        ``tags`` holds every category: values of the meta lines plus the classified ``tag:`` line.
        ``tag_list`` is the ``tag:`` line as written. ``extended``/``generated`` are the ``short:`` /
        ``long:`` captions (the first occurrence with content of each field wins). ``fields`` lists
    the field keys found, in order of first appearance;
        ``truncated_field`` names the field cut off by the token limit (its unfinished last item was
        dropped). ``ignored`` holds text outside any field and repeated fields.
    """

    tags: TagMap = field(default_factory=TagMap)
    tag_list: list[str] = field(default_factory=list)
    extended: str = ""
    generated: str = ""
    aspect_ratio: str | None = None
    target: str | None = None
    fields: list[str] = field(default_factory=list)
    truncated_field: str | None = None
    ignored: list[str] = field(default_factory=list)

    def has_field(self, key: str) -> bool:
        return key in self.fields

    def output_of(self, key: str) -> str | list[str]:
        if key == TAG_FIELD:
            return self.tag_list
        if key == SHORT_FIELD:
            return self.extended
        if key == LONG_FIELD:
            return self.generated
        raise ValueError(f"{key!r} is not a TIPO content field")

    def usable_for(self, task: TipoTask) -> bool:
        """True when the task's output field is present with content, so the result may be fed
        into the next prompt."""
        return self.has_field(task.output_field) and bool(self.output_of(task.output_field))

    @property
    def is_usable(self) -> bool:
        """True when at least one content field (tags or a caption) has content."""
        return bool(self.tag_list or self.extended or self.generated)


@dataclass
class _RawField:
    key: str
    parts: list[str]


def _clean_completion(text: str, dialect: TipoDialect) -> str:
    ends = [i for i in (text.find(token) for token in dialect.end_tokens) if i >= 0]
    if ends:
        text = text[: min(ends)]
    for token in dialect.strip_tokens:
        text = text.replace(token, "")
    return text


def _split_fields(text: str, dialect: TipoDialect) -> tuple[list[_RawField], list[str]]:
    keys = "|".join(re.escape(k) for k in dialect.field_keys)
    line_start = re.compile(rf"^[ \t]*({keys})[ \t]*:(.*)$")
    fields: list[_RawField] = []
    orphans: list[str] = []
    for line in text.splitlines():
        match = line_start.match(line)
        if match:
            fields.append(_RawField(match.group(1), [match.group(2)]))
        elif fields:
            fields[-1].parts.append(line)  # a line without a known key continues the field
        elif line.strip():
            orphans.append(line.strip())
    return fields, orphans


def _split_list(parts: Sequence[str]) -> list[str]:
    items = (item.strip() for part in parts for item in part.split(","))
    return [_MARKER.sub("", item).strip() for item in items if item and _MARKER.sub("", item).strip()]


def _drop_unfinished_item(parts: list[str]) -> list[str]:
    """The last list item of a truncated field may be cut mid-word: keep complete items only."""
    joined = "\n".join(parts)
    if joined.rstrip().endswith(","):
        return parts
    cut = joined.rfind(",")
    return [joined[:cut]] if cut >= 0 else []


def _caption_text(parts: Sequence[str], truncated: bool) -> str:
    text = " ".join(part.strip() for part in parts if part.strip())
    text = _MARKER.sub(" ", text)
    text = re.sub(r"[ \t]{2,}", " ", text).strip()
    if truncated and text and not _ENDS_WITH_SENTENCE.search(text):
        ends = list(_SENTENCE_END.finditer(text))
        text = text[: ends[-1].end()] if ends else ""
    return text


def parse_output(
    text: str,
    truncated: bool = False,
    dialect: TipoDialect = TIPO_V1,
    classify_tags: Callable[[Iterable[str]], TagMap] = classify,
) -> ParsedOutput:
    """Parse a TIPO text (the model input followed by the completion). Never raises on model
    output. ``truncated``: generation stopped at the token limit, so the last field may be cut."""
    text = _clean_completion(text, dialect)
    raw_fields, orphans = _split_fields(text, dialect)
    out = ParsedOutput(ignored=orphans)
    filled: set[str] = set()
    last_index = len(raw_fields) - 1
    for index, raw in enumerate(raw_fields):
        key = "aspect ratio" if raw.key in ("aspect_ratio", dialect.aspect_ratio_key) else raw.key
        if key in filled:
            out.ignored.append(f"{raw.key}:{chr(10).join(raw.parts)}")
            continue
        if key not in out.fields:
            out.fields.append(key)
        cut = truncated and index == last_index
        if cut:
            out.truncated_field = key
        # An empty occurrence (e.g. ``short: <|empty|>``) does not hide a later one with content.
        if _store_field(out, key, raw.parts, cut, classify_tags):
            filled.add(key)
    return out


def _store_field(
    out: ParsedOutput,
    key: str,
    parts: list[str],
    cut: bool,
    classify_tags: Callable[[Iterable[str]], TagMap],
) -> bool:
    """Store one field's content in ``out``; False when it has none."""
    if key in (SHORT_FIELD, LONG_FIELD):
        caption = _caption_text(parts, cut)
        setattr(out, OUTPUT_NAMES[key], caption)
        return bool(caption)
    if key == "target":
        out.target = " ".join(p.strip() for p in parts if p.strip()) or None
        return out.target is not None
    if key == "aspect ratio":
        out.aspect_ratio = _MARKER.sub("", " ".join(parts)).strip() or None
        return out.aspect_ratio is not None
    items = _split_list(_drop_unfinished_item(parts) if cut else parts)
    if key == TAG_FIELD:
        out.tag_list = items
        classified = classify_tags(items)
        for category in TagCategory:
            out.tags.get(category).extend(classified.get(category))
    else:
        out.tags.get(_CATEGORY_KEYS[key]).extend(items)
    return bool(items)

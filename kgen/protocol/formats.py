"""Output formats: turn the final fields into the prompt text.

A format is a template whose placeholders ``<|special|> <|characters|> <|copyrights|> <|artist|>
<|general|> <|meta|> <|quality|> <|rating|>`` become the tags of that category joined with
``", "``, and ``<|extended|>`` / ``<|generated|>`` the natural-language caption (the user's caption
extended by the model) and the extra caption generated from the tags. ``FORMAT_PRESETS`` holds the
five formats of the reference extension.

Rules, in order:

* ``<|extended|>`` without an extended caption shows the generated one, unless the template also
  has ``<|generated|>`` (then it would appear twice);
* an empty field or an unknown placeholder disappears together with the ``,`` or ``.`` right
  after it, so no dangling separators are left;
* the ``.`` after a caption that already ends a sentence (``.`` ``!`` ``?``) is not doubled;
* runs of spaces become one space, lines lose their leading and trailing spaces, more than one
  blank line in a row becomes one, and the text loses leading/trailing whitespace and commas.

``append_new_content`` is the "no formatting" mode: the user's text unchanged, then what is new.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from .tags import TagCategory, TagMap

TAG_PLACEHOLDERS: tuple[str, ...] = tuple(category.value for category in TagCategory)
TEXT_PLACEHOLDERS: tuple[str, ...] = ("extended", "generated")
PLACEHOLDERS: tuple[str, ...] = TAG_PLACEHOLDERS + TEXT_PLACEHOLDERS

_NAMES = "<|special|>, <|characters|>, <|copyrights|>,\n<|artist|>,"
_GENERAL = "<|general|>,"
_EXTENDED = "<|extended|>."
_GENERATED = "<|generated|>."
_LABELS = "<|quality|>, <|meta|>, <|rating|>"


def _paragraphs(*parts: str) -> str:
    return "\n\n".join(parts)


FORMAT_PRESETS: Mapping[str, str] = MappingProxyType(
    {
        "tag only (DTG mode)": _paragraphs(_NAMES, _GENERAL, _LABELS),
        "NL only (Tag to NL)": _EXTENDED,
        "Both, tag first (recommend)": _paragraphs(_NAMES, _GENERAL, _EXTENDED, _LABELS),
        "Both, NL first (recommend)": _paragraphs(_NAMES, _EXTENDED, _GENERAL, _LABELS),
        "Both + generated NL": _paragraphs(_NAMES, _GENERATED, _GENERAL, _EXTENDED, _LABELS),
    }
)
DEFAULT_FORMAT = "Both, tag first (recommend)"

_PLACEHOLDER = re.compile(r"<\|([^<>|\n]*)\|>")
_SEPARATOR_AFTER = re.compile(r"[ \t]*[,.]")  # goes away with an empty placeholder before it
_SENTENCE_END = (".", "!", "?")


@dataclass
class PromptFields(TagMap):
    """What a prompt is made of: tags per category (a TagMap) and the two natural-language captions."""

    extended: str = ""
    """The user's caption, extended by the model (or the caption made from the tags)."""
    generated: str = ""
    """An extra caption generated from the tags."""

    @classmethod
    def from_tag_map(cls, tags: TagMap, extended: str = "", generated: str = "") -> PromptFields:
        return cls(
            **{category.value: list(names) for category, names in tags.items()},
            extended=extended,
            generated=generated,
        )

    def tag_map(self) -> TagMap:
        return TagMap(**{name: list(getattr(self, name)) for name in TAG_PLACEHOLDERS})

    def value(self, placeholder: str) -> str:
        """The text a known placeholder stands for ("" when empty)."""
        if placeholder in TEXT_PLACEHOLDERS:
            return getattr(self, placeholder).strip()
        return ", ".join(tag for tag in getattr(self, placeholder) if tag.strip())


def find_preset(name: str) -> str | None:
    """The preset called ``name``: exact, case-insensitive, or without the part in brackets
    (``"both, tag first"``, ``"tag only"``); ``None`` when there is no such preset."""
    wanted = _preset_key(name)
    for preset in FORMAT_PRESETS:
        if wanted in (_preset_key(preset), _preset_key(preset.split("(")[0])):
            return preset
    return None


def _preset_key(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def resolve_template(format_or_template: str) -> str:
    """A preset's template by (loose) name, or the text itself when it is a custom template."""
    preset = find_preset(format_or_template)
    if preset is not None:
        return FORMAT_PRESETS[preset]
    if _PLACEHOLDER.search(format_or_template):
        return format_or_template
    choices = ", ".join(repr(name) for name in FORMAT_PRESETS)
    raise ValueError(
        f"unknown format {format_or_template!r}: use one of {choices} "
        f"or a template with placeholders such as <|general|>"
    )


def placeholders(template: str) -> list[str]:
    """The placeholder names used in ``template``, in order of appearance (known or not)."""
    return [match.group(1) for match in _PLACEHOLDER.finditer(template)]


def apply_format(fields: PromptFields, template: str) -> str:
    """Fill ``template`` (a template text; see ``resolve_template`` for preset names) with ``fields``."""
    used = set(placeholders(template))
    values = {name: fields.value(name) for name in PLACEHOLDERS}
    if not values["extended"] and "generated" not in used:
        values["extended"] = values["generated"]

    # One pass over the template: text inside a value is never read as a placeholder.
    pieces, position = [], 0
    for match in _PLACEHOLDER.finditer(template):
        pieces.append(template[position : match.start()])
        position = match.end()
        value = values.get(match.group(1), "")
        separator = _SEPARATOR_AFTER.match(template, position)
        if not value or (separator and separator.group().endswith(".") and value.endswith(_SENTENCE_END)):
            position = separator.end() if separator else position
        pieces.append(value)
    pieces.append(template[position:])
    return _tidy("".join(pieces))


def _tidy(text: str) -> str:
    text = re.sub(r" {2,}", " ", text)
    text = "\n".join(line.strip(" \t") for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip().strip(",").strip()


def append_new_content(original: str, new_tags: Sequence[str], new_nl: str = "") -> str:
    """ "No formatting": ``original`` exactly as typed, then the new tags, then the new caption.

    Tags follow after ``", "`` (or just a space after a trailing comma); the caption goes on a new line.
    """
    text = original
    tags = ", ".join(tag for tag in new_tags if tag.strip())
    if tags:
        if not text.strip():
            text += tags
        elif text.rstrip().endswith(","):
            text += tags if text[-1].isspace() else f" {tags}"
        else:
            text += f", {tags}"
    if new_nl.strip():
        text += new_nl.strip() if not text or text.endswith("\n") else f"\n{new_nl.strip()}"
    return text

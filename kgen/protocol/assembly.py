"""The final result of a request: the user's content merged with what the model added, formatted.

Both protocols end here. The user's tags come first in every category and the user's caption text is
kept as typed; ``prompt`` is the request's format applied to the fields, or with ``no_formatting``
the user's text with the new content appended.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from . import formats
from .formats import PromptFields
from .postprocess import join_sentences
from .request import Attempt, UpsampleRequest, UpsampleResult
from .tags import TagCategory, TagMap, classify, classify_tag


@dataclass(frozen=True)
class GeneratedContent:
    """What a request's protocol steps ended with, the user's content included."""

    user_tags: TagMap
    new_tags: list[str]  # in the order accepted
    extended: list[str]  # the user's sentences (the last one possibly continued), then new ones
    generated: list[str]  # a caption generated from the tags
    user_sentences: list[str]


def canonical_tags(tags: Iterable[str]) -> list[str]:
    """Generated tags spelled as the tag lists spell them (``long_hair`` -> ``long hair``)."""
    out = []
    for tag in tags:
        classified = classify_tag(tag)
        out.append(classified.name if classified is not None else tag)
    return out


def _merge_maps(user: TagMap, new: TagMap) -> TagMap:
    merged = TagMap()
    for category in TagCategory:
        merged.get(category).extend(user.get(category))
        merged.get(category).extend(new.get(category))
    return merged


def assemble(
    request: UpsampleRequest,
    content: GeneratedContent,
    *,
    protocol: str,
    attempts: list[Attempt],
    banned: list[str],
    seconds: float,
) -> UpsampleResult:
    """The result of ``request``: fields, formatted and appended prompts, and how they were made."""
    tags = _merge_maps(content.user_tags, classify(content.new_tags))
    extended_text = join_sentences(content.extended)
    generated_text = join_sentences(content.generated)
    addition = _caption_addition(request, content.extended, content.user_sentences, content.generated)
    fields = PromptFields.from_tag_map(tags, extended_text, generated_text)
    formatted = formats.apply_format(fields, request.template)
    appended = _appended_prompt(request, content.new_tags, addition)
    return UpsampleResult(
        tags=tags,
        extended=extended_text,
        generated=generated_text,
        new_tags=list(content.new_tags),
        new_nl=addition.text,
        prompt=appended if request.no_formatting else formatted,
        formatted=formatted,
        appended=appended,
        seed=int(request.seed),
        protocol=protocol,
        attempts=attempts,
        banned=list(banned),
        seconds=seconds,
    )


@dataclass(frozen=True)
class _CaptionAddition:
    """What the model added after the user's caption: the rest of an unfinished last sentence, then
    whole new sentences (or, without a user caption, the generated caption)."""

    continuation: str
    sentences: list[str]

    @property
    def text(self) -> str:
        parts = [p for p in (self.continuation.strip(), *self.sentences) if p]
        joined = join_sentences(parts)
        return f"{joined}." if joined else ""

    def after(self, caption: str) -> str:
        """``caption`` (the user's text as typed) followed by this addition."""
        text = caption.rstrip()
        if self.continuation.strip():
            lead = "" if self.continuation[:1].isspace() or self.continuation[:1] in ",;:" else " "
            text += lead + self.continuation.rstrip()
        if self.sentences:
            if text and not text.endswith((".", "!", "?", "。", "！", "？")):
                text += "."
            text = f"{text} {join_sentences(self.sentences)}.".strip()
        elif text and self.continuation.strip():
            text += "."
        return text


def _caption_addition(
    request: UpsampleRequest, extended: list[str], user_sentences: list[str], generated: list[str]
) -> _CaptionAddition:
    if not user_sentences:
        return _CaptionAddition("", list(extended) or (list(generated) if not request.nl.strip() else []))
    last = len(user_sentences) - 1
    continuation = ""
    if last < len(extended) and extended[last] != user_sentences[last]:
        continued = extended[last]
        if continued.startswith(user_sentences[last]):
            continuation = continued[len(user_sentences[last]) :]
    return _CaptionAddition(continuation, list(extended[len(user_sentences) :]))


def _appended_prompt(request: UpsampleRequest, new_tags: list[str], addition: _CaptionAddition) -> str:
    """The "no formatting" prompt: the user's tags as typed plus the new tags, then the caption: the user's
    caption as typed plus what the model added (or the generated caption when the user gave none)."""
    caption = addition.after(request.nl) if request.nl.strip() else addition.text
    return formats.append_new_content(request.tags_text, new_tags, caption)

"""Parsing TIPO texts (model input + completion) back into fields (kgen.protocol.tipo.parse_output)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kgen.protocol.lengths import Length
from kgen.protocol.tags import TagMap
from kgen.protocol.tipo import (
    TipoRequest,
    TipoTask,
    build_prompt,
    first_prompt,
    general_text,
    meta_lines,
    parse_output,
    single_line,
)

PERSON_COUNT = {"1girl", "2girls", "1boy"}
QUALITY = {"masterpiece", "newest"}


def small_classify(tags: Iterable[str]) -> TagMap:
    """A stand-in classifier so these tests only depend on the parser."""
    out = TagMap()
    for tag in tags:
        if tag in PERSON_COUNT:
            out.special.append(tag)
        elif tag in QUALITY:
            out.quality.append(tag)
        else:
            out.general.append(tag)
    return out


def parse(text: str, truncated: bool = False):
    return parse_output(text, truncated=truncated, classify_tags=small_classify)


FULL = (
    "<s> rating: general\n"
    "artist: some artist\n"
    "quality: masterpiece\n"
    "aspect ratio: 0.7\n"
    "target: <|long|> <|short_to_tag_to_long|>\n"
    "short: A girl in a park.\n"
    "tag: 1girl, solo, long hair, newest, blue eyes\n"
    "long: A girl with long hair sits in a park. She smiles.</s>"
)


def test_complete_text_maps_every_field():
    out = parse(FULL)
    assert out.fields == ["rating", "artist", "quality", "aspect ratio", "target", "short", "tag", "long"]
    assert out.tags.rating == ["general"]
    assert out.tags.artist == ["some artist"]
    assert out.tags.quality == ["masterpiece", "newest"]  # meta line first, then the tag line's
    assert out.tags.special == ["1girl"]
    assert out.tags.general == ["solo", "long hair", "blue eyes"]
    assert out.tag_list == ["1girl", "solo", "long hair", "newest", "blue eyes"]
    assert out.extended == "A girl in a park."
    assert out.generated == "A girl with long hair sits in a park. She smiles."
    assert out.aspect_ratio == "0.7"
    assert out.target == "<|long|> <|short_to_tag_to_long|>"
    assert out.truncated_field is None and out.ignored == []
    assert out.is_usable


def test_eos_is_removed_as_a_token_not_as_characters():
    # the reference strips the characters of "</s>" and turns "blue eyes</s>" into "blue eye"
    out = parse("target: <|long|>\ntag: 1girl, blue eyes</s>")
    assert out.tag_list == ["1girl", "blue eyes"]
    out = parse("target: <|long|>\ntag: sss, ss</s><pad><pad>")
    assert out.tag_list == ["sss", "ss"]


def test_text_after_the_end_token_is_ignored():
    out = parse("tag: solo</s>tag: junk\nlong: junk")
    assert out.tag_list == ["solo"]
    assert out.generated == "" and out.fields == ["tag"]


def test_start_and_padding_tokens_are_removed():
    out = parse("<pad><pad><s>tag: solo, <unk>smile</s>")
    assert out.tag_list == ["solo", "smile"]


def test_truncated_tag_field_drops_the_cut_tag():
    out = parse("target: <|long|>\ntag: 1girl, solo, long hair, blue ey", truncated=True)
    assert out.tag_list == ["1girl", "solo", "long hair"]
    assert out.truncated_field == "tag"
    out = parse("target: <|long|>\ntag: 1girl, solo,", truncated=True)
    assert out.tag_list == ["1girl", "solo"]
    # without the truncation signal the last tag is taken as complete
    assert parse("tag: 1girl, solo, blue ey").tag_list == ["1girl", "solo", "blue ey"]


def test_truncated_caption_drops_the_unfinished_sentence():
    out = parse("tag: solo\nlong: A girl sits. She holds a", truncated=True)
    assert out.generated == "A girl sits."
    assert out.tag_list == ["solo"]  # an earlier field is complete
    out = parse("tag: solo\nlong: A girl sits. She smiles.", truncated=True)
    assert out.generated == "A girl sits. She smiles."
    out = parse("tag: solo\nlong: A girl holds a 3.5 m", truncated=True)
    assert out.generated == ""
    assert not out.usable_for(TipoTask("tag_to_long", Length.LONG, False))


def test_truncation_only_affects_the_last_field():
    out = parse("tag: solo, smile\nlong: A girl.\nshort: Short", truncated=True)
    assert out.tag_list == ["solo", "smile"]
    assert out.generated == "A girl."
    assert out.extended == "" and out.truncated_field == "short"


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "</s>", "<s>", "<pad><pad>"])
def test_empty_text(text):
    out = parse(text)
    assert out.fields == [] and not out.is_usable
    assert not out.usable_for(TipoTask(None, Length.LONG, True))


def test_first_occurrence_of_a_field_wins():
    out = parse("tag: solo, smile\nlong: First.\ntag: other\nlong: Second.\nrating: safe\nrating: nsfw")
    assert out.tag_list == ["solo", "smile"]
    assert out.generated == "First."
    assert out.tags.rating == ["safe"]
    assert out.fields == ["tag", "long", "rating"]
    assert out.ignored == ["tag: other", "long: Second.", "rating: nsfw"]


def test_an_empty_field_does_not_hide_a_later_one():
    out = parse("tag: \nshort: <|empty|>\nlong:\ntag: solo\nshort: A girl.\nlong: She sits.\nlong: Again.")
    assert out.tag_list == ["solo"]
    assert out.extended == "A girl." and out.generated == "She sits."
    assert out.fields == ["tag", "short", "long"]
    assert out.ignored == ["long: Again."]


def test_garbage_before_the_first_field_is_ignored():
    out = parse("blah blah\n@@@\ntarget: <|long|>\ntag: solo")
    assert out.ignored == ["blah blah", "@@@"]
    assert out.tag_list == ["solo"]


@pytest.mark.parametrize("text", ["asdf qwer", "1girl, solo, smile", "::::\n:::", "<|long|> <|tag_to_long|>"])
def test_garbage_only_is_not_usable(text):
    out = parse(text)
    assert not out.is_usable
    assert out.tags == TagMap()


def test_empty_marker_means_no_content():
    out = parse("tag: solo\nshort: <|empty|>\nlong: <|empty|>")
    assert out.extended == "" and out.generated == ""
    assert out.fields == ["tag", "short", "long"]
    assert not out.usable_for(TipoTask("tag_to_long", Length.LONG, False))
    assert parse("tag: <|empty|>").tag_list == []


def test_markers_inside_content_are_removed():
    out = parse("tag: solo, <|long|>, smile<|input_end|>\nlong: A girl. <|long|> She smiles.")
    assert out.tag_list == ["solo", "smile"]
    assert out.generated == "A girl. She smiles."


def test_colons_inside_content_do_not_start_fields():
    out = parse(
        "tag: :d, re:zero kara hajimeru isekai seikatsu, :o\n"
        "long: A sign reads: welcome.\nThe time is 12:30. note: it rains."
    )
    assert out.tag_list == [":d", "re:zero kara hajimeru isekai seikatsu", ":o"]
    assert out.generated == "A sign reads: welcome. The time is 12:30. note: it rains."


def test_fields_may_span_lines():
    out = parse("tag: solo, smile\nlong hair, hat\nlong: A girl.\nShe sits.")
    assert out.tag_list == ["solo", "smile", "long hair", "hat"]
    assert out.generated == "A girl. She sits."


def test_both_aspect_ratio_keys_and_loose_spacing():
    assert parse("aspect_ratio: 1.3\ntag: solo").aspect_ratio == "1.3"
    out = parse("  aspect ratio :1.0\n  tag :solo ,  smile  ")
    assert out.aspect_ratio == "1.0" and out.tag_list == ["solo", "smile"]


def test_usable_for_checks_the_output_field_of_the_task():
    out = parse("target: <|long|> <|tag_to_long|>\ntag: solo\nlong: A girl.")
    assert out.usable_for(TipoTask("tag_to_long", Length.LONG, True))
    assert out.usable_for(TipoTask(None, Length.LONG, True))
    assert not out.usable_for(TipoTask("tag_to_short", Length.LONG, True))


def test_prompt_round_trip():
    tags = TagMap(
        special=["1girl"],
        general=["solo", "smile"],
        artist=["someone"],
        quality=["masterpiece"],
        rating=["general"],
    )
    request = TipoRequest(tags=tags, nl="A girl.\nShe smiles.", aspect_ratio=0.75)
    prompt = first_prompt(request)
    out = parse(prompt)
    assert out.tags == tags
    assert out.extended == "A girl. She smiles."
    assert out.aspect_ratio == "0.8"
    assert out.target == "<|long|> <|short_to_tag|>"


def test_parse_with_the_real_classifier():
    try:
        out = parse_output("rating: general\ntag: 1girl, hatsune miku, blue_eyes, masterpiece")
    except NotImplementedError:
        pytest.skip("kgen.protocol.tags.classify is not implemented yet")
    assert out.tags.special == ["1girl"]
    assert out.tags.characters == ["hatsune miku"]
    assert out.tags.quality == ["masterpiece"]
    assert out.tags.rating == ["general"]
    assert len(out.tags.general) == 1 and out.tags.general[0].replace("_", " ") == "blue eyes"


PIECES = [*"ab :,.\n<>|/s\t", "tag:", "long:", "short:", "</s>", "<|empty|>", "rating:", "<s>", "é", "\u2028"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join), st.booleans())
def test_never_raises(text, truncated):
    out = parse(text, truncated)
    assert isinstance(out.tag_list, list)
    assert all(tag == tag.strip() and tag and "," not in tag for tag in out.tag_list)
    assert "</s>" not in out.generated + out.extended


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60), st.booleans())
def test_never_raises_on_any_unicode(text, truncated):
    parse_output(text, truncated, classify_tags=small_classify)


@settings(max_examples=100, deadline=None)
@given(
    tags=st.lists(st.text(min_size=1, max_size=10).filter(str.strip), min_size=1, max_size=5),
    nl=st.text(max_size=40),
)
def test_user_input_survives_prompt_and_parse(tags, nl):
    """Whatever the user typed, the parser finds the tag and caption lines the builder wrote."""
    task = TipoTask("short_to_tag", Length.LONG, True)
    prompt = build_prompt(meta_lines(TagMap(rating=["safe"])), tags, nl, task)
    out = parse(prompt)
    assert out.fields[:2] == ["rating", "target"]
    assert out.tags.rating == ["safe"]
    assert out.tag_list == [item.strip() for item in general_text(tags).split(",") if item.strip()]
    assert out.extended.split() == single_line(nl).split()

"""Output formats: presets, custom templates, cleanup of empty fields, the "no formatting" mode."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kgen.protocol.formats import (
    DEFAULT_FORMAT,
    FORMAT_PRESETS,
    TAG_PLACEHOLDERS,
    PromptFields,
    append_new_content,
    apply_format,
    find_preset,
    placeholders,
    resolve_template,
)
from kgen.protocol.tags import classify

FULL = PromptFields(
    special=["1girl"],
    characters=["hatsune miku"],
    copyrights=["vocaloid"],
    artist=["wlop"],
    general=["long hair", "smile"],
    meta=["absurdres"],
    quality=["masterpiece"],
    rating=["safe"],
    extended="A girl sings on a stage",
    generated="Lights shine on her",
)


def test_presets():
    assert list(FORMAT_PRESETS) == [
        "tag only (DTG mode)",
        "NL only (Tag to NL)",
        "Both, tag first (recommend)",
        "Both, NL first (recommend)",
        "Both + generated NL",
    ]
    assert DEFAULT_FORMAT in FORMAT_PRESETS
    assert placeholders(FORMAT_PRESETS["Both + generated NL"]) == [
        "special",
        "characters",
        "copyrights",
        "artist",
        "generated",
        "general",
        "extended",
        "quality",
        "meta",
        "rating",
    ]


def test_both_tag_first_with_every_field():
    assert apply_format(FULL, FORMAT_PRESETS["Both, tag first (recommend)"]) == (
        "1girl, hatsune miku, vocaloid,\nwlop,\n\nlong hair, smile,\n\nA girl sings on a stage.\n\n"
        "masterpiece, absurdres, safe"
    )
    assert apply_format(FULL, FORMAT_PRESETS["Both, NL first (recommend)"]).index("A girl") < apply_format(
        FULL, FORMAT_PRESETS["Both, NL first (recommend)"]
    ).index("long hair")
    assert apply_format(FULL, FORMAT_PRESETS["NL only (Tag to NL)"]) == "A girl sings on a stage."
    assert "Lights shine on her.\n\nlong hair" in apply_format(FULL, FORMAT_PRESETS["Both + generated NL"])
    assert "A girl" not in apply_format(FULL, FORMAT_PRESETS["tag only (DTG mode)"])


def test_extended_falls_back_to_generated_unless_both_are_in_the_template():
    fields = PromptFields(general=["smile"], generated="A girl smiles")
    assert apply_format(fields, "<|general|>, <|extended|>.") == "smile, A girl smiles."
    both = apply_format(fields, FORMAT_PRESETS["Both + generated NL"])
    assert both == "A girl smiles.\n\nsmile"


def test_empty_fields_leave_no_separators_behind():
    fields = PromptFields(artist=["wlop"], general=["smile"], rating=["safe"])
    assert apply_format(fields, FORMAT_PRESETS["Both, tag first (recommend)"]) == "wlop,\n\nsmile,\n\nsafe"
    assert apply_format(PromptFields(), FORMAT_PRESETS["Both + generated NL"]) == ""
    assert apply_format(PromptFields(quality=["masterpiece"]), "<|general|> , <|quality|>") == "masterpiece"


def test_unknown_placeholders_are_removed_with_their_separator():
    fields = PromptFields(general=["smile"], rating=["safe"])
    assert apply_format(fields, "<|tag|>, <|general|>, <|aspect_ratio|>, <|rating|>") == "smile, safe"
    assert apply_format(fields, "<|Nonsense here|>. <|general|>") == "smile"


def test_caption_ending_a_sentence_gets_no_second_period():
    assert apply_format(PromptFields(extended="She smiles!"), "<|extended|>.") == "She smiles!"
    assert apply_format(PromptFields(extended="She smiles."), "<|extended|>. <|general|>") == "She smiles."
    assert apply_format(PromptFields(extended="She smiles"), "<|extended|>.") == "She smiles."


def test_values_are_not_read_as_placeholders():
    fields = PromptFields(general=["<|rating|>"], rating=["safe"], extended="say <|general|>")
    text = apply_format(fields, "<|general|>, <|rating|>, <|extended|>")
    assert text == "<|rating|>, safe, say <|general|>"


def test_text_outside_placeholders_is_kept():
    assert apply_format(PromptFields(general=["smile"]), "score_9, <|general|>, BREAK, extra") == (
        "score_9, smile, BREAK, extra"
    )


@settings(max_examples=300, deadline=None)
@given(
    present=st.sets(st.sampled_from(TAG_PLACEHOLDERS)),
    extended=st.sampled_from(["", "A girl stands", "It rains."]),
    generated=st.sampled_from(["", "Clouds drift"]),
    preset=st.sampled_from(list(FORMAT_PRESETS)),
)
def test_presets_never_leave_dangling_separators(present, extended, generated, preset):
    fields = PromptFields(
        **{name: [f"{name} tag"] for name in present}, extended=extended, generated=generated
    )
    text = apply_format(fields, FORMAT_PRESETS[preset])
    assert text == text.strip().strip(",")
    assert not re.search(r",\s*,|\.\s*\.|\n\n\n|[ \t]\n|\n[ \t]|  ", text)
    assert all(line.strip() not in {",", "."} for line in text.split("\n"))
    for name in present:
        if f"<|{name}|>" in FORMAT_PRESETS[preset]:
            assert f"{name} tag" in text


def test_prompt_fields_round_trip_a_tag_map():
    tags = classify(["1girl", "hatsune miku", "smile", "masterpiece"])
    fields = PromptFields.from_tag_map(tags, extended="A girl", generated="More")
    assert fields.tag_map() == tags and fields.extended == "A girl" and fields.generated == "More"
    fields.general.append("frown")
    assert tags.general == ["smile"]


@pytest.mark.parametrize(("name", "preset"), [
    ("Both, tag first (recommend)", "Both, tag first (recommend)"),
    ("both, tag first", "Both, tag first (recommend)"),
    ("BOTH,  NL first", "Both, NL first (recommend)"),
    ("tag only", "tag only (DTG mode)"),
    ("nl_only", "NL only (Tag to NL)"),
    ("both + generated nl", "Both + generated NL"),
])  # fmt: skip
def test_presets_are_found_by_loose_names(name, preset):
    assert find_preset(name) == preset
    assert resolve_template(name) == FORMAT_PRESETS[preset]


def test_custom_templates_and_bad_formats():
    assert resolve_template("<|general|>, <|quality|>") == "<|general|>, <|quality|>"
    assert find_preset("custom") is None
    with pytest.raises(ValueError, match="unknown format 'fancy'"):
        resolve_template("fancy")


@pytest.mark.parametrize(("original", "tags", "nl", "expected"), [
    ("1girl, solo", ["smile", "hat"], "A girl.", "1girl, solo, smile, hat\nA girl."),
    ("1girl, solo,", ["smile"], "", "1girl, solo, smile"),
    ("1girl, solo, ", ["smile"], "", "1girl, solo, smile"),
    ("1girl, solo\n", [], "A girl.", "1girl, solo\nA girl."),
    ("", ["smile"], "A girl.", "smile\nA girl."),
    ("  ", ["smile"], "", "  smile"),
    ("1girl", [], "", "1girl"),
    ("1girl", ["", " "], "  ", "1girl"),
])  # fmt: skip
def test_append_new_content(original, tags, nl, expected):
    assert append_new_content(original, tags, nl) == expected


@settings(max_examples=200, deadline=None)
@given(original=st.text(), tags=st.lists(st.text(min_size=1)), nl=st.text())
def test_append_new_content_keeps_the_users_text(original, tags, nl):
    text = append_new_content(original, tags, nl)
    assert text.startswith(original)
    for tag in tags:
        assert tag in text or not tag.strip()
    assert nl.strip() in text

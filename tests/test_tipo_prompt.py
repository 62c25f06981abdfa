"""TIPO request planning and model-input text (kgen.protocol.tipo)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kgen.protocol.dialects import TIPO_V2, TIPO_V2_1
from kgen.protocol.lengths import Length
from kgen.protocol.tags import TagMap
from kgen.protocol.tipo import (
    TIPO_V1,
    MetaLine,
    TipoRequest,
    TipoTask,
    build_prompt,
    first_prompt,
    general_text,
    meta_lines,
    plan_tasks,
    single_line,
    wants_extra_nl,
)

VS, S, LG, VL = Length.VERY_SHORT, Length.SHORT, Length.LONG, Length.VERY_LONG


def modes(tasks: list[TipoTask]) -> list[str | None]:
    return [t.mode for t in tasks]


# --- planning ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("has_tags", "has_nl", "expand_tags", "expand_nl", "tag_first", "expected"),
    [
        (False, False, True, True, True, [None]),
        (False, False, False, False, False, [None]),  # nothing given: always generate tags
        (True, False, True, True, True, [None]),
        (True, False, False, True, True, []),  # tags kept as they are, nothing to do
        (False, True, True, True, True, ["long_to_tag"]),
        (True, True, False, False, True, []),
        (True, True, True, False, True, ["short_to_tag", "short_to_tag_to_long"]),
        (True, True, False, True, True, ["tag_to_long", "tag_to_short_to_long"]),
        (True, True, True, True, True, ["short_to_tag", "tag_to_long"]),
        (True, True, True, True, False, ["tag_to_long", "long_to_tag"]),
    ],
)
def test_plan_modes(has_tags, has_nl, expand_tags, expand_nl, tag_first, expected):
    tasks = plan_tasks(
        has_tags=has_tags,
        has_nl=has_nl,
        expand_tags=expand_tags,
        expand_nl=expand_nl,
        tag_first=tag_first,
        extra_nl=False,
    )
    assert modes(tasks) == expected


@pytest.mark.parametrize(
    ("has_tags", "has_nl", "expand_tags", "expand_nl", "tag_first", "extra"),
    [
        (False, False, True, True, True, TipoTask("tag_to_long", VS, True)),
        (True, False, True, True, True, TipoTask("tag_to_long", VS, False)),
        (True, False, False, True, True, TipoTask("tag_to_long", VS, False)),
        (False, True, True, True, True, TipoTask("short_to_tag_to_long", VS, False)),
        (True, True, False, False, True, TipoTask("short_to_tag_to_long", VS, False)),
        (True, True, True, True, True, TipoTask("short_to_tag_to_long", VS, False)),
        (True, True, True, True, False, TipoTask("tag_to_short_to_long", VS, False)),
    ],
)
def test_extra_caption_task_is_appended(has_tags, has_nl, expand_tags, expand_nl, tag_first, extra):
    flags = dict(
        has_tags=has_tags,
        has_nl=has_nl,
        expand_tags=expand_tags,
        expand_nl=expand_nl,
        tag_first=tag_first,
        tag_length=VL,
        nl_length=VS,
    )
    assert plan_tasks(**flags, extra_nl=True) == [*plan_tasks(**flags, extra_nl=False), extra]


@pytest.mark.parametrize(("expand_tags", "expand_nl"), [(True, False), (False, True)])
def test_extra_caption_task_is_not_repeated(expand_tags, expand_nl):
    flags = dict(has_tags=True, has_nl=True, expand_tags=expand_tags, expand_nl=expand_nl)
    without = plan_tasks(**flags, extra_nl=False)
    assert plan_tasks(**flags, extra_nl=True) == without
    assert without[-1].mode.endswith("_to_long")


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=6)))
def test_every_task_targets_the_length_of_what_it_writes(flags):
    has_tags, has_nl, expand_tags, expand_nl, tag_first, extra_nl = flags
    tasks = plan_tasks(
        has_tags=has_tags,
        has_nl=has_nl,
        expand_tags=expand_tags,
        expand_nl=expand_nl,
        tag_first=tag_first,
        extra_nl=extra_nl,
        tag_length="very short",
        nl_length="very long",
    )
    for task in tasks:
        assert task.length == (VS if task.output_field == "tag" else VL), task
    assert len(tasks) == len(set(tasks)) or not extra_nl  # never the same task twice in a row at the end
    if not has_tags and not has_nl:
        assert tasks, "a request without input must still generate something"


def test_expand_flag_of_caption_only_input_controls_the_caption():
    assert plan_tasks(has_tags=False, has_nl=True, expand_nl=False) == [TipoTask("long_to_tag", LG, False)]
    assert plan_tasks(has_tags=False, has_nl=True, expand_nl=True) == [TipoTask("long_to_tag", LG, True)]


def test_lengths_accept_labels_and_default_to_long():
    assert plan_tasks(has_tags=True, has_nl=False, tag_length="very_long")[0].length is VL
    assert plan_tasks(has_tags=True, has_nl=False, tag_length="Very Long")[0].length is VL
    assert plan_tasks(has_tags=True, has_nl=False, tag_length="")[0].length is LG
    with pytest.raises(ValueError, match="medium"):
        plan_tasks(has_tags=True, has_nl=False, tag_length="medium")


@pytest.mark.parametrize(
    ("nl", "template", "expected"),
    [
        ("", "<|general|>", False),
        ("", "<|general|>, <|extended|>.", True),
        ("  \n", "<|extended|>.", True),
        ("A girl.", "<|extended|>.", False),
        ("A girl.", "<|generated|>. <|extended|>.", True),
    ],
)
def test_wants_extra_nl(nl, template, expected):
    assert wants_extra_nl(nl, template) is expected


def test_task_validation_and_fields():
    task = TipoTask("short_to_tag_to_long", "very short", False)
    assert task.length is VS
    assert task.fields == ("short", "tag", "long")
    assert task.output_field == "long"
    assert task.caption_field == "short"
    assert TipoTask("tag_to_long", LG, True).caption_field == "long"
    assert TipoTask(None, LG, True).fields == ("tag",)
    with pytest.raises(ValueError, match="tag_to_pony"):
        TipoTask("tag_to_pony", LG, True)
    with pytest.raises(ValueError, match="tall"):
        TipoTask(None, "tall", True)


# --- prompt text -------------------------------------------------------------------------------

TAGS = TagMap(
    special=["1girl"],
    general=["solo", "long hair"],
    artist=["some artist"],
    characters=["hatsune miku"],
    copyrights=["vocaloid"],
    meta=["highres"],
    quality=["masterpiece", "newest"],
    rating=["general"],
)


def test_meta_lines_order_and_aspect_ratio_key():
    lines = meta_lines(TAGS, aspect_ratio=832 / 1216)
    assert [line.key for line in lines] == [
        "meta",
        "rating",
        "artist",
        "characters",
        "copyrights",
        "quality",
        "aspect ratio",
    ]
    assert lines[-1] == MetaLine("aspect ratio", "0.7")
    assert lines[5] == MetaLine("quality", "masterpiece, newest")


def test_meta_lines_leave_out_empty_categories_and_optional_quality():
    tags = TagMap(general=["solo"], rating=["safe"], quality=["masterpiece"])
    assert meta_lines(tags) == [MetaLine("rating", "safe"), MetaLine("quality", "masterpiece")]
    assert meta_lines(tags, add_quality=False) == [MetaLine("rating", "safe")]
    # a model trained with quality tags always gets them
    assert MetaLine("quality", "masterpiece") in meta_lines(tags, dialect=TIPO_V2, add_quality=False)
    assert meta_lines(TagMap()) == []


def test_dialect_rewrites_meta_values():
    lines = meta_lines(TagMap(rating=["explicit"]), dialect=TIPO_V2_1)
    assert lines == [MetaLine("rating", "nsfw, explicit")]


def test_general_line_is_person_count_then_general():
    assert general_text(TAGS) == "1girl, solo, long hair"
    assert general_text(["a", " ", "b\nc"]) == "a, b c"


def test_build_prompt_tag_only_expands_the_tag_line():
    prompt = build_prompt(meta_lines(TAGS, 1.0), general_text(TAGS), "", TipoTask(None, LG, True))
    assert prompt == (
        "meta: highres\nrating: general\nartist: some artist\ncharacters: hatsune miku\n"
        "copyrights: vocaloid\nquality: masterpiece, newest\naspect ratio: 1.0\n"
        "target: <|long|>\ntag: 1girl, solo, long hair"
    )


def test_build_prompt_caption_fields_follow_the_mode():
    meta = [MetaLine("rating", "safe")]
    assert build_prompt(meta, "1girl", "A girl.", TipoTask("short_to_tag", S, True)) == (
        "rating: safe\ntarget: <|short|> <|short_to_tag|>\nshort: A girl.\ntag: 1girl"
    )
    assert build_prompt(meta, "1girl", "A girl.", TipoTask("tag_to_long", VL, True)) == (
        "rating: safe\ntarget: <|very_long|> <|tag_to_long|>\ntag: 1girl\nlong: A girl."
    )
    assert build_prompt(meta, "1girl", "A girl.", TipoTask("short_to_tag_to_long", LG, False)) == (
        "rating: safe\ntarget: <|long|> <|short_to_tag_to_long|>\nshort: A girl.\ntag: 1girl\nlong:"
    )


def test_build_prompt_empty_inner_field_is_written_empty():
    prompt = build_prompt([], "", "A girl.", TipoTask("tag_to_short_to_long", LG, False))
    assert prompt == "target: <|long|> <|tag_to_short_to_long|>\ntag: \nshort: A girl.\nlong:"


def test_build_prompt_nothing_to_expand_ends_at_target():
    assert build_prompt([], "", "", TipoTask(None, VS, True)) == "target: <|very_short|>"


def test_non_expanding_task_never_writes_its_output_field_twice():
    prompt = build_prompt([], "1girl, solo", "", TipoTask("long_to_tag", LG, False))
    assert prompt.count("tag:") == 1
    assert prompt.endswith("\ntag:")


def test_gen_meta_request():
    prompt = build_prompt([], "solo", "", TipoTask("tag_to_long", S, True), gen_meta=True)
    assert "target: <|short|> <|tag_to_long|> <|gen_meta|>\n" in prompt


def test_v2_dialect_has_no_length_on_caption_only_tasks():
    prompt = build_prompt([], "solo", "A girl.", TipoTask("short_to_long", S, False), dialect=TIPO_V2)
    assert "target: <|short_to_long|>\n" in prompt
    with pytest.raises(ValueError, match="short_to_long"):
        build_prompt([], "solo", "A girl.", TipoTask("short_to_long", S, False), dialect=TIPO_V1)


def test_user_text_cannot_break_the_line_format():
    task = TipoTask("short_to_tag", LG, True)
    prompt = build_prompt(
        [MetaLine("artist", "a\nb")], ["x</s>y", "<|long|>z"], " A girl.\n\nShe smiles.\n", task
    )
    assert prompt.splitlines() == [
        "artist: a b",
        "target: <|long|> <|short_to_tag|>",
        "short: A girl. She smiles.",
        "tag: x y, z",
    ]


@settings(max_examples=150, deadline=None)
@given(
    tags=st.lists(st.text(max_size=12), max_size=6),
    nl=st.text(max_size=40),
    artist=st.lists(st.text(max_size=8), max_size=3),
)
def test_any_user_text_gives_one_line_per_field(tags, nl, artist):
    task = TipoTask("short_to_tag_to_long", LG, False)
    meta = meta_lines(TagMap(artist=artist))
    prompt = build_prompt(meta, general_text(tags), nl, task)
    lines = prompt.split("\n")
    assert len(lines) == len(meta) + 1 + 3
    assert [line.split(":")[0] for line in lines[-3:]] == ["short", "tag", "long"]
    assert "</s>" not in prompt and "<s>" not in prompt


# --- requests ----------------------------------------------------------------------------------


def test_first_prompt_of_a_webui_like_request():
    request = TipoRequest(
        tags=TAGS,
        nl="  A girl sings.\n",
        tag_length="short",
        nl_length="very long",
        aspect_ratio=1.5,
        extra_nl=True,
    )
    assert modes(request.plan()) == ["short_to_tag", "tag_to_long", "short_to_tag_to_long"]
    assert first_prompt(request) == (
        "meta: highres\nrating: general\nartist: some artist\ncharacters: hatsune miku\n"
        "copyrights: vocaloid\nquality: masterpiece, newest\naspect ratio: 1.5\n"
        "target: <|short|> <|short_to_tag|>\nshort: A girl sings.\ntag: 1girl, solo, long hair"
    )


def test_first_prompt_is_none_when_there_is_nothing_to_generate():
    request = TipoRequest(tags=TagMap(general=["solo"]), expand_tags=False)
    assert request.plan() == []
    assert first_prompt(request) is None


def test_only_general_and_person_tags_count_as_tag_input():
    request = TipoRequest(tags=TagMap(artist=["someone"], quality=["masterpiece"]))
    assert modes(request.plan()) == [None]
    assert first_prompt(request).endswith("target: <|long|>")


def test_blank_caption_is_no_caption():
    request = TipoRequest(tags=TagMap(general=["solo"]), nl=" \n ", extra_nl=True)
    assert modes(request.plan()) == [None, "tag_to_long"]


def test_request_without_aspect_ratio_has_no_aspect_line():
    assert "aspect" not in first_prompt(TipoRequest())


def test_single_line():
    assert single_line("  a\r\nb <pad>c<|x|> ") == "a b  c"
    assert single_line("a\u2028b\x85c") == "a b c"

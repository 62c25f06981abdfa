"""Prompt-syntax corpus: the tags the model sees, and every non-tag element surviving the rewrite in place."""

from __future__ import annotations

import re

import pytest

from kgen.protocol import prompt_syntax as ps
from kgen.protocol.prompt_syntax import SegmentKind

W = 1.1
S = 1 / 1.1

# (prompt, tags the model sees as (text, weight), non-tag elements (not separators) in order)
CORPUS: list[tuple[str, list[tuple[str, float]], list[str]]] = [
    ("1girl, solo, long hair", [("1girl", 1), ("solo", 1), ("long hair", 1)], []),
    ("", [], []),
    ("   ", [], []),
    (",, ,", [], []),
    ("1girl,solo,\nsmile", [("1girl", 1), ("solo", 1), ("smile", 1)], []),
    ("(blue eyes:1.2), smile", [("blue eyes", 1.2), ("smile", 1)], []),
    ("(blue eyes:0.5)", [("blue eyes", 0.5)], []),
    ("(blue eyes), [red hair]", [("blue eyes", W), ("red hair", S)], []),
    ("((masterpiece)), (((best quality)))", [("masterpiece", W * W), ("best quality", W**3)], []),
    ("[[low quality]]", [("low quality", S * S)], []),
    ("((tag:1.5))", [("tag", 1.5 * W)], []),
    ("(a, b:1.3), c", [("a", 1.3), ("b", 1.3), ("c", 1)], []),
    ("(a, (b:1.5)), c", [("a", W), ("b", 1.5 * W), ("c", 1)], []),
    ("artist \\(style\\), 1girl", [("artist (style)", 1), ("1girl", 1)], []),
    ("(ganyu \\(genshin impact\\):1.2)", [("ganyu (genshin impact)", 1.2)], []),
    ("\\[not a group\\]", [("[not a group]", 1)], []),
    ("<lora:detail:0.8>, 1girl", [("1girl", 1)], ["<lora:detail:0.8>"]),
    ("1girl, <lora:detail:0.8>, smile", [("1girl", 1), ("smile", 1)], ["<lora:detail:0.8>"]),
    ("1girl <lora:a:1> <hypernet:b:0.5>", [("1girl", 1)], []),  # one chunk: tag + networks move together
    ("<lora:a:1> <lyco:b:0.5:0.3>, smile", [("smile", 1)], ["<lora:a:1> <lyco:b:0.5:0.3>"]),
    ("1girl BREAK smile", [("1girl", 1), ("smile", 1)], ["BREAK"]),
    ("1girl, BREAK, smile", [("1girl", 1), ("smile", 1)], ["BREAK"]),
    ("BREAK 1girl", [("1girl", 1)], ["BREAK"]),
    ("BREAKFAST, 1girl", [("BREAKFAST", 1), ("1girl", 1)], []),
    ("a cat AND a dog", [("a cat", 1), ("a dog", 1)], ["AND"]),
    ("a cat :1.2 AND a dog :0.8", [("a cat", 1), ("a dog", 1)], [" :1.2", "AND", " :0.8"]),
    ("SANDWICH, ANDROID", [("SANDWICH", 1), ("ANDROID", 1)], []),
    ("[dog:cat:0.5], 1girl", [("1girl", 1)], ["[dog:cat:0.5]"]),
    ("a [fat:thin:0.5] man, smile", [("smile", 1)], ["a [fat:thin:0.5] man"]),
    ("[red|blue] hair, smile", [("smile", 1)], ["[red|blue] hair"]),
    ("[fe|]male", [], ["[fe|]male"]),
    ("[ in foreground::0.6], tree", [("tree", 1)], ["[ in foreground::0.6]"]),
    ("1girl, [a:b:10 ]", [("1girl", 1)], ["[a:b:10 ]"]),  # a space before ']' is still prompt editing
    ("(x [a:b:3]:1.2), y", [("y", 1)], ["(x [a:b:3]:1.2)"]),
    ("(re:zero), rem", [("re:zero", W), ("rem", 1)], []),
    ("(tag:1.2", [("tag", W)], [":1.2"]),  # unclosed: ':1.2' ends the (only) sub-prompt: its weight
    ("smile)", [("smile)", 1)], []),  # a stray closer is literal text
    ("1girl\n\nA girl walking in a park.", [("1girl", 1), ("A girl walking in a park.", 1)], []),
    (
        "(masterpiece:1.2), 1girl, <lora:add_detail:0.5>, [dog:cat:0.5], (smile), BREAK, sunset",
        [("masterpiece", 1.2), ("1girl", 1), ("smile", W), ("sunset", 1)],
        ["<lora:add_detail:0.5>", "[dog:cat:0.5]", "BREAK"],
    ),
    ("tag_with_underscores, 1girl", [("tag_with_underscores", 1), ("1girl", 1)], []),
    ("  leading, trailing  ", [("leading", 1), ("trailing", 1)], []),
    ("日本語, 猫耳", [("日本語", 1), ("猫耳", 1)], []),
    ("(1girl:1.2) (solo:0.9)", [("1girl solo", 1.2)], []),  # no comma: one chunk, first weight
    # modules/prompt_parser.py parse_prompt_attention doctests
    ("normal text", [("normal text", 1)], []),
    ("an (important) word", [("an important word", 1)], []),
    ("(unbalanced", [("unbalanced", W)], []),
    ("\\(literal\\]", [("(literal]", 1)], []),
    ("(unnecessary)(parens)", [("unnecessaryparens", W)], []),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",  # one '(' never closes: a single chunk
        [("a house on a hill", 1), ("sun", W), ("sky.", W**4)],
        [],
    ),
    # modules/prompt_parser.py get_learned_conditioning_prompt_schedules doctests
    ("test", [("test", 1)], []),
    ("a [b:3]", [], ["a [b:3]"]),
    ("a [b: 3]", [], ["a [b: 3]"]),
    ("a [[[b]]:2]", [], ["a [[[b]]:2]"]),
    ("[(a:2):3]", [], ["[(a:2):3]"]),
    ("a [b : c : 1] d", [], ["a [b : c : 1] d"]),
    ("a[b:[c:d:2]:1]e", [], ["a[b:[c:d:2]:1]e"]),
    ("a [unbalanced", [("a unbalanced", 1)], []),
    ("a [b:.5] c", [], ["a [b:.5] c"]),
    ("a [{b|d{:.5] c", [], ["a [{b|d{:.5] c"]),
    ("((a][:b:c [d:3]", [], ["((a][:b:c [d:3]"]),
    ("[a|(b:1.1)]", [], ["[a|(b:1.1)]"]),
]


def _non_tag(parsed: ps.ParsedPrompt) -> list[str]:
    return [s.text for s in parsed.segments if s.kind not in (SegmentKind.SEPARATOR, SegmentKind.TAGS)]


def _in_order(haystack: str, needles: list[str]) -> bool:
    pos = 0
    for needle in needles:
        found = haystack.find(needle, pos)
        if found < 0:
            return False
        pos = found + len(needle)
    return True


def test_corpus_size():
    assert len(CORPUS) >= 40


@pytest.mark.parametrize(("prompt", "tags", "others"), CORPUS, ids=[repr(c[0])[:40] for c in CORPUS])
def test_tags_and_elements(prompt, tags, others):
    parsed = ps.parse(prompt)
    assert "".join(s.text for s in parsed.segments) == prompt  # lossless
    got = [(t.text, t.weight) for t in parsed.tags]
    assert [t for t, _ in got] == [t for t, _ in tags]
    for (_, weight), (_, expected) in zip(got, tags, strict=True):
        assert weight == pytest.approx(expected)
    assert _non_tag(parsed) == others


@pytest.mark.parametrize(("prompt", "tags", "others"), CORPUS, ids=[repr(c[0])[:40] for c in CORPUS])
def test_append_keeps_prompt_as_typed(prompt, tags, others):
    parsed = ps.parse(prompt)
    out = ps.append_content(parsed, ["new tag", "ganyu (genshin impact)"], "A new sentence.")
    assert "new tag, ganyu \\(genshin impact\\)" in out
    assert out.rstrip().endswith("A new sentence.") or "A new sentence." in out
    # the prompt is unchanged around one insertion point
    inserted = out.index("new tag")
    head = out[:inserted].rstrip(", ")
    assert prompt.startswith(head)
    tail_start = out.index("A new sentence.") + len("A new sentence.")
    assert prompt.endswith(out[tail_start:])
    assert len(out) > len(prompt)
    # every non-tag element and every user tag chunk survives in order
    assert _in_order(out, [s.text for s in parsed.segments if s.kind is not SegmentKind.SEPARATOR])


@pytest.mark.parametrize(("prompt", "tags", "others"), CORPUS, ids=[repr(c[0])[:40] for c in CORPUS])
def test_formatted_block_keeps_everything_else(prompt, tags, others):
    parsed = ps.parse(prompt)
    units = parsed.main_units()
    block = ", ".join([surface for _, surface in ps.surfaces_by_first_tag(units)] + ["new tag"])
    out = ps.replace_tag_block(parsed, block)
    assert block in out
    assert _in_order(out, _non_tag(parsed))
    for segment in parsed.segments:  # each user chunk appears (in the block or in its own section)
        if segment.kind is SegmentKind.TAGS:
            assert segment.text in out
    assert "new tag" in out


def test_formatted_mode_never_regroups_editing_or_alternation():
    parsed = ps.parse("[dog:cat:0.5], [red|blue], 1girl")
    out = ps.replace_tag_block(parsed, "1girl, solo")
    assert "[dog:cat:0.5]" in out and "[red|blue]" in out
    assert not re.search(r"\(dog:cat", out) and "(red|blue" not in out


def test_lora_stays_in_place_not_moved_to_end():
    prompt = "<lora:style:0.7>, 1girl, smile, (blue eyes:1.2)"
    parsed = ps.parse(prompt)
    out = ps.append_content(parsed, ["long hair"], "She smiles.")
    assert out.startswith("<lora:style:0.7>, 1girl, smile, (blue eyes:1.2), long hair")
    block = ps.replace_tag_block(parsed, "1girl, smile, (blue eyes:1.2), long hair")
    assert block.startswith("<lora:style:0.7>, ")


def test_weights_survive_new_text_never_glued_into_a_group():
    out = ps.append_content(ps.parse("1girl, (smile:1.3)"), ["open mouth"])
    assert out == "1girl, (smile:1.3), open mouth"


def test_new_content_goes_into_the_main_break_chunk():
    parsed = ps.parse("1girl, solo BREAK <lora:bg:1>, sunset")
    assert ps.append_content(parsed, ["smile"]) == "1girl, solo, smile BREAK <lora:bg:1>, sunset"
    assert (
        ps.replace_tag_block(parsed, "solo, 1girl, smile") == "solo, 1girl, smile BREAK <lora:bg:1>, sunset"
    )


def test_only_networks_prompt_gets_content_after_them():
    parsed = ps.parse("<lora:a:1>")
    assert ps.append_content(parsed, ["1girl"]) == "<lora:a:1>, 1girl"
    assert ps.replace_tag_block(parsed, "1girl, solo") == "<lora:a:1>, 1girl, solo"
    assert ps.append_content(ps.parse(""), ["1girl"], "A girl.") == "1girl,\nA girl."


def test_removed_units_take_one_separator_with_them():
    parsed = ps.parse("1girl, <lora:x:1>, smile, [a|b], solo")
    assert ps.replace_tag_block(parsed, "BLOCK") == "BLOCK, <lora:x:1>, [a|b]"


def test_escape_roundtrip():
    for text in ["ganyu (genshin impact)", "[abc]", "plain", "a\\(b"]:
        assert ps.unescape(ps.escape(text)) == text.replace("\\(", "(") or text == "a\\(b"
    assert ps.escape("a (b)") == "a \\(b\\)"
    assert ps.escape("already \\(escaped\\)") == "already \\(escaped\\)"


@pytest.mark.parametrize(
    ("generated", "forbidden"),
    [
        ("x AND y", r"\bAND\b"),
        ("x BREAK y", r"\bBREAK\b"),
        ("<lora:z:1>", r"<\w+:"),
        ("closing>", ">"),
        ("a|b", r"(?<!\\)\|"),
        ("score:9", r"(?<!\\):"),
        ("trailing\\", r"(?<!\\)\\$"),
    ],
)
def test_generated_text_cannot_become_syntax(generated, forbidden):
    escaped = ps.escape(generated)
    assert not re.search(forbidden, escaped)
    assert ps.escape(escaped) == escaped  # escaping twice changes nothing
    assert ps.parse(f"1girl, {escaped}").rearrange_hazard() is None


def test_a_generated_colon_number_is_never_a_sub_prompt_weight():
    assert not re.search(r":\s*[-+]?(?:\d+\.?|\d*\.\d+)\s*$", ps.escape("cat :3"))


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("1girl, (smile", "unclosed '('"),
        ("1girl, smile)", "closes no bracket"),
        ("a|b, 1girl", "'|' outside square brackets"),
        ("<lora:broken, 1girl", "not closed by '>'"),
        ("(1girl AND smile)", "AND inside brackets"),
        ("(1girl BREAK smile)", "BREAK inside brackets"),
        ("x<lora:a:1>BREAK", "makes or breaks a BREAK"),
        ("1girl, x BREAK[a:b:5]", "BREAK glued"),
        ("1girl, path\\", "backslash"),
        ("1girl :1.2 <lora:a:1>", "sub-prompt"),
    ],
)
def test_prompts_the_webui_reads_otherwise_are_flagged(prompt, reason):
    assert reason in (ps.parse(prompt).rearrange_hazard() or "")


@pytest.mark.parametrize("prompt", [p for p, _, _ in CORPUS if "(" not in p[-3:]][:20])
def test_well_formed_prompts_are_not_flagged(prompt):
    parsed = ps.parse(prompt)
    if all(ch not in prompt for ch in "()[]|\\<"):
        assert parsed.rearrange_hazard() is None


def test_prepend_keeps_a_flagged_prompt_byte_for_byte():
    parsed = ps.parse("1girl, (smile")
    assert ps.prepend_content(parsed, ["hat"], "A hat.") == "hat,\nA hat.,\n1girl, (smile"
    assert ps.prepend_content(parsed, []) == "1girl, (smile"


def test_new_content_keeps_a_glued_break_a_break():
    parsed = ps.parse("bare shoulders, (realistic:1.3)BREAK sky")
    out = ps.append_content(parsed, ["hat"])
    assert out == "bare shoulders, (realistic:1.3), hat BREAK sky"
    assert ps.replace_tag_block(parsed, "X, (realistic:1.3)") == "X, (realistic:1.3)BREAK sky"
    assert ps.replace_tag_block(parsed, "(realistic:1.3), hat") == "(realistic:1.3), hat BREAK sky"


def test_the_sub_prompt_weight_stays_last():
    assert ps.append_content(ps.parse("1girl, smile :1.2"), ["hat"]) == "1girl, smile, hat :1.2"
    assert ps.append_content(ps.parse("1girl, :1.2 AND sunset"), ["hat"]) == "1girl, hat, :1.2 AND sunset"
    assert ps.reads_the_same(ps.parse("a :1.2 AND b"), "a, c :1.2 AND b")
    assert not ps.reads_the_same(ps.parse("a :1.2 AND b"), "a :1.2, c AND b")

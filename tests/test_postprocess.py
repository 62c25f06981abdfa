import random
import time

import pytest

from kgen.protocol.postprocess import (
    MAX_BAN_PATTERN_CHARS,
    MAX_TAG_CHARS,
    BanList,
    BanTagError,
    compile_ban_pattern,
    dedupe,
    is_plausible_sentence,
    is_plausible_tag,
    join_sentences,
    merge_sentences,
    merge_tags,
    split_sentences,
    split_tags,
)

# ------------------------------------------------------------------------------------------- helpers


def test_split_tags_strips_and_drops_blanks():
    assert split_tags(" a, b ,,c , ") == ["a", "b", "c"]
    assert split_tags(["a ", "", " ", "b"]) == ["a", "b"]
    assert split_tags(None) == []


def test_split_and_join_sentences():
    assert split_sentences("A girl.  She smiles. ") == ["A girl", "She smiles"]
    assert split_sentences("") == []
    assert join_sentences(["A girl", "She smiles"]) == "A girl. She smiles"


def test_dedupe_ignores_case_underscores_and_escapes():
    assert dedupe(["Long_Hair", "long hair", "hat \\(object\\)", "hat (object)", "x"]) == [
        "Long_Hair",
        "hat \\(object\\)",
        "x",
    ]


@pytest.mark.parametrize(
    "tag, plausible",
    [
        ("long hair", True),
        ("^_^", True),
        ("hatsune miku (cosplay)", True),
        ("", False),
        ("a" * (MAX_TAG_CHARS + 1), False),
        ("one two three four five six seven eight nine ten eleven", False),
        ("blue eyes</s>", False),
        ("<|long|>", False),
        ("line\nbreak", False),
    ],
)
def test_is_plausible_tag(tag, plausible):
    assert is_plausible_tag(tag) is plausible


def test_is_plausible_sentence():
    assert is_plausible_sentence("A girl stands in the rain")
    assert not is_plausible_sentence("x" * 5000)
    assert not is_plausible_sentence("a <|short|> b")


# ------------------------------------------------------------------------------------------- ban list


def test_plain_text_rule_is_a_substring_ignoring_case_and_underscores():
    bans = BanList.parse("Hat, long_hair")
    assert bans.bans("white hat")
    assert bans.bans("chat")  # substring, as the reference
    assert bans.bans("very long hair")
    assert not bans.bans("hair")


def test_regex_rule_matches_from_the_start():
    bans = BanList.parse(r".*text, official\w*")
    assert bans.bans("english text")
    assert bans.bans("official art")
    assert not bans.bans("unofficial")  # re.match anchors at the start; "official" is no substring rule here
    assert bans.bans("texture")  # re.match: a match at the start is enough
    assert not bans.bans("tex")


def test_ban_list_accepts_lists_and_ignores_blank_entries():
    assert BanList.parse(["hat", " ", ""]).sources == ["hat"]
    assert not BanList.parse("")
    assert not BanList.parse(None)
    assert BanList.parse(" , hat,, ").sources == ["hat"]


@pytest.mark.parametrize("pattern", ["hat)", "[abc", "a**", "(?P<x>a)(?P<x>b)"])
def test_invalid_regex_is_a_clear_error_naming_it(pattern):
    with pytest.raises(BanTagError) as info:
        BanList.parse(f"umbrella, {pattern}, hat")
    assert info.value.pattern == pattern
    assert repr(pattern) in str(info.value)
    assert "regular expression" in str(info.value)


@pytest.mark.parametrize("pattern", ["(a+)+", "(a*)*b", "(x+x+)+y", "(a|aa)*c", "(red|blue)+", "(a?){30}"])
def test_catastrophic_patterns_are_refused(pattern):
    with pytest.raises(BanTagError, match="nested repetition"):
        compile_ban_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "matching", "other"),
    [
        (".*text", "english text", "texture"),
        ("(red|blue) hair", "blue hair", "green hair"),
        ("a{2,5}", "aaa", "a"),
        ("[a-z]+_(x)", "abc_x", "ABC_x"),
        ("(a|b)*c", "ababc", "abab"),
        (r"\(.*\)", "(artist)", "artist"),
    ],
)
def test_ordinary_patterns_are_accepted_and_compiled_as_written(pattern, matching, other):
    compiled = compile_ban_pattern(pattern)
    assert compiled.pattern == pattern
    assert compiled.fullmatch(matching)
    assert not compiled.fullmatch(other)


def test_pattern_length_and_repeat_count_are_bounded():
    with pytest.raises(BanTagError, match="longer than"):
        compile_ban_pattern("a" * (MAX_BAN_PATTERN_CHARS + 1))
    with pytest.raises(BanTagError, match="unbounded repeats"):
        compile_ban_pattern(".*a.*b.*c.*d.*e")


def test_worst_accepted_pattern_on_a_long_tag_stays_fast():
    bans = BanList.parse(".*.*.*.*x")
    start = time.perf_counter()
    assert not bans.bans("a" * 10_000)  # matched against the first MAX_TAG_CHARS characters only
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------------------------------- merging


def test_merge_tags_keeps_only_new_plausible_unbanned_tags():
    merged = merge_tags(
        ["1girl", "long hair"],
        ["Long_Hair", "smile", "hat", "smile", "x" * 500, "blue eyes"],
        room=None,
        bans=BanList.parse("hat"),
        rng=random.Random(0),
    )
    assert sorted(merged.added) == ["blue eyes", "smile"]
    assert merged.banned == ["hat"]
    assert merged.implausible == ["x" * 500]


def test_merge_tags_caps_to_room_and_never_below_zero():
    candidates = [f"tag {i}" for i in range(20)]
    merged = merge_tags([], candidates, room=5, bans=BanList(), rng=random.Random(1))
    assert len(merged.added) == 5 and len(merged.capped) == 15
    assert set(merged.added) | set(merged.capped) == set(candidates)
    assert merge_tags([], candidates, room=-3, bans=BanList(), rng=random.Random(1)).added == []


def test_merge_tags_shuffle_is_seeded():
    candidates = [f"tag {i}" for i in range(30)]

    def order(seed):
        return merge_tags([], candidates, room=None, bans=BanList(), rng=random.Random(seed)).added

    assert order(3) == order(3)
    assert len({tuple(order(seed)) for seed in range(5)}) > 1
    assert merge_tags(
        [], candidates, room=None, bans=BanList(), rng=random.Random(0), shuffle=False
    ).added == (candidates)


def test_merge_sentences_continuation_replaces_the_unfinished_last_sentence():
    merged = merge_sentences(
        ["A girl", "She stands in a park"],
        ["She stands in a park with flowers", "Birds fly", "The sky is blue"],
        room=None,
        rng=random.Random(0),
    )
    assert merged.base == ["A girl", "She stands in a park with flowers"]
    assert sorted(merged.added) == ["Birds fly", "The sky is blue"]
    assert merged.added[-1] == "The sky is blue"  # the last new sentence stays last


def test_merge_sentences_dedupes_caps_and_rejects_garbage():
    merged = merge_sentences(
        ["A girl"], ["a  GIRL", "One", "Two", "Three", "z" * 5000], room=2, rng=random.Random(0)
    )
    assert merged.base == ["A girl"]
    assert len(merged.added) == 2
    assert len(merged.capped) == 1
    assert merged.implausible == ["z" * 5000]


def test_continuation_must_contain_the_sentence_verbatim():
    merged = merge_sentences(["A  girl"], ["A girl with flowers"], room=None, rng=random.Random(0))
    assert merged.base == ["A  girl"] and merged.added == ["A girl with flowers"]

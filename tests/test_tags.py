"""Tag categorisation: lists, normalisation, precedence, packed data, lazy loading."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kgen.protocol.data.pack_tags import pack
from kgen.protocol.tags import (
    BUILTIN_LISTS,
    CATEGORY_PRECEDENCE,
    DANBOORU_CATEGORIES,
    ClassifiedTag,
    TagCategory,
    TagDatabase,
    TagMap,
    classify,
    classify_tag,
    default_database,
    general_spelling,
    tag_key,
)

C = TagCategory


@pytest.fixture(scope="session")
def shipped_lists() -> dict[TagCategory, list[str]]:
    """Every packed list of the shipped data (decompressed once per session)."""
    return default_database().packed_lists()


def test_builtin_lists():
    assert BUILTIN_LISTS[C.SPECIAL][:6] == ("1girl", "2girls", "3girls", "4girls", "5girls", "6+girls")
    assert {
        "multiple girls",
        "1boy",
        "6+boys",
        "multiple boys",
        "male focus",
        "1other",
        "6+others",
        "multiple others",
    } <= set(BUILTIN_LISTS[C.SPECIAL])
    assert len(BUILTIN_LISTS[C.SPECIAL]) == 22
    assert len(BUILTIN_LISTS[C.QUALITY]) == 26
    assert {
        "masterpiece",
        "worse quality",
        "very displeasing",
        "newest",
        "old",
        "score_9",
        "score_4_up",
        "source_pony",
    } <= set(BUILTIN_LISTS[C.QUALITY])
    assert BUILTIN_LISTS[C.RATING] == ("safe", "general", "sfw", "sensitive", "nsfw", "explicit")


def test_precedence_is_fixed_and_complete():
    assert CATEGORY_PRECEDENCE[:3] == (C.SPECIAL, C.QUALITY, C.RATING)
    assert sorted(CATEGORY_PRECEDENCE) == sorted(set(TagCategory) - {C.GENERAL})


def test_classify_groups_in_input_order_with_canonical_names():
    tags = [
        "masterpiece",
        "1girl",
        "Hatsune_Miku",
        "long hair",
        "vocaloid",
        "absurdres",
        "smile",
        "safe",
        "smile",
    ]
    result = classify(tags)
    assert result == TagMap(
        special=["1girl"],
        characters=["hatsune miku"],
        copyrights=["vocaloid"],
        general=["long hair", "smile", "smile"],
        meta=["absurdres"],
        quality=["masterpiece"],
        rating=["safe"],
    )


@pytest.mark.parametrize(("tag", "expected"), [
    ("1GIRL", (C.SPECIAL, "1girl")),
    ("6+Girls", (C.SPECIAL, "6+girls")),
    ("score 9", (C.QUALITY, "score_9")),
    ("Score_8_Up", (C.QUALITY, "score_8_up")),
    ("Best__Quality", (C.QUALITY, "best quality")),
    ("  best \t quality ", (C.QUALITY, "best quality")),
    ("NSFW", (C.RATING, "nsfw")),
    ("hatsune_miku", (C.CHARACTERS, "hatsune miku")),
    ("Touhou", (C.COPYRIGHTS, "touhou")),
    ("ganyu \\(genshin impact\\)", (C.CHARACTERS, "ganyu (genshin impact)")),
    ("Ganyu_(Genshin_Impact)", (C.CHARACTERS, "ganyu (genshin impact)")),
    ("highres", (C.META, "highres")),
    # list entries whose own spelling has a backslash keep it
    ("queen iona (adventurequest worlds)", (C.CHARACTERS, "queen iona \\(adventurequest worlds\\)")),
    ("queen iona \\(adventurequest worlds\\)", (C.CHARACTERS, "queen iona \\(adventurequest worlds\\)")),
    ("ursula (no\\name)", (C.CHARACTERS, "ursula (no\\name)")),
])  # fmt: skip
def test_listed_tags_are_found_whatever_the_spelling(tag, expected):
    assert classify_tag(tag) == ClassifiedTag(*expected)


@pytest.mark.parametrize(("tag", "expected"), [
    ("long_hair", "long hair"),
    ("Long_Hair", "Long Hair"),  # unknown tags keep their case
    ("looking   at  viewer", "looking at viewer"),
    ("star \\(sky\\)", "star (sky)"),
    ("^_^", "^_^"),  # shorter than 4 characters: emoticon, underscores kept
    ("o_o", "o_o"),
    ("^_^;", "^ ^;"),  # 4 characters: as the reference, underscores become spaces
    ("_", "_"),
])  # fmt: skip
def test_general_tags_are_cleaned(tag, expected):
    assert classify_tag(tag) == ClassifiedTag(C.GENERAL, expected)


@pytest.mark.parametrize("tag", ["", "   ", "\t\n", "____", "_ _ _ _"])
def test_tags_that_clean_to_nothing_are_dropped(tag):
    assert classify_tag(tag) is None
    assert len(classify([tag, "smile"])) == 1


def test_key_and_spelling_helpers():
    assert tag_key("  Hatsune__Miku \\(Cosplay\\) ") == "hatsune miku (cosplay)"
    assert tag_key(tag_key("A_b  C")) == tag_key("A_b  C")
    assert general_spelling("x_x") == "x_x"
    assert general_spelling("black_hair") == "black hair"


def small_database(lists: dict[TagCategory, list[str]]) -> tuple[TagDatabase, list[str]]:
    data, problems = pack(lists)
    return TagDatabase(data), problems


def test_precedence_decides_overlaps_not_the_order_of_the_lists():
    lists = {C.ARTIST: ["foo bar", "masterpiece", "only artist"], C.CHARACTERS: ["Foo_Bar"], C.META: ["x"]}
    for order in (lists, dict(reversed(list(lists.items())))):
        database, problems = small_database(order)
        assert database.classify_tag("foo bar") == ClassifiedTag(C.CHARACTERS, "Foo_Bar")
        assert database.classify_tag("masterpiece") == ClassifiedTag(C.QUALITY, "masterpiece")
        assert database.classify_tag("only artist") == ClassifiedTag(C.ARTIST, "only artist")
        assert len(problems) == 1 and "'foo bar'" in problems[0]


def test_packed_lookup_across_many_chunks():
    rng = random.Random(3)
    by_key = {}
    for _ in range(20000):
        name = "".join(rng.choice("abcdefgh ()_") for _ in range(rng.randint(2, 12)))
        if tag_key(name):
            by_key.setdefault(tag_key(name), name.strip())
    names = sorted(by_key.values())
    listed, unlisted = names[::2], names[1::2]
    database, problems = small_database({C.ARTIST: listed})
    assert problems == []
    for name in listed:
        assert database.lookup(name) == ClassifiedTag(C.ARTIST, name), name
    for name in unlisted:
        assert database.lookup(name) is None, name
    assert database.lookup("!") is None  # sorts before every key
    assert database.lookup("~") is None  # after every key
    assert database.packed_lists()[C.ARTIST] == sorted(listed, key=tag_key)


def test_bad_data_fails_on_first_lookup_with_a_clear_message():
    database = TagDatabase(b"not tag data")  # constructing does not read anything
    assert database.classify_tag("1girl") == ClassifiedTag(C.SPECIAL, "1girl")  # built-in lists need no data
    with pytest.raises(ValueError, match="tag data: unexpected header"):
        database.classify_tag("hatsune miku")
    data, _ = pack({C.ARTIST: ["abc"]})
    with pytest.raises(ValueError, match="tag data: chunks end"):
        TagDatabase(data + b"junk").classify_tag("abc")
    damaged = data[:-40] + bytes(40)
    with pytest.raises(ValueError, match=r"tag data: chunk 0 at byte \d+ is damaged"):
        TagDatabase(damaged).classify_tag("abc")


def test_classify_wants_a_list_not_a_prompt():
    with pytest.raises(TypeError, match="split the prompt"):
        classify("1girl, solo")


def test_default_database_is_shared():
    assert default_database() is default_database()


def test_shipped_data_sizes_and_round_trip(shipped_lists):
    sizes = {category: len(tags) for category, tags in shipped_lists.items()}
    assert sizes == {C.META: 939, C.COPYRIGHTS: 52594, C.CHARACTERS: 322737, C.ARTIST: 580988}
    rng = random.Random(11)
    for category in DANBOORU_CATEGORIES:
        for spelling in rng.sample(shipped_lists[category], 300):
            assert classify_tag(spelling) == ClassifiedTag(category, spelling)
            assert classify_tag(spelling.replace(" ", "_").upper()) == ClassifiedTag(category, spelling)


def test_shipped_lists_do_not_overlap_the_builtin_lists(shipped_lists):
    builtin = {tag_key(tag) for tags in BUILTIN_LISTS.values() for tag in tags}
    packed = {tag_key(tag) for tags in shipped_lists.values() for tag in tags}
    assert not builtin & packed


def test_tag_map_helpers():
    tag_map = classify(["1girl", "smile", "masterpiece"])
    assert tag_map.get("general") == ["smile"] and tag_map.get(C.SPECIAL) == ["1girl"]
    assert [category for category, _ in tag_map.items()] == list(TagCategory)
    assert tag_map.all_tags() == ["1girl", "smile", "masterpiece"]
    copied = tag_map.copy()
    copied.general.append("frown")
    assert tag_map.general == ["smile"] and len(copied) == 4
    with pytest.raises(ValueError):
        tag_map.get("nonsense")


def test_protocol_modules_do_not_import_torch_or_load_data():
    code = (
        "import sys, kgen.protocol.tags, kgen.protocol.formats; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "db = kgen.protocol.tags.default_database(); assert not db._chunks, 'data loaded at import'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=30) | st.sampled_from(["Hatsune_Miku", "^_^"]))
@example("\\\\)")  # an escaped backslash before a bracket: once cleaned to "\)", which cleaned to ")"
def test_any_text_classifies_to_a_stable_canonical_name(text):
    found = classify_tag(text)
    if found is None:
        assert tag_key(text) == "" or not general_spelling(text)
        return
    assert found.name == found.name.strip() and found.name
    assert classify_tag(found.name) == found  # canonical names are fixed points

"""DanTagGen prompt building, completion parsing and the extend-and-retry loop (no model needed)."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kgen.engine.replay import replay
from kgen.generation import SamplingSettings
from kgen.pipeline import generate_tags
from kgen.protocol.dtg import (
    DTG_SAMPLING,
    INPUT_END,
    PromptTooLongError,
    build_prompt,
    feed_back_prompt,
    parse_completion,
)
from kgen.protocol.lengths import DTG_TAG_TARGET, Length
from kgen.protocol.postprocess import BanTagError
from kgen.protocol.tags import TagMap


def user_tags(**fields) -> TagMap:
    base = {"special": ["1girl"], "general": ["solo", "long hair"], "rating": ["safe"]}
    return TagMap(**{**base, **fields})


def fresh_tags(count: int, prefix: str = "tag") -> list[str]:
    return [f"{prefix} {i}" for i in range(count)]


# ---------------------------------------------------------------------------- prompt


def test_prompt_has_the_model_card_layout():
    tags = user_tags(artist=["wlop"], characters=["hatsune miku"], copyrights=["vocaloid"])
    prompt = build_prompt(tags, Length.SHORT, 832 / 1216, with_quality=False)
    assert prompt.splitlines() == [
        "rating: safe",
        "artist: wlop",
        "characters: hatsune miku",
        "copyrights: vocaloid",
        "aspect ratio: 0.7",
        "target: <|short|>",
        f"general: 1girl, solo, long hair{INPUT_END}",
    ]


def test_empty_fields_are_marked_empty():
    prompt = build_prompt(TagMap(general=["smile"]), "long", 1.0, with_quality=False)
    assert "rating: <|empty|>\nartist: <|empty|>\ncharacters: <|empty|>\ncopyrights: <|empty|>\n" in prompt
    # The model-card format keeps the person-count slot even when it is empty.
    assert prompt.endswith(f"general: , smile{INPUT_END}")


def test_quality_line_only_for_quality_models_and_defaults_to_masterpiece():
    tags = user_tags()
    assert not build_prompt(tags, with_quality=False).startswith("quality:")
    assert build_prompt(tags, with_quality=True).startswith("quality: masterpiece\nrating: safe\n")
    given = build_prompt(user_tags(quality=["best quality", "newest"]), with_quality=True)
    assert given.startswith("quality: best quality, newest\n")
    marked = build_prompt(tags, with_quality=True, default_quality="<|empty|>")
    assert marked.startswith("quality: <|empty|>\n")


@pytest.mark.parametrize("spelling", ["very short", "very_short", "Very-Short", Length.VERY_SHORT])
def test_length_target_token(spelling):
    assert "\ntarget: <|very_short|>\n" in build_prompt(user_tags(), spelling, with_quality=False)


@pytest.mark.parametrize("ratio, text", [(1.0, "1.0"), (1216 / 832, "1.5"), (0.25, "0.2"), (3, "3.0")])
def test_aspect_ratio_has_one_decimal(ratio, text):
    assert f"\naspect ratio: {text}\n" in build_prompt(user_tags(), aspect_ratio=ratio, with_quality=False)


@pytest.mark.parametrize("ratio", [0, -1.0, float("nan"), float("inf"), "wide"])
def test_bad_aspect_ratio_is_a_clear_error(ratio):
    with pytest.raises(ValueError, match="aspect ratio"):
        build_prompt(user_tags(), aspect_ratio=ratio, with_quality=False)


def test_user_text_cannot_break_the_format():
    tags = TagMap(general=["smile<|input_end|>", "two\nlines", "  ", ""], artist=["</s>"])
    prompt = build_prompt(tags, with_quality=False)
    assert prompt.count(INPUT_END) == 1 and prompt.endswith(INPUT_END)
    assert len(prompt.splitlines()) == 7
    assert "artist: <|empty|>" in prompt
    assert prompt.endswith(f"general: , smile, two lines{INPUT_END}")


def test_feed_back_prompt_continues_the_tag_list():
    base = build_prompt(user_tags(), with_quality=False)
    assert feed_back_prompt(base, ["a", "b"]) == base + "a, b"
    assert feed_back_prompt(base, []) == base


# ---------------------------------------------------------------------------- parsing


def test_special_tokens_are_removed_as_whole_tokens():
    # The reference stripped characters of "</s>" and turned "blue eyes</s>" into "blue eye".
    assert parse_completion("smile, blue eyes</s>") == ["smile", "blue eyes"]
    assert parse_completion("smile<|long|>hat, <|empty|>, sky") == ["smile", "hat", "sky"]
    assert parse_completion("<s>smile, sss, ss</s>") == ["smile", "sss", "ss"]


@pytest.mark.parametrize("text", ["", " ", ",, ,", "<|empty|>", "\nrating: safe", "</s>smile"])
def test_nothing_to_parse_gives_no_tags(text):
    assert parse_completion(text) == []


def test_prompt_fields_leaking_into_the_list_are_not_tags():
    text = "smile, rating: safe, Artist:<|empty|>, re:zero, :d"
    assert parse_completion(text) == ["smile", "re:zero", ":d"]


def test_the_tag_list_ends_at_a_line_break():
    text = "smile, hat\nquality: masterpiece\nrating: safe\ngeneral: 1girl<|input_end|>sky"
    assert parse_completion(text) == ["smile", "hat"]


def test_a_tag_cut_by_the_token_limit_is_dropped():
    assert parse_completion("smile, blue ey", finished=False) == ["smile"]
    assert parse_completion("smile, blue eyes\nrat", finished=False) == ["smile", "blue eyes"]
    assert parse_completion("smile, blue ey", finished=True) == ["smile", "blue ey"]


def test_duplicates_and_runaway_tags_are_dropped():
    runaway = "word " * 40
    text = f"Smile, smile, blue_eyes, blue eyes, {runaway}, hat"
    assert parse_completion(text) == ["Smile", "blue_eyes", "hat"]


# ---------------------------------------------------------------------------- loop


def test_loop_stops_at_the_tag_target():
    tags = user_tags()  # 3 of the 16 "short" tags
    backend = replay([", ".join(fresh_tags(5)), ", " + ", ".join(fresh_tags(20, "more"))])
    result = generate_tags(backend, tags, length="short", seed=11)
    assert result.stop_reason == "target" and result.reached_target
    assert len(result.attempts) == 2 and backend.seeds == [11, 12]
    assert 3 + len(result.new_tags) >= DTG_TAG_TARGET[Length.SHORT]
    assert result.new_tags[:5] == fresh_tags(5)


def test_accepted_tags_are_fed_back_shuffled_with_the_round_seed():
    backend = replay([", ".join(fresh_tags(6)), ", x1, x2"], when_exhausted="repeat_last")
    result = generate_tags(backend, user_tags(), length="long", seed=3, max_attempts=2)
    base = build_prompt(user_tags(), "long", with_quality=False)
    expected = fresh_tags(6)
    random.Random(3).shuffle(expected)
    assert backend.prompts == [base, base + ", ".join(expected)]
    assert result.attempts[1].fed_tags == tuple(expected)
    assert result.new_tags == [*fresh_tags(6), "x1", "x2"]


def test_the_model_may_extend_the_last_fed_tag():
    backend = replay(["hair", " ornament, bow"])
    result = generate_tags(backend, user_tags(), length="very_short", seed=0, max_attempts=2)
    assert result.new_tags == ["hair", "hair ornament", "bow"]


def test_garbage_is_never_fed_back():
    garbage = "\nrating: safe\nartist: <|empty|>\ngeneral: 1girl<|input_end|>"
    backend = replay([garbage, "<|long|><|long|>", "", ", a"], when_exhausted="repeat_last")
    result = generate_tags(backend, user_tags(), length="very_short", max_attempts=4, max_unchanged=10)
    base = build_prompt(user_tags(), "very_short", with_quality=False)
    assert backend.prompts[:3] == [base, base, base]
    assert result.new_tags == ["a"]


def test_rounds_that_add_nothing_stop_the_loop():
    backend = replay(["smile", ", smile"], when_exhausted="repeat_last")
    result = generate_tags(backend, user_tags(), length="very_long", max_attempts=50, max_unchanged=3)
    assert result.stop_reason == "unchanged"
    assert len(backend.prompts) == 4  # one round that added "smile", then three that added nothing
    assert result.new_tags == ["smile"]


def test_loop_is_bounded_by_max_attempts():
    counter = iter(range(10_000))
    backend = replay(lambda prompt, seed: f", n{next(counter)}")
    result = generate_tags(backend, TagMap(), length="very_long", max_attempts=7)
    assert result.stop_reason == "attempts" and len(backend.prompts) == 7
    assert len(result.new_tags) == 7


def test_there_is_always_one_round_even_when_the_user_has_enough_tags():
    tags = TagMap(general=fresh_tags(60, "mine"))
    backend = replay(["smile, hat"])
    result = generate_tags(backend, tags, length="very_short")
    assert len(backend.prompts) == 1 and result.new_tags == ["smile", "hat"]


def test_user_tags_and_repeats_do_not_count_as_new():
    tags = user_tags(general=["solo", "long hair", "Blue_Eyes"], artist=["wlop"])
    backend = replay(["long hair, blue eyes, wlop, 1girl, smile, smile"])
    result = generate_tags(backend, tags, length="very_short", max_attempts=1)
    assert result.new_tags == ["smile"]


def test_ban_rules_apply_to_new_tags_and_fed_back_text():
    backend = replay(["hat, sky, text, english text, smile", ", cloud"], when_exhausted="repeat_last")
    result = generate_tags(backend, user_tags(), length="short", ban="hat, .*text", max_attempts=2)
    assert result.new_tags == ["sky", "smile", "cloud"]
    assert "hat" not in backend.prompts[1] and "text" not in backend.prompts[1]
    predicate = generate_tags(replay(["sky, smile"]), user_tags(), ban=lambda t: t == "sky", max_attempts=1)
    assert predicate.new_tags == ["smile"]


def test_invalid_ban_regex_names_the_pattern():
    with pytest.raises(BanTagError, match=r"\(unclosed"):
        generate_tags(replay(["sky"]), user_tags(), ban="ok, (unclosed")


def test_prompts_never_exceed_the_context_window():
    counter = iter(range(10_000))
    long_tags = lambda prompt, seed: "".join(f", w{next(counter)} a b c d e f g" for _ in range(4))  # noqa: E731
    backend = replay(long_tags, context_length=300)  # replay raises ContextWindowExceeded on overflow
    settings = SamplingSettings(max_new_tokens=128)
    result = generate_tags(backend, user_tags(), length="very_long", settings=settings, max_attempts=12)
    for item in backend.inputs:
        assert item.prompt_tokens + item.settings.max_new_tokens <= backend.context_length
        assert item.settings.max_new_tokens <= settings.max_new_tokens
    assert len(result.attempts) == 12  # it keeps going: fed-back tags are dropped to make room
    accepted_before = [sum(len(a.new_tags) for a in result.attempts[:i]) for i in range(12)]
    assert any(len(a.fed_tags) < before for a, before in zip(result.attempts, accepted_before, strict=True))


def test_a_prompt_that_cannot_fit_is_a_clear_error():
    tags = TagMap(general=fresh_tags(200, "long tag name"))
    with pytest.raises(PromptTooLongError, match="context window is 256"):
        generate_tags(replay(["sky"], context_length=256), tags)


def test_a_truncated_completion_loses_only_its_cut_tag():
    backend = replay(["smile, hat, sky, cloudy weather"], when_exhausted="empty")
    settings = SamplingSettings(max_new_tokens=7)  # replay cuts after 7 of its simple tokens
    result = generate_tags(backend, user_tags(), length="very_short", settings=settings, max_attempts=1)
    assert backend.inputs[0].settings.max_new_tokens == 7
    assert result.new_tags == ["smile", "hat", "sky"]


def test_same_seed_same_inputs_and_global_rng_untouched():
    def run(seed):
        counter = iter(range(100))
        backend = replay(lambda prompt, s: ", ".join(f"t{next(counter)}" for _ in range(3)) + ", ")
        generate_tags(backend, user_tags(), length="long", seed=seed, max_attempts=4)
        return backend.prompts, backend.seeds

    state = random.getstate()
    assert run(5) == run(5)
    assert run(5)[1] == [5, 6, 7, 8] and run(6)[1] == [6, 7, 8, 9]
    assert random.getstate() == state


def test_result_totals_and_defaults():
    backend = replay(["a, b", ", c"], when_exhausted="empty")
    result = generate_tags(backend, user_tags(), length="very_short", max_attempts=2)
    assert result.model_inputs == backend.prompts
    assert result.prompt_tokens == sum(i.prompt_tokens for i in backend.inputs)
    assert result.completion_tokens == sum(a.completion.completion_tokens for a in result.attempts) > 0
    assert backend.inputs[0].settings == DTG_SAMPLING
    assert DTG_SAMPLING.temperature == 1.35 and DTG_SAMPLING.repetition_penalty == 1.0


@pytest.mark.parametrize("option", [{"max_attempts": 0}, {"max_unchanged": 0}])
def test_loop_bounds_must_be_positive(option):
    with pytest.raises(ValueError):
        generate_tags(replay(["a"]), user_tags(), **option)


def test_protocol_modules_do_not_import_torch():
    code = (
        "import sys, kgen.protocol.dtg, kgen.models.registry, kgen.protocol.dialects;"
        " print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


completion_text = st.lists(
    st.one_of(
        st.text(max_size=30),
        st.sampled_from(
            [", ", ",", "\n", "</s>", "<s>", "<|input_end|>", "<|empty|>", "<|long|>", "rating: safe", "  "]
        ),
    ),
    max_size=12,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(
    completions=st.lists(completion_text, min_size=1, max_size=4),
    unfinished=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_completion_is_handled_and_only_clean_tags_are_fed_back(completions, unfinished, seed):
    tags = user_tags()
    limit = SamplingSettings(max_new_tokens=5 if unfinished else 256)  # replay cuts at the limit
    backend = replay(completions, when_exhausted="repeat_last")
    result = generate_tags(backend, tags, length="long", seed=seed, settings=limit, max_attempts=4)
    base = build_prompt(tags, "long", with_quality=False)
    user_keys = {t.lower() for t in tags.all_tags()}
    for tag in result.new_tags:
        assert tag.strip() == tag and tag and "\n" not in tag and "<|" not in tag and "</s>" not in tag
        assert tag.lower() not in user_keys
    for prompt in backend.prompts:
        assert prompt.startswith(base)
        fed = prompt[len(base) :]
        assert "\n" not in fed and "<|" not in fed and "</s>" not in fed
    assert len(backend.prompts) == len(result.attempts) <= 4

"""The retry loop, task chaining, context guard and batching, driven by the replay backend."""

import re

import pytest

from kgen.engine.replay import ContextWindowExceeded, ReplayBackend, ReplayExhausted, count_simple_tokens
from kgen.generation import Backend, SamplingSettings
from kgen.models.registry import find_model
from kgen.pipeline import (
    PromptTooLongError,
    RequestError,
    RetryPolicy,
    UpsampleRequest,
    first_model_input,
    upsample,
    upsample_many,
)
from kgen.protocol import tipo
from kgen.protocol.lengths import TIPO_NL_BOUNDS, TIPO_TAG_BOUNDS, Length
from kgen.protocol.postprocess import BanTagError, split_sentences, tag_key
from kgen.protocol.tags import classify

TAGS_ONLY = "tag only (DTG mode)"


def tags_completion(prefix: str, count: int) -> str:
    return "".join(f", {prefix} {i}" for i in range(count))


def unique_tags(prompt: str, seed: int) -> str:
    """A deterministic model: a few new tags that depend on the seed."""
    return tags_completion(f"s{seed}", 3)


# ------------------------------------------------------------------------------------------- replay


def test_replay_backend_follows_the_backend_protocol_and_records_inputs():
    backend = ReplayBackend(["one", "two"], context_length=100)
    assert isinstance(backend, Backend)
    settings = SamplingSettings(max_new_tokens=10)
    out = backend.generate(["p one", "p two"], settings, [3, 4])
    assert [c.text for c in out] == ["one", "two"]
    assert backend.prompts == ["p one", "p two"]
    assert backend.seeds == [3, 4]
    assert len(backend.calls) == 1 and backend.calls[0][0].settings == settings
    assert out[0].prompt_tokens == backend.count_tokens("p one") == 3  # two words + BOS
    with pytest.raises(ReplayExhausted):
        backend.generate(["p"], settings, [0])


def test_replay_backend_script_callable_and_exhaustion_modes():
    assert ReplayBackend(lambda p, s: f"{p}:{s}").generate(["x"], SamplingSettings(), [7])[0].text == "x:7"
    repeat = ReplayBackend(["a", "b"], when_exhausted="repeat_last")
    assert [repeat.generate(["p"], SamplingSettings(), [0])[0].text for _ in range(3)] == ["a", "b", "b"]
    assert ReplayBackend([], when_exhausted="empty").generate(["p"], SamplingSettings(), [0])[0].text == ""


def test_replay_backend_truncates_at_max_new_tokens_and_guards_the_context():
    backend = ReplayBackend(["a, b, c, d"], context_length=50)
    out = backend.generate(["p"], SamplingSettings(max_new_tokens=3), [0])[0]
    assert out.text == "a, b" and not out.finished and out.completion_tokens == 3
    small = ReplayBackend(["x"], context_length=10)
    with pytest.raises(ContextWindowExceeded, match="exceed context window"):
        small.generate(["one two three"], SamplingSettings(max_new_tokens=8), [0])


def test_simple_token_count_is_deterministic():
    assert count_simple_tokens("tag: 1girl, solo") == 5  # tag : 1girl , solo
    assert count_simple_tokens("<|long|> x</s>") == 3


# ------------------------------------------------------------------------------------------- requests


def test_request_validation_names_the_problem():
    with pytest.raises(RequestError, match="tag_length"):
        UpsampleRequest(tag_length="medium")
    with pytest.raises(RequestError, match="aspect_ratio"):
        UpsampleRequest(aspect_ratio=0)
    with pytest.raises(RequestError, match="aspect_ratio"):
        UpsampleRequest(aspect_ratio=float("nan"))
    with pytest.raises(RequestError, match="seed"):
        UpsampleRequest(seed="7")
    with pytest.raises(RequestError, match="tags"):
        UpsampleRequest(tags=["ok", 3])
    with pytest.raises(BanTagError, match=re.escape("'hat('")):
        UpsampleRequest(ban_tags="umbrella, hat(")


def test_request_normalises_inputs():
    request = UpsampleRequest(tags=" 1girl,, solo ", tag_length="very short", nl_length="very_long", seed=-1)
    assert request.tag_list == ["1girl", "solo"]
    assert request.tag_length is Length.VERY_SHORT and request.nl_length is Length.VERY_LONG
    assert 0 <= request.seed < 2**31  # -1 draws a seed, reported back
    assert UpsampleRequest(tags=["a", "b"]).tags_text == "a, b"


def test_first_model_input_is_the_first_prompt_sent():
    request = UpsampleRequest(tags="1girl, solo, masterpiece", nl="a girl in a park", seed=3)
    backend = ReplayBackend([], when_exhausted="empty")
    result = upsample(request, backend)
    assert first_model_input(request) == backend.prompts[0] == result.model_inputs[0]
    assert "aspect ratio: 1.0" in backend.prompts[0]


def test_first_model_input_for_dtg_models():
    spec = find_model("DanTagGen-delta-rev2")
    text = first_model_input(UpsampleRequest(tags="1girl, solo"), spec)
    assert text.startswith("quality: ") and text.endswith("<|input_end|>")


# ------------------------------------------------------------------------------------------- retry loop


def test_attempts_are_bounded_and_seeded_seed_plus_attempt():
    request = UpsampleRequest(tags="1girl", seed=100, tag_length="very_long", format=TAGS_ONLY)
    backend = ReplayBackend(unique_tags)
    result = upsample(request, backend, policy=RetryPolicy(max_attempts=4, max_stalls=10))
    assert backend.seeds == [100, 101, 102, 103]
    assert result.generate_passes == 4
    assert len(result.new_tags) == 12


def test_stops_early_when_attempts_add_nothing():
    request = UpsampleRequest(tags="1girl", seed=0, format=TAGS_ONLY)
    backend = ReplayBackend([", smile"], when_exhausted="repeat_last")
    result = upsample(request, backend, policy=RetryPolicy(max_attempts=11, max_stalls=3))
    assert result.generate_passes == 4  # one that adds "smile", then three that add nothing
    assert result.new_tags == ["smile"]


def test_stops_as_soon_as_the_target_is_met():
    target = TIPO_TAG_BOUNDS[Length.SHORT].minimum
    request = UpsampleRequest(tags="1girl", tag_length="short", format=TAGS_ONLY)
    backend = ReplayBackend([tags_completion("t", target)])
    result = upsample(request, backend)
    assert result.generate_passes == 1


def test_tags_are_capped_by_the_tag_bound():
    request = UpsampleRequest(tags="1girl, solo", tag_length="very_short", format=TAGS_ONLY)
    result = upsample(request, ReplayBackend([tags_completion("t", 200)]))
    cap = TIPO_TAG_BOUNDS[Length.VERY_SHORT].maximum
    assert len(result.new_tags) == cap - 2
    assert result.tags.special == ["1girl"] and result.tags.general[0] == "solo"


def test_retry_feeds_back_accepted_tags_and_continues_them():
    request = UpsampleRequest(tags="1girl, solo", seed=1, format=TAGS_ONLY)
    backend = ReplayBackend([", smile, hat", ", blue eyes"], when_exhausted="empty")
    upsample(request, backend, policy=RetryPolicy(max_attempts=2))
    first, second = backend.prompts
    assert first.endswith("tag: 1girl, solo")
    fed = second.rsplit("tag: ", 1)[1]
    assert fed.startswith("1girl, solo, ") and set(fed.split(", ")[2:]) == {"smile", "hat"}


def test_garbage_is_never_fed_back():
    runaway = ", " + " ".join(["lorem"] * 400)
    request = UpsampleRequest(tags="1girl, solo", seed=1, format=TAGS_ONLY)
    backend = ReplayBackend([runaway], when_exhausted="repeat_last")
    result = upsample(request, backend, policy=RetryPolicy(max_attempts=5, max_stalls=5))
    assert len(set(backend.prompts)) == 1  # every retry sends the user's prompt again: no growth
    assert all(a.rejected for a in result.attempts)
    assert result.new_tags == []


def test_mostly_garbage_completion_contributes_nothing():
    junk = ", ".join(" ".join([f"junk{i}"] * 20) for i in range(5))
    backend = ReplayBackend([f", smile, {junk}"], when_exhausted="empty")
    result = upsample(
        UpsampleRequest(tags="1girl", format=TAGS_ONLY), backend, policy=RetryPolicy(max_attempts=1)
    )
    assert result.attempts[0].rejected and result.new_tags == []


def test_text_glued_to_the_last_user_tag_is_not_a_new_tag():
    backend = ReplayBackend(["xyz garbage, smile"], when_exhausted="empty")
    result = upsample(UpsampleRequest(tags="1girl, solo", format=TAGS_ONLY), backend, policy=RetryPolicy(1))
    assert result.new_tags == ["smile"]
    assert result.tags.general[0] == "solo"


def test_special_tokens_and_truncation_are_handled():
    backend = ReplayBackend(
        [", blue eyes</s>, never", ", red hair, green skirt, yellow bow"], when_exhausted="empty"
    )
    request = UpsampleRequest(tags="1girl", format=TAGS_ONLY)
    result = upsample(
        request, backend, sampling=SamplingSettings(max_new_tokens=8), policy=RetryPolicy(max_attempts=2)
    )
    assert result.attempts[1].completion.finished is False  # cut inside "yellow bow"
    assert sorted(result.new_tags) == ["blue eyes", "green skirt", "red hair"]


def test_chaining_feeds_each_tasks_result_into_the_next():
    request = UpsampleRequest(
        tags="1girl, solo", nl="A girl in a park", tag_length="very_short", seed=5, extra_nl=True
    )
    tasks = [
        str(t) for t in tipo.plan_tasks(has_tags=True, has_nl=True, extra_nl=True, tag_length="very_short")
    ]
    backend = ReplayBackend(
        [
            ", smile, hat, blue eyes, long hair",  # short_to_tag: enough tags (very short)
            " with flowers. Birds fly. The sky is blue. It is noon.",  # tag_to_long: extends the caption
            " A cheerful girl smiles. She wears a hat. Wind blows. Leaves fall.",  # extra caption
        ],
        when_exhausted="empty",
    )
    result = upsample(request, backend)
    assert [a.task for a in result.attempts] == tasks
    second, third = backend.prompts[1], backend.prompts[2]
    for tag in ("smile", "hat", "blue eyes", "long hair"):
        assert tag in second.split("tag: ")[1] and tag in third.split("tag: ")[1]
    assert second.endswith("long: A girl in a park")
    assert "short: A girl in a park with flowers." in third
    assert split_sentences(result.extended)[0] == "A girl in a park with flowers"
    assert len(split_sentences(result.generated)) == 4
    assert result.new_nl.startswith("with flowers.")


def test_from_scratch_caption_retry_keeps_the_longer_one():
    request = UpsampleRequest(
        tags="1girl, solo", nl="A girl", expand_tags=False, expand_nl=False, seed=2, extra_nl=True
    )
    backend = ReplayBackend([" Short one.", " Much. Longer. Caption. Here. Now.", " Two. Only."])
    result = upsample(request, backend, policy=RetryPolicy(max_attempts=3))
    assert result.generated == "Much. Longer. Caption. Here. Now"
    assert result.extended == "A girl"


def test_nl_is_capped_by_the_nl_bound_not_the_tag_bound():
    request = UpsampleRequest(
        nl="A girl.",
        tags="1girl",
        nl_length="very_short",
        tag_length="very_long",
        expand_tags=False,
        format="NL only (Tag to NL)",
    )
    text = " " + " ".join(f"Sentence {i}." for i in range(30))
    result = upsample(request, ReplayBackend([text], when_exhausted="empty"))
    assert len(split_sentences(result.extended)) <= TIPO_NL_BOUNDS[Length.VERY_SHORT].maximum
    assert split_sentences(result.extended)[0] == "A girl"


def test_ban_applies_to_generated_tags_only():
    request = UpsampleRequest(tags="1girl, red hat", ban_tags="hat, .*text", format=TAGS_ONLY)
    backend = ReplayBackend([", white hat, english text, smile"], when_exhausted="empty")
    result = upsample(request, backend, policy=RetryPolicy(max_attempts=1))
    assert result.new_tags == ["smile"]
    assert "red hat" in result.tags.general
    assert sorted(result.banned) == ["english text", "white hat"]


def test_user_content_is_kept_first_and_in_order():
    request = UpsampleRequest(tags="solo, 1girl, long hair, masterpiece, safe", seed=9, format=TAGS_ONLY)
    result = upsample(request, ReplayBackend([tags_completion("x", 40)]))
    user = classify(request.tag_list)
    for category, tags in user.items():
        assert result.tags.get(category)[: len(tags)] == tags
    assert result.appended.startswith(request.tags)


def test_same_seed_same_result_and_seed_changes_the_shuffle():
    completion = tags_completion("t", 30)

    def run(seed):
        request = UpsampleRequest(tags="1girl", seed=seed, format=TAGS_ONLY)
        return upsample(request, ReplayBackend([completion], when_exhausted="empty"))

    assert run(4).to_dict() | {"seconds": 0} == run(4).to_dict() | {"seconds": 0}
    assert len({tuple(run(seed).new_tags) for seed in range(6)}) > 1


# ------------------------------------------------------------------------------------------- context guard


def test_model_input_never_exceeds_the_context_window():
    request = UpsampleRequest(
        tags="1girl", nl="A girl", nl_length="very_long", expand_tags=False, extra_nl=False
    )
    words = " ".join(["word"] * 60)

    def one_long_sentence(prompt, seed):
        return f". {words} {seed}."

    backend = ReplayBackend(one_long_sentence, context_length=700)
    sampling = SamplingSettings(max_new_tokens=256)
    result = upsample(request, backend, sampling=sampling, policy=RetryPolicy(max_attempts=11, max_stalls=11))
    assert result.generate_passes > 6
    assert all(item.prompt_tokens + item.settings.max_new_tokens <= 700 for item in backend.inputs)
    assert any(a.trimmed for a in result.attempts)
    assert len(split_sentences(result.extended)) >= TIPO_NL_BOUNDS[Length.VERY_LONG].minimum


def test_long_user_prompt_shrinks_generation_room_or_fails_clearly():
    tags = ", ".join(f"tag {i}" for i in range(100))
    request = UpsampleRequest(tags=tags, format=TAGS_ONLY)
    needed = ReplayBackend().count_tokens(first_model_input(request))
    backend = ReplayBackend([", smile"], context_length=needed + 100, when_exhausted="empty")
    upsample(
        request, backend, sampling=SamplingSettings(max_new_tokens=512), policy=RetryPolicy(max_attempts=1)
    )
    assert backend.inputs[0].settings.max_new_tokens == 100
    with pytest.raises(PromptTooLongError, match="context window"):
        upsample(
            request,
            ReplayBackend([], context_length=needed + 10),
            sampling=SamplingSettings(max_new_tokens=512),
        )


# ------------------------------------------------------------------------------------------- batch, DTG


def test_batch_sends_first_steps_together_and_matches_single_runs():
    requests = [
        UpsampleRequest(tags="1girl, solo", seed=1, format=TAGS_ONLY),
        UpsampleRequest(tags="1boy", nl="A boy", seed=2),
        UpsampleRequest(tags="", seed=3, tag_length="short"),
    ]
    batch_backend = ReplayBackend(unique_tags)
    results = upsample_many(requests, batch_backend)
    assert len(batch_backend.calls[0]) == 3
    for request, result in zip(requests, results, strict=True):
        single = upsample(request, ReplayBackend(unique_tags))
        assert result.prompt == single.prompt
        assert result.model_inputs == single.model_inputs
    assert len(batch_backend.calls) < sum(r.generate_passes for r in results)


def test_batch_can_return_exceptions_in_place():
    tags = ", ".join(f"tag {i}" for i in range(300))
    requests = [UpsampleRequest(tags="1girl", format=TAGS_ONLY), UpsampleRequest(tags=tags, format=TAGS_ONLY)]
    backend = ReplayBackend([", smile"], context_length=400, when_exhausted="empty")
    ok, failed = upsample_many(requests, backend, return_exceptions=True, policy=RetryPolicy(max_attempts=1))
    assert ok.new_tags == ["smile"]
    assert isinstance(failed, PromptTooLongError)
    with pytest.raises(PromptTooLongError):
        upsample_many(requests, ReplayBackend([], context_length=400, when_exhausted="empty"))


def test_dtg_models_use_the_dantaggen_loop():
    spec = find_model("DanTagGen-delta-rev2")
    request = UpsampleRequest(tags="1girl, solo", tag_length="very_short", seed=7, ban_tags="hat")
    backend = ReplayBackend(["smile, hat, blue eyes, long hair, skirt, shirt, outdoors, sky, tree"])
    result = upsample(request, backend, spec)
    assert result.protocol == "dtg"
    assert backend.prompts[0] == first_model_input(request, spec)
    assert "hat" not in result.new_tags and "smile" in result.new_tags
    assert backend.seeds[0] == 7


def test_dtg_batch_first_step_goes_out_together():
    spec = find_model("DanTagGen-gamma")
    requests = [UpsampleRequest(tags="1girl", seed=i, tag_length="very_short") for i in range(3)]
    backend = ReplayBackend(lambda p, s: ", ".join(f"t{s} {i}" for i in range(10)))
    results = upsample_many(requests, backend, spec)
    assert len(backend.calls[0]) == 3
    assert all(len(r.new_tags) >= 7 for r in results)
    assert sum(r.generate_passes for r in results) == len(backend.inputs)  # the batched step was reused


def test_new_tags_use_tag_keys_for_dedupe_against_user_tags():
    request = UpsampleRequest(tags="Long_Hair, 1girl", format=TAGS_ONLY)
    result = upsample(
        request,
        ReplayBackend([", long hair, LONG HAIR, smile"], when_exhausted="empty"),
        policy=RetryPolicy(max_attempts=1),
    )
    assert [tag_key(t) for t in result.new_tags] == ["smile"]


def test_no_formatting_appends_new_content_to_the_users_text():
    request = UpsampleRequest(
        tags="1girl, solo,",
        nl="A girl in a park",
        tag_length="very_short",
        nl_length="very_short",
        extra_nl=False,
        no_formatting=True,
    )
    backend = ReplayBackend([", smile", " with flowers. Birds fly."], when_exhausted="empty")
    result = upsample(request, backend, policy=RetryPolicy(max_attempts=1))
    assert result.prompt == result.appended == "1girl, solo, smile\nA girl in a park with flowers. Birds fly."
    assert result.new_tags == ["smile"] and result.new_nl == "with flowers. Birds fly."
    assert result.formatted != result.prompt


def test_no_formatting_adds_sentence_breaks_where_needed():
    request = UpsampleRequest(
        tags="1girl", nl="A girl", expand_tags=False, extra_nl=False, no_formatting=True
    )
    result = upsample(
        request, ReplayBackend([". She smiles."], when_exhausted="empty"), policy=RetryPolicy(1)
    )
    assert result.prompt == "1girl\nA girl. She smiles."
    request = UpsampleRequest(tags="1girl", expand_tags=False, extra_nl=True, no_formatting=True)
    result = upsample(request, ReplayBackend([" A girl stands. She smiles."]), policy=RetryPolicy(1))
    assert result.prompt == "1girl\nA girl stands. She smiles."


def test_sentence_cap_holds_when_the_caption_is_continued_with_different_spacing():
    request = UpsampleRequest(
        tags="1girl", nl="A  girl", nl_length="very_short", expand_tags=False, extra_nl=False
    )
    backend = ReplayBackend([" with flowers. Birds fly. Sky."], when_exhausted="empty")
    result = upsample(request, backend, policy=RetryPolicy(max_attempts=1))
    assert split_sentences(result.extended)[0] == "A  girl"
    assert len(split_sentences(result.extended)) <= TIPO_NL_BOUNDS[Length.VERY_SHORT].maximum


def test_final_prompt_uses_the_format():
    with pytest.raises(RequestError, match="format"):
        UpsampleRequest(format="no such preset")
    request = UpsampleRequest(
        tags="1girl, solo, masterpiece", nl="A girl.", format="Both, NL first (recommend)"
    )
    backend = ReplayBackend([", smile", " She smiles."], when_exhausted="empty")
    result = upsample(request, backend, policy=RetryPolicy(max_attempts=1))
    prompt = result.prompt
    assert (
        prompt.index("1girl")
        < prompt.index("A girl. She smiles.")
        < prompt.index("smile,")
        < prompt.index("masterpiece")
    )
    custom = UpsampleRequest(tags="1girl, solo", format="<|general|> | <|special|> <|nothing|>")
    result = upsample(custom, ReplayBackend([", smile"], when_exhausted="empty"), policy=RetryPolicy(1))
    assert result.prompt == "solo, smile | 1girl"


def test_flag_and_number_validation():
    with pytest.raises(RequestError, match="expand_tags"):
        UpsampleRequest(expand_tags="yes")
    with pytest.raises(RequestError, match="extra_nl"):
        UpsampleRequest(extra_nl=1)
    with pytest.raises(RequestError, match="aspect_ratio"):
        UpsampleRequest(aspect_ratio="wide")
    assert UpsampleRequest(aspect_ratio="0.75").aspect_ratio == 0.75
    with pytest.raises(RequestError, match="ModelSpec"):
        upsample(UpsampleRequest(), ReplayBackend([]), model="TIPO-500M-ft")

"""Property tests: arbitrary unicode tags, captions and completions through the whole pipeline."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kgen.engine.replay import ReplayBackend
from kgen.models.registry import find_model
from kgen.pipeline import (
    PromptTooLongError,
    RetryPolicy,
    UpsampleRequest,
    first_model_input,
    upsample,
    upsample_many,
)
from kgen.protocol import dtg
from kgen.protocol.dtg import DTG_SAMPLING
from kgen.protocol.lengths import TIPO_NL_BOUNDS, TIPO_TAG_BOUNDS, Length
from kgen.protocol.postprocess import split_sentences
from kgen.protocol.tags import TagCategory, classify

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
TOKENS = [
    "</s>",
    "<s>",
    "<|long|>",
    "<|short|>",
    "<|input_end|>",
    "<|empty|>",
    "\n",
    ",",
    ".",
    "tag:",
    "long:",
    "short:",
    "rating:",
    "target:",
]
FORMATS = [
    "Both, tag first (recommend)",
    "Both + generated NL",
    "tag only (DTG mode)",
    "NL only (Tag to NL)",
    "Both, NL first (recommend)",
]

texts = st.text(max_size=40) | st.lists(st.sampled_from(TOKENS) | st.text(max_size=8), max_size=8).map(
    "".join
)
tag_lists = st.lists(texts, max_size=8)
captions = st.lists(texts, max_size=6).map(". ".join)
completion_texts = st.one_of(
    texts,
    st.lists(texts, max_size=30).map(lambda items: ", " + ", ".join(items)),
    st.lists(texts, max_size=12).map(lambda items: ". " + ". ".join(items) + "."),
    st.builds(lambda a, b: f", {a}\nlong: {b}", st.text(max_size=60), st.text(max_size=200)),
)
requests = st.builds(
    UpsampleRequest,
    tags=tag_lists | tag_lists.map(", ".join),
    nl=captions,
    tag_length=st.sampled_from(list(Length)),
    nl_length=st.sampled_from(list(Length)),
    aspect_ratio=st.floats(0.2, 5),
    seed=st.integers(0, 2**32),
    ban_tags=st.sampled_from(["", "hat", ".*text, blue", r"\(.*"]),
    format=st.sampled_from(FORMATS),
    expand_tags=st.booleans(),
    expand_nl=st.booleans(),
    tag_first=st.booleans(),
    extra_nl=st.none() | st.booleans(),
    no_formatting=st.booleans(),
)


def check_user_content_kept(request: UpsampleRequest, result) -> None:
    user = classify(request.tag_list)
    for category in TagCategory:
        assert result.tags.get(category)[: len(user.get(category))] == user.get(category)
    assert result.appended.startswith(request.tags_text)
    extended = result.extended.lower()
    for sentence in split_sentences(request.nl):
        assert sentence.lower() in extended


POLICY = RetryPolicy(max_attempts=4)


def check_real_overflow(request, model, backend, error: PromptTooLongError) -> None:
    """The refused model input holds the user's own text only and truly leaves too little room."""
    is_dtg = model is not None and model.protocol == "dtg"
    min_room = min(dtg.MIN_NEW_TOKENS, DTG_SAMPLING.max_new_tokens) if is_dtg else POLICY.min_new_tokens
    assert error.min_new_tokens == min_room
    assert error.context_length == backend.context_length
    assert error.prompt_tokens == backend.count_tokens(error.prompt)
    assert backend.count_tokens(error.prompt) + min_room > backend.context_length
    if is_dtg:
        assert not backend.prompts  # DanTagGen only refuses its first round; later ones stop early
    if not backend.prompts:  # refused before any generation: the first model input, nothing fed back
        assert error.prompt == first_model_input(request, model)


def run(request, completions, model=None, context_length=4096):
    backend = ReplayBackend(list(completions), context_length=context_length, when_exhausted="empty")
    try:
        return upsample(request, backend, model, policy=POLICY), backend
    except PromptTooLongError as error:
        # The only documented failure for a valid request; it must be a real overflow.
        check_real_overflow(request, model, backend, error)
        return None, backend


@PROPERTY_SETTINGS
@given(requests, st.lists(completion_texts, max_size=6))
def test_tipo_never_raises_keeps_user_content_and_respects_caps(request, completions):
    result, backend = run(request, completions)
    assert result is not None  # short requests always fit 4096 tokens
    check_user_content_kept(request, result)
    user = classify(request.tag_list)
    user_general = len(user.special) + len(user.general)
    assert len(result.new_tags) <= max(0, TIPO_TAG_BOUNDS[request.tag_length].maximum - user_general)
    nl_max = TIPO_NL_BOUNDS[request.nl_length].maximum
    user_sentences = len(split_sentences(request.nl))
    assert len(split_sentences(result.extended)) <= max(nl_max, user_sentences)
    assert len(split_sentences(result.generated)) <= nl_max
    for attempt in result.attempts:
        assert attempt.completion.prompt_tokens + 512 <= backend.context_length
    assert result.prompt == (result.appended if request.no_formatting else result.formatted)


@PROPERTY_SETTINGS
@given(requests, st.lists(completion_texts, max_size=4), st.integers(300, 900))
def test_small_context_windows_are_respected_or_refused_clearly(request, completions, context_length):
    result, backend = run(request, completions, context_length=context_length)
    for item in backend.inputs:
        assert item.prompt_tokens + item.settings.max_new_tokens <= context_length
    if result is not None:
        check_user_content_kept(request, result)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests, st.lists(completion_texts, max_size=4))
def test_dtg_never_raises_and_keeps_user_content(request, completions):
    result, _ = run(request, completions, model=find_model("DanTagGen-delta"))
    assert result is not None
    check_user_content_kept(request, result)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests, min_size=1, max_size=4), st.lists(completion_texts, max_size=8))
def test_batches_equal_single_runs(batch, completions):
    def script(prompt, seed):
        return completions[(len(prompt) + seed) % len(completions)] if completions else ""

    together = upsample_many(batch, ReplayBackend(script), policy=RetryPolicy(max_attempts=3))
    for request, result in zip(batch, together, strict=True):
        alone = upsample(request, ReplayBackend(script), policy=RetryPolicy(max_attempts=3))
        assert result.prompt == alone.prompt
        assert result.model_inputs == alone.model_inputs

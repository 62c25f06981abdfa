"""Differential test: what the WebUI reads in a prompt survives the rewrite (issue #10).

For a prompt P and its rewrite O, the independent model of the WebUI's reading (``webui_grammar_model``:
extra networks as ``extra_networks.parse_prompt``, AND sub-prompts and their weights as
``get_multicond_prompt_list``, editing/alternation schedules as ``get_learned_conditioning_prompt_schedules``
at 20 steps and at 20 + 10 hires steps, attention weights and BREAK chunks as ``parse_prompt_attention``)
must find in O every extra network (same multiset), the same sub-prompts with the same weights and parse
outcome, the same schedule steps, the same BREAK count at every step, and in every BREAK chunk of every
step every piece of P with its weight; what O adds may only be pieces of weight 1 (or of a weight the user
typed in the caption box). Prompts mix plain tags, captions, extra networks (glued, inside brackets),
weights, editing, alternation, AND/BREAK, escapes, unicode and stray brackets; answers are plausible, empty,
EOS only or garbage full of syntax. With ``TIPO_WEBUI_SOURCES`` set, the same check runs against the WebUI's
own ``modules/prompt_parser.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webui_grammar_model import PromptView, attention_runs, differences, read_prompt
from webui_real_parser import RealParser, webui_tree

from kgen import pipeline
from kgen.engine.replay import ReplayBackend
from kgen.models.registry import find_model
from kgen.protocol.formats import FORMAT_PRESETS
from kgen.rewriter import RequestPlan, Rewriter, follow_hires, rewrite_each, rewrite_images
from kgen.settings import CUSTOM_FORMAT, TipoSettings

STEP_SETTINGS = ((20, None), (20, 10))  # (steps, hires steps): the first pass and a hires pass
DTG = find_model("DanTagGen-delta")

TAGS = [
    "1girl",
    "solo",
    "long hair",
    "masterpiece",
    "best quality",
    "smile",
    "monochrome",
    "serafuku",
    "blue eyes",
    "ganyu \\(genshin impact\\)",
    "日本語",
    "猫耳",
    "café",
    "looking at viewer",
    "A girl walking in a park.",
    "artist \\[style\\]",
    "BREAKFAST",
    "SANDWICH",
]
NETWORKS = ["<lora:add_detail:0.8>", "<lora:x:1>", "<hypernet:h:0.5>", "<lyco:b:0.5:0.3>"]
EDITING = [
    "[dog:cat:0.5]",
    "[a:5]",
    "[a:b:10 ]",
    "[ in foreground::0.6]",
    "[red|blue] hair",
    "[fe|]male",
    "a[b:[c:d:2]:1]e",
    "[(a:2):3]",
    "[x: 3]",
    "[a|b|c]",
    "[cat:dog:1.5]",
    "[sunny|(rainy:1.2)] sky",
    "[(a:1.2):b:5]",
    "[a:(b:0.8):0.25]",
    "[[a|b]:c:3]",
    "[a|[b:c:2]]",
    "[:in background:0.25]",
]
ODD = [
    "(tag : 1.2)",
    "(tag:-1)",
    "(tag:.5)",
    "(\\(x\\):1.2)",
    "a\\\\b",
    "<lora:a b:1>",
    "<lora:x>",
    "<x>",
    "BREAK BREAK",
    "a AND b :0.5 AND c",
    "x\r\ny",
    "tab\tbed",
    "(a (b) [c]:1.1)",
    "A girl, smiling. She waves.",
]
MALFORMED = [
    "(",
    "[",
    ")",
    "]",
    "(unclosed tag",
    "[unclosed",
    "<lora:broken",
    "<lora:broken:1",
    ":",
    "|",
    "a|b",
    "\\",
    "C:\\path",
    "x:1.2",
    ">",
    "a > b",
    ":1.2",
    "(a]",
    "[a:b:5",
    "(x [y:z:3]",
]
SEPARATORS = [", ", ",", "\n", " ", "", ",\n", " , ", "\n\n"]
HOSTILE = [
    "AND",
    "BREAK",
    "<lora:x:1>",
    "|",
    ":",
    "\\",
    "(",
    ")",
    "[",
    "]",
    ":3",
    "score:9",
    ">_<",
    "a [b:c:5]",
    "1girl",
    "monochrome",
    "<",
    ">",
    "日本",
    "(tag:1.5)",
    "x AND y",
    "\\(",
    "[a|b]",
    "</s>",
    "tag:",
    "long:",
    ", ",
    ".",
    "\n",
]
CUSTOM_TEMPLATES = [
    "<|extended|>",
    "<|quality|>, <|artist|>",
    "<|characters|>,\n<|extended|>",
    "<|generated|>",
    "<|special|>, <|general|>,\n<|generated|>",
]
CAPTIONS = ["", "A girl in a park.", "a girl (smiling:1.2) in a park", "girl (unclosed", "sunset \\[glow\\]"]

words = st.sampled_from(TAGS) | st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=6)


def _weighted(draw_tag: str, form: int) -> str:
    return [
        f"({draw_tag})",
        f"(({draw_tag}))",
        f"[{draw_tag}]",
        f"({draw_tag}:1.2)",
        f"({draw_tag}:0.8)",
        f"({draw_tag}, smile:1.3)",
        f"(((({draw_tag}))))",
    ][form]


weighted = st.builds(_weighted, st.sampled_from(TAGS), st.integers(0, 6))
networks = st.sampled_from(NETWORKS)
glued_networks = st.builds(
    lambda tag, net, form: [f"{tag} {net}", f"{tag}{net}", f"({net} {tag}:1.2)", f"{net}{tag}"][form],
    st.sampled_from(TAGS),
    networks,
    st.integers(0, 3),
)
keywords = st.sampled_from(["BREAK", "AND", ":1.2 AND", "AND", "(realistic:1.3)BREAK", "BREAK(x)"])
chunks = st.one_of(
    words,
    weighted,
    networks,
    glued_networks,
    st.sampled_from(EDITING),
    keywords,
    st.sampled_from(MALFORMED),
    st.sampled_from(ODD),
)
well_formed_chunks = st.one_of(
    st.sampled_from(TAGS), weighted, networks, st.sampled_from(EDITING), st.sampled_from(["BREAK", "AND"])
)
prompts = st.builds(
    lambda parts, seps: "".join(part + seps[i % len(seps)] for i, part in enumerate(parts)).strip(" "),
    st.lists(chunks, max_size=10),
    st.lists(st.sampled_from(SEPARATORS), min_size=1, max_size=4),
)
typical_prompts = st.lists(well_formed_chunks, min_size=1, max_size=8).map(", ".join)

answer_words = st.sampled_from(HOSTILE + TAGS) | st.text(max_size=8)
answers = st.one_of(
    st.lists(answer_words, max_size=8).map(lambda items: ", " + ", ".join(items)),
    st.lists(answer_words, max_size=6).map(lambda items: " " + " ".join(items) + "."),
    st.sampled_from(["", "</s>", " </s>", ", </s>"]),
    st.lists(answer_words, max_size=10).map("".join),
)


@st.composite
def tipo_settings(draw) -> TipoSettings:
    custom = draw(st.sampled_from([None, *CUSTOM_TEMPLATES]))
    return TipoSettings(
        enabled=True,
        seed=draw(st.integers(0, 2**16)),
        tag_length=draw(st.sampled_from(["very short", "short", "long"])),
        nl_length=draw(st.sampled_from(["very short", "short"])),
        format=CUSTOM_FORMAT if custom else draw(st.sampled_from(sorted(FORMAT_PRESETS))),
        template=custom or "",
        no_formatting=draw(st.booleans()),
        nl_prompt=draw(st.sampled_from(CAPTIONS)),
    )


@dataclass(frozen=True)
class Case:
    """One rewrite: the prompt as typed, the settings, the model (None: TIPO) and its scripted answers."""

    prompt: str
    settings: TipoSettings
    answers: tuple[str, ...]
    model: object = None


cases = st.builds(
    Case,
    prompts | typical_prompts,
    tipo_settings(),
    st.lists(answers, max_size=5).map(tuple),
    st.sampled_from([None, DTG]),
)


def rewrite(case: Case) -> str:
    plan = RequestPlan.of(case.prompt, case.settings, case.settings.seed, 1.0)
    backend = ReplayBackend(list(case.answers), when_exhausted="empty")
    result = pipeline.upsample(plan.request, backend, model=case.model, sampling=plan.sampling)
    return plan.compose(result)


def caption_weights(caption: str) -> frozenset[float]:
    return frozenset({1.0} | {round(weight, 4) for _, weight in attention_runs(caption)})


def assert_kept(prompt: str, output: str, caption: str = "", reader=read_prompt) -> None:
    allowed = caption_weights(caption)
    for steps, hires in STEP_SETTINGS if "[" in prompt else STEP_SETTINGS[:1]:  # hires moves only schedules
        before: PromptView = reader(prompt, steps, hires)
        problems = differences(before, reader(output, steps, hires), allowed)
        assert not problems, f"{prompt!r} -> {output!r} ({steps}/{hires} steps): {problems}"


# --------------------------------------------------------------------------------------------- property

EXAMPLES = int(os.environ.get("TIPO_DIFFERENTIAL_EXAMPLES", "5000"))  # CI: the default
DIFFERENTIAL = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@DIFFERENTIAL
@given(cases)
def test_rewrite_keeps_what_the_webui_reads(case):
    assert_kept(case.prompt, rewrite(case), case.settings.nl_prompt)


# --------------------------------------------------------------------------------------------- regressions


@dataclass(frozen=True)
class Regression:
    name: str
    prompt: str
    format: str = "Both, tag first (recommend)"
    answers: tuple[str, ...] = (", long hair, hat", " A girl wearing a hat.")
    no_formatting: bool = False
    model: object = None
    template: str = ""
    nl_prompt: str = ""
    tag_prompt: str = ""

    def case(self) -> Case:
        settings = TipoSettings(
            enabled=True,
            seed=3,
            tag_length="short",
            nl_length="very short",
            format=self.format,
            template=self.template,
            no_formatting=self.no_formatting,
            nl_prompt=self.nl_prompt,
            tag_prompt=self.tag_prompt,
        )
        return Case(self.prompt, settings, self.answers, self.model)


NL_ONLY = "NL only (Tag to NL)"
REGRESSIONS = [
    # 1. chunks whose first tag is the same
    Regression("same first tag, one with a LoRA", "monochrome <lora:x:1>, monochrome"),
    Regression("same tag, plain and weighted", "serafuku, (serafuku:1.4)"),
    # 2. formats that leave a category out
    Regression("NL only keeps tags and a glued LoRA", "masterpiece <lora:add_detail:0.8>, 1girl", NL_ONLY),
    Regression("NL only, LoRA in brackets", "(masterpiece <lora:add_detail:0.8>:1.2), 1girl", NL_ONLY),
    Regression("NL only with DanTagGen (no caption)", "1girl, <lora:x:1>, smile", NL_ONLY, model=DTG),
    Regression("NL only, only EOS", "1girl, <lora:x:1>, smile", NL_ONLY, answers=("</s>",)),
    Regression("custom without general", "1girl, solo", CUSTOM_FORMAT, template="<|quality|>, <|extended|>"),
    # 3. space before ']' in prompt editing
    Regression("editing with a space before ]", "1girl, [a:b:10 ], smile"),
    # 4. BREAK glued to a bracket
    Regression("glued BREAK, formatted", "1girl, (realistic:1.3)BREAK, shoulders"),
    Regression("glued BREAK, no formatting", "bare shoulders, (realistic:1.3)BREAK sky", no_formatting=True),
    # 5. AND everywhere, AND weights
    Regression("AND weight in its own chunk", "1girl, :1.2 AND sunset"),
    Regression("AND inside brackets", "(1girl AND smile), solo"),
    Regression("AND after an unclosed bracket", "(1girl, solo AND sunset, sky"),
    Regression("weight of the only sub-prompt", "1girl, smile :1.2"),
    # 6. malformed input
    Regression("unclosed round bracket", "1girl, (smile, masterpiece, solo"),
    Regression("unclosed square bracket", "[1girl, smile, best quality, solo"),
    Regression("open extra network swallowing a LoRA", "<lora:broken, 1girl, <lora:y:1>, smile"),
    Regression("open extra network never closed", "1girl, <lora:broken, smile"),
    # 7. model text that is syntax
    Regression(
        "garbage answer", "1girl, [a:b:5], [c|d]", answers=(", x AND y, BREAK, <lora:z:1>, a|b, k:3",)
    ),
    Regression("lone | in an answer", "1girl, [red|blue] hair", answers=(", |, [, :",), no_formatting=True),
    Regression("answer closing a user's open network", "1girl, <lora:open", answers=(", x>, y:1>",)),
    Regression("answer ending in :number", "1girl AND sky", answers=(", :3", " It is 16:9"), format=NL_ONLY),
    # the tag prompt setting (a prompt without tags)
    Regression("tag prompt before a sub-prompt weight", "<lora:x:1> :1.2", tag_prompt="1girl, solo"),
    Regression("tag prompt and an unclosed bracket", "(<lora:x:1>", tag_prompt="1girl"),
    # found by Hypothesis
    Regression(
        "BREAK glued to prompt editing (no BREAK once the step's text is made)",
        "BREAK[dog:cat:0.5]",
        "Both + generated NL",
        answers=(", ",),
        nl_prompt="A girl in a park.",
    ),
    Regression("a word then BREAK glued to prompt editing", "1girl, x BREAK[dog:cat:0.5]"),
    Regression("new content before a chunk that is not a tag", "BREAK x", answers=(", hat", " A hat.")),
    Regression("chunk ending in :number after AND", "0:0,", answers=(", AND",)),
    Regression("only a sub-prompt weight before AND", ":1.2 AND,", "Both + generated NL", answers=(", AND",)),
    Regression(
        "caption box with an unclosed bracket",
        "1girl",
        "Both, NL first (recommend)",
        nl_prompt="girl (unclosed",
    ),
]


@pytest.mark.parametrize("regression", REGRESSIONS, ids=[r.name for r in REGRESSIONS])
def test_regression_corpus(regression):
    case = regression.case()
    assert_kept(case.prompt, rewrite(case), case.settings.nl_prompt)


def test_an_empty_answer_leaves_the_prompt_as_typed():
    for format_name in sorted(FORMAT_PRESETS):
        case = Regression("empty", "masterpiece <lora:a:0.8>, 1girl, smile", format_name, answers=()).case()
        assert rewrite(case) == case.prompt
    hidden = Regression("tags only, NL only", "1girl, <lora:a:1>, smile", NL_ONLY, model=DTG).case()
    assert rewrite(hidden) == hidden.prompt  # DanTagGen adds tags, which NL only does not show


def test_malformed_prompt_is_kept_byte_for_byte_with_a_note():
    prompt = "1girl, (smile, <lora:x:1>, solo"
    plan = RequestPlan.of(prompt, Regression("", prompt).case().settings, 3, 1.0)
    result = pipeline.upsample(plan.request, ReplayBackend([", hat"], when_exhausted="empty"))
    output = plan.compose(result)
    assert output.endswith(prompt) and output != prompt and "unclosed '('" in plan.note


def test_the_job_warning_says_why_a_prompt_was_kept_as_typed():
    rewriter = Rewriter(OneBackend(ReplayBackend(_answering)))
    settings = Regression("", "").case().settings
    job = rewrite_each(rewriter, settings, ["1girl, (smile", "1girl, smile"], [1, 2], 1.0)
    assert job.prompts[0].endswith("1girl, (smile") and job.prompts[0] != "1girl, (smile"
    assert job.warning == "prompt kept as typed, new content put in front of it: an unclosed '('"
    again = rewrite_each(rewriter, settings, ["1girl, (smile"], [1], 1.0)  # from the cache
    assert again.rewrites[0].cached and again.warning == job.warning


# --------------------------------------------------------------------------------------------- timing, hires


class OneBackend:
    def __init__(self, backend):
        self.backend = backend

    def session(self, _settings):
        from contextlib import nullcontext

        return nullcontext((self.backend, None))


def _answering(prompt: str, seed: int) -> str:
    if prompt.rsplit("\n", 1)[-1].startswith("tag:"):
        return f", long hair, x AND y, <lora:m:1>, hat{seed % 7}, a|b"
    return " A girl BREAK (waving."


@pytest.mark.parametrize("timing", ["before", "after"])
def test_both_timings_and_hires_prompts_keep_the_syntax(timing):
    prompts = [f"1girl, <lora:a:1>, [day|night], (smile:1.2) BREAK sky, {i}" for i in range(3)]
    settings = replace(Regression("", "").case().settings, timing=timing)
    rewriter = Rewriter(OneBackend(ReplayBackend(_answering)))
    if timing == "before":
        job = rewrite_each(rewriter, settings, prompts, [5, 6, 7], 1.0)
    else:
        job = rewrite_images(rewriter, settings, prompts, [5, 6, 7], 1, 1.0)
    hires = follow_hires([prompts[0], "other", prompts[2]], prompts, job.prompts, hr_follows_main=False)
    assert hires[1] == "other" and job.warning is None
    for original, final, hires_prompt in zip(prompts, job.prompts, hires, strict=True):
        assert final != original
        assert_kept(original, final)
        if hires_prompt != "other":
            assert_kept(original, hires_prompt)


# ------------------------------------------------------------------------------------- the WebUI's own parser

_TREE, _WHY_NOT = webui_tree()


@pytest.mark.skipif(_TREE is None, reason=_WHY_NOT or "no WebUI sources")
@settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases)
def test_rewrite_keeps_what_the_webui_itself_reads(case):
    real = _real_parser()
    assert_kept(case.prompt, rewrite(case), case.settings.nl_prompt, reader=real.read_prompt)


@pytest.mark.skipif(_TREE is None, reason=_WHY_NOT or "no WebUI sources")
@pytest.mark.parametrize("regression", REGRESSIONS, ids=[r.name for r in REGRESSIONS])
def test_regression_corpus_with_the_webui_itself(regression):
    case = regression.case()
    assert_kept(case.prompt, rewrite(case), case.settings.nl_prompt, reader=_real_parser().read_prompt)


_REAL: list[RealParser] = []


def _real_parser() -> RealParser:
    if not _REAL:
        _REAL.append(RealParser(_TREE))
    return _REAL[0]

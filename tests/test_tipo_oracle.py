"""Our TIPO task plans and first model inputs against the reference (tipo-kgen 0.3.1).

Random WebUI-like requests go to the reference in ONE subprocess (tests/oracle_drivers/
tipo_first_input.py follows the WebUI extension's path). The reference output is then adjusted
for each documented deliberate difference, each by a named function below, and must then equal
ours byte for byte.

Tags are classified by the reference in the driver, and our prompt is built from that same tag
map: this test checks the TIPO protocol, not tag classification (tests/test_tags_oracle.py does).
``test_end_to_end_with_our_classifier`` repeats the comparison with our own classifier.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from functools import lru_cache

import pytest
from oracle import reference_dir, reference_or_skip

from kgen.protocol.lengths import Length
from kgen.protocol.tags import TagCategory, TagMap, classify
from kgen.protocol.tipo import (
    MODES,
    TIPO_V1,
    TipoRequest,
    TipoTask,
    build_prompt,
    first_prompt,
    general_text,
    meta_lines,
    parse_output,
    single_line,
    wants_extra_nl,
)

pytestmark = pytest.mark.oracle

SEED = 20240611
CASES_PER_COMBINATION = 20  # x 64 planning combinations = 1280 requests

GENERAL = [
    "solo",
    "long hair",
    "short hair",
    "blue eyes",
    "red eyes",
    "smile",
    "open mouth",
    "looking at viewer",
    "blush",
    "skirt",
    "shirt",
    "white shirt",
    "hat",
    "dress",
    "sitting",
    "standing",
    "outdoors",
    "indoors",
    "sky",
    "cloud",
    "day",
    "night",
    "tree",
    "flower",
    "holding",
    "jewelry",
    "thighhighs",
    "gloves",
    "school uniform",
    "simple background",
    "white background",
    "upper body",
    "full body",
    "closed eyes",
    "twintails",
    "ponytail",
    "animal ears",
    "cat ears",
    "bow",
    "ribbon",
    "hair ornament",
    "water",
    "long_hair",
    "blue_eyes",
    "looking_at_viewer",
    "very long hair",
    "v",
    ":d",
    ":o",
    "^^^",
    "ok",
    "from side",
    "cowboy shot",
    "scenery",
    "city",
    "rain",
    "umbrella",
    "sword",
    "wings",
    "tail",
]
SPECIAL = ["1girl", "2girls", "1boy", "2boys", "multiple girls", "male focus", "1other", "6+girls"]
QUALITY = [
    "masterpiece",
    "best quality",
    "low quality",
    "very aesthetic",
    "newest",
    "old",
    "score_9",
    "score_8_up",
    "source_anime",
]
RATING = ["safe", "general", "sensitive", "nsfw", "explicit"]
WORDS = [
    "a",
    "girl",
    "boy",
    "cat",
    "dog",
    "sits",
    "stands",
    "walks",
    "under",
    "over",
    "the",
    "old",
    "tree",
    "in",
    "park",
    "city",
    "night",
    "sky",
    "with",
    "bright",
    "red",
    "blue",
    "umbrella",
    "smiles",
    "softly",
    "while",
    "rain",
    "falls",
    "gently",
    "on",
    "quiet",
    "street",
    "she",
    "he",
    "holds",
    "small",
    "book",
    "near",
    "window",
    "light",
    "warm",
]
LENGTH_LABELS = [length.label for length in Length]
SIZES = list(range(512, 1537, 64))
TEMPLATES_WITH = {  # which placeholders a format shows -> example templates
    "generated": [
        "<|special|>, <|general|>\n\n<|generated|>.\n\n<|extended|>.",
        "<|generated|>. <|general|>",
    ],
    "extended": ["<|general|>,\n\n<|extended|>.", "<|extended|>.", "<|extended|>. <|general|>"],
    "tags": ["<|special|>, <|characters|>, <|copyrights|>,\n<|artist|>,\n\n<|general|>,\n\n<|quality|>"],
}


@lru_cache(maxsize=1)
def category_lists() -> dict[str, list[str]]:
    folder = reference_dir() / "kgen" / "tag-list"
    return {
        name: (folder / f"{name}.txt").read_text(encoding="utf-8").strip().split("\n")
        for name in ("artist", "characters", "copyrights", "meta")
    }


@dataclass(frozen=True)
class Combination:
    has_tags: bool
    has_nl: bool
    expand_tags: bool
    expand_nl: bool
    tag_first: bool
    extra_nl: bool


COMBINATIONS = [Combination(*flags) for flags in itertools.product([False, True], repeat=6)]


def _caption(rng: random.Random) -> str:
    sentences = [
        " ".join(rng.choices(WORDS, k=rng.randint(3, 10))).capitalize() + "."
        for _ in range(rng.randint(1, 4))
    ]
    joiner = rng.choice([" ", " ", " ", "\n"])
    caption = joiner.join(sentences)
    if rng.random() < 0.2:
        caption = rng.choice([" ", "\n", "  "]) + caption + rng.choice([" ", "\n", "\n\n"])
    if rng.random() < 0.15:
        caption = caption.rstrip(".")
    return caption


def _maybe_underscored(rng: random.Random, tag: str) -> str:
    return tag.replace(" ", "_") if rng.random() < 0.2 else tag


def _prompt(rng: random.Random, with_general: bool) -> str:
    lists = category_lists()
    tags: list[str] = []
    for name, chance in (("artist", 0.4), ("characters", 0.4), ("copyrights", 0.4), ("meta", 0.3)):
        if rng.random() < chance:
            tags += [_maybe_underscored(rng, t) for t in rng.sample(lists[name], rng.randint(1, 2))]
    if rng.random() < 0.5:
        tags += rng.sample(QUALITY, rng.randint(1, 3))
    if rng.random() < 0.4:
        tags.append(rng.choice(RATING))
    if with_general:
        if rng.random() < 0.7:
            tags += rng.sample(SPECIAL, rng.randint(1, 2))
        if rng.random() < 0.85 or not any(t in SPECIAL for t in tags):
            tags += rng.sample(GENERAL, rng.randint(1, 12))
    rng.shuffle(tags)
    if with_general and rng.random() < 0.05:
        position = rng.randrange(len(tags))  # a line break without a comma: one tag spanning two lines
        tags[position] = tags[position] + "\n" + rng.choice(GENERAL)
    separator = rng.choice([", ", ",", " , ", ",\n"])
    return separator.join(tags)


def _template(rng: random.Random, combination: Combination) -> str:
    if not combination.extra_nl:
        extended = TEMPLATES_WITH["extended"] if combination.has_nl else []
        return rng.choice(TEMPLATES_WITH["tags"] + extended)
    if combination.has_nl:
        return rng.choice(TEMPLATES_WITH["generated"])
    return rng.choice(TEMPLATES_WITH["generated"] + TEMPLATES_WITH["extended"])


def make_cases() -> list[dict]:
    rng = random.Random(SEED)
    cases = []
    for _ in range(CASES_PER_COMBINATION):
        for combination in COMBINATIONS:
            # A prompt without general tags may still hold artists, characters, quality tags ...
            prompt = _prompt(rng, combination.has_tags) if combination.has_tags or rng.random() < 0.7 else ""
            cases.append(
                {
                    "combination": combination.__dict__,
                    "prompt": prompt,
                    "nl": _caption(rng) if combination.has_nl else "",
                    "tag_length": rng.choice(LENGTH_LABELS),
                    "nl_length": rng.choice(LENGTH_LABELS),
                    "format": _template(rng, combination),
                    "width": rng.choice(SIZES),
                    "height": rng.choice(SIZES),
                    "expand_tags": combination.expand_tags,
                    "expand_nl": combination.expand_nl,
                    "tag_first": combination.tag_first,
                    "add_quality": rng.random() < 0.8,
                }
            )
    return cases


# --- documented deliberate differences, applied to the reference's output -------------------


def fix_aspect_ratio_key(text: str) -> str:
    """We write the training key ``aspect ratio:``; the reference extension writes ``aspect_ratio:``."""
    return re.sub(r"(?m)^aspect_ratio: ", "aspect ratio: ", text)


def fix_length_tokens(text: str) -> str:
    """The extension passes the NL length as the UI label: ``<|very long|>``; we write ``<|very_long|>``."""
    return text.replace("<|very long|>", "<|very_long|>").replace("<|very short|>", "<|very_short|>")


def fix_one_line_text(text: str, case: dict, ref_tag_map: dict) -> str:
    """We write captions and tags on one line without surrounding whitespace; the reference writes
    the caption as typed (leading/trailing whitespace, line breaks) and tags with line breaks."""
    raw = case["nl"]
    # The reference strips the end of an expanding prompt, so a caption written last lost its tail.
    for written in (raw, raw.rstrip()):
        if raw.strip() and written in text:
            text = text.replace(written, single_line(raw, TIPO_V1))
            break
    for tags in ref_tag_map.values():
        for tag in tags:
            if "\n" in tag:
                text = text.replace(tag, single_line(tag, TIPO_V1))
    return text


def actual_combination(case: dict, ref: dict) -> Combination:
    """The planning inputs as the reference saw them (some tags drawn as general ones are in fact
    artist or character names)."""
    general = ref["tag_map"].get("special", []) + ref["tag_map"].get("general", [])
    return Combination(
        bool(general),
        bool(case["nl"].strip()),
        case["expand_tags"],
        case["expand_nl"],
        case["tag_first"],
        wants_extra_nl(case["nl"], case["format"]),
    )


def fix_operations(case: dict, ref: dict) -> list[TipoTask]:
    """Reference plan -> ours: NL length label normalised; the caption-only expansion uses the NL
    length (the reference passes the tag length); a repeated final extra-NL task is dropped."""
    tasks = [TipoTask(mode, Length.parse(length), expand) for mode, length, expand in ref["operations"]]
    combination = actual_combination(case, ref)
    if combination.has_tags and combination.has_nl and not combination.expand_tags and combination.expand_nl:
        first = tasks[0]
        assert first.mode == "tag_to_long"
        tasks[0] = TipoTask(first.mode, Length.parse(case["nl_length"]), first.expand)
    if combination.extra_nl and len(tasks) >= 2 and tasks[-1] == tasks[-2]:
        tasks.pop()
    return tasks


def fix_first_task_length(text: str, case: dict, ref: dict) -> str:
    """The target line carries the first task's length: follow the plan fix in ``fix_operations``."""
    length = fix_operations(case, ref)[0].length.value
    return re.sub(r"(?m)^target: <\|[a-z_ ]+\|>", f"target: <|{length}|>", text)


def to_tag_map(reference_map: dict) -> TagMap:
    return TagMap(**{c.value: list(reference_map.get(c.value, [])) for c in TagCategory})


def our_request(case: dict, tags: TagMap) -> TipoRequest:
    return TipoRequest(
        tags=tags,
        nl=case["nl"],
        tag_length=case["tag_length"],
        nl_length=case["nl_length"],
        expand_tags=case["expand_tags"],
        expand_nl=case["expand_nl"],
        tag_first=case["tag_first"],
        extra_nl=wants_extra_nl(case["nl"], case["format"]),
        aspect_ratio=case["width"] / case["height"],
        add_quality=case["add_quality"],
    )


def expected_first_input(case: dict, ref: dict) -> str | None:
    if ref["first_input"] is None:
        return None
    text = fix_aspect_ratio_key(ref["first_input"])
    text = fix_length_tokens(text)
    text = fix_first_task_length(text, case, ref)
    return fix_one_line_text(text, case, ref["tag_map"])


def make_parse_texts(count: int = 400) -> list[str]:
    """Model input + completion texts in the layout the parser must read: one line per field,
    an EOS token at the end, no line kinds the two parsers treat differently on purpose."""
    rng = random.Random(SEED + 1)
    lists = category_lists()
    texts = []
    for _ in range(count):
        tags = TagMap(
            artist=rng.sample(lists["artist"], rng.randint(0, 2)),
            characters=rng.sample(lists["characters"], rng.randint(0, 2)),
            rating=rng.sample(RATING, rng.randint(0, 1)),
            special=rng.sample(SPECIAL, rng.randint(0, 2)),
            general=rng.sample(GENERAL, rng.randint(0, 10)),
        )
        task = TipoTask(rng.choice([None, *MODES]), rng.choice(list(Length)), rng.random() < 0.5)
        nl = _caption(rng).replace("\n", " ").strip() if rng.random() < 0.6 else ""
        text = build_prompt(meta_lines(tags, rng.choice([None, 0.75, 1.0])), general_text(tags), nl, task)
        more_tags = ", ".join(rng.sample(GENERAL, rng.randint(1, 8)))
        if task.expand and text.split("\n")[-1].startswith("tag: "):
            text += ", " + more_tags
        elif task.expand and text.split("\n")[-1].startswith(("long: ", "short: ")):
            text += " " + _caption(rng).replace("\n", " ").strip().rstrip(".") + "."
        elif not task.expand:
            caption = _caption(rng).replace("\n", " ").rstrip()
            text += " " + (more_tags if task.output_field == "tag" else caption)
        for field_name in rng.sample(["tag", "long", "short"], rng.randint(0, 2)):
            content = more_tags if field_name == "tag" else _caption(rng).replace("\n", " ").strip()
            text += f"\n{field_name}: {content.rstrip('.')}."
        texts.append("<s> " + text + rng.choice(["</s>", "\n</s>", ""]))
    return texts


EOS_CUT_TEXT = "<s> target: <|long|>\ntag: 1girl, blue eyes</s>"


@pytest.fixture(scope="module")
def oracle_run():
    return run_oracle()


@lru_cache(maxsize=1)
def run_oracle():
    cases = make_cases()
    texts = [EOS_CUT_TEXT, *make_parse_texts()]
    result = reference_or_skip("tipo_first_input", {"cases": cases, "parse": texts})
    return cases, result["cases"], texts, result["parse"]


def test_cases_cover_every_planning_combination(oracle_run):
    cases, refs, _, _ = oracle_run
    assert len(cases) >= 1000
    seen = {actual_combination(case, ref) for case, ref in zip(cases, refs, strict=True)}
    assert seen == set(COMBINATIONS)


def test_task_plans_match_reference(oracle_run):
    cases, refs, _, _ = oracle_run
    mismatches = []
    for index, (case, ref) in enumerate(zip(cases, refs, strict=True)):
        ours = our_request(case, to_tag_map(ref["tag_map"])).plan()
        expected = fix_operations(case, ref)
        if ours != expected:
            mismatches.append((index, [str(t) for t in ours], [str(t) for t in expected]))
    assert not mismatches, f"{len(mismatches)} plans differ, first: {mismatches[:3]}"


def test_first_model_inputs_match_reference(oracle_run):
    cases, refs, _, _ = oracle_run
    mismatches = []
    for index, (case, ref) in enumerate(zip(cases, refs, strict=True)):
        ours = first_prompt(our_request(case, to_tag_map(ref["tag_map"])))
        expected = expected_first_input(case, ref)
        if ours != expected:
            mismatches.append((index, ours, expected))
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ; first: {mismatches[0]}"


def test_reference_crashes_on_empty_plans_where_ours_is_empty(oracle_run):
    """Tags without expansion and without an extra caption: nothing to generate. The reference's
    runner dies with an unbound variable; our plan is simply empty."""
    cases, refs, _, _ = oracle_run
    empty = [(case, ref) for case, ref in zip(cases, refs, strict=True) if not ref["operations"]]
    assert empty, "the cases must include requests with nothing to generate"
    for case, ref in empty:
        assert ref["runner_error"] == "UnboundLocalError"
        assert our_request(case, to_tag_map(ref["tag_map"])).plan() == []


def test_the_named_differences_actually_occur(oracle_run):
    """Each normalisation above must be needed by some case, or it hides nothing and should go."""
    cases, refs, _, _ = oracle_run
    texts = [ref["first_input"] or "" for ref in refs]
    assert any("\naspect_ratio: " in t for t in texts)
    assert any("<|very long|>" in t or "<|very short|>" in t for t in texts)
    assert any(
        case["nl"].strip() and case["nl"] != single_line(case["nl"], TIPO_V1) and case["nl"] in t
        for case, t in zip(cases, texts, strict=True)
    )
    plans = [(fix_operations(case, ref), ref["operations"]) for case, ref in zip(cases, refs, strict=True)]
    assert any(len(fixed) < len(raw) for fixed, raw in plans)  # the repeated extra-NL task
    assert any(fixed and fixed[0].length != Length.parse(raw[0][1]) for fixed, raw in plans)  # caption length
    assert any("\n" in tag for ref in refs for tags in ref["tag_map"].values() for tag in tags)


def test_end_to_end_with_our_classifier(oracle_run):
    """Same comparison with our tag classifier, on the cases where it agrees with the reference's
    category assignment (differences there are tag-classification decisions, see test_tags_oracle)."""
    cases, refs, _, _ = oracle_run
    try:
        classify(["1girl"])
    except NotImplementedError:
        pytest.skip("kgen.protocol.tags.classify is not implemented yet")
    compared = 0
    for case, ref in zip(cases, refs, strict=True):
        tags = [t.strip() for t in case["prompt"].strip().split(",") if t.strip()]
        ours_map = classify(tags)
        one_line_reference = {k: [single_line(t) for t in v] for k, v in ref["tag_map"].items()}
        if ours_map != to_tag_map(one_line_reference):
            continue
        compared += 1
        assert first_prompt(our_request(case, ours_map)) == expected_first_input(case, ref)
    assert compared >= 0.95 * len(cases), f"our classifier agreed with the reference on only {compared} cases"


def fix_empty_tag_line(reference_tags: list[str], text: str) -> list[str]:
    """An empty field does not hide a later one with content; the reference keeps the first
    ``tag:`` line even when it is empty (for captions it already skips empty ones, as we do)."""
    if reference_tags:
        return reference_tags
    lines = [line[len("tag:") :] for line in text.replace("</s>", "").split("\n") if line.startswith("tag:")]
    filled = [line for line in lines if line.strip()]
    return [t.strip() for t in filled[0].split(",") if t.strip()] if filled else []


def test_parsed_fields_match_reference(oracle_run):
    """Tag list, captions and aspect ratio agree with the reference's parser on well-formed texts
    (not ending in one of the characters of ``</s>``, which the reference strips one by one)."""
    _, _, texts, refs = oracle_run
    compared = 0
    for text, ref in zip(texts, refs, strict=True):
        if text.removesuffix("</s>").rstrip()[-1] in "</s>":
            continue  # the reference would cut this text's last word (see the next test)
        out = parse_output(text, classify_tags=lambda tags: TagMap(general=list(tags)))
        compared += 1
        assert out.tag_list == fix_empty_tag_line(ref.get("tag", []), text), text
        assert out.extended == ref.get("extended", ""), text
        assert out.generated == ref.get("generated", ""), text
        assert ([out.aspect_ratio] if out.aspect_ratio else []) == ref.get("aspect ratio", []), text
    assert compared >= 0.6 * len(texts)


def test_reference_parser_cuts_tag_ends_and_ours_does_not(oracle_run):
    """The documented EOS fix: the reference strips the characters of ``</s>``, not the token."""
    _, _, texts, refs = oracle_run
    assert texts[0] == EOS_CUT_TEXT
    assert refs[0]["tag"] == ["1girl", "blue eye"]
    assert parse_output(EOS_CUT_TEXT, classify_tags=lambda tags: TagMap(general=list(tags))).tag_list == [
        "1girl",
        "blue eyes",
    ]

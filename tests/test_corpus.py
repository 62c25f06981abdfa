"""A hand-written corpus of model completions through the parsers, post-processing and the pipeline.

Each ``tests/corpus/<protocol>/<case>.txt`` holds one completion, byte for byte (no trailing newline is
implied: a file ending in a newline means the completion does). ``tests/corpus/expectations.json`` maps
``<protocol>/<case>`` to the request it answers (the first generation step gets the completion, later
ones an empty completion), whether the backend reports it as finished or cut at the token limit, and the
expected outcome: ``new_tags`` (as a set: new tags are shuffled), ``extended`` / ``generated``,
``rejected`` (judged garbage), ``banned``, ``categories`` (tags that must be in a category) and
``general_starts`` (the general list starts with these user tags).
"""

import json
from pathlib import Path

import pytest

from kgen.engine.replay import ReplayBackend
from kgen.generation import Completion
from kgen.models.registry import find_model
from kgen.pipeline import RetryPolicy, UpsampleRequest, first_model_input, upsample
from kgen.protocol import dtg, tipo

CORPUS = Path(__file__).resolve().parent / "corpus"
EXPECTATIONS = json.loads((CORPUS / "expectations.json").read_text(encoding="utf-8"))


def load(case: str) -> str:
    return (CORPUS / f"{case}.txt").read_bytes().decode("utf-8")


def test_corpus_is_complete():
    files = {str(p.relative_to(CORPUS).with_suffix("")) for p in CORPUS.glob("*/*.txt")}
    assert files == set(EXPECTATIONS)
    assert len(files) >= 30
    assert {name.split("/")[0] for name in files} == {"tipo", "dtg"}


@pytest.mark.parametrize("case", sorted(EXPECTATIONS))
def test_corpus_case(case):
    spec = EXPECTATIONS[case]
    text = load(case)
    request = UpsampleRequest(seed=0, **spec["request"])
    model = find_model(spec["model"]) if "model" in spec else None
    first_input = first_model_input(request, model)

    # The parsers alone never raise on the completion, finished or not.
    for finished in (True, False):
        if spec["protocol"] == "dtg":
            dtg.parse_completion(text, finished=finished)
        else:
            tipo.parse_output(first_input + text, truncated=not finished)

    backend = ReplayBackend([Completion(text, 0, 0, finished=spec["finished"])], when_exhausted="empty")
    result = upsample(request, backend, model, policy=RetryPolicy(max_attempts=1))
    assert backend.prompts[0] == first_input

    expect = spec["expect"]
    if "new_tags" in expect:
        assert sorted(result.new_tags) == sorted(expect["new_tags"])
    if "extended" in expect:
        assert result.extended == expect["extended"]
    if "generated" in expect:
        assert result.generated == expect["generated"]
    if "rejected" in expect:
        assert result.attempts[0].rejected is expect["rejected"]
    if "banned" in expect:
        assert sorted(result.banned) == sorted(expect["banned"])
    for category, tags in expect.get("categories", {}).items():
        assert set(tags) <= set(result.tags.get(category))
    if "general_starts" in expect:
        assert result.tags.general[: len(expect["general_starts"])] == expect["general_starts"]
    # What the user typed is always there.
    assert result.tags.special == ["1girl"]
    assert result.tags.general[0] == "solo"
    assert result.appended.startswith(request.tags_text)
    if request.nl:
        assert request.nl in result.extended

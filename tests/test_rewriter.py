"""kgen.rewriter / kgen.infotext / kgen.variants: the WebUI extension's engine, without any WebUI."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from kgen.engine.replay import ReplayBackend
from kgen.generation import Completion, SamplingSettings
from kgen.infotext import INFOTEXT_KEY, INFOTEXT_PROMPT, INFOTEXT_VARIANT, control_value, read_settings
from kgen.rewriter import (
    BackendConfig,
    LoaderBackends,
    Rewrite,
    Rewriter,
    Variant,
    VariantRecord,
    derive_seed,
    device_for,
    follow_hires,
    rewrite_each,
    rewrite_images,
    source_of,
)
from kgen.settings import SEED_MAX, TipoSettings
from kgen.variants import variant_sampler

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "<lora:style:0.7>, 1girl, (smile:1.2), [dog:cat:0.5] BREAK sunset"
SETTINGS = TipoSettings(enabled=True, seed=7, tag_length="very short", nl_length="very short")


def seeded_completion(prompt: str, seed: int) -> str:
    if prompt.rsplit("\n", 1)[-1].startswith("tag:"):
        return f", long hair, hat{seed % 997}, scarf{seed % 991}"
    return f" A girl wearing hat number {seed % 997}."


class Fixed:
    def __init__(self, backend):
        self.backend = backend

    @contextmanager
    def session(self, settings):
        yield self.backend, None


def rewriter_with(completions=seeded_completion, **options):
    replay = ReplayBackend(completions)
    return Rewriter(Fixed(replay), **options), replay


def test_import_is_pure_python():
    code = (
        "import sys, kgen.rewriter, kgen.infotext, kgen.variants; "
        "bad = [m for m in ('torch', 'transformers', 'gradio', 'modules') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------------ rules


def test_derive_seed_adds_and_wraps():
    assert derive_seed(7, 100) == 107
    assert derive_seed(SEED_MAX - 1, 3) == 2
    assert 0 <= derive_seed(5, 4294967293) < SEED_MAX


def test_source_of_maps_only_the_pasted_result_back():
    pasted = TipoSettings(source_prompt="1girl", source_result="1girl, smile, hat")
    assert source_of("1girl, smile, hat", pasted) == "1girl"
    assert source_of("1boy", pasted) == "1boy"
    assert source_of("1girl, smile, hat", TipoSettings()) == "1girl, smile, hat"


def test_hires_prompts_follow_the_reference_rule():
    originals, finals = ["a", "b"], ["a+", "b+"]
    assert follow_hires(["x", "y"], originals, finals, hr_follows_main=True) == finals
    assert follow_hires(["a", "other"], originals, finals, hr_follows_main=False) == ["a+", "other"]


def test_resolve_device():
    assert device_for("cpu", "cuda") == "cpu"
    assert device_for("auto", "cuda") == "cuda"
    assert device_for("auto", "") == "auto"


@pytest.mark.parametrize(
    "text",
    ["", "3 of 3 (base seed 1)", "1 of 99999 (base seed 1)", f"0 of 2 (base seed {SEED_MAX})", "x", None, 3],
)
def test_variant_record_rejects_what_it_did_not_write(text):
    assert VariantRecord.parse(text) is None


def test_variant_record_round_trip():
    record = VariantRecord(2, 8, 100)
    assert VariantRecord.parse(str(record)) == record
    assert "," not in str(record)  # infotext values with commas get quoted
    assert VariantRecord.of(Variant(2, 8, derive_seed(7, 100)), tipo_seed=7) == record


# ------------------------------------------------------------------------------------------------ engine


def test_rewrite_keeps_prompt_syntax_and_caches_per_key():
    rewriter, replay = rewriter_with()
    first = rewriter.rewrite(PROMPT, SETTINGS, 5, 1.0)
    assert first.prompt.startswith("<lora:style:0.7>, ") and "(smile:1.2)" in first.prompt
    assert "[dog:cat:0.5]" in first.prompt and first.prompt.endswith("BREAK sunset")
    assert "hat5" in first.prompt and first.tokens > 0 and not first.cached
    calls = len(replay.inputs)
    assert rewriter.rewrite(PROMPT, SETTINGS, 5, 1.04) == Rewrite(first.prompt, cached=True)  # ratio ~1.0
    assert rewriter.rewrite(first.prompt, SETTINGS, 9, 1.0).prompt == first.prompt  # our own output
    assert len(replay.inputs) == calls and rewriter.generations == 1
    assert rewriter.rewrite(PROMPT, SETTINGS, 6, 1.0).prompt != first.prompt  # another seed
    assert rewriter.generations == 2


def test_settings_that_do_not_change_the_prompt_share_the_cache():
    rewriter, _ = rewriter_with()
    rewriter.rewrite(PROMPT, SETTINGS, 5, 1.0)
    same = replace(SETTINGS, timing="before", device="cpu", per_image=False)
    assert rewriter.rewrite(PROMPT, same, 5, 1.0).cached
    other = replace(SETTINGS, temperature=0.9)
    assert not rewriter.rewrite(PROMPT, other, 5, 1.0).cached


def test_variants_are_one_pass_with_the_first_input_sent_once_as_a_batch():
    rewriter, replay = rewriter_with()
    variants = rewriter.rewrite_variants(PROMPT, SETTINGS, 50, 1.0, 4)
    first = replay.calls[0]
    assert [item.seed for item in first] == [50, 51, 52, 53] and len({item.prompt for item in first}) == 1
    assert sum(item.prompt == first[0].prompt for item in replay.inputs) == 4
    assert len({v.prompt for v in variants}) == 4 and [v.variant for v in variants] == [
        Variant(i, 4, 50) for i in range(4)
    ]
    calls = len(replay.inputs)
    again = rewriter.rewrite_variants(PROMPT, SETTINGS, 50, 1.0, 4)
    assert [v.prompt for v in again] == [v.prompt for v in variants] and all(v.cached for v in again)
    assert rewriter.rewrite(variants[2].prompt, SETTINGS, 1, 1.0).variant == Variant(2, 4, 50)
    assert len(replay.inputs) == calls and rewriter.variant_passes == 1
    same = rewriter.rewrite_variants(variants[1].prompt, SETTINGS, 50, 1.0, 2)  # our own output again
    assert [v.prompt for v in same] == [variants[1].prompt] * 2 and len(replay.inputs) == calls


def test_variant_sampler_is_asked_once_for_n_completions():
    asked = []

    def sampler_for(backend):
        def sample(prompt, n, settings, seed):
            asked.append((prompt, n, seed))
            return [Completion(f", hat{i}, scarf{i}", 3, 6) for i in range(n)]

        return sample

    rewriter, _ = rewriter_with(sampler_for=sampler_for)
    variants = rewriter.rewrite_variants("1girl", SETTINGS, 50, 1.0, 3)
    assert len(asked) == 1 and asked[0][1:] == (3, 50) and asked[0][0].endswith("tag: 1girl")
    assert [("hat0" in v.prompt, "hat1" in v.prompt, "hat2" in v.prompt) for v in variants] == [
        (True, False, False),
        (False, True, False),
        (False, False, True),
    ]


# ------------------------------------------------------------------------------------------------ jobs


def test_images_sharing_a_prompt_get_one_variants_pass():
    rewriter, _ = rewriter_with()
    job = rewrite_images(rewriter, SETTINGS, [PROMPT] * 3, [100, 101, 102], 7, 1.0)
    assert len(set(job.prompts)) == 3 and rewriter.variant_passes == 1 and job.warning is None
    assert job.variant_notes(7) == {
        prompt: f"{i} of 3 (base seed 100)" for i, prompt in enumerate(job.prompts)
    }


def test_differing_prompts_are_rewritten_one_by_one_with_their_seeds():
    rewriter, replay = rewriter_with()
    job = rewrite_images(rewriter, SETTINGS, ["1girl, red hair", "1boy"], [100, 101], 7, 1.0)
    assert rewriter.variant_passes == 0 and replay.calls[0][0].seed == 107 and job.variant_notes(7) == {}
    assert "red hair" in job.prompts[0] and "1boy" in job.prompts[1] and "red hair" not in job.prompts[1]


def test_per_image_off_uses_the_first_seed_for_all():
    rewriter, _ = rewriter_with()
    settings = replace(SETTINGS, per_image=False)
    job = rewrite_images(rewriter, settings, [PROMPT] * 3, [100, 101, 102], 7, 1.0)
    assert len(set(job.prompts)) == 1 and rewriter.generations == 1


def test_a_pasted_variant_record_reproduces_that_image_alone():
    rewriter, _ = rewriter_with()
    batch = rewrite_images(rewriter, SETTINGS, [PROMPT] * 4, [100, 101, 102, 103], 7, 1.5)
    record = batch.variant_notes(7)[batch.prompts[2]]
    pasted = replace(SETTINGS, source_prompt=PROMPT, source_result=batch.prompts[2], source_variant=record)
    fresh, replay = rewriter_with()
    for prompt in (PROMPT, batch.prompts[2]):  # the UI restores the original, the API keeps the result
        alone = rewrite_images(fresh, pasted, [prompt], [102], 7, 1.5)
        assert alone.prompts == [batch.prompts[2]] and alone.variant_notes(7) == {batch.prompts[2]: record}
    assert fresh.variant_passes == 1 and len(replay.calls[0]) == 4
    changed = rewrite_images(fresh, pasted, ["1boy"], [102], 7, 1.5)  # a new prompt: the record is moot
    assert changed.variant_notes(7) == {} and fresh.variant_passes == 1


def test_failures_keep_the_prompts_and_say_why():
    def failing(backend):
        def sample(prompt, n, settings, seed):
            raise RuntimeError("tree exploded")

        return sample

    rewriter, _ = rewriter_with(sampler_for=failing)
    job = rewrite_images(rewriter, SETTINGS, [PROMPT] * 2, [1, 2], 7, 1.0)
    assert job.prompts == [PROMPT] * 2
    assert job.warning == "prompt left unchanged for 2 of 2 image(s): RuntimeError: tree exploded"
    broken, _ = rewriter_with(completions=[])  # runs out: ReplayExhausted
    job = rewrite_each(broken, SETTINGS, ["1girl", "1boy"], [1, 2], 1.0)
    assert job.prompts == ["1girl", "1boy"] and job.warning.startswith("prompt left unchanged for 2 of 2")


# ------------------------------------------------------------------------------------------------ samplers


def test_variant_sampler_samples_independently_without_a_transformers_model():
    replay = ReplayBackend(seeded_completion)
    completions = variant_sampler(replay)("tag: 1girl", 3, SamplingSettings(), 40)
    assert len(completions) == 3 and len(replay.calls) == 1 and replay.seeds == [40, 41, 42]


def test_variant_sampler_grows_a_tgts_tree_on_a_transformers_backend_even_when_managed(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    import kgen.engine.tgts
    from kgen.models import loader
    from kgen.models.registry import MODELS

    seen = []

    class Result:
        def completions(self):
            return ["done"]

    def fake_tree(backend, prompt, n, settings, seed, policy):
        seen.append((backend, n, seed, policy))
        return Result()

    monkeypatch.setattr(kgen.engine.tgts, "sample_variants", fake_tree)

    class HFLike(ReplayBackend):
        runner = object()
        tokenizer = object()

    model = HFLike(seeded_completion)
    built = LoaderBackends(
        lambda: BackendConfig(tmp_path, offline=True),
        builder=lambda ref, store, options: loader.LoadedModel(model, ref, "cpu"),
    )
    with built.session(TipoSettings(model=MODELS[0].name)) as (backend, spec):
        assert isinstance(backend, loader.ManagedBackend) and spec == MODELS[0]
        assert variant_sampler(backend, "greedy")("p", 2, SamplingSettings(), 9) == ["done"]
    assert seen == [(model, 2, 9, "greedy")]


# ------------------------------------------------------------------------------------------------ infotext


def test_read_settings_drops_bad_values_alone_and_checks_the_model():
    def resolve(name):
        if name != "KBlueLeaf/TIPO-200M":
            raise ValueError(f"unknown model {name!r}")
        return name

    raw = json.dumps({"v": 1, "model": "../evil", "ban_tags": "(bad", "seed": 5, "top_k": 40})
    values, warnings = read_settings(raw, resolve)
    assert dict(values) == {"enabled": True, "seed": 5, "top_k": 40}
    assert any("(bad" in w for w in warnings) and any("../evil" in w for w in warnings)
    good, _ = read_settings(json.dumps({"v": 1, "model": "KBlueLeaf/TIPO-200M", "seed": 5}), resolve)
    assert dict(good)["model"] == "KBlueLeaf/TIPO-200M"
    assert read_settings("{nope", resolve)[0] == ()


def test_control_values_from_a_pasted_infotext():
    params = {
        "Prompt": "final",
        INFOTEXT_KEY: "{}",
        INFOTEXT_PROMPT: "original",
        INFOTEXT_VARIANT: "1 of 2 (base seed 3)",
    }
    pasted = {"enabled": True, "seed": 5}
    assert control_value("seed", params, pasted) == 5
    assert control_value("source_prompt", params, pasted) == "original"
    assert control_value("source_result", params, pasted) == "final"
    assert control_value("source_variant", params, pasted) == "1 of 2 (base seed 3)"
    assert control_value("source_variant", {INFOTEXT_KEY: "{}"}, pasted) == ""
    assert control_value("temperature", params, pasted) is None  # left as it is
    # an infotext without TIPO: TIPO off, earlier pasted values forgotten, the rest untouched
    assert [control_value(n, {}, None) for n in ("enabled", "source_variant", "seed")] == [False, "", None]


@pytest.mark.parametrize("precision, dtype", [("auto", None), ("int8", "int8")])
def test_cpu_precision_setting_reaches_the_load_options(tmp_path, precision, dtype):
    from kgen.models import loader
    from kgen.models.registry import MODELS

    seen = []

    def builder(ref, store, options):
        seen.append(options)
        return loader.LoadedModel(ReplayBackend(seeded_completion), ref, "cpu")

    built = LoaderBackends(
        lambda: BackendConfig(tmp_path, offline=True, cpu_precision=precision), builder=builder
    )
    with built.session(TipoSettings(model=MODELS[0].name, device="cpu")):
        pass
    assert [options.dtype for options in seen] == [dtype]

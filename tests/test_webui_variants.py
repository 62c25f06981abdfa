""" "Different prompt per image" in the WebUI: one variants pass per job, run against tests/webui_stub with a
scripted backend (the same code path as TGTS on a transformers model, with independent samples)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from webui_harness import FixedBackends, build_fields, load_script_module

tipo = load_script_module()

from modules.infotext_utils import api_script_args, paste  # noqa: E402
from modules.processing import StableDiffusionProcessingTxt2Img, process_images  # noqa: E402
from modules.scripts import ScriptRunner  # noqa: E402

from kgen.engine.replay import ReplayBackend  # noqa: E402

pytest.importorskip("kgen.protocol.formats")

Settings = tipo.TipoSettings
PROMPT = "<lora:style:0.7>, 1girl, (smile:1.2)"


def seeded_completion(prompt: str, seed: int) -> str:
    """A completion that differs per seed, so distinct seeds give distinct prompts."""
    if prompt.rsplit("\n", 1)[-1].startswith("tag:"):
        return f", long hair, hat{seed % 997}, scarf{seed % 991}"
    return f" A girl wearing hat number {seed % 997}."


def engine_with(monkeypatch, backend, **options):
    engine = tipo.Engine(FixedBackends(backend), **options)
    monkeypatch.setattr(tipo, "engine", lambda: engine)
    return engine


def script_args(settings):
    return [0, *(settings.to_positional() if isinstance(settings, Settings) else settings)]


def job(settings, **fields):
    runner = ScriptRunner()
    runner.initialize_scripts([tipo.TipoScript], False)
    script = runner.alwayson_scripts[0]
    script.args_from, script.args_to = 1, 1 + len(Settings.names())
    fields.setdefault("prompt", PROMPT)
    fields.setdefault("seed", 100)
    p = StableDiffusionProcessingTxt2Img(**fields)
    p.scripts = runner
    p.script_args = script_args(settings)
    return p


SETTINGS = Settings(enabled=True, seed=7, tag_length="very short", nl_length="very short", no_formatting=True)


def test_a_batch_sharing_one_prompt_is_one_variants_pass(monkeypatch):
    replay = ReplayBackend(seeded_completion)
    engine = engine_with(monkeypatch, replay)
    processed = process_images(job(SETTINGS, batch_size=2, n_iter=2))
    first = replay.calls[0]
    assert len(first) == 4 and len({item.prompt for item in first}) == 1  # the first input, once, as a batch
    assert sum(item.prompt == first[0].prompt for item in replay.inputs) == 4
    assert engine.variant_passes == 1 and engine.generations == 4
    assert len(set(processed.all_prompts)) == 4
    assert all(prompt.startswith("<lora:style:0.7>, 1girl, (smile:1.2)") for prompt in processed.all_prompts)
    for index, text in enumerate(processed.infotexts):
        assert f"TIPO variant: {index} of 4 (base seed 100)" in text


def test_variant_i_is_what_a_one_image_job_with_image_i_seed_gets_with_independent_sampling(monkeypatch):
    engine_with(monkeypatch, ReplayBackend(seeded_completion))
    batch = process_images(job(SETTINGS, batch_size=3)).all_prompts
    engine_with(monkeypatch, ReplayBackend(seeded_completion))
    singles = [process_images(job(SETTINGS, seed=100 + i)).all_prompts[0] for i in range(3)]
    assert batch == singles


def test_second_process_keeps_prompts_and_variant_records(monkeypatch):
    replay = ReplayBackend(seeded_completion)
    engine_with(monkeypatch, replay)
    p = job(SETTINGS, batch_size=3)
    first = process_images(p)
    calls = len(replay.inputs)
    p.scripts.process(p)  # another extension runs processing again on the rewritten prompts
    assert p.all_prompts == first.all_prompts and len(replay.inputs) == calls
    p.all_prompts = [PROMPT] * 3  # ... or on the originals
    p.scripts.process(p)
    assert p.all_prompts == first.all_prompts and len(replay.inputs) == calls
    note = p.extra_generation_params[tipo.INFOTEXT_VARIANT]
    assert note(prompt_text=first.all_prompts[2]) == "2 of 3 (base seed 100)"


def pasted_args(infotext: str) -> list:
    """The script args after pasting ``infotext`` in the UI (the controls start at their defaults)."""
    runner = ScriptRunner()
    runner.initialize_scripts([tipo.TipoScript], False)
    script = runner.alwayson_scripts[0]

    controls = build_fields(script)
    values = paste(infotext, script.infotext_fields)
    api = api_script_args(infotext, script.infotext_fields, controls)
    assert [api.get(i) for i in range(len(controls))] == values  # the API restores the same
    return [c.value if v is None else v for c, v in zip(controls, values, strict=True)]


@pytest.mark.parametrize("index", [0, 2])
@pytest.mark.parametrize("prompt_from", ["ui", "api"])
def test_pasting_one_image_and_generating_it_alone_reproduces_its_prompt(monkeypatch, index, prompt_from):
    engine_with(monkeypatch, ReplayBackend(seeded_completion))
    batch = process_images(job(SETTINGS, batch_size=2, n_iter=2, width=768, height=512))
    args = pasted_args(batch.infotexts[index])
    pasted = dict(zip(Settings.names(), args, strict=True))
    assert pasted["source_variant"] == f"{index} of 4 (base seed 100)"
    # The UI puts the user's prompt in the prompt box; the API keeps the infotext's (rewritten) prompt.
    prompt = PROMPT if prompt_from == "ui" else batch.all_prompts[index]
    replay = ReplayBackend(seeded_completion)
    engine = engine_with(monkeypatch, replay)  # a fresh engine: nothing cached
    again = process_images(job(args, prompt=prompt, seed=batch.all_seeds[index], width=768, height=512))
    assert again.all_prompts == [batch.all_prompts[index]]
    assert engine.variant_passes == 1 and len(replay.calls[0]) == 4
    assert f"TIPO variant: {index} of 4 (base seed 100)" in again.infotexts[0]
    # the other images of the pass are cached: making them alone costs nothing more
    calls = len(replay.inputs)
    other = dict(pasted, source_variant=f"{3 - index} of 4 (base seed 100)")
    alone = process_images(
        job(list(other.values()), prompt=PROMPT, seed=batch.all_seeds[3 - index], width=768, height=512)
    )
    assert alone.all_prompts[0] == batch.all_prompts[3 - index] and len(replay.inputs) == calls


def test_changing_the_prompt_after_pasting_drops_the_variant(monkeypatch):
    engine_with(monkeypatch, ReplayBackend(seeded_completion))
    batch = process_images(job(SETTINGS, batch_size=2))
    args = pasted_args(batch.infotexts[1])
    engine = engine_with(monkeypatch, ReplayBackend(seeded_completion))
    again = process_images(job(args, prompt="1boy, (grin:1.1)", seed=batch.all_seeds[1]))
    assert engine.variant_passes == 0 and again.all_prompts[0].startswith("1boy, (grin:1.1)")
    assert "TIPO variant" not in again.infotexts[0]


def test_different_prompts_per_image_get_one_pipeline_each(monkeypatch):
    replay = ReplayBackend(seeded_completion)
    engine = engine_with(monkeypatch, replay)
    prompts = ["1girl, red hair", "1girl, blue hair", "1girl, red hair"]  # e.g. after wildcards
    processed = process_images(job(SETTINGS, prompt=prompts))
    assert engine.variant_passes == 0 and engine.generations == 3
    assert all(len(call) == 1 for call in replay.calls)
    assert [p.split(",")[1].strip() for p in processed.all_prompts] == ["red hair", "blue hair", "red hair"]
    assert processed.all_prompts[0] != processed.all_prompts[2]  # each image its own seed
    assert "TIPO variant" not in processed.infotexts[0]


def test_per_image_off_gives_the_batch_one_prompt(monkeypatch):
    replay = ReplayBackend(seeded_completion)
    engine = engine_with(monkeypatch, replay)
    processed = process_images(job(replace(SETTINGS, per_image=False), batch_size=3))
    assert len(set(processed.all_prompts)) == 1 and engine.variant_passes == 0 and engine.generations == 1


def test_a_failing_sampler_leaves_the_prompts_and_warns(monkeypatch):
    def failing(backend):
        def sample(prompt, n, settings, seed):
            raise RuntimeError("tree exploded")

        return sample

    replay = ReplayBackend(seeded_completion)
    engine_with(monkeypatch, replay, sampler_for=failing)
    p = job(SETTINGS, batch_size=3)
    processed = process_images(p)
    assert processed.all_prompts == [PROMPT] * 3
    error = p.extra_generation_params[tipo.INFOTEXT_ERROR]
    assert "prompt left unchanged for 3 of 3" in error and "tree exploded" in error
    assert any("TIPO:" in comment for comment in p.comments)
    assert "TIPO variant" not in processed.infotexts[0]

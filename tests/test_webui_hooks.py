"""The WebUI script's processing hooks, infotext and API args, run against tests/webui_stub."""

from __future__ import annotations

import json

import pytest
from webui_harness import FixedBackends, build_fields, load_script_module

tipo = load_script_module()

from modules import errors, processing  # noqa: E402  (the stub is on sys.path once the script is loaded)
from modules.infotext_utils import api_script_args, paste  # noqa: E402
from modules.processing import (  # noqa: E402
    StableDiffusionProcessingImg2Img,
    StableDiffusionProcessingTxt2Img,
    process_images,
)
from modules.scripts import ScriptRunner  # noqa: E402

from kgen.engine.replay import ReplayBackend  # noqa: E402

Settings = tipo.TipoSettings


class MarkingEngine(tipo.Engine):
    """Hook plumbing without a model: the rewrite appends a marker naming the seed it got."""

    def _generate(self, prompt, settings, seed, aspect_ratio):
        return f"{prompt}, tipo {seed} ar{aspect_ratio:.1f}", 3

    def _generate_variants(self, prompt, settings, seed, aspect_ratio, n):
        return [self._generate(prompt, settings, seed + i, aspect_ratio) for i in range(n)]


class FailingBackend(ReplayBackend):
    def generate(self, prompts, settings, seeds):
        raise RuntimeError("model exploded")


@pytest.fixture
def engine(monkeypatch):
    engine = MarkingEngine(backends=FixedBackends(None))
    monkeypatch.setattr(tipo, "engine", lambda: engine)
    return engine


def runner_with_script(is_img2img=False):
    runner = ScriptRunner()
    runner.initialize_scripts([tipo.TipoScript], is_img2img)
    script = runner.alwayson_scripts[0]
    script.args_from, script.args_to = 1, 1 + len(Settings.names())
    return runner, script


def job(settings: Settings | dict | list, cls=StableDiffusionProcessingTxt2Img, **fields):
    runner, _ = runner_with_script(cls is StableDiffusionProcessingImg2Img)
    if isinstance(settings, Settings):
        args = settings.to_positional()
    elif isinstance(settings, dict):
        args = [settings, *Settings().to_positional()[1:]]  # the API keeps the UI defaults after it
    else:
        args = settings
    fields.setdefault("prompt", "1girl, <lora:x:0.8>, (smile:1.2)")
    fields.setdefault("negative_prompt", "lowres")
    fields.setdefault("seed", 100)
    p = cls(**fields)
    p.scripts = runner
    p.script_args = [0, *args]
    return p


def test_off_leaves_everything():
    p = job(Settings(enabled=False), batch_size=2)
    processed = process_images(p)
    assert processed.all_prompts == ["1girl, <lora:x:0.8>, (smile:1.2)"] * 2
    assert tipo.INFOTEXT_KEY not in p.extra_generation_params


@pytest.mark.parametrize(("batch_size", "n_iter"), [(1, 1), (2, 1), (1, 3), (2, 2)])
def test_after_rewrites_every_image_with_its_seed(engine, batch_size, n_iter):
    p = job(Settings(enabled=True, seed=7), batch_size=batch_size, n_iter=n_iter, width=768, height=512)
    processed = process_images(p)
    count = batch_size * n_iter
    assert processed.all_seeds == [100 + i for i in range(count)]
    assert processed.all_prompts == [
        f"1girl, <lora:x:0.8>, (smile:1.2), tipo {7 + 100 + i} ar1.5" for i in range(count)
    ]
    assert p.all_negative_prompts == ["lowres"] * count  # the negative prompt is untouched
    assert p.main_prompt == processed.all_prompts[0]
    infotext = processed.infotexts[0]
    assert infotext.startswith(processed.all_prompts[0] + "\nNegative prompt: lowres\n")
    assert 'TIPO prompt: "1girl, <lora:x:0.8>, (smile:1.2)"' in infotext


def test_same_prompt_for_the_batch_when_per_image_is_off(engine):
    processed = process_images(job(Settings(enabled=True, seed=7, per_image=False), batch_size=3))
    assert len(set(processed.all_prompts)) == 1
    assert engine.generations == 1


def test_before_rewrites_prompt_once_before_styles(engine):
    processing.style_table["pretty"] = ("{prompt}, masterpiece", "")
    p = job(Settings(enabled=True, timing="before", seed=5), batch_size=2, styles=["pretty"])
    processed = process_images(p)
    rewritten = "1girl, <lora:x:0.8>, (smile:1.2), tipo 105 ar1.0"
    assert p.prompt == rewritten
    assert processed.all_prompts == [f"{rewritten}, masterpiece"] * 2  # styles applied after TIPO
    assert engine.generations == 1
    assert "TIPO prompt" in p.extra_generation_params


def test_before_fixes_a_random_image_seed_so_the_infotext_reproduces(engine):
    p = job(Settings(enabled=True, timing="before", seed=5), seed=-1)
    processed = process_images(p)
    assert processed.all_seeds[0] == p.seed != -1
    assert processed.all_prompts[0].endswith(f"tipo {(5 + p.seed) % tipo.SEED_MAX} ar1.0")


@pytest.mark.parametrize("hr_prompt", ["", "1girl, <lora:x:0.8>, (smile:1.2)", "different, detailed"])
def test_after_hires_prompts_follow_the_reference_rule(engine, hr_prompt):
    p = job(Settings(enabled=True, seed=1), batch_size=2, enable_hr=True, hr_prompt=hr_prompt)
    processed = process_images(p)
    if hr_prompt == "different, detailed":
        assert p.all_hr_prompts == ["different, detailed"] * 2
        assert "Hires prompt: " in processed.infotexts[0]
    else:
        assert p.all_hr_prompts == p.all_prompts
        assert "Hires prompt" not in processed.infotexts[0]


def test_hires_off_keeps_hr_prompts_unset(engine):
    p = job(Settings(enabled=True), enable_hr=False)
    process_images(p)
    assert p.all_hr_prompts is None


@pytest.mark.parametrize("timing", ["before", "after"])
def test_img2img(engine, timing):
    p = job(Settings(enabled=True, timing=timing, seed=3), cls=StableDiffusionProcessingImg2Img, batch_size=2)
    processed = process_images(p)
    assert all("tipo" in prompt for prompt in processed.all_prompts)
    assert json.loads(p.extra_generation_params[tipo.INFOTEXT_KEY]).get("timing", "after") == timing


def test_second_process_on_the_same_job_regenerates_nothing(engine):
    p = job(Settings(enabled=True, seed=9), batch_size=2)
    process_images(p)
    first = list(p.all_prompts)
    assert engine.generations == 2
    p.scripts.process(p)  # another extension runs processing again
    assert p.all_prompts == first
    assert engine.generations == 2
    p.all_prompts = ["1girl, <lora:x:0.8>, (smile:1.2)"] * 2  # ... or restores the originals first
    p.scripts.process(p)
    assert p.all_prompts == first
    assert engine.generations == 2


def test_random_tipo_seed_is_drawn_once_per_job_and_recorded(engine):
    p = job(Settings(enabled=True, seed=-1), batch_size=2)
    process_images(p)
    recorded = json.loads(p.extra_generation_params[tipo.INFOTEXT_KEY])["seed"]
    assert recorded == p.tipo_seed >= 0
    assert p.all_prompts[1].endswith(f"tipo {(recorded + 101) % tipo.SEED_MAX} ar1.0")


def test_api_dict_args(engine):
    p = job({"enabled": True, "seed": 7, "timing": "after", "tag_length": "very short"})
    processed = process_images(p)
    assert processed.all_prompts[0].endswith("tipo 107 ar1.0")
    assert json.loads(p.extra_generation_params[tipo.INFOTEXT_KEY])["tag_length"] == "very short"
    js = processed.js()  # what the API returns as "info"
    assert js["all_prompts"] == processed.all_prompts and tipo.INFOTEXT_TIME in js["extra_generation_params"]


def test_api_dict_args_enabled_false_or_missing_is_off(engine):
    for args in ({"enabled": False, "seed": 7}, {"seed": 7}):
        processed = process_images(job(args))
        assert processed.all_prompts == ["1girl, <lora:x:0.8>, (smile:1.2)"]


def test_bad_api_value_warns_and_keeps_prompt(engine):
    errors.reported.clear()
    p = job({"enabled": True, "ban_tags": "(unclosed"})
    processed = process_images(p)
    assert processed.all_prompts == ["1girl, <lora:x:0.8>, (smile:1.2)"]
    # before_process and process both see the bad value: the warning is written once.
    assert p.extra_generation_params[tipo.INFOTEXT_ERROR].count("(unclosed") == 1
    assert "TIPO error" in processed.infotexts[0]


def test_named_api_args_take_the_settings_page_defaults(engine, monkeypatch):
    from modules import shared

    monkeypatch.setitem(shared.opts.data, "tipo_default_tag_length", "very short")
    monkeypatch.setitem(shared.opts.data, "tipo_default_temperature", 0.9)
    monkeypatch.setitem(shared.opts.data, "tipo_default_top_k", "not a number")  # left out, with a warning
    p = job({"enabled": True, "seed": 3})
    process_images(p)
    written = json.loads(p.extra_generation_params[tipo.INFOTEXT_KEY])
    assert written["tag_length"] == "very short" and written["temperature"] == 0.9
    assert "top_k" not in written  # the default, 80


def test_settings_page_defaults_valid_only_together_are_kept(monkeypatch):
    from modules import shared

    monkeypatch.setitem(shared.opts.data, "tipo_default_format", "custom")
    monkeypatch.setitem(shared.opts.data, "tipo_default_template", "<|general|>")
    monkeypatch.setitem(shared.opts.data, "tipo_default_top_k", "not a number")
    defaults = tipo.configured_defaults()
    assert (defaults.format, defaults.template, defaults.top_k) == ("custom", "<|general|>", 80)


def test_failing_backend_keeps_prompt_warns_and_still_makes_the_image(monkeypatch):
    engine = tipo.Engine(backends=FixedBackends(FailingBackend([])))
    monkeypatch.setattr(tipo, "engine", lambda: engine)
    p = job(Settings(enabled=True, seed=1), batch_size=2)
    processed = process_images(p)
    assert processed.all_prompts == ["1girl, <lora:x:0.8>, (smile:1.2)"] * 2
    assert "prompt left unchanged for 2 of 2" in p.extra_generation_params[tipo.INFOTEXT_ERROR]
    assert any("TIPO:" in comment for comment in p.comments)


# ------------------------------------------------------------------------------------------------ infotext


def test_infotext_round_trip_restores_every_control(engine):
    chosen = Settings(
        enabled=True,
        timing="before",
        model="KBlueLeaf/TIPO-200M",
        tag_length="short",
        nl_length="very long",
        ban_tags="hat, .*text",
        format="custom",
        template="<|general|>, <|extended|>",
        seed=1234,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        device="cpu",
        no_formatting=True,
        per_image=False,
        tag_prompt="1girl, solo",
        nl_prompt="A (girl:1.2) in a park.",
    )
    p = job(chosen)
    processed = process_images(p)
    _, script = runner_with_script()
    controls = build_fields(script)
    values = paste(processed.infotexts[0], script.infotext_fields)
    restored = dict(zip(Settings.names(), values, strict=True))
    for name in Settings.names():
        if name in ("source_prompt", "source_result"):
            continue
        assert restored[name] == getattr(chosen, name), name
    assert restored["source_prompt"] == "1girl, <lora:x:0.8>, (smile:1.2)"
    assert restored["source_result"] == processed.all_prompts[0]
    # the API path (no infotext callbacks, values cast to the component value's type) gives the same
    api_values = api_script_args(processed.infotexts[0], script.infotext_fields, controls)
    assert [api_values[i] for i in range(len(controls))] == values


def test_api_infotext_reproduction_starts_from_the_original_prompt(engine):
    p = job(Settings(enabled=True, seed=11))
    first = process_images(p)
    _, script = runner_with_script()
    controls = build_fields(script)
    api_values = api_script_args(first.infotexts[0], script.infotext_fields, controls)
    args = [api_values.get(i, c.value) for i, c in enumerate(controls)]
    again = job(args, prompt=first.all_prompts[0])  # the API put the infotext's (rewritten) prompt in
    second = process_images(again)
    assert second.all_prompts == first.all_prompts


def test_pasted_unknown_model_and_bad_regex_are_ignored_with_a_warning(engine):
    errors.reported.clear()
    text = (
        'x\nSteps: 20, Seed: 1, Size: 512x512, TIPO Parameters: "{\\"v\\":1,\\"model\\":\\"../../evil\\",'
        '\\"ban_tags\\":\\"(bad\\",\\"seed\\":5}"'
    )
    _, script = runner_with_script()
    build_fields(script)
    values = dict(zip(Settings.names(), paste(text, script.infotext_fields), strict=True))
    assert values["model"] is None and values["ban_tags"] is None  # left as they were
    assert values["seed"] == 5 and values["enabled"] is True


def test_reference_extension_infotext_is_understood(engine):
    reference = {
        "seed": 3,
        "timing": "BEFORE",
        "tag_length": "short",
        "nl_length": "long",
        "ban_tags": "",
        "format_selected": "Both, tag first (recommend)",
        "format": "<|general|>",
        "temperature": 0.6,
        "top_p": 0.9,
        "top_k": 50,
        "model": "KBlueLeaf/TIPO-500M-ft",
        "gguf_cpu": True,
        "no_formatting": False,
    }
    values, _ = tipo.pasted_settings(json.dumps(reference))
    values = dict(values)
    assert values["timing"] == "before" and values["seed"] == 3 and values["device"] == "cpu"
    assert values["temperature"] == 0.6 and values["model"] == "KBlueLeaf/TIPO-500M-ft"


# ------------------------------------------------------------------------------------------------ real
# pipeline


def test_real_pipeline_with_replay_backend_keeps_syntax_and_caches(monkeypatch):
    pytest.importorskip("kgen.protocol.formats", reason="kgen.protocol.formats (H-tags) not written yet")
    replay = ReplayBackend(
        lambda prompt, seed: "tag: long hair, blue sky, 1girl, smile", when_exhausted="repeat_last"
    )
    engine = tipo.Engine(backends=FixedBackends(replay))
    monkeypatch.setattr(tipo, "engine", lambda: engine)
    prompt = "<lora:style:0.7>, 1girl, (smile:1.2), [dog:cat:0.5] BREAK sunset"
    for no_formatting in (True, False):
        p = job(
            Settings(enabled=True, seed=1, no_formatting=no_formatting, tag_length="very short"),
            prompt=prompt,
        )
        processed = process_images(p)
        final = processed.all_prompts[0]
        assert final.startswith("<lora:style:0.7>, ")
        assert "(smile:1.2)" in final and "[dog:cat:0.5]" in final and final.endswith("BREAK sunset")
        assert "long hair" in final
    calls = len(replay.inputs)
    p = job(Settings(enabled=True, seed=1, no_formatting=True, tag_length="very short"), prompt=prompt)
    process_images(p)
    assert len(replay.inputs) == calls  # cached: nothing generated


def test_a_pasted_model_is_looked_up_in_the_models_folder_configured_now(engine, monkeypatch, tmp_path):
    from modules import shared

    with_model, empty = tmp_path / "with-model", tmp_path / "empty"
    with_model.mkdir()
    empty.mkdir()
    (with_model / "mine.gguf").write_bytes(b"GGUF" + bytes(60))
    raw = json.dumps({"v": 1, "model": "mine.gguf", "seed": 2})
    monkeypatch.setitem(shared.opts.data, "tipo_models_dir", str(with_model))
    assert dict(tipo.pasted_settings(raw)[0])["model"] == "mine.gguf"
    monkeypatch.setitem(shared.opts.data, "tipo_models_dir", str(empty))
    values, warnings = tipo.pasted_settings(raw)  # the same text: not the first folder's cached answer
    assert "model" not in dict(values) and dict(values)["seed"] == 2
    assert any("mine.gguf" in message for message in warnings)


def test_the_format_choices_are_every_preset_and_a_preset_fills_its_template():
    from kgen.protocol.formats import FORMAT_PRESETS

    assert tipo.format_presets() == list(FORMAT_PRESETS) and len(FORMAT_PRESETS) > 1
    for name, template in FORMAT_PRESETS.items():
        assert tipo.preset_template(name) == template
    assert tipo.preset_template("no such preset") == ""

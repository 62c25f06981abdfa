"""The extension inside a real WebUI, through its HTTP API: start-up, txt2img/img2img with named and
positional script args, batches, hires fix, both timings, syntax kept, reproduction from the infotext,
failures that still make the image, and a second processing pass (as ADetailer runs one)."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import real_webui
from conftest import CONFIG, TEST_MODEL

from kgen.settings import TipoSettings

SYNTAX_PROMPT = (
    r"1girl, <lora:detail_tweaker:0.6>, (smile:1.2), [looking back:from side:2], [red|blue] dress, "
    r"\(artist\) style BREAK night sky AND sunset :1.3"
)
# In prompt order. A formatted rewrite may reorder plain tags (the format decides their place); everything
# else keeps its order, and with "no formatting" nothing typed moves at all.
SYNTAX_IN_ORDER = [
    "<lora:detail_tweaker:0.6>",
    "[looking back:from side:2]",
    "[red|blue] dress",
    "BREAK",
    "night sky",
    "AND",
    "sunset :1.3",
]
TAGS_BEFORE_BREAK = ["1girl", "(smile:1.2)", r"\(artist\) style"]
TYPED_IN_ORDER = [
    "1girl",
    "<lora:detail_tweaker:0.6>",
    "(smile:1.2)",
    "[looking back:from side:2]",
    "[red|blue] dress",
    r"\(artist\) style",
    *SYNTAX_IN_ORDER[3:],
]


def tipo(**values) -> dict:
    return {"enabled": True, "model": TEST_MODEL, "seed": 11, **values}


def tipo_parameters(infotext: str) -> dict:
    match = re.search(r'TIPO Parameters: "((?:\\.|[^"\\])*)"', infotext)
    assert match, f"no TIPO Parameters in {infotext!r}"
    return json.loads(json.loads(f'"{match.group(1)}"'))


def assert_kept_in_order(prompt: str, pieces: list[str]) -> None:
    position = 0
    for piece in pieces:
        found = prompt.find(piece, position)
        assert found >= 0, f"{piece!r} missing (or moved) in {prompt!r}"
        position = found + len(piece)


def assert_rewritten(original: str, final: str) -> None:
    assert final != original and len(final) > len(original), (original, final)


def test_startup_log_has_no_extension_errors(webui):
    log = webui.log()
    assert "Startup time:" in log
    assert real_webui.extension_log_problems(log) == []
    status, scripts = webui.request("GET", "/sdapi/v1/scripts")
    assert status == 200
    assert "tipo" in [name.lower() for name in scripts["txt2img"]] + [n.lower() for n in scripts["img2img"]]


@pytest.mark.parametrize("kind", ["txt2img", "img2img"])
@pytest.mark.parametrize("no_formatting", [False, True])
def test_named_dict_args_rewrite_and_keep_every_piece_of_syntax(webui, kind, no_formatting):
    negative = "lowres, (worst quality:1.4), <lora:neg:1>"
    result = webui.generate(
        kind, [tipo(no_formatting=no_formatting)], prompt=SYNTAX_PROMPT, negative_prompt=negative
    )
    final = result.prompts[0]
    assert_rewritten(SYNTAX_PROMPT, final)
    if no_formatting:
        assert_kept_in_order(final, TYPED_IN_ORDER)
    else:
        assert_kept_in_order(final, SYNTAX_IN_ORDER)
        before_break = final.split("BREAK")[0]
        for tag in TAGS_BEFORE_BREAK:
            assert tag in before_break, (tag, final)
    for piece in ("<lora:", "BREAK", " AND ", "[looking back:from side:2]", "[red|blue]", "(smile:1.2)"):
        assert final.count(piece) == 1, (piece, final)
    assert result.info["all_negative_prompts"] == [negative]
    assert result.info["negative_prompt"] == negative
    infotext = result.infotexts[0]
    assert tipo_parameters(infotext)["seed"] == 11
    assert "TIPO prompt: " in infotext and "TIPO time: " in infotext
    assert "TIPO error" not in infotext


def test_positional_list_args(webui):
    settings = TipoSettings(enabled=True, model=TEST_MODEL, seed=3, tag_length="short")
    result = webui.generate("txt2img", settings.to_positional(), prompt="1girl, solo")
    assert_rewritten("1girl, solo", result.prompts[0])
    assert tipo_parameters(result.infotexts[0])["tag_length"] == "short"


def test_off_by_default_and_when_disabled(webui):
    assert webui.generate("txt2img", None, prompt="1girl, solo").prompts == ["1girl, solo"]
    assert webui.generate("txt2img", [{"enabled": False}], prompt="1girl, solo").prompts == ["1girl, solo"]


@pytest.mark.parametrize("per_image", [True, False])
def test_batch_size_times_count(webui, per_image):
    result = webui.generate(
        "txt2img", [tipo(per_image=per_image)], prompt="1girl, solo", batch_size=2, n_iter=2
    )
    prompts = result.prompts
    assert len(prompts) == 4 and len(result.images) == 4
    for prompt in prompts:
        assert_rewritten("1girl, solo", prompt)
        assert prompt.startswith("1girl") or "1girl" in prompt
    if per_image:
        assert len(set(prompts)) > 1, prompts
    else:
        assert len(set(prompts)) == 1, prompts


def test_hires_prompt_follows_the_rewritten_prompt(webui):
    result = webui.generate(
        "txt2img",
        [tipo()],
        prompt="1girl, solo",
        enable_hr=True,
        hr_scale=1.25,
        hr_upscaler="Latent",
        hr_second_pass_steps=1,
        hr_additional_modules=["Use same choices"],  # Forge needs it over the API; others ignore it
        denoising_strength=0.5,
    )
    assert_rewritten("1girl, solo", result.prompts[0])
    # A hires prompt that differs from the prompt is written as "Hires prompt:"; one left at the user's
    # prompt would be.
    assert "Hires prompt" not in result.infotexts[0]


def test_before_timing_rewrites_once_for_the_job(webui):
    result = webui.generate("txt2img", [tipo(timing="before")], prompt="1girl, solo", batch_size=2, seed=-1)
    assert len(set(result.prompts)) == 1
    assert_rewritten("1girl, solo", result.prompts[0])
    assert result.info["prompt"] == result.prompts[0]
    assert tipo_parameters(result.infotexts[0])["timing"] == "before"


def test_reproduction_from_the_infotext_field(webui):
    first = webui.generate("txt2img", [tipo(seed=-1)], prompt="1girl, " + "<lora:x:0.5>, (smile:1.1)")
    infotext = first.infotexts[0]
    again = webui.generate("txt2img", None, infotext=infotext, styles=[], seed=first.info["seed"])
    assert again.prompts == first.prompts
    assert real_webui.png_text(first.images[0])["parameters"] == infotext


def test_second_pass_regenerates_nothing(webui):
    webui.probe_out.unlink(missing_ok=True)
    answer = webui.post(
        "/sdapi/v1/txt2img",
        {
            **real_webui.IMAGE_DEFAULTS,
            "prompt": "1girl, solo",
            "seed": 5,
            "alwayson_scripts": {"TIPO": {"args": [tipo(seed=5)]}, "TIPO probe": {"args": [True]}},
        },
    )
    first_prompt = json.loads(answer["info"])["all_prompts"][0]
    record = json.loads(webui.probe_out.read_text())
    assert record["first_prompt"] == first_prompt
    assert record["second_prompts"] == [first_prompt]
    assert "cached" in record["second_params"].get("TIPO time", ""), record


@pytest.mark.parametrize(
    "bad, message",
    [({"ban_tags": "hat, (unclosed"}, "ban"), ({"model": "no-such-model.gguf"}, "model")],
)
def test_bad_settings_leave_the_prompt_and_still_make_the_image(webui, bad, message):
    result = webui.generate("txt2img", [tipo(**bad)], prompt="1girl, solo")
    assert result.prompts == ["1girl, solo"] and len(result.images) == 1
    error = re.search(r"TIPO error: ([^\n]*)", result.infotexts[0])
    assert error and message in error.group(1).lower(), result.infotexts[0]


def test_named_args_take_the_settings_page_defaults(webui):
    webui.post("/sdapi/v1/options", {"tipo_default_tag_length": "very short"})
    try:
        saved = json.loads((webui.harness.tree / "config.json").read_text(encoding="utf-8"))
        assert saved["tipo_default_tag_length"] == "very short"
        result = webui.generate("txt2img", [tipo()], prompt="1girl, solo")
        assert tipo_parameters(result.infotexts[0])["tag_length"] == "very short"
    finally:
        webui.post("/sdapi/v1/options", {"tipo_default_tag_length": CONFIG["tipo_default_tag_length"]})


def test_install_py_goes_through_the_webuis_own_pip_runner(webui, tmp_path):
    """install.py run in the WebUI's venv with its ``launch`` module importable (as the WebUI runs it):
    a requirement is handed to ``launch.run_pip`` with the constraints file, and pip accepts it."""
    tree = webui.harness.tree
    installer = tree / "extensions" / real_webui.EXTENSION_NAME / "install.py"
    driver = tmp_path / "drive_install.py"
    driver.write_text(
        "import importlib.util, sys\n"
        "import launch\n"
        "calls = []\n"
        "real = launch.run_pip\n"
        "def run_pip(command, desc=None, **kw):\n"
        "    calls.append(command)\n"
        "    return real(command, desc, **kw)\n"
        "launch.run_pip = run_pip\n"
        f"spec = importlib.util.spec_from_file_location('tipo_install', {str(installer)!r})\n"
        "install = importlib.util.module_from_spec(spec); spec.loader.exec_module(install)\n"
        "install.pip_install(['packaging'])\n"
        "assert len(calls) == 1 and '\"-c\"' in calls[0] and '\"packaging\"' in calls[0], calls\n"
        "print('ran:', calls[0])\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [str(webui.harness.folder / "venv" / "bin" / "python"), str(driver)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'ran: "install"' in result.stdout

"""The extension inside a real WebUI, in headless Chromium: the accordion in both tabs, Settings → TIPO,
*Generate prompt* / *Use as prompt*, warnings shown in the page, and reading an infotext back into the
controls. Screenshots go to .cache/webui-screenshots/."""

from __future__ import annotations

import json
import re

import pytest
import real_webui
from conftest import TEST_MODEL
from test_real_api import tipo, tipo_parameters

TABS = ["txt2img", "img2img"]
MISSING_MODEL = "KBlueLeaf/TIPO-200M-ft2"


def open_tab(page, tab: str) -> None:
    page.locator("#tabs > .tab-nav button", has_text=re.compile(rf"^\s*{tab}\s*$", re.I)).first.click()
    page.locator(f"#{tab}_tipo_accordion").first.wait_for(state="visible", timeout=30_000)


def open_accordion(page, tab: str):
    accordion = page.locator(f"#{tab}_tipo_accordion").first
    if not page.locator(f"#{tab}_tipo_model").first.is_visible():
        accordion.locator(".label-wrap").first.click()
    page.locator(f"#{tab}_tipo_model").first.wait_for(state="visible", timeout=30_000)
    return accordion


def enable(page, tab: str) -> None:
    box = page.locator(f"#{tab}_tipo_accordion-visible-checkbox, #{tab}_tipo_enabled input").first
    if not box.is_checked():
        box.check()
    assert box.is_checked()


def prompt_box(page, tab: str):
    return page.locator(f"#{tab}_prompt textarea").first


def textbox(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def fill(page, elem_id: str, value: str) -> None:
    box = textbox(page, elem_id)
    box.fill(value)
    box.dispatch_event("input")
    box.press("Tab")


def small_image(page, tab: str) -> None:
    """64x64, one step: the random checkpoint makes noise anyway, and the UI's 512x512x20 takes minutes."""
    for elem_id, value in (("steps", "1"), ("width", "64"), ("height", "64")):
        box = page.locator(f"#{tab}_{elem_id} input[type='number']").first
        box.fill(value)
        box.press("Enter")
        box.blur()
    page.wait_for_timeout(300)


def generate_image(page, tab: str) -> None:
    small_image(page, tab)
    page.locator(f"#{tab}_generate").first.click()
    gallery = page.locator(f"#{tab}_gallery img")
    gallery.first.wait_for(state="attached", timeout=240_000)
    page.wait_for_function(
        f"() => (document.querySelector('#html_info_{tab}')?.innerText || '').includes('Steps:')",
        timeout=240_000,
    )


def info_text(page, tab: str) -> str:
    return page.locator(f"#html_info_{tab}").first.inner_text()


@pytest.mark.parametrize("tab", TABS)
def test_accordion_in_both_tabs(page, screenshot, tab):
    open_tab(page, tab)
    accordion = open_accordion(page, tab)
    for name in ("timing", "model", "tag_length", "nl_length", "format", "ban_tags", "seed", "generate"):
        assert page.locator(f"#{tab}_tipo_{name}").first.is_visible(), name
    assert page.locator(f"#{tab}_tipo_tag_prompt").first.is_visible()
    assert page.locator(f"#{tab}_tipo_nl_prompt").first.is_visible()
    box = accordion.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 300, box
    page.locator(f"#{tab}_tipo_sampling .label-wrap").first.click()
    page.locator(f"#{tab}_tipo_temperature").first.wait_for(state="visible")
    accordion.scroll_into_view_if_needed()
    screenshot(accordion, f"accordion-{tab}")
    assert textbox(page, f"{tab}_tipo_model").input_value() == TEST_MODEL
    assert not [e for e in page.errors if "tipo" in e.lower()], page.errors


@pytest.mark.parametrize("tab", TABS)
def test_generate_prompt_preview_and_use_as_prompt(page, tab):
    open_tab(page, tab)
    open_accordion(page, tab)
    prompt_box(page, tab).fill("1girl, <lora:detail:0.5>, solo")
    fill(page, f"{tab}_tipo_seed", "21")
    page.locator(f"#{tab}_tipo_generate").first.click()
    preview = textbox(page, f"{tab}_tipo_preview")
    page.wait_for_function(
        f"() => (document.querySelector('#{tab}_tipo_preview textarea')?.value || '').length > 20",
        timeout=120_000,
    )
    rewritten = preview.input_value()
    assert "<lora:detail:0.5>" in rewritten and rewritten != "1girl, <lora:detail:0.5>, solo"
    assert "seed 21" in page.locator(f"#{tab}_tipo_status").first.inner_text()
    page.locator(f"#{tab}_tipo_use_preview").first.click()
    page.wait_for_function(
        f"() => document.querySelector('#{tab}_prompt textarea').value.length > 30", timeout=30_000
    )
    assert prompt_box(page, tab).input_value() == rewritten


def test_generating_in_the_ui_rewrites_and_reuse_takes_the_images_tipo_seed(page):
    open_accordion(page, "txt2img")
    enable(page, "txt2img")
    prompt_box(page, "txt2img").fill("1girl, <lora:detail:0.5>, solo")
    fill(page, "txt2img_tipo_seed", "-1")
    generate_image(page, "txt2img")
    shown = info_text(page, "txt2img")
    final_prompt = shown.split("\nSteps: ")[0]
    assert final_prompt != "1girl, <lora:detail:0.5>, solo", shown
    assert final_prompt.count("<lora:detail:0.5>") == 1, shown
    recorded = re.search(r'\\?"seed\\?":(\d+)', shown.split("TIPO Parameters:")[1])
    assert recorded, shown
    page.locator("#txt2img_tipo_reuse_seed").first.click()
    page.wait_for_function(
        f"() => document.querySelector('#txt2img_tipo_seed input').value === '{recorded.group(1)}'",
        timeout=30_000,
    )
    assert "TIPO error" not in shown


def test_an_invalid_ban_regex_is_shown_and_the_image_uses_the_typed_prompt(page, screenshot):
    open_accordion(page, "txt2img")
    enable(page, "txt2img")
    prompt_box(page, "txt2img").fill("1girl, solo")
    fill(page, "txt2img_tipo_ban_tags", "hat, (unclosed")
    page.locator("#txt2img_tipo_generate").first.click()
    status = page.locator("#txt2img_tipo_status .tipo-error").first
    status.wait_for(state="visible", timeout=60_000)
    assert "ban" in status.inner_text().lower()
    generate_image(page, "txt2img")
    shown = info_text(page, "txt2img")
    assert "TIPO error" in shown and shown.count("invalid ban tag") == 1, shown
    assert shown.startswith("1girl, solo\n") or shown.splitlines()[0] == "1girl, solo", shown
    screenshot(page.locator("#html_info_txt2img").first, "warning")


def test_a_missing_model_is_shown_and_the_image_uses_the_typed_prompt(page, webui):
    open_accordion(page, "txt2img")
    enable(page, "txt2img")
    prompt_box(page, "txt2img").fill("1girl, solo")
    # A registry model that is not in the models folder, with --tipo-offline: it cannot be loaded.
    model = page.locator("#txt2img_tipo_model input").first
    model.click()
    model.fill(MISSING_MODEL)
    model.press("Enter")
    page.wait_for_timeout(500)
    assert model.input_value() == MISSING_MODEL
    generate_image(page, "txt2img")
    shown = info_text(page, "txt2img")
    assert "TIPO error" in shown and "model" in shown.lower(), shown
    assert shown.splitlines()[0] == "1girl, solo", shown


def test_pasting_an_infotext_restores_the_controls_and_the_original_prompt(page, webui):
    made = webui.generate(
        "txt2img", [tipo(seed=4242, tag_length="short", no_formatting=True)], prompt="1girl, (smile:1.1)"
    )
    open_accordion(page, "txt2img")
    box = page.locator("#txt2img_tipo_accordion-visible-checkbox, #txt2img_tipo_enabled input").first
    if box.is_checked():  # opening the accordion enables it (the WebUI's InputAccordion)
        box.uncheck()
    fill(page, "txt2img_tipo_seed", "-1")
    prompt_box(page, "txt2img").fill(made.infotexts[0])
    page.locator("#tab_txt2img #paste").first.click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img_prompt textarea').value === '1girl, (smile:1.1)'",
        timeout=30_000,
    )
    page.wait_for_timeout(500)
    assert box.is_checked()
    assert textbox(page, "txt2img_tipo_seed").input_value() == "4242"
    assert page.locator("#txt2img_tipo_tag_length input[value='short']").first.is_checked()
    assert page.locator("#txt2img_tipo_no_formatting input").first.is_checked()


def test_settings_page_renders_and_a_changed_default_takes_effect(page, webui, screenshot):
    page.locator("#tabs > .tab-nav button", has_text="Settings").first.click()
    page.locator("#settings .tab-nav button", has_text=re.compile(r"^\s*TIPO\s*$")).first.click()
    section = page.locator("#settings_tipo").first
    section.wait_for(state="visible", timeout=30_000)
    for key in ("tipo_memory", "tipo_models_dir", "tipo_default_temperature", "tipo_default_tag_length"):
        assert page.locator(f"#setting_{key}").first.is_visible(), key
    screenshot(section, "settings")
    try:
        box = page.locator("#setting_tipo_default_temperature input[type='number']").first
        box.fill("0.85")
        box.press("Enter")
        page.locator("#settings_submit").first.click()
        page.wait_for_function(
            "() => /changed.*tipo_default_temperature/.test("
            "document.querySelector('#settings_result')?.innerText || '')",
            timeout=30_000,
        )
        saved = json.loads((webui.harness.tree / "config.json").read_text(encoding="utf-8"))
        assert saved["tipo_default_temperature"] == pytest.approx(0.85)
        # At once for named API args that leave it out ...
        result = webui.generate("txt2img", [tipo()], prompt="1girl")
        assert tipo_parameters(result.infotexts[0])["temperature"] == pytest.approx(0.85)
        # ... and in the accordion once the UI is reloaded.
        page.locator("#settings_restart_gradio").first.click()
        page.wait_for_timeout(3000)
        assert real_webui.wait_until(webui.answers, 180), "the WebUI did not come back after Reload UI"
        page.goto(webui.url, wait_until="domcontentloaded", timeout=180_000)
        page.locator("#txt2img_prompt textarea").first.wait_for(timeout=180_000)
        open_accordion(page, "txt2img")
        page.locator("#txt2img_tipo_sampling .label-wrap").first.click()
        temperature = page.locator("#txt2img_tipo_temperature input[type='number']").first
        temperature.wait_for(state="visible")
        assert float(temperature.input_value()) == pytest.approx(0.85)
    finally:
        webui.post("/sdapi/v1/options", {"tipo_default_temperature": 0.5})

"""A plain gradio page laid out like the WebUI's txt2img/img2img top (prompt row, size sliders) with the TIPO
script's UI built into it, the way modules/ui.py and ScriptRunner do it. Used by the UI tests and the
screenshot helper (tests/ui_screenshot.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from webui_harness import load_script_module

tipo = load_script_module()

from modules.scripts import ScriptRunner  # noqa: E402


@dataclass
class Page:
    demo: Any
    runner: Any
    script: Any
    prompt: Any
    controls: list


def build_page(is_img2img: bool = False) -> Page:
    tab = "img2img" if is_img2img else "txt2img"
    runner = ScriptRunner()
    runner.initialize_scripts([tipo.TipoScript], is_img2img)
    script = runner.alwayson_scripts[0]
    css = (tipo.EXTENSION_ROOT / "style.css").read_text(encoding="utf-8")
    with gr.Blocks(css=css, title="TIPO UI test page") as demo:
        with gr.Row():
            with gr.Column(scale=6, elem_id=f"{tab}_prompt_container"):
                row = gr.Row(elem_id=f"{tab}_prompt_row")
                runner.after_component(row, f"{tab}_prompt_row")
                with row:
                    prompt = gr.Textbox(
                        label="Prompt",
                        show_label=False,
                        lines=3,
                        elem_id=f"{tab}_prompt",
                        placeholder="Prompt",
                    )
                    runner.after_component(prompt, f"{tab}_prompt")
                with gr.Row(elem_id=f"{tab}_neg_prompt_row"):
                    gr.Textbox(
                        label="Negative prompt", show_label=False, lines=3, placeholder="Negative prompt"
                    )
            with gr.Column(scale=1):
                gr.Button("Generate", variant="primary")
        with gr.Row():
            with gr.Column():
                width = gr.Slider(64, 2048, value=768, step=8, label="Width", elem_id=f"{tab}_width")
                runner.after_component(width, f"{tab}_width")
                height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{tab}_height")
                runner.after_component(height, f"{tab}_height")
                with gr.Group(visible=True):
                    runner.create_script_ui(script)
            with gr.Column():
                gr.Gallery(label="Output", elem_id=f"{tab}_gallery")
    return Page(demo, runner, script, prompt, runner.inputs[script.args_from : script.args_to])

"""The TIPO accordion, the boxes under the main prompt and the settings page, laid out from the settings'
metadata (``OptionInfo`` in kgen/options.py: section, row, column, control). Runs under gradio 3.41 and 4.x.

Loaded by scripts/tipo.py, which hands over what the UI needs of the vendored kgen (:class:`TipoUi`).
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import gradio as gr
from modules import shared

TITLE = "TIPO"
SETTINGS_SECTION = ("tipo", "TIPO")
MIN_STACK_WIDTH = 160  # a column of controls stacked in one row cell
SEED_TOOLS_AFTER = "seed"  # the setting followed by the Random / Reuse / Shuffle buttons, in its row


def js_kwargs(code: str) -> dict[str, str]:
    """Client-side handler: ``_js`` on gradio 3, ``js`` on gradio 4."""
    return {"js": code} if int(gr.__version__.split(".")[0]) >= 4 else {"_js": code}


def keep_out_of_ui_config(components) -> None:
    """The WebUI's ui-config.json records each component's first value and forces it on every later start,
    which would silently override the defaults chosen in Settings → TIPO. Those defaults are the one source:
    the WebUI skips components marked like this (modules/ui_loadsave.py)."""
    for component in components:
        if component is not None:
            component.do_not_save_to_config = True


def _supports(component, parameter: str) -> bool:
    return parameter in inspect.signature(component.__init__).parameters


@dataclass(frozen=True)
class TipoUi:
    """Builds the UI of one tab (txt2img / img2img) from the settings' metadata."""

    settings: ModuleType  # the vendored kgen.settings
    metadata: ModuleType  # the vendored kgen.options: the sections and control kinds of the metadata
    defaults: Callable[[], Any]  # the TipoSettings chosen on the settings page
    model_choices: Callable[[], list[str]]
    format_presets: Callable[[], list[str]]
    preset_template: Callable[[str], str]

    @property
    def options(self) -> list[tuple[str, Any, Any]]:
        return self.settings.TipoSettings.options()

    def choices(self, info, current: Any = None) -> list[str]:
        if info.choices_from == "models":
            choices = self.model_choices()
            if isinstance(current, str) and current and current not in choices:
                choices = [current, *choices]
            return choices
        if info.choices_from == "formats":
            return [*self.format_presets(), self.settings.CUSTOM_FORMAT]
        return list(info.choices or ())

    # ------------------------------------------------------------------------------------------ controls

    def control(self, info, value: Any, elem_id: str, **extra: Any):
        """The gradio component of one setting (``info.control``)."""
        meta = self.metadata
        arguments = {"label": info.label, "elem_id": elem_id, **info.ui, **extra}
        if arguments.pop("show_info", False):
            arguments["info"] = info.info
        if info.control == meta.CHECKBOX:
            return gr.Checkbox(value=bool(value), **arguments)
        if info.control == meta.RADIO:
            return gr.Radio(choices=self.choices(info), value=value, **arguments)
        if info.control == meta.DROPDOWN:
            return gr.Dropdown(choices=self.choices(info, value), value=value, **arguments)
        if info.control == meta.SLIDER:
            bounds = {"minimum": info.minimum, "maximum": info.maximum, "step": info.step}
            return gr.Slider(value=value, **bounds, **arguments)
        if info.control == meta.NUMBER:
            return gr.Number(value=value, precision=0 if info.kind is int else None, **arguments)
        return gr.Textbox(value=value, **arguments)

    def section_rows(self, section: str) -> list[list[list[str]]]:
        """The section's settings as rows of cells (each a stack of names), in placement order."""
        rows: dict[int, dict[int, list[tuple[int, int, str]]]] = {}
        for index, (name, info, _) in enumerate(self.options):
            if info.section == section:
                rows.setdefault(info.row, {}).setdefault(info.column, []).append((info.stack, index, name))
        return [
            [[name for *_, name in sorted(cell)] for _, cell in sorted(cells.items())]
            for _, cells in sorted(rows.items())
        ]

    def add_extra_prompts(self, script, tab: str) -> None:
        """The per-generation boxes right under the WebUI's prompt row."""
        hidden = bool(getattr(shared.opts, "tipo_hide_extra_prompts", False))
        with gr.Column(visible=not hidden, elem_id=f"{tab}_tipo_prompts", elem_classes=["tipo-prompts"]):
            for name, info, _ in self.options:
                if info.section == self.metadata.PROMPT_BOXES:
                    script.extra_prompts[name] = gr.Textbox(
                        label=f"{info.label} (TIPO)", elem_id=f"{tab}_tipo_{name}", **info.ui
                    )

    # ------------------------------------------------------------------------------------------ accordion

    def build(self, script, is_img2img: bool) -> list:
        """The accordion; returns the controls in TipoSettings field order (the positional API order)."""
        try:
            from modules.ui_components import InputAccordion
        except ImportError:  # WebUI < 1.7
            InputAccordion = None
        tab = "img2img" if is_img2img else "txt2img"
        tab_ui = _TabUi(self, script, tab, self.defaults())
        toggle = self.settings.TipoSettings.names(lambda info: info.section == self.metadata.TOGGLE)[0]
        if InputAccordion is not None:
            start = bool(getattr(tab_ui.values, toggle))
            accordion = InputAccordion(start, label=TITLE, elem_id=tab_ui.eid("accordion"))
            tab_ui.controls[toggle] = accordion
        else:
            accordion = gr.Accordion(TITLE, open=False, elem_id=tab_ui.eid("accordion"))
        with accordion:
            tab_ui.fill()
        inner = getattr(accordion, "accordion", None)
        keep_out_of_ui_config([*tab_ui.controls.values(), tab_ui.preview, inner])
        tab_ui.wire()
        script.controls_by_name = tab_ui.controls
        return [tab_ui.controls[name] for name in self.settings.TipoSettings.names()]

    # ------------------------------------------------------------------------------------------ settings page

    def add_settings_page(self) -> None:
        """Settings → TIPO: the application options, then a default for each setting the user chooses."""
        add = shared.opts.add_option
        for key, default, label, component, arguments in self.application_options():
            add(key, shared.OptionInfo(default, label, component, arguments, section=SETTINGS_SECTION))
        for name, info, default in self.options:
            if info.has_page_default:
                component, arguments = self.page_component(info)
                add(
                    f"tipo_default_{name}",
                    shared.OptionInfo(
                        default, f"Default: {info.label}", component, arguments, section=SETTINGS_SECTION
                    ),
                )

    def application_options(self) -> list[tuple[str, Any, str, Any, Any]]:
        """(key, default, label, component, component args) of the options that are no TIPO setting."""
        return [
            (
                "tipo_hide_extra_prompts",
                False,
                "Hide the 'Tag prompt' and 'Natural language prompt' boxes (reload UI)",
                None,
                None,
            ),
            (
                "tipo_memory",
                "offload",
                "TIPO model between generations: keep (fastest), offload (to CPU RAM, frees VRAM), unload",
                gr.Radio,
                {"choices": ["keep", "offload", "unload"]},
            ),
            (
                "tipo_models_dir",
                "",
                "Models folder (empty: <extension>/models; --tipo-models-dir overrides)",
                None,
                None,
            ),
            (
                "tipo_default_device",
                "auto",
                "Device for 'auto' (--tipo-device overrides)",
                gr.Dropdown,
                {"choices": list(self.settings.DEVICES)},
            ),
            (
                "tipo_cpu_precision",
                "auto",
                "TIPO on the CPU: auto (the model's arithmetic) or int8 (quantized: faster decoding, "
                "slightly different prompts)",
                gr.Radio,
                {"choices": ["auto", "int8"]},
            ),
            (
                "tipo_served_url",
                "",
                "TIPO model served at URL (an OpenAI-compatible /v1 base such as http://127.0.0.1:8000/v1, "
                "e.g. vLLM or llama.cpp's server; empty: load the model here)",
                None,
                None,
            ),
        ]

    def page_component(self, info) -> tuple[Any, Any]:
        """The settings-page component for one setting's default. The WebUI infers one only for str, int and
        bool defaults (and fails to build the whole settings page on any other type), so every default gets
        an explicit component: the kind of control the accordion uses, a dropdown for any choice."""
        meta = self.metadata
        if info.choices_from == "models":
            return gr.Dropdown, lambda: {
                "choices": self.choices(info, getattr(shared.opts, "tipo_default_model", None))
            }
        if info.choices or info.choices_from:
            return gr.Dropdown, {"choices": self.choices(info)}
        if info.control == meta.CHECKBOX:
            return gr.Checkbox, None
        if info.control == meta.SLIDER:
            return gr.Slider, {"minimum": info.minimum, "maximum": info.maximum, "step": info.step}
        if info.control == meta.NUMBER:
            return gr.Number, {"precision": 0} if info.kind is int else None
        return gr.Textbox, {"lines": 3} if info.ui.get("lines", 1) > 1 else None


@dataclass
class _TabUi:
    """The accordion of one tab while it is built: its controls by setting name and its tools."""

    ui: TipoUi
    script: Any
    tab: str
    values: Any  # the TipoSettings the controls start with
    controls: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, Any] = field(default_factory=dict)
    preview: Any = None

    def eid(self, item: str) -> str:
        return f"{self.tab}_tipo_{item}"

    def fill(self) -> None:
        meta = self.ui.metadata
        self.rows(meta.TOGGLE)  # with an InputAccordion, its checkbox is "enabled" already
        self.rows(meta.MAIN)
        with gr.Accordion("Sampling", open=False, elem_id=self.eid("sampling")):
            self.rows(meta.SAMPLING)
        with gr.Row(elem_classes=["tipo-row"]):
            self.tools["generate"] = gr.Button(
                "Generate prompt", variant="secondary", elem_id=self.eid("generate"), scale=1
            )
            self.tools["status"] = gr.HTML("", elem_id=self.eid("status"), elem_classes=["tipo-status"])
        copy = {"show_copy_button": True} if _supports(gr.Textbox, "show_copy_button") else {}
        self.preview = gr.Textbox(
            label="Rewritten prompt (preview)", lines=3, elem_id=self.eid("preview"), **copy
        )
        self.tools["use"] = gr.Button("Use as prompt", size="sm", elem_id=self.eid("use_preview"))
        for name, info, _ in self.ui.options:
            if info.section == meta.PROMPT_BOXES and name in self.script.extra_prompts:
                self.controls[name] = self.script.extra_prompts[name]
            elif info.section in (meta.PROMPT_BOXES, meta.PASTED):
                # hidden: pasted values, or no prompt row to attach to (API-only start); keeps the arg order
                self.controls[name] = gr.Textbox(value="", visible=False, elem_id=self.eid(name))
            elif name not in self.controls:  # a section this layout does not show: hidden, the order kept
                self.add(name, visible=False)

    def rows(self, section: str) -> None:
        for row in self.ui.section_rows(section):
            row = [[name for name in cell if name not in self.controls] for cell in row]
            row = [cell for cell in row if cell]
            names = [name for cell in row for name in cell]
            if not names:
                continue
            if len(names) == 1 and names[0] != SEED_TOOLS_AFTER:
                self.add(names[0])  # alone on its line: no row
                continue
            classes = ["tipo-row", "tipo-seed-row"] if SEED_TOOLS_AFTER in names else ["tipo-row"]
            with gr.Row(elem_classes=classes):
                for cell in row:
                    if len(cell) == 1:
                        self.add(cell[0])
                        continue
                    with gr.Column(min_width=MIN_STACK_WIDTH):
                        for name in cell:
                            self.add(name)

    def add(self, name: str, **extra: Any) -> None:
        if name in self.controls:
            return
        info = self.ui.settings.TipoSettings.info(name)
        if name == "template":
            extra["visible"] = self.values.format == self.ui.settings.CUSTOM_FORMAT
        self.controls[name] = self.ui.control(info, getattr(self.values, name), self.eid(name), **extra)
        if name == SEED_TOOLS_AFTER:
            for tool in ("Random", "Reuse", "Shuffle"):
                self.tools[tool] = gr.Button(
                    tool, elem_id=self.eid(f"{tool.lower()}_seed"), elem_classes=["tipo-tool"]
                )

    def wire(self) -> None:
        """The UI's events; each only where its controls exist."""
        c, ui = self.controls, self.ui
        custom = ui.settings.CUSTOM_FORMAT
        if "format" in c and "template" in c:
            start_format = self.values.format

            def show_template(choice, current):
                if choice == custom:
                    return gr.update(visible=True, value=current or ui.preset_template(start_format))
                return gr.update(visible=False)

            c["format"].change(show_template, inputs=[c["format"], c["template"]], outputs=[c["template"]])
        if "seed" in c:
            seed_max = ui.settings.SEED_MAX
            self.tools["Random"].click(lambda: -1, inputs=[], outputs=[c["seed"]])
            self.tools["Shuffle"].click(lambda: random.randrange(seed_max), inputs=[], outputs=[c["seed"]])
            reuse = js_kwargs(f"(seed) => tipoReuseSeed('{self.tab}', seed)")
            self.tools["Reuse"].click(None, inputs=[c["seed"]], outputs=[c["seed"]], **reuse)
        self.wire_preview()

    def wire_preview(self) -> None:
        c, script = self.controls, self.script
        controls = [c[name] for name in self.ui.settings.TipoSettings.names()]
        prompt_box = script.prompt_box
        width, height = script.size_boxes.get("width"), script.size_boxes.get("height")
        # Stand-ins where the page has no such box: the handler ignores their values.
        stand_in = controls[0]
        inputs = [prompt_box or stand_in, width or stand_in, height or stand_in, *controls]

        def preview(prompt, w, h, *values):
            return script.preview(
                prompt if prompt_box is not None else "",
                w if width is not None else None,
                h if height is not None else None,
                *values,
            )

        self.tools["generate"].click(preview, inputs=inputs, outputs=[self.preview, self.tools["status"]])
        if prompt_box is not None:
            self.tools["use"].click(lambda text: text, inputs=[self.preview], outputs=[prompt_box])

"""TIPO prompt upsampling for Stable Diffusion WebUI (A1111 >= 1.6) and Forge.

WebUI glue only: the engine (``kgen.rewriter``, ``kgen.infotext``) is the vendored ``kgen`` package next to
this folder, loaded under a private module name so that an installed ``tipo-kgen`` (import name ``kgen`` too)
neither shadows it nor is broken by it.
gradio is imported only where the UI is built, so the processing hooks run (and are tested) without it.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import json
import logging
import random
import sys
from contextlib import suppress
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from modules import script_callbacks, scripts, shared

EXTENSION_ROOT = Path(__file__).resolve().parent.parent
PRIVATE_KGEN = "_tipo_webui_kgen"


def load_private_kgen(package_dir: Path = EXTENSION_ROOT / "kgen", name: str = PRIVATE_KGEN):
    """Import ``package_dir`` as the package ``name`` (its relative imports resolve inside it)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def kgen_module(submodule: str):
    load_private_kgen()
    return importlib.import_module(f"{PRIVATE_KGEN}.{submodule}")


settings_module = kgen_module("settings")
rewriter = kgen_module("rewriter")
infotext = kgen_module("infotext")
TipoSettings = settings_module.TipoSettings
SettingsError = settings_module.SettingsError
Engine = rewriter.Rewriter

log = logging.getLogger("tipo")

TITLE = "TIPO"
INFOTEXT_KEY = infotext.INFOTEXT_KEY
INFOTEXT_PROMPT = infotext.INFOTEXT_PROMPT
INFOTEXT_ERROR = infotext.INFOTEXT_ERROR
INFOTEXT_TIME = infotext.INFOTEXT_TIME
INFOTEXT_VARIANT = infotext.INFOTEXT_VARIANT
SEED_MAX = settings_module.SEED_MAX
IMAGE_SEED_SPAN = 4294967294  # what the WebUI's get_fixed_seed draws from


# ============================================================================================ engine


def option_value(name: str, default: Any = None) -> Any:
    return getattr(shared.opts, name, default) if hasattr(shared, "opts") else default


def cmd_flag(name: str, default: Any = None) -> Any:
    return getattr(getattr(shared, "cmd_opts", None), name, default)


def backend_config():
    """Models folder, offline mode, memory policy and default device from the flags and settings page."""
    configured = cmd_flag("tipo_models_dir") or option_value("tipo_models_dir", "") or ""
    folder = Path(configured).expanduser() if str(configured).strip() else EXTENSION_ROOT / "models"
    return rewriter.BackendConfig(
        models_dir=folder,
        offline=bool(cmd_flag("tipo_offline", False)),
        memory=option_value("tipo_memory", "offload") or "offload",
        default_device=cmd_flag("tipo_device") or option_value("tipo_default_device", "auto") or "auto",
        cpu_precision=option_value("tipo_cpu_precision", "auto") or "auto",
        served_url=str(option_value("tipo_served_url", "") or "").strip(),
    )


BACKENDS = rewriter.LoaderBackends(backend_config)
ENGINE = Engine(BACKENDS)


def model_choices() -> list[str]:
    """Registry models (and their GGUF files) plus files placed in the models folder."""
    try:
        return [ref.label for ref in BACKENDS.store().choices()]
    except Exception as exc:  # the list must never break the UI
        log.warning("TIPO: cannot list models: %s", exc)
        return [settings_module.DEFAULT_MODEL]


# ============================================================================================ hooks


def warn(p, message: str) -> None:
    """The image is still made; tell the user in the log, the infotext, the HTML info and a toast."""
    if p is not None:
        # before_process and process both read the script args: one warning per job, not one per hook.
        shown = getattr(p, "tipo_warnings", None) or []
        if message in shown:
            return
        p.tipo_warnings = [*shown, message]
        p.extra_generation_params[INFOTEXT_ERROR] = "; ".join(p.tipo_warnings)
        if hasattr(p, "comment"):
            p.comment(f"TIPO: {message}")
    log.warning("TIPO: %s", message)
    try:
        import gradio as gr

        gr.Warning(f"TIPO: {message}")
    except Exception:
        pass


def settings_from_args(args, p=None):
    """Settings from script args (positional or named); None when TIPO is off or the args are unusable."""
    if isinstance(args, dict):
        raw_enabled = args.get("enabled", False)
    elif args and isinstance(args[0], dict):
        raw_enabled = args[0].get("enabled", False)
    else:
        raw_enabled = args[0] if args else False
    warnings: list[str] = []
    try:
        settings = TipoSettings.from_api_args(args, base=configured_defaults(), warnings=warnings)
    except SettingsError as exc:
        if raw_enabled and raw_enabled not in ("false", "False", 0):
            warn(p, f"{exc}; the prompt was left unchanged")
        return None
    for message in warnings:
        log.warning("TIPO: %s", message)
    return settings if settings.enabled else None


def configured_defaults():
    """The defaults chosen on the settings page (named API args fall back to them); a default that is
    no longer valid is left out with a warning."""
    chosen = {}
    for name, _info, _default in TipoSettings.options():
        value = option_value(f"tipo_default_{name}")
        if value is not None:
            chosen[name] = value
    try:
        return TipoSettings.from_mapping(chosen)
    except SettingsError:
        valid = {}
        for name, value in chosen.items():
            try:
                TipoSettings.from_mapping({name: value})
            except SettingsError as exc:
                log.warning("TIPO: settings page default ignored: %s", exc)
            else:
                valid[name] = value
        return TipoSettings.from_mapping(valid)


def tipo_seed(p, settings) -> int:
    """The TIPO seed of this job: the setting, or one random draw kept on ``p`` for later passes."""
    if settings.seed >= 0:
        return settings.seed
    if getattr(p, "tipo_seed", None) is None:
        p.tipo_seed = random.randrange(SEED_MAX)
    return p.tipo_seed


def aspect_ratio(p) -> float:
    try:
        return float(p.width) / float(p.height)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return 1.0


def per_image_value(values: dict[str, str]):
    """An infotext value that differs per image, keyed by the image's final prompt. create_infotext calls
    it with its locals (A1111 >= 1.8: ``prompt_text``, ``all_prompts``, ``index``)."""

    def value(prompt_text=None, all_prompts=None, index=0, **_):
        if prompt_text in values:
            return values[prompt_text]
        with suppress(IndexError, TypeError):
            return values.get(all_prompts[index])
        return None

    return value


def write_infotext(p, settings, seed: int, original: str, job, *, variants: bool = True) -> None:
    p.extra_generation_params.update(infotext.job_values(settings, seed, original, job))
    notes = job.variant_notes(seed) if variants else {}
    if notes:
        p.extra_generation_params[INFOTEXT_VARIANT] = per_image_value(notes)
    else:
        p.extra_generation_params.pop(INFOTEXT_VARIANT, None)


def process_before(p, settings) -> None:
    """Timing "before": rewrite ``p.prompt`` once, before styles/wildcards (the seed of the job's first
    image)."""
    if getattr(p, "seed", -1) in (-1, None, ""):
        p.seed = int(random.randrange(IMAGE_SEED_SPAN))  # what get_fixed_seed would draw, fixed now
    seed = tipo_seed(p, settings)
    original = p.prompt
    prompts = list(original) if isinstance(original, list) else [original]
    seeds = [rewriter.derive_seed(seed, p.seed)] * len(prompts)
    job = rewriter.rewrite_each(ENGINE, settings, prompts, seeds, aspect_ratio(p))
    if job.warning:
        warn(p, job.warning)
    p.prompt = job.prompts if isinstance(original, list) else job.prompts[0]
    if (
        isinstance(getattr(p, "hr_prompt", None), str)
        and p.hr_prompt == original
        and not isinstance(original, list)
    ):
        p.hr_prompt = p.prompt
    write_infotext(p, settings, seed, prompts[0], job, variants=False)


def process_after(p, settings) -> None:
    """Timing "after": every image's prompt (styles and wildcards applied), seed = TIPO seed + image seed;
    with "different prompt per image", one variants pass for images that share their prompt."""
    seed = tipo_seed(p, settings)
    originals = list(p.all_prompts)
    job = rewriter.rewrite_images(ENGINE, settings, originals, list(p.all_seeds), seed, aspect_ratio(p))
    if job.warning:
        warn(p, job.warning)
    p.all_prompts = job.prompts
    if getattr(p, "enable_hr", False) and getattr(p, "all_hr_prompts", None):
        p.all_hr_prompts = rewriter.follow_hires(
            p.all_hr_prompts, originals, job.prompts, p.hr_prompt == p.prompt
        )
    if getattr(p, "main_prompt", None) == originals[0]:
        p.main_prompt = job.prompts[0]
    original = p.prompt if isinstance(p.prompt, str) else originals[0]
    write_infotext(p, settings, seed, rewriter.source_of(original, settings), job)


# ============================================================================================ infotext


@lru_cache(maxsize=64)
def pasted_settings(raw: str) -> tuple[tuple[tuple[str, Any], ...], tuple[str, ...]]:
    """Valid (name, value) pairs from an infotext's TIPO JSON, plus warnings (the model must be known)."""
    return infotext.read_settings(raw, lambda name: BACKENDS.store().resolve_untrusted(name).label)


def settings_in(params: dict) -> dict[str, Any] | None:
    raw = params.get(INFOTEXT_KEY)
    if raw is None:
        return None
    key = raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True)
    values, warnings = pasted_settings(key)
    for message in warnings:
        warn(None, message)
    return dict(values)


def infotext_reader(name: str):
    return lambda params: infotext.control_value(name, params, settings_in(params))


def on_infotext_pasted(infotext_text: str, params: dict) -> None:
    """Normalise our JSON value in place (the UI runs this before the field readers; the API does not)."""
    raw = params.get(INFOTEXT_KEY)
    if isinstance(raw, str):
        with suppress(ValueError):
            params[INFOTEXT_KEY] = json.loads(raw)


script_callbacks.on_infotext_pasted(on_infotext_pasted)


# ============================================================================================ script


class TipoScript(scripts.Script):
    def __init__(self):
        super().__init__()
        self.extra_prompts: dict[str, Any] = {}  # "tag_prompt"/"nl_prompt" boxes under the main prompt
        self.prompt_box = None
        self.size_boxes: dict[str, Any] = {}
        self.controls_by_name: dict[str, Any] = {}
        # Both runners see every component, so each callback checks the tab. The attribute is set directly
        # (not through on_after_component) to also work on WebUI versions without that helper.
        self.on_after_component_elem_id = []
        for tab in ("txt2img", "img2img"):
            for elem_id, role in [
                ("prompt_row", "prompt_row"),
                ("prompt", "prompt"),
                ("width", "width"),
                ("height", "height"),
            ]:
                callback = partial(self._on_component, tab, role)
                self.on_after_component_elem_id.append((f"{tab}_{elem_id}", callback))

    def _on_component(self, tab: str, role: str, on_component) -> None:
        if (tab == "img2img") != bool(self.is_img2img):
            return
        if role == "prompt_row":
            self._add_extra_prompts(tab)
        elif role == "prompt":
            self.prompt_box = on_component.component
        else:
            self.size_boxes[role] = on_component.component

    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    # ---------------------------------------------------------------------------------------- UI

    def _add_extra_prompts(self, tab: str) -> None:
        import gradio as gr

        hidden = bool(option_value("tipo_hide_extra_prompts", False))
        with gr.Column(visible=not hidden, elem_id=f"{tab}_tipo_prompts", elem_classes=["tipo-prompts"]):
            self.extra_prompts["tag_prompt"] = gr.Textbox(
                label="Tag prompt (TIPO)",
                lines=2,
                elem_id=f"{tab}_tipo_tag_prompt",
                placeholder="Tags for TIPO, used when the main prompt has no tags",
            )
            self.extra_prompts["nl_prompt"] = gr.Textbox(
                label="Natural language prompt (TIPO)",
                lines=2,
                elem_id=f"{tab}_tipo_nl_prompt",
                placeholder="A caption TIPO extends (weights allowed)",
            )

    def ui(self, is_img2img):
        return build_ui(self, is_img2img)

    # ---------------------------------------------------------------------------------------- hooks

    def before_process(self, p, *args):
        settings = settings_from_args(args, p)
        if settings is not None and settings.timing == "before":
            process_before(p, settings)

    def process(self, p, *args):
        settings = settings_from_args(args, p)
        if settings is not None and settings.timing == "after":
            process_after(p, settings)

    # ---------------------------------------------------------------------------------------- preview

    def preview(self, prompt, width, height, *values):
        """The "Generate prompt" button: (rewritten prompt, status line); makes no image."""
        try:
            settings = TipoSettings.from_positional(list(values))
        except SettingsError as exc:
            return prompt, f"<span class='tipo-error'>{html.escape(str(exc))}</span>"
        seed = settings.seed if settings.seed >= 0 else random.randrange(SEED_MAX)
        ratio = (float(width) / float(height)) if width and height else 1.0
        try:
            rewrite = ENGINE.rewrite(rewriter.source_of(prompt or "", settings), settings, seed, ratio)
        except Exception as exc:
            log.warning("TIPO preview failed: %s", exc)
            failure = html.escape(f"TIPO failed: {type(exc).__name__}: {exc}")
            return prompt, f"<span class='tipo-error'>{failure}</span>"
        cached = " (cached)" if rewrite.cached else ""
        status = f"seed {seed} · {rewrite.tokens} tokens · {rewrite.seconds:.2f} s{cached}"
        if rewrite.note:
            status += f" · <span class='tipo-note'>{html.escape(rewrite.note)}</span>"
        return rewrite.prompt, status


# ============================================================================================ UI


def control_default(name: str, fallback: Any) -> Any:
    value = option_value(f"tipo_default_{name}", fallback)
    return fallback if value is None else value


def js_kwargs(code: str) -> dict[str, str]:
    """Client-side handler: ``_js`` on gradio 3, ``js`` on gradio 4."""
    import gradio as gr

    return {"js": code} if int(gr.__version__.split(".")[0]) >= 4 else {"_js": code}


def build_ui(script: TipoScript, is_img2img: bool) -> list:
    """The accordion; returns the controls in :class:`TipoSettings` field order (the positional API order)."""
    import gradio as gr

    try:
        from modules.ui_components import InputAccordion
    except ImportError:  # WebUI < 1.7
        InputAccordion = None

    tab = "img2img" if is_img2img else "txt2img"
    options = {name: (info, control_default(name, default)) for name, info, default in TipoSettings.options()}
    c: dict[str, Any] = {}

    def eid(item: str) -> str:
        return f"{tab}_tipo_{item}"

    def radio(name: str, **kwargs):
        info, value = options[name]
        return gr.Radio(
            choices=list(info.choices), value=value, label=info.label, elem_id=eid(name), **kwargs
        )

    def slider(name: str):
        info, value = options[name]
        return gr.Slider(
            minimum=info.minimum,
            maximum=info.maximum,
            step=info.step,
            value=value,
            label=info.label,
            elem_id=eid(name),
        )

    def checkbox(name: str):
        info, value = options[name]
        return gr.Checkbox(value=bool(value), label=info.label, elem_id=eid(name))

    enabled_default = bool(options["enabled"][1])
    if InputAccordion is not None:
        accordion = InputAccordion(enabled_default, label=TITLE, elem_id=eid("accordion"))
        c["enabled"] = accordion
    else:
        accordion = gr.Accordion(TITLE, open=False, elem_id=eid("accordion"))
    with accordion:
        if InputAccordion is None:
            c["enabled"] = gr.Checkbox(value=enabled_default, label="Enable TIPO", elem_id=eid("enabled"))
        with gr.Row(elem_classes=["tipo-row"]):
            c["timing"] = radio("timing", info=options["timing"][0].info)
            with gr.Column(min_width=160):
                c["per_image"] = checkbox("per_image")
                c["no_formatting"] = checkbox("no_formatting")
        with gr.Row(elem_classes=["tipo-row"]):
            model_value = options["model"][1]
            c["model"] = gr.Dropdown(
                choices=model_choices_with(model_value),
                value=model_value,
                label="Model",
                elem_id=eid("model"),
                scale=3,
            )
            info, value = options["device"]
            c["device"] = gr.Dropdown(
                choices=list(info.choices),
                value=value,
                label=info.label,
                elem_id=eid("device"),
                scale=1,
                min_width=100,
            )
        with gr.Row(elem_classes=["tipo-row"]):
            c["tag_length"] = radio("tag_length")
            c["nl_length"] = radio("nl_length")
        with gr.Row(elem_classes=["tipo-row"]):
            presets = format_presets()
            format_value = options["format"][1]
            c["format"] = gr.Dropdown(
                choices=[*presets, settings_module.CUSTOM_FORMAT],
                value=format_value,
                label=options["format"][0].label,
                elem_id=eid("format"),
            )
            info, value = options["ban_tags"]
            c["ban_tags"] = gr.Textbox(
                value=value,
                label=info.label,
                placeholder="umbrella, official.*, .*text",
                elem_id=eid("ban_tags"),
            )
        info, value = options["template"]
        c["template"] = gr.Textbox(
            value=value,
            label=info.label,
            lines=4,
            elem_id=eid("template"),
            visible=format_value == settings_module.CUSTOM_FORMAT,
            placeholder="<|special|>, <|characters|>, <|general|>,\n<|extended|>",
        )
        with gr.Row(elem_classes=["tipo-row", "tipo-seed-row"]):
            info, value = options["seed"]
            c["seed"] = gr.Number(value=value, label=info.label, precision=0, elem_id=eid("seed"), scale=4)
            random_button = gr.Button("Random", elem_id=eid("random_seed"), elem_classes=["tipo-tool"])
            reuse_button = gr.Button("Reuse", elem_id=eid("reuse_seed"), elem_classes=["tipo-tool"])
            shuffle_button = gr.Button("Shuffle", elem_id=eid("shuffle_seed"), elem_classes=["tipo-tool"])
        with gr.Accordion("Sampling", open=False, elem_id=eid("sampling")):
            with gr.Row(elem_classes=["tipo-row"]):
                c["temperature"] = slider("temperature")
                c["top_p"] = slider("top_p")
            with gr.Row(elem_classes=["tipo-row"]):
                c["top_k"] = slider("top_k")
                c["min_p"] = slider("min_p")
        with gr.Row(elem_classes=["tipo-row"]):
            generate_button = gr.Button(
                "Generate prompt", variant="secondary", elem_id=eid("generate"), scale=1
            )
            status = gr.HTML("", elem_id=eid("status"), elem_classes=["tipo-status"])
        preview = (
            gr.Textbox(
                label="Rewritten prompt (preview)", lines=3, elem_id=eid("preview"), show_copy_button=True
            )
            if _supports(gr.Textbox, "show_copy_button")
            else gr.Textbox(label="Rewritten prompt (preview)", lines=3, elem_id=eid("preview"))
        )
        use_button = gr.Button("Use as prompt", size="sm", elem_id=eid("use_preview"))
        for name in ("tag_prompt", "nl_prompt"):
            if name in script.extra_prompts:
                c[name] = script.extra_prompts[name]
            else:  # no prompt row to attach to (API-only start): hidden stand-ins keep the argument order
                c[name] = gr.Textbox(value="", visible=False, elem_id=eid(name))
        c["source_prompt"] = gr.Textbox(value="", visible=False, elem_id=eid("source_prompt"))
        c["source_result"] = gr.Textbox(value="", visible=False, elem_id=eid("source_result"))
        c["source_variant"] = gr.Textbox(value="", visible=False, elem_id=eid("source_variant"))

    controls = [c[name] for name in TipoSettings.names()]
    script.controls_by_name = c
    keep_out_of_ui_config([*c.values(), preview, getattr(accordion, "accordion", None)])

    def show_template(choice, current):
        if choice == settings_module.CUSTOM_FORMAT:
            return gr.update(visible=True, value=current or preset_template(format_value))
        return gr.update(visible=False)

    c["format"].change(show_template, inputs=[c["format"], c["template"]], outputs=[c["template"]])
    random_button.click(lambda: -1, inputs=[], outputs=[c["seed"]])
    shuffle_button.click(lambda: random.randrange(SEED_MAX), inputs=[], outputs=[c["seed"]])
    reuse_button.click(
        None, inputs=[c["seed"]], outputs=[c["seed"]], **js_kwargs(f"(seed) => tipoReuseSeed('{tab}', seed)")
    )
    prompt_box = script.prompt_box
    width, height = script.size_boxes.get("width"), script.size_boxes.get("height")
    inputs = [prompt_box or c["tag_prompt"], width or c["seed"], height or c["seed"], *controls]
    generate_button.click(
        lambda prompt, w, h, *values: script.preview(
            prompt, w if width is not None else None, h if height is not None else None, *values
        ),
        inputs=inputs,
        outputs=[preview, status],
    )
    if prompt_box is not None:
        use_button.click(lambda text: text, inputs=[preview], outputs=[prompt_box])

    script.infotext_fields = [(c[name], infotext_reader(name)) for name in TipoSettings.names()]
    if prompt_box is not None:
        script.infotext_fields.append(
            (prompt_box, lambda d: d.get(INFOTEXT_PROMPT) if INFOTEXT_KEY in d else None)
        )
    return controls


def keep_out_of_ui_config(components) -> None:
    """The WebUI's ui-config.json records each component's first value and forces it on every later start,
    which would silently override the defaults chosen in Settings → TIPO. Those defaults are the one source:
    the WebUI skips components marked like this (modules/ui_loadsave.py)."""
    for component in components:
        if component is not None:
            component.do_not_save_to_config = True


def _supports(component, parameter: str) -> bool:
    import inspect

    return parameter in inspect.signature(component.__init__).parameters


def format_presets() -> list[str]:
    try:
        return list(kgen_module("formats").FORMAT_PRESETS)
    except Exception:
        return [settings_module.DEFAULT_FORMAT]


def preset_template(name: str) -> str:
    try:
        return kgen_module("formats").resolve_template(name)
    except Exception:
        return ""


# ============================================================================================ settings


def on_ui_settings():
    import gradio as gr

    section = ("tipo", "TIPO")
    add = shared.opts.add_option
    OptionInfo = shared.OptionInfo
    add(
        "tipo_hide_extra_prompts",
        OptionInfo(
            False, "Hide the 'Tag prompt' and 'Natural language prompt' boxes (reload UI)", section=section
        ),
    )
    add(
        "tipo_memory",
        OptionInfo(
            "offload",
            "TIPO model between generations: keep (fastest), offload (to CPU RAM, frees VRAM), unload",
            gr.Radio,
            {"choices": ["keep", "offload", "unload"]},
            section=section,
        ),
    )
    add(
        "tipo_models_dir",
        OptionInfo(
            "", "Models folder (empty: <extension>/models; --tipo-models-dir overrides)", section=section
        ),
    )
    add(
        "tipo_default_device",
        OptionInfo(
            "auto",
            "Device for 'auto' (--tipo-device overrides)",
            gr.Dropdown,
            {"choices": list(settings_module.DEVICES)},
            section=section,
        ),
    )
    add(
        "tipo_cpu_precision",
        OptionInfo(
            "auto",
            "TIPO on the CPU: auto (the model's arithmetic) or int8 (quantized: faster decoding, "
            "slightly different prompts)",
            gr.Radio,
            {"choices": ["auto", "int8"]},
            section=section,
        ),
    )
    add(
        "tipo_served_url",
        OptionInfo(
            "",
            "TIPO model served at URL (an OpenAI-compatible /v1 base such as http://127.0.0.1:8000/v1, "
            "e.g. vLLM or llama.cpp's server; empty: load the model here)",
            section=section,
        ),
    )
    for name, info, default in TipoSettings.options():
        if name in (*infotext.PASTED_ONLY, "tag_prompt", "nl_prompt"):
            continue
        component, args = setting_component(name, info)
        add(
            f"tipo_default_{name}",
            OptionInfo(default, f"Default: {info.label}", component, args, section=section),
        )


def setting_component(name: str, info) -> tuple[Any, Any]:
    """The settings-page component for one control's default. The WebUI infers one only for str, int and
    bool defaults (and fails to build the whole settings page on any other type), so every default gets an
    explicit component: the same kind of control the accordion uses."""
    import gradio as gr

    if name == "model":
        return gr.Dropdown, lambda: {"choices": model_choices_with(option_value("tipo_default_model"))}
    if info.choices:
        return gr.Dropdown, {"choices": list(info.choices)}
    if name == "format":
        return gr.Dropdown, {"choices": [*format_presets(), settings_module.CUSTOM_FORMAT]}
    if info.kind is bool:
        return gr.Checkbox, None
    if info.kind in (int, float) and info.minimum is not None and info.maximum is not None and name != "seed":
        return gr.Slider, {"minimum": info.minimum, "maximum": info.maximum, "step": info.step}
    if info.kind in (int, float):
        return gr.Number, {"precision": 0} if info.kind is int else None
    if name == "template":
        return gr.Textbox, {"lines": 3}
    return gr.Textbox, None


def model_choices_with(current: Any) -> list[str]:
    choices = model_choices()
    if isinstance(current, str) and current and current not in choices:
        choices = [current, *choices]
    return choices


script_callbacks.on_ui_settings(on_ui_settings)

"""TIPO prompt upsampling for Stable Diffusion WebUI (A1111 >= 1.6) and Forge.

WebUI glue only: the engine (``kgen.rewriter``, ``kgen.infotext``) is the vendored ``kgen`` package next to
this folder, loaded under a private module name so that an installed ``tipo-kgen`` (import name ``kgen`` too)
neither shadows it nor is broken by it. The UI (``tipo_webui/ui.py`` here, laid out from the metadata)
is loaded the same way, only where the UI is built, so the processing hooks run (and are tested) without
gradio.
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
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any

from modules import script_callbacks, scripts, shared

EXTENSION_ROOT = Path(__file__).resolve().parent.parent
PRIVATE_KGEN = "_tipo_webui_kgen"
PRIVATE_UI = "_tipo_webui_ui"


def load_private_package(package_dir: Path = EXTENSION_ROOT / "kgen", name: str = PRIVATE_KGEN):
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
    load_private_package()
    return importlib.import_module(f"{PRIVATE_KGEN}.{submodule}")


settings_module = kgen_module("settings")
rewriter = kgen_module("rewriter")
infotext = kgen_module("infotext")
formats = kgen_module("protocol.formats")
TipoSettings = settings_module.TipoSettings
SettingsError = settings_module.SettingsError
Engine = rewriter.Rewriter

log = logging.getLogger("tipo")

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


@cache
def loader_backends():
    """The model loader, built on first use; it reads :func:`backend_config` on every session."""
    return rewriter.LoaderBackends(backend_config)


@cache
def engine():
    """The rewriter and its result cache, built on first use; one for the txt2img and img2img scripts."""
    return Engine(loader_backends())


def model_choices() -> list[str]:
    """Registry models (and their GGUF files) plus files placed in the models folder."""
    try:
        return [ref.label for ref in loader_backends().store().choices()]
    except Exception as exc:  # the list must never break the UI
        log.warning("TIPO: cannot list models: %s", exc)
        return [settings_module.DEFAULT_MODEL]


def format_presets() -> list[str]:
    return list(formats.FORMAT_PRESETS)


def preset_template(name: str) -> str:
    """The template of preset ``name``; empty for a name that is neither a preset nor a template."""
    try:
        return formats.resolve_template(name)
    except ValueError:
        return ""


@cache
def webui_ui():
    """The UI builder (imports gradio): tipo_webui/ui.py here, privately named, with what it needs of kgen."""
    load_private_package(EXTENSION_ROOT / "scripts" / "tipo_webui", PRIVATE_UI)
    ui = importlib.import_module(f"{PRIVATE_UI}.ui")
    options = kgen_module("options")
    return ui.TipoUi(
        settings_module, options, configured_defaults, model_choices, format_presets, preset_template
    )


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
    """The defaults chosen on the settings page: the controls' start values, and what named API args leave
    out. A default that is no longer valid is left out with a warning."""
    chosen = {name: option_value(f"tipo_default_{name}") for name in TipoSettings.names()}
    chosen = {name: value for name, value in chosen.items() if value is not None}
    try:
        return TipoSettings.from_mapping(chosen)
    except SettingsError:
        warnings: list[str] = []
        valid = TipoSettings.valid_values(chosen, warnings)
        for message in warnings:
            log.warning("TIPO: settings page default ignored: %s", message)
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


def write_infotext(p, settings, seed: int, original: str, job, *, variants: bool = True) -> None:
    p.extra_generation_params.update(infotext.job_values(settings, seed, original, job))
    variant = infotext.variant_value(job, seed) if variants else None
    if variant is not None:
        p.extra_generation_params[INFOTEXT_VARIANT] = variant
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
    job = rewriter.rewrite_each(engine(), settings, prompts, seeds, aspect_ratio(p))
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
    job = rewriter.rewrite_images(engine(), settings, originals, list(p.all_seeds), seed, aspect_ratio(p))
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


def pasted_settings(raw: str) -> tuple[tuple[tuple[str, Any], ...], tuple[str, ...]]:
    """Valid (name, value) pairs from an infotext's TIPO JSON, plus warnings (the model must be known in the
    models folder configured now)."""
    return _pasted_settings(raw, backend_config())


@lru_cache(maxsize=64)
def _pasted_settings(raw: str, config) -> tuple[tuple[tuple[str, Any], ...], tuple[str, ...]]:
    store = loader_backends().store(config)
    return infotext.read_settings(raw, lambda name: store.resolve_untrusted(name).label)


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
        return "TIPO"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    # ---------------------------------------------------------------------------------------- UI

    def _add_extra_prompts(self, tab: str) -> None:
        webui_ui().add_extra_prompts(self, tab)

    def ui(self, is_img2img):
        controls = webui_ui().build(self, is_img2img)
        names = TipoSettings.names()
        self.infotext_fields = [(c, infotext_reader(name)) for name, c in zip(names, controls, strict=True)]
        if self.prompt_box is not None:
            self.infotext_fields.append(
                (self.prompt_box, lambda d: d.get(INFOTEXT_PROMPT) if INFOTEXT_KEY in d else None)
            )
        return controls

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
            rewrite = engine().rewrite(rewriter.source_of(prompt or "", settings), settings, seed, ratio)
        except Exception as exc:
            log.warning("TIPO preview failed: %s", exc)
            failure = html.escape(f"TIPO failed: {type(exc).__name__}: {exc}")
            return prompt, f"<span class='tipo-error'>{failure}</span>"
        cached = " (cached)" if rewrite.cached else ""
        status = f"seed {seed} · {rewrite.tokens} tokens · {rewrite.seconds:.2f} s{cached}"
        if rewrite.note:
            status += f" · <span class='tipo-note'>{html.escape(rewrite.note)}</span>"
        return rewrite.prompt, status


# ============================================================================================ settings


def on_ui_settings():
    webui_ui().add_settings_page()


script_callbacks.on_ui_settings(on_ui_settings)

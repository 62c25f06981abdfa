"""TIPO prompt upsampling for Stable Diffusion WebUI (A1111 >= 1.6) and Forge.

WebUI glue only: the engine is the vendored ``kgen`` package next to this folder, loaded under a private
module
name so that an installed ``tipo-kgen`` (import name ``kgen`` too) neither shadows it nor is broken by it.
gradio is imported only where the UI is built, so the processing hooks run (and are tested) without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import random
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager, suppress
from dataclasses import dataclass
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
syntax = kgen_module("prompt_syntax")
TipoSettings = settings_module.TipoSettings
SettingsError = settings_module.SettingsError

log = logging.getLogger("tipo")

TITLE = "TIPO"
INFOTEXT_KEY = "TIPO Parameters"
INFOTEXT_PROMPT = "TIPO prompt"
INFOTEXT_ERROR = "TIPO error"
INFOTEXT_TIME = "TIPO time"
SEED_MAX = settings_module.SEED_MAX
IMAGE_SEED_SPAN = 4294967294  # what the WebUI's get_fixed_seed draws from


# ============================================================================================ engine


@dataclass(frozen=True)
class Rewrite:
    prompt: str
    tokens: int = 0
    seconds: float = 0.0
    cached: bool = False


def option_value(name: str, default: Any = None) -> Any:
    return getattr(shared.opts, name, default) if hasattr(shared, "opts") else default


def models_dir() -> Path:
    flag = getattr(getattr(shared, "cmd_opts", None), "tipo_models_dir", None)
    configured = flag or option_value("tipo_models_dir", "") or ""
    return Path(configured).expanduser() if str(configured).strip() else EXTENSION_ROOT / "models"


def offline() -> bool:
    return bool(getattr(getattr(shared, "cmd_opts", None), "tipo_offline", False))


def resolve_device(device: str) -> str:
    """A control value of "auto" follows --tipo-device, then the settings page, then the loader's choice."""
    if device and device != "auto":
        return device
    flag = getattr(getattr(shared, "cmd_opts", None), "tipo_device", None)
    return flag or option_value("tipo_default_device", "auto") or "auto"


def model_store():
    return kgen_module("model_store").ModelStore(models_dir(), offline=offline())


def model_choices() -> list[str]:
    """Registry models (and their GGUF files) plus files placed in the models folder."""
    try:
        return [ref.label for ref in model_store().choices()]
    except Exception as exc:  # the list must never break the UI
        log.warning("TIPO: cannot list models: %s", exc)
        return [settings_module.DEFAULT_MODEL]


class DefaultBackends:
    """Loads models with ``kgen.backends.loader.BackendCache`` (one model in memory at a time)."""

    def __init__(self):
        self.cache = None

    @contextmanager
    def session(self, settings):
        loader = kgen_module("backends.loader")
        store = model_store()
        if (
            self.cache is None
            or self.cache.store.root != store.root
            or self.cache.store.offline != store.offline
        ):
            if self.cache is not None:
                self.cache.unload()
            self.cache = loader.BackendCache(store)
        ref = store.resolve_untrusted(settings.model)  # never a path or URL from outside
        memory = option_value("tipo_memory", "offload") or "offload"
        options = loader.LoadOptions(device=resolve_device(settings.device), memory=memory)
        with self.cache.session(ref, options) as backend:
            yield backend, ref.spec


class Engine:
    """Backends and finished prompts, shared by the txt2img and img2img scripts (one per WebUI process)."""

    def __init__(self, backends=None, cache_size: int = 512):
        self.backends = backends or DefaultBackends()  # has .session(settings) -> context of (backend, spec)
        self.cache_size = cache_size
        self.results: OrderedDict[tuple, Rewrite] = OrderedDict()
        self.outputs: OrderedDict[str, None] = OrderedDict()  # prompts we produced: never rewritten again
        self.lock = threading.RLock()
        self.generations = 0  # pipeline runs (cache misses), for tests and the status line

    def _remember(self, key: tuple, rewrite: Rewrite) -> None:
        self.results[key] = rewrite
        self.outputs[rewrite.prompt] = None
        while len(self.results) > self.cache_size:
            self.results.popitem(last=False)
        while len(self.outputs) > self.cache_size:
            self.outputs.popitem(last=False)

    def rewrite(self, prompt: str, settings, seed: int, aspect_ratio: float) -> Rewrite:
        key = (prompt, settings.cache_key(), int(seed), round(float(aspect_ratio), 1))
        with self.lock:
            if key in self.results:
                self.results.move_to_end(key)
                hit = self.results[key]
                return Rewrite(hit.prompt, 0, 0.0, True)
            if prompt in self.outputs:  # already upsampled (a second processing pass, e.g. ADetailer)
                return Rewrite(prompt, 0, 0.0, True)
            started = time.perf_counter()
            final, tokens = self._generate(prompt, settings, seed, aspect_ratio)
            rewrite = Rewrite(final, tokens, time.perf_counter() - started)
            self.generations += 1
            self._remember(key, rewrite)
            return rewrite

    def _generate(self, prompt: str, settings, seed: int, aspect_ratio: float) -> tuple[str, int]:
        pipeline = kgen_module("pipeline")
        base = kgen_module("backends.base")
        parsed = syntax.parse(prompt)
        if not parsed.tags and settings.tag_prompt.strip():
            prompt = (
                f"{prompt.rstrip()}, {settings.tag_prompt.strip()}" if prompt.strip() else settings.tag_prompt
            )
            parsed = syntax.parse(prompt)
        nl_plain = syntax.plain_text(settings.nl_prompt)
        fmt = settings.template if settings.format == settings_module.CUSTOM_FORMAT else settings.format
        request = pipeline.UpsampleRequest(
            tags=[tag.text for tag in parsed.tags],
            nl=nl_plain,
            tag_length=settings.tag_length,
            nl_length=settings.nl_length,
            aspect_ratio=aspect_ratio,
            seed=int(seed),
            ban_tags=settings.ban_tags,
            format=fmt,
            no_formatting=settings.no_formatting,
        )
        sampling = base.SamplingSettings(
            temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k, min_p=settings.min_p
        )
        with self.backends.session(settings) as (backend, spec):
            result = pipeline.upsample(request, backend, model=spec, sampling=sampling)
        tokens = int(getattr(result, "completion_tokens", 0))
        return compose(parsed, result, settings, request.template, nl_plain), tokens


def compose(parsed, result, settings, template: str, nl_plain: str) -> str:
    """The final prompt: the user's prompt with its non-tag elements in place and the new content added."""
    postprocess = kgen_module("postprocess")
    key = postprocess.tag_key
    nl_new = result.new_nl
    if settings.no_formatting:
        return syntax.append_content(parsed, result.new_tags, nl_new)
    units = parsed.main_units()
    surface = {key(unit.tags[0].text): unit.text for unit in units}
    in_block = {key(tag.text) for unit in units for tag in unit.tags}
    user = {key(tag.text) for tag in parsed.tags}
    fields = result.fields()
    for name, value in list(fields.items()):
        if isinstance(value, str):
            fields[name] = (
                _with_user_caption(value, nl_plain, settings.nl_prompt)
                if name == "extended"
                else (syntax.escape(value))
            )
            continue
        placed = []
        for tag in value:
            k = key(tag)
            if k in surface:
                placed.append(surface[k])
            elif k in user or k in in_block:
                continue  # a user tag written elsewhere (another BREAK/AND section, or inside a group)
            else:
                placed.append(syntax.escape(tag))
        fields[name] = placed
    formats = kgen_module("formats")
    block = formats.apply_format(formats.PromptFields(**fields), template)
    return syntax.replace_tag_block(parsed, block)


def _with_user_caption(extended: str, nl_plain: str, nl_typed: str) -> str:
    """Keep the caption as the user typed it (weights included) when the model's text starts with it."""
    if nl_plain and extended.startswith(nl_plain):
        return nl_typed.strip() + syntax.escape(extended[len(nl_plain) :])
    return syntax.escape(extended)


ENGINE = Engine()


# ============================================================================================ hooks


def warn(p, message: str) -> None:
    """The image is still made; tell the user in the log, the infotext, the HTML info and a toast."""
    log.warning("TIPO: %s", message)
    if p is not None:
        previous = p.extra_generation_params.get(INFOTEXT_ERROR)
        p.extra_generation_params[INFOTEXT_ERROR] = message if not previous else f"{previous}; {message}"
        if hasattr(p, "comment"):
            p.comment(f"TIPO: {message}")
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
        settings = TipoSettings.from_api_args(args, warnings=warnings)
    except SettingsError as exc:
        if raw_enabled and raw_enabled not in ("false", "False", 0):
            warn(p, f"{exc}; the prompt was left unchanged")
        return None
    for message in warnings:
        log.warning("TIPO: %s", message)
    return settings if settings.enabled else None


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


def source_of(prompt: str, settings) -> str:
    """After an infotext paste through the API the prompt is still the rewritten one: start from the
    original."""
    if settings.source_prompt and settings.source_result and prompt == settings.source_result:
        return settings.source_prompt
    return prompt


def write_infotext(p, settings, seed: int, original: str, rewrites: list[Rewrite]) -> None:
    p.extra_generation_params[INFOTEXT_KEY] = settings.to_infotext(seed=seed)
    p.extra_generation_params[INFOTEXT_PROMPT] = original
    tokens = sum(r.tokens for r in rewrites)
    seconds = sum(r.seconds for r in rewrites)
    cached = sum(r.cached for r in rewrites)
    p.extra_generation_params[INFOTEXT_TIME] = f"{seconds:.2f}s {tokens} tokens" + (
        f" ({cached} cached)" if cached else ""
    )


def run_rewrites(p, settings, prompts: list[str], seeds: list[int]) -> tuple[list[str], list[Rewrite]]:
    ratio = aspect_ratio(p)
    finals, rewrites, errors = [], [], []
    for prompt, seed in zip(prompts, seeds, strict=True):
        source = source_of(prompt, settings)
        try:
            rewrite = ENGINE.rewrite(source, settings, seed, ratio)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            rewrite = Rewrite(prompt)
        finals.append(rewrite.prompt)
        rewrites.append(rewrite)
    if errors:
        unique = list(dict.fromkeys(errors))
        warn(p, f"prompt left unchanged for {len(errors)} of {len(prompts)} image(s): {unique[0]}")
    return finals, rewrites


def process_before(p, settings) -> None:
    """Timing "before": rewrite ``p.prompt`` once, before styles/wildcards (the seed of the job's first
    image)."""
    if getattr(p, "seed", -1) in (-1, None, ""):
        p.seed = int(random.randrange(IMAGE_SEED_SPAN))  # what get_fixed_seed would draw, fixed now
    seed = tipo_seed(p, settings)
    original = p.prompt
    prompts = list(original) if isinstance(original, list) else [original]
    seeds = [(seed + int(p.seed)) % SEED_MAX] * len(prompts)
    finals, rewrites = run_rewrites(p, settings, prompts, seeds)
    p.prompt = finals if isinstance(original, list) else finals[0]
    if (
        isinstance(getattr(p, "hr_prompt", None), str)
        and p.hr_prompt == original
        and not isinstance(original, list)
    ):
        p.hr_prompt = p.prompt
    write_infotext(p, settings, seed, prompts[0], rewrites)


def process_after(p, settings) -> None:
    """Timing "after": every image's prompt (styles and wildcards applied), seed = TIPO seed + image seed."""
    seed = tipo_seed(p, settings)
    originals = list(p.all_prompts)
    image_seeds = list(p.all_seeds) if settings.per_image else [p.all_seeds[0]] * len(originals)
    seeds = [(seed + int(s)) % SEED_MAX for s in image_seeds[: len(originals)]]
    finals, rewrites = run_rewrites(p, settings, originals, seeds)
    p.all_prompts = finals
    if getattr(p, "enable_hr", False) and getattr(p, "all_hr_prompts", None):
        follow_all = p.hr_prompt == p.prompt
        p.all_hr_prompts = [
            finals[i] if (follow_all or hr == originals[i]) and i < len(finals) else hr
            for i, hr in enumerate(p.all_hr_prompts)
        ]
    if getattr(p, "main_prompt", None) == originals[0]:
        p.main_prompt = finals[0]
    original = p.prompt if isinstance(p.prompt, str) else originals[0]
    write_infotext(p, settings, seed, source_of(original, settings), rewrites)


# ============================================================================================ infotext


@lru_cache(maxsize=64)
def pasted_settings(raw: str) -> tuple[tuple[tuple[str, Any], ...], tuple[str, ...]]:
    """Valid (name, value) pairs from an infotext's TIPO JSON, plus warnings; each bad value is dropped
    alone."""
    warnings: list[str] = []
    try:
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return (), (f"unreadable {INFOTEXT_KEY} ({exc})",)
    try:
        parsed = TipoSettings.from_infotext(data, warnings=warnings)
        values = {name: getattr(parsed, name) for name in TipoSettings.names()}
        present = set(data) | {"enabled"}
        if "v" not in data:  # a z-tipo-extension infotext: keys were translated
            present = set(TipoSettings.names())
    except SettingsError:
        values, present = {"enabled": True}, {"enabled"}
        candidates = {k: v for k, v in data.items() if k != "v"}
        for name, value in candidates.items():
            try:
                one = TipoSettings.from_mapping({name: value})
            except SettingsError as exc:
                warnings.append(f"{exc} (from the pasted infotext; ignored)")
                continue
            if name in TipoSettings.names():
                values[name] = getattr(one, name)
                present.add(name)
    if "model" in values and "model" in present:
        try:
            values["model"] = model_store().resolve_untrusted(values["model"]).label
        except Exception as exc:
            warnings.append(f"model from the pasted infotext ignored: {exc}")
            present.discard("model")
    kept = tuple((name, values[name]) for name in TipoSettings.names() if name in present and name in values)
    return kept, tuple(warnings)


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
    def read(params: dict):
        values = settings_in(params)
        if values is None:  # an infotext without TIPO: TIPO off, pasted prompts forgotten, the rest as it was
            return {"enabled": False, "source_prompt": "", "source_result": ""}.get(name)
        if name == "source_prompt":
            return params.get(INFOTEXT_PROMPT)
        if name == "source_result":
            return params.get("Prompt") if INFOTEXT_PROMPT in params else None
        return values.get(name)

    return read


def on_infotext_pasted(infotext: str, params: dict) -> None:
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
            return prompt, f"<span class='tipo-error'>{exc}</span>"
        seed = settings.seed if settings.seed >= 0 else random.randrange(SEED_MAX)
        ratio = (float(width) / float(height)) if width and height else 1.0
        try:
            rewrite = ENGINE.rewrite(source_of(prompt or "", settings), settings, seed, ratio)
        except Exception as exc:
            log.warning("TIPO preview failed: %s", exc)
            return prompt, f"<span class='tipo-error'>TIPO failed: {type(exc).__name__}: {exc}</span>"
        note = " (cached)" if rewrite.cached else ""
        return rewrite.prompt, f"seed {seed} · {rewrite.tokens} tokens · {rewrite.seconds:.2f} s{note}"


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
            choices = model_choices()
            model_value = options["model"][1]
            if model_value not in choices:
                choices = [model_value, *choices]
            c["model"] = gr.Dropdown(
                choices=choices, value=model_value, label="Model", elem_id=eid("model"), scale=3
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

    controls = [c[name] for name in TipoSettings.names()]
    script.controls_by_name = c

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
    for name, info, default in TipoSettings.options():
        if name in ("source_prompt", "source_result", "tag_prompt", "nl_prompt"):
            continue
        args = {"choices": list(info.choices)} if info.choices else None
        component = gr.Dropdown if info.choices else None
        add(
            f"tipo_default_{name}",
            OptionInfo(default, f"Default: {info.label}", component, args, section=section),
        )


script_callbacks.on_ui_settings(on_ui_settings)

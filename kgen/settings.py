"""The TIPO settings of one WebUI generation: one typed record shared by every face of the extension.

Every field of :class:`TipoSettings` is one ``option(...)`` with :class:`OptionInfo` metadata, from which
are derived
  * the UI: each field is a control, placed by its ``section``/``row``/``column``; the WebUI passes the
    controls' values positionally in field order,
  * the settings page: a "Default: ..." option for each field the user sets per generation,
  * the named API arguments (``alwayson_scripts: {"TIPO": {"args": [{"seed": 7, ...}]}}``),
  * the JSON stored in the image's infotext (``in_infotext``) and the pasted-only controls,
  * cache keys (``affects_prompt``),
  * the pipeline request and sampling (``request``, ``sampling``: :meth:`TipoSettings.to_request`,
    :meth:`TipoSettings.sampling`),
  * the command line's options (``cli``).
Adding an option is one ``option(...)`` line below. Values coming from outside (API, pasted infotext) go
through :meth:`TipoSettings.from_mapping`, which coerces types, checks ranges/choices and reports unknown
keys.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from .generation import SamplingSettings
from .options import (
    DROPDOWN,
    NUMBER,
    PASTED,
    PROMPT_BOXES,
    SAMPLING,
    TOGGLE,
    CliOption,
    OptionInfo,
    option,
)
from .protocol.lengths import Length

if TYPE_CHECKING:
    from .pipeline import UpsampleRequest

SCHEMA_VERSION = 1
SEED_MAX = 2**31 - 1
DEFAULT_FORMAT = "Both, tag first (recommend)"
CUSTOM_FORMAT = "custom"
TIMINGS = ("after", "before")
LENGTHS = tuple(length.label for length in Length)  # "very short", "short", "long", "very long"
DEVICES = ("auto", "cuda", "cpu")
DEFAULT_MODEL = "KBlueLeaf/TIPO-500M-ft"  # a ModelStore label (registry hub id)


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the setting and the problem."""


def _seed_from_cli(text: str) -> int:
    """A command-line seed; any negative one draws a random seed."""
    return max(int(text), -1)


def _format_or_template(text: str) -> dict[str, str]:
    """A command-line ``--format``: a preset name, or else a template of its own."""
    from .protocol.formats import find_preset

    preset = find_preset(text)
    return {"format": preset} if preset is not None else {"format": CUSTOM_FORMAT, "template": text}


def _is_true(text: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    return None


LENGTH_HELP = "very_short | short | long | very_long (spaces allowed); default long"
FORMAT_HELP = (
    f'a preset ("tag only", "NL only", "both, tag first", "both, NL first", "both + generated NL") or a '
    f'template with <|general|>-style fields; default "{DEFAULT_FORMAT}"'
)
MODEL_HELP = (
    "registry name (see --list-models), 'name | file.gguf', or a local folder, .safetensors or .gguf path; "
    f"default {DEFAULT_MODEL}"
)


@dataclass(frozen=True)
class TipoSettings:
    enabled: bool = option(False, "Enable TIPO", section=TOGGLE, in_infotext=False, affects_prompt=False)
    timing: str = option(
        "after",
        "Timing",
        choices=TIMINGS,
        info="after: every image of the batch, after wildcards/styles; before: once, before them",
        affects_prompt=False,
        row=1,
        ui={"show_info": True},
    )
    model: str = option(
        DEFAULT_MODEL,
        "Model",
        choices_from="models",
        infotext_always=True,
        row=2,
        ui={"scale": 3},
        cli=CliOption("--model", MODEL_HELP, group="model"),
    )
    tag_length: str = option(
        "long",
        "Tag length",
        choices=LENGTHS,
        row=3,
        request="tag_length",
        cli=CliOption("--tag-length", LENGTH_HELP),
    )
    nl_length: str = option(
        "long",
        "Natural language length",
        choices=LENGTHS,
        row=3,
        column=1,
        request="nl_length",
        cli=CliOption("--nl-length", "same choices; default long"),
    )
    ban_tags: str = option(
        "",
        "Ban tags",
        info="comma separated; plain text or regular expressions",
        row=4,
        column=1,
        ui={"placeholder": "umbrella, official.*, .*text"},
        request="ban_tags",
        cli=CliOption("--ban-tags", 'comma-separated tags or regexes, e.g. "hat, .*text"'),
    )
    format: str = option(
        DEFAULT_FORMAT,
        "Prompt format",
        choices_from="formats",
        row=4,
        request="format",  # the template instead when the format is custom (to_request)
        cli=CliOption("--format", FORMAT_HELP, to_settings=_format_or_template),
    )
    template: str = option(
        "",
        "Custom format",
        info="used when the format is 'custom'",
        row=5,
        ui={"lines": 4, "placeholder": "<|special|>, <|characters|>, <|general|>,\n<|extended|>"},
    )
    seed: int = option(
        -1,
        "TIPO seed",
        minimum=-1,
        maximum=SEED_MAX,
        step=1,
        info="-1: random",
        control=NUMBER,
        affects_prompt=False,  # keyed separately by the caller
        infotext_always=True,
        row=6,
        ui={"scale": 4},
        request="seed",
        cli=CliOption("--seed", "seed; negative draws a random one (default)", parse=_seed_from_cli),
    )
    temperature: float = option(
        0.5,
        "Temperature",
        minimum=0.0,
        maximum=2.0,
        step=0.05,
        section=SAMPLING,
        row=1,
        sampling="temperature",
        cli=CliOption("--temperature", group="sampling"),
    )
    top_p: float = option(
        0.95,
        "Top-p",
        minimum=0.0,
        maximum=1.0,
        step=0.01,
        section=SAMPLING,
        row=1,
        column=1,
        sampling="top_p",
        cli=CliOption("--top-p", group="sampling"),
    )
    top_k: int = option(
        80,
        "Top-k",
        minimum=0,
        maximum=200,
        step=1,
        info="0 disables it",
        section=SAMPLING,
        row=2,
        sampling="top_k",
        cli=CliOption("--top-k", group="sampling"),
    )
    min_p: float = option(
        0.1,
        "Min-p",
        minimum=0.0,
        maximum=1.0,
        step=0.01,
        section=SAMPLING,
        row=2,
        column=1,
        sampling="min_p",
        cli=CliOption("--min-p", group="sampling"),
    )
    device: str = option(
        "auto",
        "Device",
        choices=DEVICES,
        control=DROPDOWN,
        affects_prompt=False,
        row=2,
        column=1,
        ui={"scale": 1, "min_width": 100},
    )
    no_formatting: bool = option(
        False,
        "No formatting",
        info="keep your prompt as typed, append new content",
        row=1,
        column=1,
        stack=1,
        request="no_formatting",
        cli=CliOption("--no-formatting", "keep your text as typed and only append the new content"),
    )
    per_image: bool = option(
        True,
        "Different prompt per image",
        info="after timing; a batch sharing one prompt is one variants pass (TGTS)",
        affects_prompt=False,
        row=1,
        column=1,
    )
    tag_prompt: str = option(
        "",
        "Tag prompt",
        info="used when the main prompt has no tags",
        section=PROMPT_BOXES,
        ui={"lines": 2, "placeholder": "Tags for TIPO, used when the main prompt has no tags"},
    )
    nl_prompt: str = option(
        "",
        "Natural language prompt",
        section=PROMPT_BOXES,
        ui={"lines": 2, "placeholder": "A caption TIPO extends (weights allowed)"},
    )
    # Set by pasting an infotext: the user's prompt and the rewritten one of that image. When the prompt to
    # process is still the rewritten one (the API's infotext field), the user's prompt is used instead.
    source_prompt: str = option(
        "",
        "Pasted original prompt",
        pasted_only=True,
        section=PASTED,
        in_infotext=False,
        affects_prompt=False,
    )
    source_result: str = option(
        "", "Pasted final prompt", pasted_only=True, section=PASTED, in_infotext=False, affects_prompt=False
    )
    # The pasted image's place in a per-image variants pass ("3 of 8, base seed 100"), reproduced for it.
    source_variant: str = option(
        "", "Pasted variant", pasted_only=True, section=PASTED, in_infotext=False, affects_prompt=False
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            info = f.metadata["option"]
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(f.name, info, value))
        if self.format == CUSTOM_FORMAT and not self.template.strip():
            raise SettingsError("format is 'custom' but the custom format (template) is empty")

    # ------------------------------------------------------------------------------------------ schema

    @classmethod
    def options(cls) -> list[tuple[str, OptionInfo, Any]]:
        """(name, info, default) of every setting, in UI / positional-argument order."""
        return [(f.name, f.metadata["option"], f.default) for f in fields(cls) if f.default is not MISSING]

    @classmethod
    def names(cls, where: Callable[[OptionInfo], bool] | None = None) -> list[str]:
        """Every setting's name in field order; with ``where``, those whose metadata it accepts."""
        return [f.name for f in fields(cls) if where is None or where(f.metadata["option"])]

    @classmethod
    def info(cls, name: str) -> OptionInfo:
        return next(f.metadata["option"] for f in fields(cls) if f.name == name)

    # ------------------------------------------------------------------------------------------ input

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, base: TipoSettings | None = None, warnings: list[str] | None = None
    ) -> TipoSettings:
        """Settings from named values; missing keys keep ``base`` (defaults), unknown keys go to
        ``warnings``."""
        known = set(cls.names())
        chosen: dict[str, Any] = {}
        for key, value in values.items():
            if key in known:
                chosen[key] = value
            elif warnings is not None:
                warnings.append(f"unknown TIPO setting {key!r} ignored (known: {', '.join(sorted(known))})")
        return replace(base or cls(), **chosen)

    @classmethod
    def from_positional(cls, values: Sequence[Any], *, warnings: list[str] | None = None) -> TipoSettings:
        names = cls.names()
        if len(values) > len(names) and warnings is not None:
            warnings.append(f"{len(values) - len(names)} extra TIPO argument(s) ignored")
        # None: a control the caller left out (e.g. the API's default for a missing UI element).
        chosen = {name: value for name, value in zip(names, values, strict=False) if value is not None}
        return replace(cls(), **chosen)

    @classmethod
    def from_api_args(
        cls,
        args: Sequence[Any] | Mapping[str, Any],
        *,
        base: TipoSettings | None = None,
        warnings: list[str] | None = None,
    ) -> TipoSettings:
        """Script args as the WebUI hands them over: the positional list, or a dict of named settings
        (given directly or as the first positional argument, which is how the WebUI API delivers
        ``"args": [{"enabled": true, ...}]``). Keys a dict leaves out take ``base`` (the defaults)."""
        if isinstance(args, Mapping):
            return cls.from_mapping(args, base=base, warnings=warnings)
        args = list(args)
        if args and isinstance(args[0], Mapping):
            # The WebUI API fills the other positions with the UI defaults: only the dict counts.
            return cls.from_mapping(dict(args[0]), base=base, warnings=warnings)
        return cls.from_positional(args, warnings=warnings)

    @classmethod
    def valid_values(cls, values: Mapping[str, Any], warnings: list[str] | None = None) -> dict[str, Any]:
        """The known ``values`` that are valid each on its own, or along with those (a custom format with
        its template), coerced; each other one is left out alone, its problem in ``warnings``."""
        kept: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for name, value in values.items():
            if name in cls.names():
                try:
                    kept[name] = getattr(cls.from_mapping({name: value}), name)
                except SettingsError as exc:
                    problems[name] = str(exc)
        for name in list(problems):
            try:
                kept[name] = getattr(cls.from_mapping({**kept, name: values[name]}), name)
                del problems[name]
            except SettingsError:
                pass
        if warnings is not None:
            warnings.extend(problems.values())
        return kept

    def to_positional(self) -> list[Any]:
        return [getattr(self, name) for name in self.names()]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.names()}

    # ------------------------------------------------------------------------------------------ infotext

    def to_infotext(self, *, seed: int | None = None) -> str:
        """Compact JSON for the image's infotext: the version plus every setting that differs from its default
        (``seed`` replaces a random -1 by the seed actually used)."""
        defaults = type(self)()
        data: dict[str, Any] = {"v": SCHEMA_VERSION}
        for name, info, _ in self.options():
            if not info.in_infotext:
                continue
            value = getattr(self, name)
            if name == "seed" and seed is not None:
                value = seed
            if name == "template" and self.format != CUSTOM_FORMAT:
                continue
            if value != getattr(defaults, name) or info.infotext_always:
                data[name] = value
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_infotext(
        cls, text: str | Mapping[str, Any], *, warnings: list[str] | None = None
    ) -> TipoSettings:
        """Parse :meth:`to_infotext` output (or the reference extension's "TIPO Parameters" JSON).

        The result is enabled. Raises :class:`SettingsError` when the text is not such JSON."""
        if isinstance(text, Mapping):
            data = dict(text)
        else:
            try:
                data = json.loads(text)
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"TIPO infotext is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SettingsError("TIPO infotext is not a JSON object")
        version = data.pop("v", None)
        if version is None:
            data = _from_reference_infotext(data, warnings)
        elif (not isinstance(version, int) or version > SCHEMA_VERSION) and warnings is not None:
            warnings.append(f"TIPO infotext version {version!r} is newer than this extension; read as v1")
        data["enabled"] = True
        return cls.from_mapping(data, warnings=warnings)

    # ------------------------------------------------------------------------------------------ helpers

    @property
    def length(self) -> Length:
        return Length.parse(self.tag_length)

    @property
    def nl_length_target(self) -> Length:
        return Length.parse(self.nl_length)

    def cache_key(self) -> tuple:
        """Everything that changes the generated prompt (the seed is keyed separately by the caller)."""
        return tuple((name, getattr(self, name)) for name in self.names(lambda info: info.affects_prompt))

    # ------------------------------------------------------------------------------------------ requests

    def request_values(self) -> dict[str, Any]:
        """The :class:`~kgen.pipeline.UpsampleRequest` fields these settings set."""
        values = {info.request: getattr(self, name) for name, info, _ in self.options() if info.request}
        if self.format == CUSTOM_FORMAT:
            values[self.info("format").request] = self.template
        return values

    def to_request(self, **inputs: Any) -> UpsampleRequest:
        """The pipeline request for these settings; ``inputs`` (tags, nl, aspect_ratio, seed ...) give the
        fields that settings do not, or override them."""
        from .pipeline import UpsampleRequest

        return UpsampleRequest(**{**self.request_values(), **inputs})

    @classmethod
    def sampling_values(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Named setting values as :class:`SamplingSettings` fields (settings that are no sampling knob are
        left out)."""
        targets = {name: info.sampling for name, info, _ in cls.options() if info.sampling}
        return {targets[name]: value for name, value in values.items() if name in targets}

    def sampling(self, base: SamplingSettings | None = None) -> SamplingSettings:
        """``base`` (the defaults) with these settings' sampling knobs."""
        return replace(base or SamplingSettings(), **self.sampling_values(self.to_dict()))


def _coerce(name: str, info: OptionInfo, value: Any) -> Any:
    kind = info.kind
    problem = f"TIPO setting {name!r}"
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and _is_true(value) is not None:
            return _is_true(value)
        raise SettingsError(f"{problem} must be true or false, not {value!r}")
    if kind in (int, float):
        number = _number(problem, value)
        if kind is int:
            if number != math.floor(number):
                raise SettingsError(f"{problem} must be a whole number, not {value!r}")
            number = int(number)
        if info.minimum is not None and number < info.minimum:
            raise SettingsError(f"{problem} must be >= {info.minimum}, not {value!r}")
        if info.maximum is not None and number > info.maximum:
            raise SettingsError(f"{problem} must be <= {info.maximum}, not {value!r}")
        return number
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise SettingsError(f"{problem} must be text, not {type(value).__name__} {value!r}")
    if name == "ban_tags" and value.strip():
        _check_ban_tags(value)
    if name == "timing":
        return _choice(problem, value, info.choices, lambda v: v.split()[0].lower() if v.split() else v)
    if name in ("tag_length", "nl_length"):
        try:
            return Length.parse(value).label
        except ValueError as exc:
            raise SettingsError(f"{problem}: {exc}") from None
    if info.choices:
        return _choice(problem, value, info.choices, str.lower)
    if name == "format":
        return _format_name(problem, value)
    if name == "model" and not value.strip():
        return DEFAULT_MODEL
    return value


def _format_name(problem: str, value: str) -> str:
    if value.strip().lower() == CUSTOM_FORMAT:
        return CUSTOM_FORMAT
    try:
        from .protocol.formats import FORMAT_PRESETS, find_preset
    except ImportError:  # engine not complete: accept the name as given
        return value
    preset = find_preset(value)
    if preset is None:
        names = ", ".join([*FORMAT_PRESETS, CUSTOM_FORMAT])
        raise SettingsError(f"{problem} must be one of {names}, not {value!r}")
    return preset


def _number(problem: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SettingsError(f"{problem} must be a number, not {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise SettingsError(f"{problem} must be a number, not {value!r}") from None
    else:
        raise SettingsError(f"{problem} must be a number, not {type(value).__name__} {value!r}")
    if not math.isfinite(number):
        raise SettingsError(f"{problem} must be a finite number, not {value!r}")
    return number


def _choice(problem: str, value: str, choices: tuple[str, ...] | None, normalize) -> str:
    wanted = normalize(value.strip())
    for choice in choices or ():
        if normalize(choice) == wanted:
            return choice
    raise SettingsError(f"{problem} must be one of {', '.join(choices or ())}, not {value!r}")


def _check_ban_tags(text: str) -> None:
    try:
        from .protocol.postprocess import BanList
    except ImportError:  # engine not complete: fall back to a plain regex check
        import re

        for entry in (part.strip() for part in text.split(",")):
            if entry:
                try:
                    re.compile(entry)
                except re.error as exc:
                    raise SettingsError(f"invalid ban tag {entry!r}: {exc}") from None
        return
    try:
        BanList.parse(text)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


# The reference extension (z-tipo-extension) writes "TIPO Parameters" with these keys.
_REFERENCE_KEYS = {
    "seed": "seed",
    "timing": "timing",
    "tag_length": "tag_length",
    "nl_length": "nl_length",
    "ban_tags": "ban_tags",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "no_formatting": "no_formatting",
}


def _from_reference_infotext(data: dict[str, Any], warnings: list[str] | None) -> dict[str, Any]:
    converted = {ours: data[theirs] for theirs, ours in _REFERENCE_KEYS.items() if theirs in data}
    # The reference stores the preset name under "format_selected" and the template under "format".
    if "format_selected" in data:
        converted["format"] = data["format_selected"]
        if data["format_selected"] == CUSTOM_FORMAT:
            converted["template"] = data.get("format", "")
    if isinstance(data.get("model"), str):
        converted["model"] = data["model"]
    if data.get("gguf_cpu"):
        converted["device"] = "cpu"
    if warnings is not None:
        warnings.append("TIPO infotext written by z-tipo-extension; its settings were translated")
    return converted

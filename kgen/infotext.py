"""The TIPO part of an image's infotext ("generation parameters"): what is written, and reading it back.

Written: the settings (versioned JSON), the user's original prompt, time and tokens spent, and for an image
made by a variants pass its place in that pass. Read back: pasted values are untrusted; each bad value is
dropped alone with a warning, and a model name is only kept when the model store knows it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any

from .rewriter import JobRewrite, Rewrite
from .settings import SettingsError, TipoSettings

INFOTEXT_KEY = "TIPO Parameters"
INFOTEXT_PROMPT = "TIPO prompt"
INFOTEXT_ERROR = "TIPO error"
INFOTEXT_TIME = "TIPO time"
INFOTEXT_VARIANT = "TIPO variant"

PASTED_ONLY = tuple(TipoSettings.names(lambda info: info.pasted_only))


def time_note(rewrites: Sequence[Rewrite]) -> str:
    tokens = sum(r.tokens for r in rewrites)
    seconds = sum(r.seconds for r in rewrites)
    cached = sum(r.cached for r in rewrites)
    return f"{seconds:.2f}s {tokens} tokens" + (f" ({cached} cached)" if cached else "")


def job_values(settings: TipoSettings, tipo_seed: int, original: str, job: JobRewrite) -> dict[str, str]:
    """The values shared by every image of the job."""
    return {
        INFOTEXT_KEY: settings.to_infotext(seed=tipo_seed),
        INFOTEXT_PROMPT: original,
        INFOTEXT_TIME: time_note(job.rewrites),
    }


def per_image_value(values: Mapping[str, str]) -> Callable[..., str | None]:
    """An infotext value that differs per image, keyed by the image's final prompt. The WebUI's
    create_infotext calls it with its locals (A1111 >= 1.8: ``prompt_text``, ``all_prompts``, ``index``)."""

    def value(prompt_text=None, all_prompts=None, index=0, **_):
        if prompt_text in values:
            return values[prompt_text]
        with suppress(IndexError, TypeError):
            return values.get(all_prompts[index])
        return None

    return value


def variant_value(job: JobRewrite, tipo_seed: int) -> Callable[..., str | None] | None:
    """The per-image :data:`INFOTEXT_VARIANT` of a job with a variants pass; None for other jobs."""
    notes = job.variant_notes(tipo_seed)
    return per_image_value(notes) if notes else None


def read_settings(
    raw: str | Mapping[str, Any], resolve_model: Callable[[str], str]
) -> tuple[tuple[tuple[str, Any], ...], tuple[str, ...]]:
    """Valid (name, value) pairs from an infotext's TIPO JSON, plus warnings; each bad value is dropped
    alone. ``resolve_model`` maps a pasted model name to a known model's label or raises."""
    warnings: list[str] = []
    try:
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return (), (f"unreadable {INFOTEXT_KEY} ({exc})",)
    names = TipoSettings.names()
    try:
        parsed = TipoSettings.from_infotext(data, warnings=warnings)
        values = {name: getattr(parsed, name) for name in names}
        present = set(data) | {"enabled"}
        if "v" not in data:  # a z-tipo-extension infotext: keys were translated
            present = set(names)
    except SettingsError:  # each bad value is dropped alone
        problems: list[str] = []
        valid = TipoSettings.valid_values({k: v for k, v in data.items() if k != "v"}, problems)
        warnings.extend(f"{message} (from the pasted infotext; ignored)" for message in problems)
        values, present = {"enabled": True, **valid}, {"enabled", *valid}
    if "model" in values and "model" in present:
        try:
            values["model"] = resolve_model(values["model"])
        except Exception as exc:
            warnings.append(f"model from the pasted infotext ignored: {exc}")
            present.discard("model")
    kept = tuple((name, values[name]) for name in names if name in present and name in values)
    return kept, tuple(warnings)


def control_value(name: str, params: Mapping[str, Any], pasted: Mapping[str, Any] | None) -> Any:
    """The value a pasted infotext gives the control ``name`` (None: leave the control as it is).

    ``pasted``: :func:`read_settings` values, None when the infotext has no TIPO settings; then TIPO is off
    and what a previous paste left in the hidden controls is forgotten."""
    if pasted is None:
        return {"enabled": False, **dict.fromkeys(PASTED_ONLY, "")}.get(name)
    if name == "source_prompt":
        return params.get(INFOTEXT_PROMPT)
    if name == "source_result":
        return params.get("Prompt") if INFOTEXT_PROMPT in params else None
    if name == "source_variant":
        return params.get(INFOTEXT_VARIANT, "")
    return pasted.get(name)

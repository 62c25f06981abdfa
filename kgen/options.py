"""The metadata of one setting (:class:`OptionInfo`), from which every face of the extension is derived; the
settings themselves are :class:`kgen.settings.TipoSettings`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Where a setting's control sits in the WebUI, in this order.
TOGGLE = "toggle"  # the accordion's own checkbox
MAIN = "main"  # rows inside the accordion
SAMPLING = "sampling"  # rows inside the accordion's "Sampling" accordion
PROMPT_BOXES = "prompt boxes"  # boxes under the WebUI's main prompt, typed per generation
PASTED = "pasted"  # hidden: set only by pasting an infotext
SECTIONS = (TOGGLE, MAIN, SAMPLING, PROMPT_BOXES, PASTED)

# Control kinds (each one gradio component in the WebUI).
CHECKBOX, RADIO, DROPDOWN = "checkbox", "radio", "dropdown"
TEXTBOX, NUMBER, SLIDER = "textbox", "number", "slider"


@dataclass(frozen=True)
class CliOption:
    """The setting as a command-line option (``python -m kgen``)."""

    flag: str  # e.g. "--tag-length"; the argparse dest is the field name
    help: str = ""
    # the argparse group ("" the main options); an unset "sampling" option keeps the protocol's default
    group: str = ""
    # text -> value (argparse ``type``); None: the field's kind, a choice field checked against its choices
    parse: Callable[[str], Any] | None = None
    # the command-line value -> setting values, where one option sets more than its own field
    to_settings: Callable[[Any], Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class OptionInfo:
    """What the UI, settings page, API, infotext, caches, requests and command line know about one setting."""

    label: str
    kind: type
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    info: str = ""
    affects_prompt: bool = True  # part of the cache key: changes the prompt generated for one (prompt, seed)
    in_infotext: bool = True
    infotext_always: bool = False  # written even at its default value
    pasted_only: bool = False  # set by pasting an infotext, never by the user
    section: str = MAIN
    row: int = 0  # within the section
    column: int = 0  # within the row; settings sharing (row, column) are stacked, by ``stack``
    stack: int = 0
    control: str = TEXTBOX
    choices_from: str = ""  # "models" / "formats": choices the application knows at run time
    # further arguments of the UI component ("show_info": show ``info`` under it)
    ui: Mapping[str, Any] = field(default_factory=dict)
    request: str = ""  # the UpsampleRequest field it sets
    sampling: str = ""  # the SamplingSettings field it sets
    cli: CliOption | None = None

    @property
    def has_page_default(self) -> bool:
        """Whether the settings page offers a default for it (not for pasted or per-generation text)."""
        return not self.pasted_only and self.section != PROMPT_BOXES


def option(default: Any, label: str, kind: type | None = None, **info: Any) -> Any:
    kind = kind or type(default)
    info.setdefault("control", _control_for(kind, info))
    return field(default=default, metadata={"option": OptionInfo(label=label, kind=kind, **info)})


def _control_for(kind: type, info: Mapping[str, Any]) -> str:
    if kind is bool:
        return CHECKBOX
    if info.get("choices_from"):
        return DROPDOWN
    if info.get("choices"):
        return RADIO
    if kind in (int, float):
        ranged = all(info.get(key) is not None for key in ("minimum", "maximum", "step"))
        return SLIDER if ranged else NUMBER
    return TEXTBOX

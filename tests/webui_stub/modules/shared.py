"""Mirrors modules/shared.py + modules/options.py (A1111 1.10): ``opts`` with defaults from registered
options,
``OptionInfo``, ``options_section`` and ``options_templates``; ``cmd_opts``."""

from __future__ import annotations

import argparse
from typing import Any


class OptionInfo:
    def __init__(
        self,
        default=None,
        label="",
        component=None,
        component_args=None,
        onchange=None,
        section=None,
        refresh=None,
        comment_before="",
        comment_after="",
        infotext=None,
        restrict_api=False,
        category_id=None,
    ):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.section = section
        self.infotext = infotext
        self.category_id = category_id
        self.comment_after = comment_after

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def needs_reload_ui(self):
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


def options_section(section_identifier, options_dict):
    for v in options_dict.values():
        if len(section_identifier) == 2:
            v.section = section_identifier
        elif len(section_identifier) == 3:
            v.section = section_identifier[0:2]
            v.category_id = section_identifier[2]
    return options_dict


options_templates: dict[str, OptionInfo] = {}


class Options:
    def __init__(self):
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", options_templates)

    def __getattr__(self, item: str) -> Any:
        data = object.__getattribute__(self, "data")
        if item in data:
            return data[item]
        labels = object.__getattribute__(self, "data_labels")
        if item in labels:
            return labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def add_option(self, key, info):
        self.data_labels[key] = info


opts = Options()
opts.hypertile_enable_unet = False  # present on WebUI >= 1.7 (extensions test it to detect InputAccordion)
cmd_opts = argparse.Namespace()
demo = None

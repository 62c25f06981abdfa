"""Mirrors modules/ui_settings.py (A1111 1.10 / Forge): how the settings page builds one option's component.
An option without a component gets one only for str, int and bool defaults; any other type raises, and the
real WebUI then builds no page at all."""

from __future__ import annotations

from modules.shared import opts


def create_setting_component(key):
    import gradio as gr

    def value():
        return opts.data[key] if key in opts.data else opts.data_labels[key].default

    info = opts.data_labels[key]
    kind = type(info.default)
    args = info.component_args() if callable(info.component_args) else info.component_args
    if info.component is not None:
        component = info.component
    elif kind is str:
        component = gr.Textbox
    elif kind is int:
        component = gr.Number
    elif kind is bool:
        component = gr.Checkbox
    else:
        raise Exception(f"bad options item type: {kind} for key {key}")
    return component(label=info.label, value=value(), elem_id=f"setting_{key}", **(args or {}))

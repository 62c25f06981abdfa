"""Mirrors modules/script_callbacks.py (A1111 1.10): the callbacks the extension registers."""

from __future__ import annotations

callbacks_ui_settings: list = []
callbacks_infotext_pasted: list = []
callbacks_before_ui: list = []


def on_ui_settings(callback, *, name=None):
    callbacks_ui_settings.append(callback)


def on_infotext_pasted(callback, *, name=None):
    callbacks_infotext_pasted.append(callback)


def on_before_ui(callback, *, name=None):
    callbacks_before_ui.append(callback)


def ui_settings_callback():
    for callback in callbacks_ui_settings:
        callback()


def infotext_pasted_callback(infotext: str, params: dict) -> None:
    for callback in callbacks_infotext_pasted:
        callback(infotext, params)


def clear_callbacks():
    callbacks_ui_settings.clear()
    callbacks_infotext_pasted.clear()
    callbacks_before_ui.clear()

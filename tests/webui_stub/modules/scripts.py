"""Mirrors modules/scripts.py (A1111 1.10 / Forge): ``Script``, ``AlwaysVisible``, ``OnComponent``,
``basedir``
and the part of ``ScriptRunner`` that matters to an AlwaysVisible script: ``args_from``/``args_to`` slicing of
``p.script_args`` for ``before_process`` and ``process``, and errors reported (not raised) per script."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from modules import errors, script_callbacks  # noqa: F401  (extensions use scripts.script_callbacks)

AlwaysVisible = object()


@dataclass
class OnComponent:
    component: Any


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def elem_id(self, item_id):
        import re

        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


current_basedir = os.getcwd()


def basedir():
    return current_basedir


class ScriptRunner:
    """Only the parts used in tests: UI args bookkeeping and the two hooks."""

    def __init__(self):
        self.scripts: list[Script] = []
        self.alwayson_scripts: list[Script] = []
        self.inputs: list[Any] = [None]
        self.infotext_fields: list = []
        self.paste_field_names: list = []
        self.on_after_component_elem_id: dict[str, list] = {}

    def initialize_scripts(self, script_classes, is_img2img):
        for cls in script_classes:
            script = cls()
            script.filename = getattr(cls, "__module__", "script")
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            if script.show(script.is_img2img) is AlwaysVisible:
                script.alwayson = True
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
            for elem_id, callback in script.on_after_component_elem_id or []:
                self.on_after_component_elem_id.setdefault(elem_id, []).append((callback, script))
            if script.on_after_component_elem_id:
                script.on_after_component_elem_id.clear()

    def after_component(self, component, elem_id):
        """What ui.py's patched gradio component creation does for each component with an elem_id."""
        for callback, _script in self.on_after_component_elem_id.get(elem_id, []):
            callback(OnComponent(component=component))

    def create_script_ui(self, script):
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)
        controls = script.ui(script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        script.name = script.title().lower()
        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names
        self.inputs += controls
        script.args_to = len(self.inputs)

    def before_process(self, p):
        for script in self.alwayson_scripts:
            try:
                script.before_process(p, *p.script_args[script.args_from : script.args_to])
            except Exception:
                errors.report(f"Error running before_process: {script.filename}", exc_info=True)

    def process(self, p):
        for script in self.alwayson_scripts:
            try:
                script.process(p, *p.script_args[script.args_from : script.args_to])
            except Exception:
                errors.report(f"Error running process: {script.filename}", exc_info=True)

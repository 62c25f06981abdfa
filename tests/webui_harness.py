"""Loads scripts/tipo.py against the WebUI stand-in (tests/webui_stub) and runs jobs through it."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUB = Path(__file__).resolve().parent / "webui_stub"


def load_script_module():
    if str(STUB) not in sys.path:
        sys.path.insert(0, str(STUB))
    name = "tipo_webui_script_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "tipo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class FixedBackends:
    """``Engine.backends`` for tests: always the given backend (no model files involved)."""

    def __init__(self, backend, spec=None):
        self.backend = backend
        self.spec = spec
        self.sessions = 0

    @contextmanager
    def session(self, settings):
        self.sessions += 1
        yield self.backend, self.spec


class Control:
    """A stand-in for a gradio component: just its current value."""

    def __init__(self, value):
        self.value = value


def build_fields(script):
    """What build_ui registers, without gradio: one control per setting, in settings order, each paired with
    its infotext reader."""
    tipo = load_script_module()
    settings = tipo.TipoSettings
    controls = [Control(value) for value in settings().to_positional()]
    script.infotext_fields = [
        (c, tipo.infotext_reader(n)) for c, n in zip(controls, settings.names(), strict=True)
    ]
    return controls

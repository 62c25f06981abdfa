"""The WebUI's own ``modules/prompt_parser.py`` loaded by path (no ``modules`` package, no WebUI start),
producing the same :class:`webui_grammar_model.PromptView` as the independent model.

``TIPO_WEBUI_SOURCES`` names a WebUI tree (a folder holding ``modules/prompt_parser.py``). The extra-network
regex is read from that tree's ``modules/extra_networks.py`` source (importing it needs the whole WebUI).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
import types
from collections import Counter
from pathlib import Path

from webui_grammar_model import (
    ExtraNetwork,
    PromptView,
    StepView,
    SubPromptView,
    chunks_of,
)

SOURCES_VARIABLE = "TIPO_WEBUI_SOURCES"


def webui_tree() -> tuple[Path | None, str]:
    """The WebUI tree to check against, or None and why not."""
    root = os.environ.get(SOURCES_VARIABLE, "")
    if not root:
        return None, f"{SOURCES_VARIABLE} is not set (a folder holding modules/prompt_parser.py)"
    path = Path(root)
    if not (path / "modules" / "prompt_parser.py").is_file():
        return None, f"{SOURCES_VARIABLE}={root} has no modules/prompt_parser.py"
    try:
        import lark  # noqa: F401  (the WebUI's parser needs it)
    except ImportError as exc:
        return None, f"lark is not importable ({exc}); the WebUI's prompt_parser needs it"
    return path, ""


class RealParser:
    def __init__(self, root: Path):
        self.module = _load(root / "modules" / "prompt_parser.py")
        self.extra_network = _extra_network_regex(root / "modules" / "extra_networks.py")

    def read_prompt(self, prompt: str, steps: int = 20, hires_steps: int | None = None) -> PromptView:
        networks: Counter = Counter()

        def cut(match: re.Match) -> str:
            networks[ExtraNetwork(match.group(1), match.group(2))] += 1
            return ""

        stripped = self.extra_network.sub(cut, prompt)
        indexes, flat, _ = self.module.get_multicond_prompt_list([stripped])
        texts = [flat[index] for index, _ in indexes[0]]
        all_schedules = self.module.get_learned_conditioning_prompt_schedules(texts, steps, hires_steps)
        views = []
        for (_, weight), text, schedule in zip(indexes[0], texts, all_schedules, strict=True):
            failed = schedule == [[hires_steps or steps, text]] and self._fails(text)
            step_views = tuple(StepView(end, self._chunks(step_text)) for end, step_text in schedule)
            views.append(SubPromptView(text, weight, failed, step_views))
        return PromptView(networks, tuple(views))

    def _fails(self, text: str) -> bool:
        try:
            self.module.schedule_parser.parse(text)
        except Exception:  # lark.exceptions.LarkError and its subclasses
            return True
        return False

    def _chunks(self, text: str) -> tuple[Counter, ...]:
        return chunks_of(text, self.module.parse_prompt_attention)


def _load(path: Path) -> types.ModuleType:
    stubbed = False
    try:
        import torch  # noqa: F401  (prompt_parser imports it last)
    except ImportError:
        sys.modules["torch"] = types.ModuleType("torch")
        stubbed = True
    try:
        spec = importlib.util.spec_from_file_location("webui_prompt_parser_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if stubbed:
            del sys.modules["torch"]
    return module


def _extra_network_regex(path: Path) -> re.Pattern:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "re_extra_net" for t in node.targets):
            call = node.value
            if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Constant):
                return re.compile(call.args[0].value)
    raise LookupError(f"no re_extra_net = re.compile(...) in {path}")

"""Mirrors modules/infotext_utils.py (A1111 1.10): ``quote``/``unquote``, ``parse_generation_parameters`` (the
key/value regex, JSON-quoted values, "Negative prompt:" lines) and ``PasteField``; the UI paste path
(``paste``: callbacks run, then each field's function or key) and the API path (``api_script_args``: no
callbacks, value cast to the type of the component's value) as connect_paste and api.apply_infotext do."""

from __future__ import annotations

import json
import re

from modules import script_callbacks

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


class PasteField(tuple):
    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        super().__init__()
        self.api = api
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None


def parse_generation_parameters(x: str) -> dict:
    res: dict = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in re_param.findall(lastline):
        if v and v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = re_imagesize.match(v) if isinstance(v, str) else None
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v
    if "Hires prompt" not in res:
        res["Hires prompt"] = ""
    return res


def paste(infotext: str, fields) -> list:
    """UI "paste"/"send to": returns one value (or None = leave unchanged) per field, like connect_paste."""
    params = parse_generation_parameters(infotext)
    script_callbacks.infotext_pasted_callback(infotext, params)
    values = []
    for component, key in fields:
        if callable(key):
            try:
                value = key(params)
            except Exception:
                value = None
        else:
            value = params.get(key, None)
        if isinstance(value, dict) and value.get("__type__") in ("generic_update", "update"):
            value = value.get("value")
        if value is None:
            values.append(None)
            continue
        kind = type(component.value)
        if kind is bool and value == "False":
            value = False
        elif kind is not type(None) and not isinstance(value, kind):
            value = kind(value)
        values.append(value)
    return values


def api_script_args(infotext: str, fields, inputs) -> dict[int, object]:
    """api.apply_infotext for script fields: index in ``inputs`` -> value; no infotext_pasted callbacks."""
    params = parse_generation_parameters(infotext)
    indexes = {id(v): i for i, v in enumerate(inputs)}
    found = {}
    for component, key in fields:
        if id(component) not in indexes:
            continue
        value = key(params) if callable(key) else params.get(key)
        if value is None:
            continue
        if isinstance(value, dict) and value.get("__type__") in ("generic_update", "update"):
            value = value.get("value")
        kind = type(component.value)
        if kind is type(None):
            continue
        if value is not None and not isinstance(value, kind):
            value = kind(value)
        found[indexes[id(component)]] = value
    return found

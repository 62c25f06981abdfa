"""The WebUI stand-in behaves like the real modules where the extension depends on it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from webui_harness import STUB, load_script_module

load_script_module()

from modules import extra_networks, infotext_utils, prompt_parser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "expected"),
    [  # the doctests of modules/prompt_parser.py parse_prompt_attention
        ("normal text", [["normal text", 1.0]]),
        ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
        ("(unbalanced", [["unbalanced", 1.1]]),
        ("\\(literal\\]", [["(literal]", 1.0]]),
        ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ["a ", 1.0],
                ["house", 1.5730000000000004],
                [" ", 1.1],
                ["on", 1.0],
                [" a ", 1.1],
                ["hill", 0.55],
                [", sun, ", 1.1],
                ["sky", 1.4641000000000006],
                [".", 1.1],
            ],
        ),
        ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ],
)
def test_parse_prompt_attention_doctests(text, expected):
    got = prompt_parser.parse_prompt_attention(text)
    assert [part for part, _ in got] == [part for part, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_extra_networks_parse_prompt():
    text, found = extra_networks.parse_prompt("1girl <lora:a:0.8>, <hypernet:b:1:te=2> smile")
    assert text == "1girl ,  smile"
    assert found["lora"][0].items == ["a", "0.8"] and found["hypernet"][0].named == {"te": "2"}


def test_infotext_quoting_round_trips_json_values():
    value = json.dumps({"v": 1, "ban_tags": 'a "b", c', "nl_prompt": "x\ny: z"})
    line = f"Steps: 20, Seed: 3, TIPO Parameters: {infotext_utils.quote(value)}, Size: 512x768"
    params = infotext_utils.parse_generation_parameters(f"a prompt\nNegative prompt: bad\n{line}")
    assert params["TIPO Parameters"] == value
    assert params["Prompt"] == "a prompt" and params["Negative prompt"] == "bad"
    assert (params["Size-1"], params["Size-2"]) == ("512", "768")


def test_vendored_kgen_is_private_next_to_an_installed_kgen(tmp_path):
    fake = tmp_path / "kgen"
    fake.mkdir()
    (fake / "__init__.py").write_text("IS_FAKE = True\n__version__ = '0.3.1'\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(tmp_path)!r}, {str(STUB)!r}, {str(ROOT / "tests")!r}]
        import kgen
        assert kgen.IS_FAKE
        from webui_harness import load_script_module
        tipo = load_script_module()
        assert tipo.settings_module.__name__ == '_tipo_webui_kgen.settings', tipo.settings_module.__name__
        assert sys.modules['kgen'] is kgen and not hasattr(kgen, 'settings')
        assert tipo.kgen_module('pipeline').__name__ == '_tipo_webui_kgen.pipeline'
        print('ok')
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")

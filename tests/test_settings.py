"""kgen.settings: one typed record for UI controls, API args and infotext."""

from __future__ import annotations

import json

import pytest

from kgen.settings import SCHEMA_VERSION, SettingsError, TipoSettings


def test_defaults_follow_the_reference_extension():
    s = TipoSettings()
    assert (s.enabled, s.timing, s.tag_length, s.nl_length) == (False, "after", "long", "long")
    assert s.format == "Both, tag first (recommend)"
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.seed) == (0.5, 0.95, 80, 0.1, -1)
    assert not s.no_formatting and s.per_image


def test_every_field_is_an_option_in_declared_order():
    names = [name for name, _, _ in TipoSettings.options()]
    assert names == TipoSettings.names()
    assert names[0] == "enabled"  # the accordion checkbox is the first script arg
    assert len(set(names)) == len(names)


def test_positional_round_trip_and_missing_trailing_args_are_defaults():
    s = TipoSettings(enabled=True, seed=3, tag_length="short", ban_tags="hat")
    assert TipoSettings.from_positional(s.to_positional()) == s
    assert TipoSettings.from_positional([True, "before"]) == TipoSettings(enabled=True, timing="before")


def test_gradio_values_are_coerced():
    s = TipoSettings.from_positional(
        [
            True,
            "After",
            "KBlueLeaf/TIPO-200M",
            "very_short",
            "Very Short",
            "",
            "custom",
            "<|general|>",
            12.0,
            0.7,
            0.9,
            40.0,
            0.05,
            "cpu",
            "false",
            1,
        ]
    )
    assert s.seed == 12 and isinstance(s.seed, int) and s.top_k == 40 and isinstance(s.top_k, int)
    assert s.timing == "after" and s.tag_length == "very short" and s.nl_length == "very short"
    assert s.no_formatting is False and s.per_image is True


@pytest.mark.parametrize("form", ["dict", "list-with-dict"])
def test_api_named_args(form):
    named = {"enabled": True, "seed": 7, "model": "KBlueLeaf/TIPO-200M", "tag_length": "short"}
    args = named if form == "dict" else [named, None, None]
    warnings: list[str] = []
    s = TipoSettings.from_api_args(args, warnings=warnings)
    assert (s.enabled, s.seed, s.model, s.tag_length) == (True, 7, "KBlueLeaf/TIPO-200M", "short")
    assert s.temperature == 0.5  # missing = default
    assert warnings == []


def test_api_unknown_key_warns_and_positional_extra_warns():
    warnings: list[str] = []
    TipoSettings.from_api_args({"enabled": True, "temprature": 0.3}, warnings=warnings)
    assert "temprature" in warnings[0]
    warnings.clear()
    TipoSettings.from_api_args([*TipoSettings().to_positional(), 1, 2], warnings=warnings)
    assert "2 extra" in warnings[0]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"seed": "abc"}, "'seed' must be a number"),
        ({"seed": 1.5}, "whole number"),
        ({"top_p": 1.5}, "'top_p' must be <="),
        ({"temperature": float("nan")}, "finite"),
        ({"timing": "during"}, "'timing' must be one of"),
        ({"tag_length": "huge"}, "unknown length target"),
        ({"enabled": "maybe"}, "true or false"),
        ({"ban_tags": "hat, (unclosed"}, "(unclosed"),
        ({"format": "custom", "template": ""}, "custom format"),
        ({"device": "tpu"}, "'device' must be one of"),
        ({"model": 3}, "must be text"),
    ],
)
def test_bad_values_raise_a_clear_error(values, message):
    with pytest.raises(SettingsError, match=None) as info:
        TipoSettings.from_mapping(values)
    assert message in str(info.value)


def test_infotext_is_versioned_json_and_round_trips():
    s = TipoSettings(
        enabled=True,
        seed=-1,
        model="KBlueLeaf/TIPO-200M",
        ban_tags='a "quoted", b',
        nl_prompt="line 1\nline 2, with: colon",
        format="custom",
        template="<|general|>",
    )
    text = s.to_infotext(seed=99)
    data = json.loads(text)
    assert data["v"] == SCHEMA_VERSION and data["seed"] == 99
    back = TipoSettings.from_infotext(text)
    assert back == TipoSettings(**{**s.to_dict(), "seed": 99})
    assert "enabled" not in data and "source_prompt" not in data


def test_infotext_newer_version_warns_and_bad_json_raises():
    warnings: list[str] = []
    s = TipoSettings.from_infotext('{"v": 99, "seed": 4}', warnings=warnings)
    assert s.seed == 4 and "newer" in warnings[0]
    with pytest.raises(SettingsError, match="not valid JSON"):
        TipoSettings.from_infotext("{nope")
    with pytest.raises(SettingsError, match="not a JSON object"):
        TipoSettings.from_infotext("[1, 2]")


def test_cache_key_ignores_what_does_not_change_the_prompt():
    a = TipoSettings(enabled=True, seed=1, device="cpu", timing="before")
    b = TipoSettings(enabled=False, seed=2, device="cuda", timing="after")
    assert a.cache_key() == b.cache_key()
    assert a.cache_key() != TipoSettings(temperature=0.9).cache_key()

"""kgen.settings: one typed record for UI controls, API args and infotext."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from kgen import infotext
from kgen.generation import SamplingSettings
from kgen.options import SECTIONS, SLIDER, option
from kgen.protocol.lengths import Length
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


def test_roles_come_from_the_field_metadata():
    assert TipoSettings.names(lambda info: info.pasted_only) == [
        "source_prompt",
        "source_result",
        "source_variant",
    ]
    not_in_key = set(TipoSettings.names()) - set(TipoSettings.names(lambda info: info.affects_prompt))
    assert not_in_key == {"enabled", "seed", "timing", "per_image", "device", *infotext.PASTED_ONLY}
    assert [name for name, _ in TipoSettings().cache_key()] == TipoSettings.names(lambda i: i.affects_prompt)
    in_infotext = TipoSettings.names(lambda info: info.in_infotext)
    assert "enabled" not in in_infotext and not set(infotext.PASTED_ONLY) & set(in_infotext)
    page = TipoSettings.names(lambda info: info.has_page_default)
    assert "tag_prompt" not in page and "source_prompt" not in page and "temperature" in page
    assert {info.section for _, info, _ in TipoSettings.options()} <= set(SECTIONS)


def test_settings_make_the_pipeline_request_and_sampling():
    s = TipoSettings(tag_length="short", ban_tags="hat", no_formatting=True, temperature=0.7, top_k=12)
    request = s.to_request(tags="1girl, solo", nl="a caption", aspect_ratio=1.5, seed=9)
    assert (request.tag_length, request.nl_length, request.seed, request.aspect_ratio) == (
        Length.SHORT,
        Length.LONG,
        9,
        1.5,
    )
    assert request.tag_list == ["1girl", "solo"] and request.no_formatting and request.format == s.format
    custom = TipoSettings(format="custom", template="<|general|>").to_request()
    assert custom.template == "<|general|>"
    sampling = s.sampling()
    assert (sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p) == (0.7, 12, 0.95, 0.1)
    assert sampling.repetition_penalty == SamplingSettings().repetition_penalty  # no setting: the default
    assert TipoSettings.sampling_values({"top_p": 0.5, "seed": 3}) == {"top_p": 0.5}


def test_an_option_added_as_one_field_reaches_the_sampling():
    @dataclass(frozen=True)
    class WithPenalty(TipoSettings):
        repetition_penalty: float = option(
            1.17, "Repetition penalty", minimum=1.0, maximum=2.0, step=0.01, sampling="repetition_penalty"
        )

    s = WithPenalty(repetition_penalty=1.3)
    assert s.sampling().repetition_penalty == 1.3
    assert WithPenalty.names()[-1] == "repetition_penalty"  # appended: the positional order is kept
    assert WithPenalty.info("repetition_penalty").control == SLIDER
    assert ("repetition_penalty", 1.3) in s.cache_key()
    assert json.loads(s.to_infotext())["repetition_penalty"] == 1.3


def test_settings_valid_alone_are_kept_and_the_others_reported():
    warnings: list[str] = []
    kept = TipoSettings.valid_values({"top_k": "12", "seed": "x", "colour": "red"}, warnings)
    assert kept == {"top_k": 12}
    assert len(warnings) == 1 and "'seed'" in warnings[0]

"""Model registry lookups and the TIPO dialects attached to the models."""

from __future__ import annotations

import dataclasses

import pytest

from kgen.models.registry import (
    MODELS,
    PROTOCOLS,
    UnknownModelError,
    find_model,
    models_for,
    parse_model_choice,
)
from kgen.protocol.dialects import TIPO_V1, TIPO_V2, TIPO_V2_1, TipoDialect, dialect_named
from kgen.protocol.tags import TagCategory

EXPECTED = [
    "TIPO-v2.1-1B-A200M",
    "TIPOv2-1B-A200M",
    "TIPO-500M-ft",
    "TIPO-200M-ft2",
    "TIPO-200M-ft",
    "TIPO-500M",
    "TIPO-200M",
    "TIPO-100M",
    "DanTagGen-delta-rev2",
    "DanTagGen-delta",
    "DanTagGen-gamma",
    "DanTagGen-beta",
    "DanTagGen-alpha",
]


def test_every_requested_model_is_registered_once():
    assert [spec.name for spec in MODELS] == EXPECTED


@pytest.mark.parametrize(
    "text",
    [
        "KBlueLeaf/TIPO-500M-ft",
        "TIPO-500M-ft",
        "tipo-500m-ft",
        "  kblueleaf/tipo-500m-FT ",
        "TIPO-500M-ft | TIPO-500M-ft-F16.gguf",
        "KBlueLeaf/TIPO-500M-ft | tipo-500m-ft-f16.gguf",
    ],
)
def test_find_model_accepts_every_spelling(text):
    assert find_model(text).hub_id == "KBlueLeaf/TIPO-500M-ft"


def test_repo_and_file_form_gives_the_file():
    spec, gguf = parse_model_choice("KBlueLeaf/DanTagGen-delta-rev2 | ggml-model-Q8_0.gguf")
    assert spec.name == "DanTagGen-delta-rev2" and gguf == "ggml-model-Q8_0.gguf"
    assert parse_model_choice("TIPO-100M") == (find_model("TIPO-100M"), None)


def test_a_file_in_a_subfolder_is_found_by_its_base_name_too():
    for text in (
        "TIPO-v2.1-1B-A200M | gguf/TIPO-v2.1-1B-A200M-Q8_0.gguf",
        "TIPO-v2.1-1B-A200M | TIPO-v2.1-1B-A200M-Q8_0.gguf",
    ):
        assert parse_model_choice(text)[1] == "gguf/TIPO-v2.1-1B-A200M-Q8_0.gguf"


def test_every_ui_choice_round_trips():
    for spec in MODELS:
        for choice in spec.choices():
            found, gguf = parse_model_choice(choice)
            assert found is spec
            assert gguf is None or gguf in spec.gguf_files


@pytest.mark.parametrize("text", ["TIPO-9000", "KBlueLeaf/Nope | x.gguf", "", "   "])
def test_unknown_model_error_lists_the_choices(text):
    with pytest.raises(UnknownModelError) as info:
        find_model(text)
    assert "TIPO-500M-ft" in str(info.value) and "DanTagGen-alpha" in str(info.value)


def test_unknown_file_error_lists_the_files():
    with pytest.raises(UnknownModelError, match=r"ggml-model-f16\.gguf") as info:
        parse_model_choice("DanTagGen-beta | model.gguf")
    assert "model.gguf" in str(info.value)


def test_quality_knowledge_and_protocols():
    dtg = models_for("dtg")
    assert {s.name for s in dtg if s.has_quality} == {"DanTagGen-delta-rev2", "DanTagGen-delta"}
    assert all(
        s.gguf_files == ("ggml-model-Q6_K.gguf", "ggml-model-Q8_0.gguf", "ggml-model-f16.gguf") for s in dtg
    )
    assert {s.name for s in models_for("tipo")} == set(EXPECTED[:8])
    assert {s.name for s in models_for("tipo2")} == {"TIPO-v2.1-1B-A200M", "TIPOv2-1B-A200M"}
    with pytest.raises(ValueError, match="protocol"):
        models_for("gpt")


def test_architecture_facts():
    for spec in MODELS:
        assert spec.protocol in PROTOCOLS and spec.context_length >= 1024
        assert spec.gguf_files and all(f.endswith(".gguf") for f in spec.gguf_files)
        if spec.protocol == "tipo2":
            assert spec.vocab_size == 65536 and "MoE" in spec.architecture
        else:
            assert "LLaMA" in spec.architecture
    assert find_model("TIPO-v2.1-1B-A200M").context_length == 4096
    assert find_model("TIPOv2-1B-A200M").context_length == 2048  # trained on 2048-token sequences
    assert dialect_named(find_model("TIPO-v2.1-1B-A200M").dialect) is TIPO_V2_1
    assert dialect_named(find_model("TIPOv2-1B-A200M").dialect) is TIPO_V2
    assert {dialect_named(s.dialect) for s in MODELS if s.protocol == "tipo"} == {TIPO_V1}
    assert all(s.dialect is None for s in models_for("dtg"))


def test_spec_is_validated_and_frozen():
    spec = find_model("TIPO-100M")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="protocol"):
        dataclasses.replace(spec, protocol="gpt")
    with pytest.raises(ValueError, match="dialect"):
        dataclasses.replace(spec, protocol="dtg")


# ---------------------------------------------------------------------------- dialects


def test_v1_keeps_rating_and_quality_text_as_typed():
    assert TIPO_V1.meta_values(TagCategory.RATING, ["general", "Explicit"]) == ["general", "Explicit"]
    assert TIPO_V1.meta_values(TagCategory.QUALITY, ["newest", "masterpiece"]) == ["newest", "masterpiece"]
    assert TIPO_V1.has_quality is False and TIPO_V1.aspect_ratio_key == "aspect ratio"


def test_v2_1_maps_danbooru_ratings_to_tipo_words():
    assert TIPO_V2_1.meta_values(TagCategory.RATING, ["general"]) == ["safe"]
    assert TIPO_V2_1.meta_values(TagCategory.RATING, ["Questionable"]) == ["nsfw"]
    assert TIPO_V2_1.meta_values(TagCategory.RATING, ["explicit", "nsfw"]) == ["nsfw", "explicit"]
    assert TIPO_V2_1.meta_values(TagCategory.RATING, ["sensitive"]) == ["sensitive"]
    assert TIPO_V2_1.meta_values(TagCategory.RATING, ["sfw"]) == ["sfw"]  # unknown words pass through
    assert TIPO_V2.meta_values(TagCategory.RATING, ["general"]) == ["general"]


def test_v2_quality_line_puts_quality_before_era():
    tags = ["newest", "absurdres", "best quality"]
    assert TIPO_V2_1.meta_values(TagCategory.QUALITY, tags) == ["best quality", "newest", "absurdres"]
    assert TIPO_V2.meta_values(TagCategory.GENERAL, ["b", "a"]) == ["b", "a"]


def test_person_count_tags_lead_the_tag_line():
    for dialect in (TIPO_V1, TIPO_V2, TIPO_V2_1):
        assert dialect.general_categories == (TagCategory.SPECIAL, TagCategory.GENERAL)


def test_target_line_per_generation():
    assert TIPO_V1.target_line(None, "long") == "<|long|>"
    assert TIPO_V1.target_line("tag_to_long", "very short") == "<|very_short|> <|tag_to_long|>"
    with_meta = TIPO_V1.target_line("tag_to_short", "short", gen_meta=True)
    assert with_meta == "<|short|> <|tag_to_short|> <|gen_meta|>"
    assert TIPO_V2.target_line("short_to_tag", "long") == "<|long|> <|short_to_tag|>"
    assert TIPO_V2_1.target_line("short_to_long", "long") == "<|short_to_long|>"
    with pytest.raises(ValueError, match="tag_to_short"):
        TIPO_V2_1.target_line("tag_to_short", "long")


def test_field_keys_list_longest_first():
    keys = TIPO_V2_1.field_keys
    assert keys.index("aspect ratio") < keys.index("rating") and "tag" in keys and "long" in keys
    assert isinstance(dataclasses.replace(TIPO_V1, name="custom"), TipoDialect)


def test_models_without_a_transformers_class_offer_only_their_gguf_files(tmp_path):
    from kgen.models.loader import ModelLoadError, build_backend
    from kgen.models.store import ModelRef, ModelStore

    spec = find_model("TIPO-v2.1-1B-A200M")
    assert not spec.transformers_native
    assert spec.choices() and all(" | " in choice for choice in spec.choices())
    store = ModelStore(tmp_path, offline=True)
    labels = [ref.label for ref in store.choices()]
    assert spec.hub_id not in labels and f"{spec.hub_id} | {spec.gguf_files[0]}" in labels
    assert find_model("TIPO-200M").hub_id in labels
    with pytest.raises(ModelLoadError, match="GGUF"):
        build_backend(ModelRef(spec=spec), store)

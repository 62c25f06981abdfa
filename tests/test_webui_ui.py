"""The TIPO accordion builds under the installed gradio (3.41.2 for A1111 1.10, 4.40.0 for Forge): components,
labels, argument order and event wiring. Run in each version with .ci/gradio_matrix.sh."""

from __future__ import annotations

import pytest

gr = pytest.importorskip(
    "gradio", reason="gradio is not installed here; .ci/gradio_matrix.sh runs these tests"
)

from webui_page import build_page, tipo  # noqa: E402

Settings = tipo.TipoSettings
GRADIO_MAJOR = int(gr.__version__.split(".")[0])


class MarkingEngine(tipo.Engine):
    def _generate(self, prompt, settings, seed, aspect_ratio):
        return f"{prompt}, upsampled {seed} ar{aspect_ratio:.1f}", 5


@pytest.fixture(scope="module", params=[False, True], ids=["txt2img", "img2img"])
def page(request):
    return build_page(request.param)


def _dependencies(demo):
    """(trigger ids, event names, fn, input ids, output ids, client js) per event; gradio 3 and 4 alike."""
    found = []
    if isinstance(getattr(demo, "fns", None), dict):  # gradio 4: BlockFunction objects
        for block_fn in demo.fns.values():
            ids = [t[0] for t in block_fn.targets]
            events = [t[1] for t in block_fn.targets]
            found.append(
                (
                    ids,
                    events,
                    block_fn.fn,
                    [c._id for c in block_fn.inputs],
                    [c._id for c in block_fn.outputs],
                    block_fn.js,
                )
            )
        return found
    for index, dep in enumerate(demo.dependencies):  # gradio 3: config dicts + demo.fns list
        ids = [t[0] if isinstance(t, (list, tuple)) else t for t in dep["targets"]]
        events = [t[1] if isinstance(t, (list, tuple)) else dep.get("trigger") for t in dep["targets"]]
        found.append(
            (ids, events, demo.fns[index].fn, list(dep["inputs"]), list(dep["outputs"]), dep.get("js"))
        )
    return found


def _by_elem(page, suffix):
    tab = "img2img" if page.script.is_img2img else "txt2img"
    wanted = f"{tab}_tipo_{suffix}"
    for block in page.demo.blocks.values():
        if getattr(block, "elem_id", None) == wanted:
            return block
    raise AssertionError(f"no component {wanted}")


def test_controls_follow_the_settings_order(page):
    assert len(page.controls) == len(Settings.names())
    assert page.script.args_to - page.script.args_from == len(Settings.names())
    by_name = dict(zip(Settings.names(), page.controls, strict=True))
    assert Settings.from_positional([c.value for c in page.controls]) == Settings()
    assert isinstance(by_name["enabled"], gr.Checkbox)  # InputAccordion is a checkbox on the label
    assert type(by_name["enabled"]).__name__.startswith("InputAccordion")
    assert by_name["enabled"].accordion.label == "TIPO"
    for name, kind in [
        ("timing", gr.Radio),
        ("model", gr.Dropdown),
        ("tag_length", gr.Radio),
        ("nl_length", gr.Radio),
        ("ban_tags", gr.Textbox),
        ("format", gr.Dropdown),
        ("template", gr.Textbox),
        ("seed", gr.Number),
        ("temperature", gr.Slider),
        ("top_p", gr.Slider),
        ("top_k", gr.Slider),
        ("min_p", gr.Slider),
        ("device", gr.Dropdown),
        ("no_formatting", gr.Checkbox),
        ("per_image", gr.Checkbox),
        ("tag_prompt", gr.Textbox),
        ("nl_prompt", gr.Textbox),
    ]:
        assert isinstance(by_name[name], kind), name
    labels = {name: info.label for name, info, _ in Settings.options()}
    for name in (
        "timing",
        "tag_length",
        "nl_length",
        "ban_tags",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "device",
        "no_formatting",
        "per_image",
    ):
        assert by_name[name].label == labels[name]
    assert by_name["tag_prompt"].label == "Tag prompt (TIPO)"
    assert by_name["nl_prompt"].label == "Natural language prompt (TIPO)"
    assert not by_name["source_prompt"].visible and not by_name["source_result"].visible
    assert not by_name["source_variant"].visible
    assert by_name["model"].value in by_name["model"].choices or any(
        isinstance(c, tuple) and c[0] == by_name["model"].value for c in by_name["model"].choices
    )


def _descendants(block):
    for child in getattr(block, "children", None) or []:
        yield child
        yield from _descendants(child)


def test_controls_are_kept_out_of_ui_config_so_the_settings_page_defaults_apply(page):
    # modules/ui_loadsave.py skips such components; otherwise ui-config.json pins their first values.
    assert all(getattr(control, "do_not_save_to_config", False) for control in page.controls)
    assert page.controls[0].accordion.do_not_save_to_config


def test_extra_prompt_boxes_sit_right_under_the_main_prompt(page):
    tab = "img2img" if page.script.is_img2img else "txt2img"
    column = next(
        b for b in page.demo.blocks.values() if getattr(b, "elem_id", None) == f"{tab}_tipo_prompts"
    )
    inside = list(_descendants(column))
    assert (
        page.script.extra_prompts["tag_prompt"] in inside and page.script.extra_prompts["nl_prompt"] in inside
    )
    container = next(b for b in page.demo.blocks.values() if column in (getattr(b, "children", None) or []))
    order = [getattr(child, "elem_id", None) for child in container.children]
    assert order.index(f"{tab}_prompt_row") + 1 == order.index(f"{tab}_tipo_prompts")
    assert order.index(f"{tab}_tipo_prompts") < order.index(f"{tab}_neg_prompt_row")
    assert page.prompt in list(_descendants(container.children[order.index(f"{tab}_prompt_row")]))


def test_event_wiring(page, monkeypatch):
    monkeypatch.setattr(tipo, "engine", lambda: MarkingEngine(backends=object()))
    deps = _dependencies(page.demo)
    by_name = dict(zip(Settings.names(), page.controls, strict=True))

    def find(block, event):
        hits = [d for d in deps if block._id in d[0] and event in d[1]]
        assert hits, f"no {event} handler on {block}"
        return hits

    template_change = find(by_name["format"], "change")[0]
    assert template_change[4] == [by_name["template"]._id]
    shown = template_change[2]("custom", "")
    assert shown["visible"] is True
    assert template_change[2]("Both, tag first (recommend)", "")["visible"] is False

    random_dep = find(_by_elem(page, "random_seed"), "click")[0]
    assert random_dep[2]() == -1 and random_dep[4] == [by_name["seed"]._id]
    shuffle_dep = find(_by_elem(page, "shuffle_seed"), "click")[0]
    assert 0 <= shuffle_dep[2]() < tipo.SEED_MAX
    reuse_dep = find(_by_elem(page, "reuse_seed"), "click")[0]
    assert reuse_dep[2] is None  # client-side: javascript/tipo.js reads the selected image's infotext
    assert "tipoReuseSeed" in str(reuse_dep[5])

    generate = find(_by_elem(page, "generate"), "click")[0]
    assert generate[3][0] == page.prompt._id
    assert generate[4] == [_by_elem(page, "preview")._id, _by_elem(page, "status")._id]
    values = Settings(enabled=True, seed=4).to_positional()
    text, status = generate[2]("1girl, (smile:1.2)", 768, 512, *values)
    assert text == "1girl, (smile:1.2), upsampled 4 ar1.5"
    assert "5 tokens" in status and "seed 4" in status

    use = find(_by_elem(page, "use_preview"), "click")[0]
    assert use[4] == [page.prompt._id] and use[2]("x") == "x"


def test_preview_reports_a_bad_setting_instead_of_failing(page):
    values = Settings().to_positional()
    values[Settings.names().index("ban_tags")] = "(unclosed"
    text, status = page.script.preview("1girl", 512, 512, *values)
    assert text == "1girl" and "(unclosed" in status


def test_infotext_fields_cover_every_control_and_the_prompt(page):
    fields = page.script.infotext_fields
    components = [c for c, _ in fields]
    assert all(control in components for control in page.controls)
    assert page.prompt in components


def test_ui_can_be_built_again_for_the_api(page):
    """The API calls ui() once more inside a new Blocks to read default values
    (api.init_default_script_args)."""
    with gr.Blocks():
        controls = page.script.ui(page.script.is_img2img)
    assert [c.value for c in controls] == [c.value for c in page.controls]


def test_settings_section_has_a_default_for_each_control_and_the_global_options():
    from modules import shared

    tipo.on_ui_settings()
    registered = {k: v for k, v in shared.opts.data_labels.items() if k.startswith("tipo_")}
    keys = set(registered)
    assert {
        "tipo_hide_extra_prompts",
        "tipo_memory",
        "tipo_models_dir",
        "tipo_default_device",
        "tipo_cpu_precision",
    } <= keys
    for name in Settings.names():
        if name not in ("source_prompt", "source_result", "source_variant", "tag_prompt", "nl_prompt"):
            assert f"tipo_default_{name}" in keys, name
    assert all(info.section == ("tipo", "TIPO") for info in registered.values())
    assert registered["tipo_default_temperature"].default == 0.5


def test_every_settings_page_option_builds_its_component_as_the_webui_does():
    from modules import shared
    from modules.ui_settings import create_setting_component

    tipo.on_ui_settings()
    keys = [key for key in shared.opts.data_labels if key.startswith("tipo_")]
    with gr.Blocks():
        built = {key: create_setting_component(key) for key in keys}
    assert built["tipo_default_temperature"].value == 0.5
    assert isinstance(built["tipo_default_temperature"], gr.Slider)
    assert isinstance(built["tipo_default_seed"], gr.Number)
    assert isinstance(built["tipo_default_tag_length"], gr.Dropdown)
    assert isinstance(built["tipo_default_per_image"], gr.Checkbox)


def test_settings_defaults_and_hidden_boxes_reach_the_ui(monkeypatch):
    from modules import shared
    from webui_page import build_page

    monkeypatch.setitem(shared.opts.data, "tipo_default_tag_length", "short")
    monkeypatch.setitem(shared.opts.data, "tipo_default_temperature", 0.8)
    monkeypatch.setitem(shared.opts.data, "tipo_hide_extra_prompts", True)
    page = build_page(False)
    by_name = dict(zip(Settings.names(), page.controls, strict=True))
    assert by_name["tag_length"].value == "short" and by_name["temperature"].value == 0.8
    column = next(
        b for b in page.demo.blocks.values() if getattr(b, "elem_id", None) == "txt2img_tipo_prompts"
    )
    assert column.visible is False


def test_an_added_setting_gets_its_control_from_its_metadata_alone():
    """One field with its metadata is the whole change: the accordion places it, a section the layout does
    not know still gets a (hidden) control, and the positional order is the field order."""
    import dataclasses
    import types

    settings, options = tipo.settings_module, tipo.kgen_module("options")

    @dataclasses.dataclass(frozen=True)
    class Extended(settings.TipoSettings):
        repetition_penalty: float = options.option(
            1.17, "Repetition penalty", minimum=1.0, maximum=2.0, step=0.01, section=options.SAMPLING, row=3
        )
        experimental: str = options.option("", "Experimental", section="a section no layout knows")

    namespace = types.SimpleNamespace(**{**vars(settings), "TipoSettings": Extended})
    ui = dataclasses.replace(tipo.webui_ui(), settings=namespace, defaults=Extended)
    script = tipo.TipoScript()
    script.is_img2img = False
    with gr.Blocks() as demo:
        controls = ui.build(script, False)
    assert len(controls) == len(Extended.names())
    penalty, experimental = controls[-2:]
    assert isinstance(penalty, gr.Slider) and penalty.label == "Repetition penalty" and penalty.value == 1.17
    sampling = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "txt2img_tipo_sampling")
    assert penalty in list(_descendants(sampling))
    assert isinstance(experimental, gr.Textbox) and not experimental.visible

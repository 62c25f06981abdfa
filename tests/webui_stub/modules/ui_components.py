"""Mirrors modules/ui_components.py: A1111 1.10 (gradio 3) and Forge (gradio 4).

``FormRow``/``FormColumn``/``FormGroup`` are layout blocks; ``InputAccordion`` is a hidden checkbox (the
script
input) plus an accordion whose label carries it; ``with InputAccordion(...)`` fills the accordion.
On gradio 4, as in Forge, the class is ``InputAccordionImpl`` built by an ``InputAccordion(...)`` factory, and
gradio's .pyi generation is skipped for classes marked ``webui_do_not_create_gradio_pyi_thank_you`` (Forge
patches
gradio the same way in modules/gradio_extensions.py). Without gradio (hook tests) nothing is defined.
"""

from __future__ import annotations

try:
    import gradio as gr
except ImportError:  # the hook tests run without gradio
    gr = None

GRADIO_4 = gr is not None and int(gr.__version__.split(".")[0]) >= 4

if GRADIO_4:
    import gradio.component_meta as _component_meta

    _original_pyi = _component_meta.create_or_modify_pyi

    def _create_or_modify_pyi(component_class, class_name, events):
        if getattr(component_class, "webui_do_not_create_gradio_pyi_thank_you", False):
            return
        _original_pyi(component_class, class_name, events)

    _component_meta.create_or_modify_pyi = _create_or_modify_pyi


def _client_js(code: str) -> dict:
    return {"js": code} if GRADIO_4 else {"_js": code}


if gr is not None:

    class FormRow(gr.Row):
        webui_do_not_create_gradio_pyi_thank_you = True

    class FormColumn(gr.Column):
        webui_do_not_create_gradio_pyi_thank_you = True

    class FormGroup(gr.Group):
        webui_do_not_create_gradio_pyi_thank_you = True

    class InputAccordionImpl(gr.Checkbox):
        webui_do_not_create_gradio_pyi_thank_you = True
        global_index = 0

        def __init__(self, value=None, setup=False, **kwargs):
            if not setup:
                super().__init__(value=value, **kwargs)
                return
            self.accordion_id = kwargs.get("elem_id")
            if self.accordion_id is None:
                self.accordion_id = f"input-accordion-{InputAccordionImpl.global_index}"
                InputAccordionImpl.global_index += 1
            super().__init__(
                value=value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False}
            )
            self.change(
                fn=None,
                inputs=[self],
                **_client_js(f"(checked) => inputAccordionChecked('{self.accordion_id}', checked)"),
            )
            self.accordion = gr.Accordion(
                **{
                    **kwargs,
                    "elem_id": self.accordion_id,
                    "label": kwargs.get("label", "Accordion"),
                    "elem_classes": ["input-accordion"],
                    "open": value,
                }
            )

        def extra(self):
            return gr.Column(
                elem_id=self.accordion_id + "-extra", elem_classes="input-accordion-extra", min_width=0
            )

        def __enter__(self):
            self.accordion.__enter__()
            return self

        def __exit__(self, exc_type, exc_val, exc_tb):
            self.accordion.__exit__(exc_type, exc_val, exc_tb)

        def get_block_name(self):
            return "checkbox"

    def InputAccordion(value=None, **kwargs):
        return InputAccordionImpl(value=value, setup=True, **kwargs)

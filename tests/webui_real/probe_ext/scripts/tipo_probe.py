"""A test-only extension that does what ADetailer does after an image is made: a second processing pass
(img2img over the image, with the same script runner and script args) whose prompt is the image's final
prompt. It records what the TIPO script left in that pass into the JSON file named by $TIPO_PROBE_OUT."""

import json
import os

from modules import scripts
from modules.processing import StableDiffusionProcessingImg2Img, process_images


class TipoProbe(scripts.Script):
    def title(self):
        return "TIPO probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr

        return [gr.Checkbox(value=False, label="TIPO probe: second pass", visible=False)]

    def postprocess(self, p, processed, enabled=False, *args):
        if not enabled or getattr(p, "_tipo_probe_pass", False):
            return
        script_args = list(p.script_args)
        script_args[self.args_from] = False  # the second pass must not start a third
        second = StableDiffusionProcessingImg2Img(
            init_images=[processed.images[0]],
            resize_mode=0,
            denoising_strength=0.3,
            mask=None,
            prompt=processed.all_prompts[0],
            negative_prompt=processed.all_negative_prompts[0],
            seed=processed.all_seeds[0],
            subseed=processed.all_subseeds[0],
            sampler_name=p.sampler_name,
            steps=1,
            cfg_scale=p.cfg_scale,
            width=p.width,
            height=p.height,
            do_not_save_samples=True,
            do_not_save_grid=True,
        )
        second._tipo_probe_pass = True
        second.scripts = p.scripts
        second.script_args = script_args
        result = process_images(second)
        record = {
            "first_prompt": processed.all_prompts[0],
            "second_prompts": list(result.all_prompts),
            "second_params": {k: str(v) for k, v in second.extra_generation_params.items() if "TIPO" in k},
        }
        with open(os.environ["TIPO_PROBE_OUT"], "w", encoding="utf-8") as handle:
            json.dump(record, handle)

"""Mirrors modules/processing.py (A1111 1.10): the processing objects' prompt fields, ``setup_prompts``
(styles
are applied there, after ``before_process``), hires prompts (``hr_prompt`` '' -> ``prompt``),
``all_seeds``, the
order ``before_process`` -> ``setup_prompts`` -> seeds -> ``process``, and ``create_infotext`` (extra params
quoted with infotext_utils.quote; callables called per image). Sampling is replaced by nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modules import infotext_utils


@dataclass(repr=False)
class StableDiffusionProcessing:
    prompt: str | list = ""
    negative_prompt: str | list = ""
    styles: list = field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    extra_generation_params: dict = field(default_factory=dict)
    override_settings: dict = field(default_factory=dict)
    scripts: Any = None
    script_args: Any = None
    is_api: bool = False

    def __post_init__(self):
        self.all_prompts = None
        self.all_negative_prompts = None
        self.all_seeds = None
        self.all_subseeds = None
        self.main_prompt = None
        self.main_negative_prompt = None
        self.comments = {}

    def comment(self, text):
        self.comments[text] = 1

    def setup_prompts(self):
        if isinstance(self.prompt, list):
            self.all_prompts = self.prompt
        elif isinstance(self.negative_prompt, list):
            self.all_prompts = [self.prompt] * len(self.negative_prompt)
        else:
            self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = self.negative_prompt
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)
        self.all_prompts = [apply_styles(x, self.styles) for x in self.all_prompts]
        self.all_negative_prompts = [
            apply_styles(x, self.styles, negative=True) for x in self.all_negative_prompts
        ]
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]


# A style is "{prompt}"-template text; the stub's style table is set by tests.
style_table: dict[str, tuple[str, str]] = {}


def apply_styles(prompt: str, styles: list, negative: bool = False) -> str:
    for name in styles:
        template = style_table[name][1 if negative else 0]
        prompt = template.replace("{prompt}", prompt) if "{prompt}" in template else f"{prompt}, {template}"
    return prompt


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0
    hr_prompt: str = ""
    hr_negative_prompt: str = ""

    def __post_init__(self):
        super().__post_init__()
        self.all_hr_prompts = None
        self.all_hr_negative_prompts = None

    def setup_prompts(self):
        super().setup_prompts()
        if not self.enable_hr:
            return
        if self.hr_prompt == "":
            self.hr_prompt = self.prompt
        if self.hr_negative_prompt == "":
            self.hr_negative_prompt = self.negative_prompt
        if isinstance(self.hr_prompt, list):
            self.all_hr_prompts = self.hr_prompt
        else:
            self.all_hr_prompts = self.batch_size * self.n_iter * [self.hr_prompt]
        if isinstance(self.hr_negative_prompt, list):
            self.all_hr_negative_prompts = self.hr_negative_prompt
        else:
            self.all_hr_negative_prompts = self.batch_size * self.n_iter * [self.hr_negative_prompt]
        self.all_hr_prompts = [apply_styles(x, self.styles) for x in self.all_hr_prompts]
        self.all_hr_negative_prompts = [
            apply_styles(x, self.styles, True) for x in self.all_hr_negative_prompts
        ]

    def init_hr_infotext(self):
        """What ``init`` registers when hires fix is on: the hires prompt only when it differs."""
        if not self.enable_hr:
            return

        def get_hr_prompt(p, index, prompt_text, **kwargs):
            hr_prompt = p.all_hr_prompts[index]
            return hr_prompt if hr_prompt != prompt_text else None

        self.extra_generation_params["Hires prompt"] = get_hr_prompt


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = field(default_factory=list)
    denoising_strength: float = 0.75


@dataclass
class Processed:
    all_prompts: list
    all_seeds: list
    infotexts: list
    extra_generation_params: dict

    def js(self) -> dict:
        return {
            "all_prompts": self.all_prompts,
            "all_seeds": self.all_seeds,
            "infotexts": self.infotexts,
            "extra_generation_params": self.extra_generation_params,
        }


def get_fixed_seed(seed: int) -> int:
    return 1234 if seed is None or seed == -1 else int(seed)


def create_infotext(p, all_prompts, all_seeds, index=0, use_main_prompt=False):
    params = {
        "Steps": p.steps,
        "CFG scale": p.cfg_scale,
        "Seed": all_seeds[index],
        "Size": f"{p.width}x{p.height}",
    }
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    for key, value in p.extra_generation_params.items():
        params[key] = value(p=p, index=index, prompt_text=prompt_text) if callable(value) else value
    text = ", ".join(
        k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in params.items() if v is not None
    )
    negative = p.all_negative_prompts[index]
    negative_text = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt_text}{negative_text}\n{text}".strip()


def process_images(p: StableDiffusionProcessing) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)
    seed = get_fixed_seed(p.seed)
    p.setup_prompts()
    p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    p.all_subseeds = [int(get_fixed_seed(p.subseed)) + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)
    if isinstance(p, StableDiffusionProcessingTxt2Img):
        p.init_hr_infotext()
    infotexts = [create_infotext(p, p.all_prompts, p.all_seeds, i) for i in range(len(p.all_prompts))]
    return Processed(list(p.all_prompts), list(p.all_seeds), infotexts, dict(p.extra_generation_params))

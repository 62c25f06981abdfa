"""Oracle driver: DanTagGen model inputs built by the reference (tipo-kgen 0.3.1).

Payload: {"prompts": [case, ...], "loops": [case, ...], "raw": [case, ...]}; a case has "tag_map"
(category -> tags; for "raw" cases "tags", a list the reference classifies itself as its WebUI
script does), "target" (length name), "aspect_ratio", "model" (DanTagGen repo name, decides the
quality line) and, for loops, "seed" and "completion" (the first round's continuation). Result:
{"prompts": [text, ...], "loops": [[model inputs of the first two rounds], ...],
"raw": [{"tag_map": ..., "prompt": ...}, ...]}.
"""

import json
import sys

import kgen.executor.dtg as ref_dtg
from kgen.formatter import seperate_tags
from kgen.metainfo import TARGET

import kgen.models as ref_models


class _FakeModel:
    """Stands in for ``generate``: returns prompt + scripted continuation, records the prompt."""

    def __init__(self, completions):
        self.completions = list(completions)
        self.prompts = []

    def __call__(self, prompt="", **_kwargs):
        self.prompts.append(prompt)
        text = self.completions[min(len(self.prompts), len(self.completions)) - 1]
        return prompt + text, 0, 0


def _prompt(case):
    ref_models.current_model_name = case["model"]
    return ref_dtg.apply_dtg_prompt(case["tag_map"], case["target"], case["aspect_ratio"])


def _raw(case):
    tag_map = seperate_tags(case["tags"])
    return {"tag_map": tag_map, "prompt": _prompt({**case, "tag_map": tag_map})}


def _loop(case):
    prompt = _prompt(case)
    fake = _FakeModel([case["completion"], ", unused tag"])
    ref_dtg.generate = fake
    tag_map = case["tag_map"]
    prompt_tags = tag_map.get("special", []) + tag_map.get("general", [])
    steps = ref_dtg.tag_gen(None, None, prompt, prompt_tags, TARGET[case["target"]], [], seed=case["seed"])
    for _ in steps:
        if len(fake.prompts) >= 2:
            break
    return fake.prompts


with open(sys.argv[1], encoding="utf-8") as source:
    payload = json.load(source)
result = {
    "prompts": [_prompt(case) for case in payload["prompts"]],
    "loops": [_loop(case) for case in payload["loops"]],
    "raw": [_raw(case) for case in payload.get("raw", [])],
}
with open(sys.argv[2], "w", encoding="utf-8") as sink:
    json.dump(result, sink)

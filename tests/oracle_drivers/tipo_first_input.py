"""Oracle driver: the first TIPO model input as the reference WebUI extension builds it.

Runs under the reference engine (tipo-kgen 0.3.1). For each case it follows the extension's
``_process``: split the prompt on commas, ``seperate_tags``, ``parse_tipo_request`` (tag length
underscored, NL length passed as the UI label, extra NL caption decided from the format), then
``meta["aspect_ratio"]``, and the first model input is ``apply_tipo_prompt`` for the first task.
Attention / extra-network syntax is not part of the cases (that is WebUI parsing, tested elsewhere).

Input: {"cases": [{prompt, nl, tag_length, nl_length, format, width, height, expand_tags,
expand_nl, tag_first, add_quality}], "parse": [text, ...]}.
Output: {"cases": [{tag_map, operations, first_input, runner_error}], "parse": [dict, ...]}.
"""

import json
import sys

import kgen.executor.tipo as tipo
from kgen.formatter import seperate_tags


def first_input(case):
    all_tags = [tag.strip() for tag in case["prompt"].strip().split(",") if tag.strip()]
    nl_prompt = case["nl"]
    template = case["format"]
    tag_map = seperate_tags(all_tags)
    meta, operations, general, nl_prompt = tipo.parse_tipo_request(
        tag_map,
        nl_prompt,
        expand_tags=case["expand_tags"],
        expand_prompt=case["expand_nl"],
        generate_extra_nl_prompt=(not nl_prompt and "<|extended|>" in template)
        or "<|generated|>" in template,
        tag_first=case["tag_first"],
        tag_length_target=case["tag_length"].replace(" ", "_"),
        nl_length_target=case["nl_length"],
        add_quality=case["add_quality"],
    )
    meta["aspect_ratio"] = f"{case['width'] / case['height']:.1f}"
    result = {"tag_map": tag_map, "operations": operations, "first_input": None, "runner_error": None}
    if operations:
        mode, length, expand = operations[0]
        result["first_input"] = tipo.apply_tipo_prompt(
            meta, general, nl_prompt, mode, length, expand, gen_meta=False
        )
    else:
        # The runner fails before it would call a model; record how.
        try:
            tipo.tipo_runner(meta, operations, general, nl_prompt, seed=1)
        except Exception as exc:
            result["runner_error"] = type(exc).__name__
    return result


def jsonable(parsed):
    return {key: value for key, value in parsed.items()}


def main():
    with open(sys.argv[1], encoding="utf-8") as src:
        payload = json.load(src)
    out = {
        "cases": [first_input(case) for case in payload.get("cases", [])],
        "parse": [jsonable(tipo.parse_tipo_result(text)) for text in payload.get("parse", [])],
    }
    with open(sys.argv[2], "w", encoding="utf-8") as dst:
        json.dump(out, dst)


main()

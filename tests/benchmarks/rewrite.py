"""What a WebUI user waits for: one TIPO rewrite of a prompt, ours vs the reference (tipo-kgen 0.3.1).

    .venv/bin/python tests/benchmarks/rewrite.py            # 2 rounds x 3 rewrites per side and model
    .venv/bin/python tests/benchmarks/rewrite.py --quick    # 1 round x 2 rewrites

Ours: ``kgen.rewriter.Rewriter.rewrite`` as the WebUI script calls it (prompt parsing, request building,
every generate pass, parsing, formatting). The reference: what its WebUI script does around
``kgen.executor.tipo.tipo_runner`` (comma split, ``seperate_tags``, ``parse_tipo_request``, the runner,
``apply_format``), fp16 ``LlamaForCausalLM`` + sdpa as tipo-kgen loads it, in its own interpreter.

Two models: the tiny TIPO-format model (``tests/format_model.py``, real TIPO output, so each side retries
as its protocol says), and the TIPO-200M shape with random weights, where EOS is suppressed and every
generate pass makes exactly ``--tokens`` tokens and each task gets one attempt on both sides (random text
never meets a length target, and retries would multiply the time), so both sides make the same passes.
Each side runs in its own subprocess, sides alternate per round, every rewrite uses a new seed (no cache
hit). The last line is ``rewrite_default_vs_reference=<reference seconds / ours>`` on the TIPO-200M shape.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_DIR.parent
for path in (str(TESTS_DIR), str(REPO_ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

PROMPT = "1girl, solo, (long hair:1.1), smile, <lora:style:0.6>, outdoors, masterpiece"
TAG_LENGTH, NL_LENGTH = "short", "short"


# ------------------------------------------------------------------------------------------------ ours


class Capped:
    """A backend whose generate passes make exactly ``cap`` tokens (0: as asked); counts passes/tokens."""

    def __init__(self, backend, cap: int) -> None:
        self.backend, self.cap = backend, cap
        self.passes = self.tokens = 0

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def generate(self, prompts, settings, seeds):
        if self.cap:
            settings = replace(settings, max_new_tokens=self.cap, stop_on_eos=False)
        out = self.backend.generate(prompts, settings, seeds)
        self.passes += len(out)
        self.tokens += sum(c.completion_tokens for c in out)
        return out


def worker_ours(model: str, cap: int, seeds: list[int]) -> dict:
    from contextlib import contextmanager

    from kgen.engine.hf import HFBackend
    from kgen.rewriter import Rewriter
    from kgen.settings import TipoSettings

    if model == "format":
        from format_model import load_format_model

        backend = Capped(HFBackend(*load_format_model()), cap)
    else:
        import functools

        from kgen import pipeline

        backend = Capped(HFBackend.from_pretrained(model), cap)
        pipeline.RetryPolicy = functools.partial(pipeline.RetryPolicy, max_attempts=1)  # one pass per task

    class Loaded:  # the WebUI's LoaderBackends, with the model already loaded
        @contextmanager
        def session(self, settings):
            yield backend, None

    settings = TipoSettings(enabled=True, tag_length=TAG_LENGTH, nl_length=NL_LENGTH)
    Rewriter(Loaded()).rewrite(PROMPT, settings, 10**6, 1.0)  # warm-up
    backend.passes = backend.tokens = 0
    seconds = []
    for seed in seeds:
        # A new rewriter each time: the one before may have given PROMPT back as its output, and a
        # rewriter never rewrites its own outputs.
        rewriter = Rewriter(Loaded())
        started = time.perf_counter()
        rewriter.rewrite(PROMPT, settings, seed, 1.0)
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "passes": backend.passes, "tokens": backend.tokens}


# ------------------------------------------------------------------------------------------------ reference

REFERENCE_DRIVER = r"""
import json, sys, time
sys.path.append(sys.argv[2])  # tests/, after the reference: format_model only
import torch
import kgen.executor.tipo as tipo
from kgen import models
from kgen.formatter import apply_format, seperate_tags
from kgen.patch import patch
from transformers import LlamaForCausalLM
args = json.loads(sys.argv[1])
if args["model"] == "format":
    from format_model import load_format_model
    model, models.tokenizer = load_format_model()
    models.text_model = patch(model.half())
else:
    models.load_model(args["model"], device="cpu")
options = {"max_new_tokens": args["cap"], "suppress_tokens": [2], "max_retry": 0} if args["cap"] else {}
def rewrite(seed):
    tags = [tag.strip() for tag in args["prompt"].split(",") if tag.strip()]
    tag_map = seperate_tags(tags)
    template = args["template"]
    meta, operations, general, nl_prompt = tipo.parse_tipo_request(
        tag_map, "", expand_tags=True, expand_prompt=True,
        generate_extra_nl_prompt="<|extended|>" in template or "<|generated|>" in template,
        tag_first=True, tag_length_target=args["tag_length"].replace(" ", "_"),
        nl_length_target=args["nl_length"], add_quality=True)
    meta["aspect_ratio"] = "1.0"
    parsed, timing = tipo.tipo_runner(meta, operations, general, nl_prompt, temperature=0.5, top_p=0.95,
                                      min_p=0.1, top_k=80, seed=seed, **options)
    apply_format(parsed, template)
    return timing
rewrite(10**6)
seconds, passes, tokens = [], 0, 0
for seed in args["seeds"]:
    t = time.perf_counter(); timing = rewrite(seed); seconds.append(time.perf_counter() - t)
    passes += timing.get("generate_pass", 0); tokens += timing.get("generated_tokens", 0)
print("RESULT " + json.dumps({"seconds": seconds, "passes": passes, "tokens": tokens}))
"""


def run_reference(model: str, cap: int, seeds: list[int]) -> dict:
    from oracle import reference_dir

    from kgen.rewriter import RequestPlan
    from kgen.settings import TipoSettings

    settings = TipoSettings(enabled=True, tag_length=TAG_LENGTH, nl_length=NL_LENGTH)
    template = RequestPlan.of(PROMPT, settings, 0, 1.0).request.template
    payload = {"model": model, "cap": cap, "seeds": seeds, "prompt": PROMPT, "template": template}
    payload.update(tag_length=TAG_LENGTH, nl_length=NL_LENGTH)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(reference_dir()), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    with tempfile.TemporaryDirectory() as cwd:
        cmd = [sys.executable, "-c", REFERENCE_DRIVER, json.dumps(payload), str(TESTS_DIR)]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return result_of(proc, "reference")


def run_ours(model: str, cap: int, seeds: list[int]) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps({"model": model, "cap": cap, "seeds": seeds})]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    return result_of(subprocess.run(cmd, capture_output=True, text=True, env=env), "ours")


def result_of(proc: subprocess.CompletedProcess, side: str) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{side} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 2 rewrites per side and model, 16 tokens/pass"
    )
    parser.add_argument("--tokens", type=int, default=32, help="tokens per generate pass, TIPO-200M shape")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        print("RESULT " + json.dumps(worker_ours(job["model"], job["cap"], job["seeds"])))
        return
    rounds, per_round = (1, 2) if args.quick else (2, 3)
    if args.quick:
        args.tokens = min(args.tokens, 16)
    from format_model import format_model_dir
    from tiny_models import save_random_model, tipo_200m_config

    format_model_dir()  # built once (a few minutes), then cached in .cache/format_model
    print(
        f"one WebUI rewrite ({TAG_LENGTH} tags, {NL_LENGTH} NL), {rounds}x{per_round} per side, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    print(f"{'model':<30}{'side':<11}{'median s':>10}{'passes/rewrite':>16}{'tokens/rewrite':>16}")
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="kgen-rewrite-bench-") as tmp:
        folder = Path(tmp) / "tipo-200m-random"
        save_random_model(folder, tipo_200m_config(), seed=0)
        for label, model, cap in (
            ("format model", "format", 0),
            ("TIPO-200M random", str(folder), args.tokens),
        ):
            runs = {"ours": [], "reference": []}
            for round_ in range(rounds):
                seeds = [1 + round_ * per_round + i for i in range(per_round)]
                runs["ours"].append(run_ours(model, cap, seeds))
                runs["reference"].append(run_reference(model, cap, seeds))
            medians = {}
            for side, results in runs.items():
                seconds = [s for r in results for s in r["seconds"]]
                count = len(seconds)
                medians[side] = statistics.median(seconds)
                passes = sum(r["passes"] for r in results) / count
                tokens = sum(r["tokens"] for r in results) / count
                name = label if side == "ours" else ""
                if cap and side == "ours":
                    name = f"{label} ({cap} tok/pass)"
                print(f"{name:<30}{side:<11}{medians[side]:>10.2f}{passes:>16.1f}{tokens:>16.1f}", flush=True)
            ratios[model] = medians["reference"] / medians["ours"]
            print(f"{'':<30}reference / ours = {ratios[model]:.2f}x", flush=True)
    print(f"rewrite_default_vs_reference={ratios[str(folder)]:.2f}")


if __name__ == "__main__":
    main()

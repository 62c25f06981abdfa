"""Decode speed on the TIPO-200M shape (random weights): our loop vs the reference, model.generate, llama.cpp.

    .venv/bin/python tests/benchmarks/decode.py            # full run: 128 new tokens, median of 3
    .venv/bin/python tests/benchmarks/decode.py --quick    # 32 new tokens, one repeat, fewer configurations

Every configuration runs in its own subprocess (so peak memory is its own) on the same saved weights and the
same ~46-token prompt; EOS is never sampled, so each run makes exactly ``--new-tokens`` tokens. Prefill is the
time to the first new token; decode ms/token is the rest divided by the remaining tokens (for a batch: ms
per step, and tokens/s counts all rows). llama.cpp runs the same weights converted to GGUF f16
(``llamacpp-f16``) and quantized from that to q8_0 by llama.cpp's own quantizer (``llamacpp-q8_0``).

The run ends with three batch-1 decode tokens/s ratios, ours / theirs (``nan`` where one side is missing):

    default_vs_reference=<x>       ours-auto (what HFBackend picks with no dtype option) vs tipo-kgen 0.3.1
    default_vs_llamacpp_f16=<y>    ours-auto vs llama.cpp f16
    int8_vs_llamacpp_q8_0=<z>      ours-int8 (opt-in dtype="int8": quantized matrices) vs llama.cpp q8_0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_DIR.parent
for path in (str(TESTS_DIR), str(REPO_ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

PROMPT_TOKENS = 46
EOS_ID = 2

# configuration name -> the backend's dtype argument (or "auto-python")
OURS = {
    "ours-auto": "auto",  # what HFBackend picks by itself for this machine
    "ours-auto-python": "auto-python",  # the same with the forward run by Python, not TorchScript
    "ours-fp32": "float32",
    "ours-bf16": "bfloat16",
    "ours-fp16": "float16",
    "ours-int8": "int8",  # opt-in quantization: decoding over int8 matrices, not the model's exact math
}
LLAMACPP = {"llamacpp-f16": "f16", "llamacpp-q8_0": "q8_0"}  # configuration -> GGUF weight type
CPU_ONLY = {"ours-int8", *LLAMACPP}  # FBGEMM matrices; llama.cpp here is a CPU build
QUICK = [
    "ours-auto/1",
    "ours-auto/8",
    "ours-int8/1",
    "ours-int8/8",
    "reference/1",
    "llamacpp-f16/1",
    "llamacpp-q8_0/1",
]


def all_configs() -> list[str]:
    configs = [f"{name}/{batch}" for name in OURS for batch in (1, 8)]
    return [*configs, "hf-generate-fp32/1", "reference/1", "llamacpp-f16/1", "llamacpp-q8_0/1"]


# ------------------------------------------------------------------------------------------------ setup


def prepare(folder: Path) -> str:
    """Save the random TIPO-200M-shaped model + tiny tokenizer; return a prompt of PROMPT_TOKENS tokens."""
    from tiny_models import TIPO_LIKE_PROMPT, save_random_model, tipo_200m_config
    from transformers import AutoTokenizer

    save_random_model(folder, tipo_200m_config(), seed=0)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    text = TIPO_LIKE_PROMPT
    while len(tokenizer(text)["input_ids"]) > PROMPT_TOKENS and len(text) > 1:
        text = text[:-1]
    return text


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def summarize(first: list[float], total: list[float], new_tokens: int, batch: int) -> dict:
    prefill, whole = statistics.median(first), statistics.median(total)
    step = max(whole - prefill, 1e-9) / (new_tokens - 1)
    return {
        "prefill_ms": prefill * 1e3,
        "decode_ms": step * 1e3,
        "tokens_per_s": batch / step,
        "peak_mib": peak_mib(),
    }


# ------------------------------------------------------------------------------------------------ workers


def worker_ours(
    folder: Path, prompt: str, policy: str, batch: int, new_tokens: int, repeats: int, device: str
) -> dict:
    import torch

    from kgen.engine.hf import HFBackend
    from kgen.generation import SamplingSettings

    dtype = None if policy in ("auto", "auto-python") else policy
    backend = HFBackend.from_pretrained(folder, device=device, dtype=dtype, reuse_prefix=False)
    backend.runner.script = policy != "auto-python"  # the forward compiled by TorchScript, or not
    ids = [backend.encode(prompt)] * batch
    seeds = list(range(batch))

    def run(n: int) -> None:
        settings = SamplingSettings(max_new_tokens=n, stop_on_eos=False)
        out = backend.generate_ids(ids, settings, seeds)
        assert all(len(row) == n for row in out)

    run(4)
    first = [timed(lambda: run(1)) for _ in range(repeats)]
    total = [timed(lambda: run(new_tokens)) for _ in range(repeats)]
    result = summarize(first, total, new_tokens, batch)
    result["prompt_tokens"] = len(ids[0])
    policy = backend.policy
    key = backend.runner.copy_for(batch, prompt=False)
    fbgemm = key[1].removeprefix("fbgemm-") if key[1].startswith("fbgemm-") else None
    matrices = f" over FBGEMM {fbgemm} matrices" if fbgemm else ""
    quantized = " (QUANTIZED, opt-in)" if fbgemm == "int8" else ""
    loop = "TorchScript" if isinstance(backend.runner.executable(key), torch.jit.ScriptModule) else "Python"
    result["note"] = (
        f"{loop} loop, prefill {policy.prefill}, decode {policy.for_rows(batch)}{matrices}"
        f"{quantized}, cache {policy.cache_for_rows(batch)}"
    ).replace("torch.", "")
    if backend.device.type == "cuda":
        result["note"] += f", GPU peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    return result


def worker_hf_generate(
    folder: Path, prompt: str, batch: int, new_tokens: int, repeats: int, device: str
) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(folder)).eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    input_ids = torch.tensor([tokenizer(prompt)["input_ids"]] * batch, device=device)

    def run(n: int) -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                max_new_tokens=n,
                min_new_tokens=n,
                temperature=0.5,
                top_k=80,
                top_p=0.95,
                repetition_penalty=1.17,
                pad_token_id=EOS_ID,
            )

    run(4)
    first = [timed(lambda: run(1)) for _ in range(repeats)]
    total = [timed(lambda: run(new_tokens)) for _ in range(repeats)]
    return summarize(first, total, new_tokens, batch)


def quantize_q8_0(f16: Path, out: Path) -> Path:
    """``f16`` GGUF quantized to q8_0 by llama.cpp's own quantizer (the one llama-cpp-python bundles)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), params) != 0:
        raise RuntimeError("llama_model_quantize failed")
    return out


def worker_llamacpp(
    folder: Path, prompt: str, new_tokens: int, repeats: int, threads: int, weights: str
) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"error": "not installed"}
    from gguf_convert import convert_llama_to_gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    gguf = convert_llama_to_gguf(folder, tokenizer, folder / "model-f16.gguf", dtype="f16")
    if weights == "q8_0":
        gguf = quantize_q8_0(gguf, folder / "model-q8_0.gguf")
    n_threads = threads or os.cpu_count()
    llm = Llama(str(gguf), n_ctx=2048, n_threads=n_threads, n_threads_batch=n_threads, verbose=False, seed=0)
    ids = tokenizer(prompt)["input_ids"]

    def run(n: int) -> None:
        llm.reset()
        out = llm.create_completion(
            ids,
            max_tokens=n,
            temperature=0.5,
            top_k=80,
            top_p=0.95,
            min_p=0.1,
            repeat_penalty=1.17,
            logit_bias={EOS_ID: -1e9},
        )
        assert out["usage"]["completion_tokens"] == n, out["usage"]

    run(4)
    first = [timed(lambda: run(1)) for _ in range(repeats)]
    total = [timed(lambda: run(new_tokens)) for _ in range(repeats)]
    return summarize(first, total, new_tokens, 1)


REFERENCE_DRIVER = r"""
import json, resource, statistics, sys, time
import torch
from kgen import models
from kgen.generate import generate
args = json.loads(sys.argv[1])
if args["threads"]:
    torch.set_num_threads(args["threads"])
models.load_model(args["folder"], device=args["device"])  # fp16 LlamaForCausalLM + sdpa, as tipo-kgen does
def run(n):
    out, prompt_tokens, completion_tokens = generate(prompt=args["prompt"], max_new_tokens=n, seed=0,
                                                     suppress_tokens=[2])
    assert completion_tokens == n, completion_tokens
run(4)
first, total = [], []
for _ in range(args["repeats"]):
    t = time.perf_counter(); run(1); first.append(time.perf_counter() - t)
for _ in range(args["repeats"]):
    t = time.perf_counter(); run(args["new_tokens"]); total.append(time.perf_counter() - t)
print("RESULT " + json.dumps({"first": first, "total": total,
      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_reference(
    folder: Path, prompt: str, new_tokens: int, repeats: int, threads: int, device: str
) -> dict:
    from oracle import OracleUnavailable, reference_dir

    try:
        target = reference_dir()
    except OracleUnavailable as exc:
        return {"error": str(exc)[:80]}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    payload = json.dumps(
        {
            "folder": str(folder),
            "prompt": prompt,
            "new_tokens": new_tokens,
            "repeats": repeats,
            "threads": threads,
            "device": device,
        }
    )
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [sys.executable, "-c", REFERENCE_DRIVER, payload],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": f"reference failed: {proc.stderr.strip()[-300:]}"}
    data = json.loads(lines[-1][len("RESULT ") :])
    result = summarize(data["first"], data["total"], new_tokens, 1)
    result["peak_mib"] = data["peak_mib"]
    return result


def run_worker(args: argparse.Namespace) -> dict:
    folder, name, batch = Path(args.folder), *args.worker.split("/")
    batch = int(batch)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if name in OURS:
        return worker_ours(folder, args.prompt, OURS[name], batch, args.new_tokens, args.repeats, args.device)
    if name == "hf-generate-fp32":
        return worker_hf_generate(folder, args.prompt, batch, args.new_tokens, args.repeats, args.device)
    if name in LLAMACPP:
        if args.device != "cpu":
            return {"error": "CPU only in this benchmark"}
        return worker_llamacpp(
            folder, args.prompt, args.new_tokens, args.repeats, args.threads, LLAMACPP[name]
        )
    raise SystemExit(f"unknown configuration {name}")


def measure(config: str, folder: Path, prompt: str, args: argparse.Namespace) -> dict:
    if config.startswith("reference/"):
        return run_reference(folder, prompt, args.new_tokens, args.repeats, args.threads, args.device)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        config,
        "--folder",
        str(folder),
        "--prompt",
        prompt,
        "--new-tokens",
        str(args.new_tokens),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": f"failed: {proc.stderr.strip()[-300:]}"}
    return json.loads(lines[-1][len("RESULT ") :])


# ------------------------------------------------------------------------------------------------ main


def device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="32 new tokens, 1 repeat, fewer configurations")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for every engine (0: each engine's default, all cores)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (ours, the reference, generate)")
    parser.add_argument(
        "--only", default="", help="comma-separated configurations, e.g. ours-auto/1,reference/1"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--prompt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args)))
        return
    if args.quick:
        args.new_tokens, args.repeats = min(args.new_tokens, 32), 1
    configs = args.only.split(",") if args.only else (QUICK if args.quick else all_configs())
    if args.device != "cpu":
        configs = [c for c in configs if c.split("/")[0] not in CPU_ONLY]

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="kgen-decode-bench-") as tmp:
        folder = Path(tmp) / "tipo-200m-random"
        prompt = prepare(folder)
        print(
            f"TIPO-200M shape, random weights, {args.new_tokens} new tokens, median of {args.repeats}, "
            f"{os.cpu_count()} CPUs, device {device_name(args.device)}",
            flush=True,
        )
        header = f"{'configuration':<22}{'batch':>6}{'prefill ms':>12}{'decode ms/tok':>15}{'tokens/s':>10}"
        print(header + f"{'peak MiB':>10}  notes", flush=True)
        for config in configs:
            result = results[config] = measure(config, folder, prompt, args)
            name, batch = config.split("/")
            print(
                f"{name:<22}{batch:>6}{fmt(result.get('prefill_ms'), '.1f'):>12}"
                f"{fmt(result.get('decode_ms'), '.2f'):>15}{fmt(result.get('tokens_per_s'), '.1f'):>10}"
                f"{fmt(result.get('peak_mib'), '.0f'):>10}  {result.get('error', result.get('note', ''))}",
                flush=True,
            )

    def rate(config: str) -> float:
        return results.get(config, {}).get("tokens_per_s", math.nan)

    for name in OURS:
        one, eight = rate(f"{name}/1"), rate(f"{name}/8")
        if not math.isnan(one) and not math.isnan(eight):
            print(f"{name}: batch 8 aggregate = {eight / one:.2f}x batch 1")
    ref = results.get("reference/1", {})
    ours = results.get("ours-auto/1", {})
    if "prefill_ms" in ref and "prefill_ms" in ours:
        print(
            f"prefill: ours-auto {ours['prefill_ms']:.1f} ms vs reference {ref['prefill_ms']:.1f} ms "
            f"({ours['prefill_ms'] / ref['prefill_ms']:.2f}x)"
        )
    print(f"default_vs_reference={rate('ours-auto/1') / rate('reference/1'):.2f}")
    print(f"default_vs_llamacpp_f16={rate('ours-auto/1') / rate('llamacpp-f16/1'):.2f}")
    print(f"int8_vs_llamacpp_q8_0={rate('ours-int8/1') / rate('llamacpp-q8_0/1'):.2f}")


if __name__ == "__main__":
    main()

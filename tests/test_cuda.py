"""The transformers backend on a CUDA GPU (skipped without one): same results as ``model.generate``,
reproducible in the GPU's 16-bit policy, and the memory policy really gives the VRAM back."""

import pytest
import torch
from test_hf_backend import PROMPTS as ALL_PROMPTS
from test_hf_backend import reference_greedy
from tiny_models import build_tiny_llama

from kgen.engine.hf import HFBackend
from kgen.engine.transformer.forward import HAS_FUSED_RMS_NORM
from kgen.engine.transformer.policy import DTypePolicy
from kgen.generation import SamplingSettings
from kgen.models.loader import BackendCache, LoadedModel, LoadOptions, MemoryPolicy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch")

GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=24)
SAMPLED = SamplingSettings(max_new_tokens=24, stop_on_eos=False, temperature=1.0)
PROMPTS = ALL_PROMPTS[:5]


def test_auto_policy_is_one_16_bit_dtype_on_the_gpu(model, tokenizer):
    backend = HFBackend(model, tokenizer, device="cuda")
    policy = backend.policy
    assert policy.prefill == policy.decode == policy.batch_decode
    assert policy.decode in (torch.bfloat16, torch.float16)
    assert backend.runner.weights(policy.decode).head.weight.is_cuda


@pytest.mark.parametrize("runner", ["llama", "transformers"])
def test_float32_greedy_equals_model_generate_on_the_gpu(model, tokenizer, runner):
    gpu_model = build_tiny_llama(vocab_size=len(tokenizer), seed=0).to("cuda")
    backend = HFBackend(gpu_model, tokenizer, device="cuda", dtype="float32", runner=runner)
    for prompt in PROMPTS[:3]:  # batches of one
        ids = backend.encode(prompt)
        ref = reference_greedy(
            gpu_model,
            torch.tensor([ids], device="cuda"),
            torch.ones(1, len(ids), dtype=torch.long, device="cuda"),
            GREEDY,
        )
        assert backend.generate_ids([ids], GREEDY, [0]) == ref
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True).to("cuda")
    ref = reference_greedy(gpu_model, enc.input_ids, enc.attention_mask, GREEDY)
    assert backend.generate_ids([backend.encode(p) for p in PROMPTS], GREEDY, [0] * len(PROMPTS)) == ref


def test_gpu_sampling_is_reproducible_and_seeded(model, tokenizer):
    backend = HFBackend(model, tokenizer, device="cuda")
    # Reused keys/values of a previous request would differ in the last bits on a GPU.
    assert not backend.reuses_prefix
    first = backend.generate(PROMPTS, SAMPLED, list(range(5)))
    again = backend.generate(PROMPTS, SAMPLED, list(range(5)))
    assert [c.text for c in first] == [c.text for c in again]
    other = backend.generate(PROMPTS, SAMPLED, list(range(10, 15)))
    assert [c.text for c in first] != [c.text for c in other]
    assert all(c.completion_tokens == 24 for c in first)


def test_float32_batch_equals_single_runs_on_the_gpu(model, tokenizer):
    batched = HFBackend(model, tokenizer, device="cuda", dtype="float32", reuse_prefix=False)
    single = HFBackend(model, tokenizer, device="cuda", dtype="float32", max_batch_size=1, reuse_prefix=False)
    seeds = list(range(100, 105))
    together = batched.generate(PROMPTS, SAMPLED, seeds)
    alone = single.generate(PROMPTS, SAMPLED, seeds)
    assert [c.text for c in together] == [c.text for c in alone]


def test_gpu_16_bit_output_stays_close_to_float32(model, tokenizer):
    """bf16/fp16 on the GPU changes rounding, not the model: greedy tokens mostly agree with float32."""
    exact = HFBackend(model, tokenizer, device="cuda", dtype="float32")
    fast = HFBackend(model, tokenizer, device="cuda")
    ids = [exact.encode(p) for p in PROMPTS]
    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=8, stop_on_eos=False)
    a, b = exact.generate_ids(ids, settings, [0] * 5), fast.generate_ids(ids, settings, [0] * 5)
    assert sum(x[0] == y[0] for x, y in zip(a, b, strict=True)) >= 4


def test_moving_between_gpu_and_cpu_frees_vram_and_keeps_results(tmp_path, model, tokenizer):
    folder = tmp_path / "m"
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    backend = HFBackend.from_pretrained(folder, device="cuda", reuse_prefix=False)
    on_gpu = torch.cuda.memory_allocated()
    assert on_gpu > before
    first = backend.generate(PROMPTS[:2], SAMPLED, [1, 2])
    backend.to("cpu")
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() <= before + 1024 * 1024
    on_cpu = backend.generate(PROMPTS[:2], SAMPLED, [1, 2])
    assert all(c.completion_tokens == 24 for c in on_cpu)
    backend.to("cuda")
    assert [c.text for c in backend.generate(PROMPTS[:2], SAMPLED, [1, 2])] == [c.text for c in first]


@pytest.mark.parametrize("memory", [MemoryPolicy.OFFLOAD, MemoryPolicy.UNLOAD])
def test_memory_policy_returns_the_vram_after_each_request(tmp_path, model, tokenizer, memory):
    def builder(ref, store, options):
        backend = HFBackend(
            build_tiny_llama(vocab_size=len(tokenizer), seed=0),
            tokenizer,
            device=options.device,
            keep_model=False,
        )
        return LoadedModel(backend, ref, options.device)

    cache = BackendCache(store=None, builder=builder)  # type: ignore[arg-type]
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    options = LoadOptions(device="cuda", memory=memory)
    texts = []
    for _ in range(2):
        with cache.session("TIPO-200M-ft2", options) as backend:
            assert torch.cuda.memory_allocated() > before
            texts.append([c.text for c in backend.generate(PROMPTS[:2], SAMPLED, [3, 4])])
        torch.cuda.empty_cache()
        assert torch.cuda.memory_allocated() <= before + 1024 * 1024
    assert texts[0] == texts[1]


def test_policy_for_cuda_never_packs_for_onednn():
    policy = DTypePolicy.for_device(torch.device("cuda"))
    assert not policy.pack and policy.decode_matrices is None


@pytest.mark.skipif(not HAS_FUSED_RMS_NORM, reason="TorchScript cannot compile the forward with this PyTorch")
def test_compiled_forward_computes_the_eager_forward_s_bits_on_the_gpu(model, tokenizer):
    backend = HFBackend(model, tokenizer, device="cuda")
    plain = HFBackend(model, tokenizer, device="cuda")
    plain.runner.script = False
    key = backend.runner.copy_for(1, prompt=False)
    assert isinstance(backend.runner.executable(key), torch.jit.ScriptModule)
    assert not isinstance(plain.runner.executable(key), torch.jit.ScriptModule)
    prompts = [backend.encode(p) for p in PROMPTS[:3]]
    for rows, seeds in ((prompts, [1, 2, 3]), (prompts[:1], [4])):
        assert backend.generate_ids(rows, SAMPLED, seeds) == plain.generate_ids(rows, SAMPLED, seeds)

"""The transformers backend on a tiny random LLaMA: equal to ``model.generate``, reproducible, batch-safe."""

import pytest
import torch
from tiny_models import TIPO_LIKE_PROMPT

from kgen.engine.hf import Batch, HFBackend
from kgen.engine.transformer.forward import HAS_FUSED_RMS_NORM
from kgen.engine.transformer.matrices import Fp16PackedMatrix, Int8Matrix, OneDnnMatrix
from kgen.engine.transformer.policy import DTypePolicy, fbgemm_available, packed_linear_available, policy_for
from kgen.generation import Backend, SamplingSettings

GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=24, stop_on_eos=False)
GREEDY_TO_EOS = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=24)
EOS = 2
SAMPLED = SamplingSettings(max_new_tokens=24, stop_on_eos=False, temperature=1.0)
PROMPTS = [
    TIPO_LIKE_PROMPT,
    "rating: general\nartist: <|empty|>\ngeneral: 1girl, solo,",
    "1girl",
    "a girl with long hair is standing in a field of flowers",
    "target: <|short|> <|tag|>\ngeneral: smile, blush",
    "meta: highres",
    TIPO_LIKE_PROMPT + " blue eyes, skirt,",
    "copyrights: touhou\ncharacters: hakurei reimu",
]


@pytest.fixture(scope="module")
def backend(model, tokenizer):
    return HFBackend(model, tokenizer, device="cpu", dtype="float32")


def reference_greedy(model, input_ids, attention_mask, settings):
    """``model.generate`` greedy continuations, each cut after its first EOS."""
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        do_sample=False,
        max_new_tokens=settings.max_new_tokens,
        repetition_penalty=settings.repetition_penalty,
        pad_token_id=EOS,
    )
    rows = out[:, input_ids.shape[1] :].tolist()
    return [row[: row.index(EOS) + 1] if EOS in row else row for row in rows]


def test_is_a_backend(backend):
    assert isinstance(backend, Backend)
    assert backend.context_length == 512
    assert backend.count_tokens("1girl") == len(backend.encode("1girl"))
    assert backend.encode("1girl")[0] == 1


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_equals_model_generate_batch_of_one(backend, model, penalty):
    settings = SamplingSettings(temperature=0, repetition_penalty=penalty, max_new_tokens=24)
    for prompt in PROMPTS[:4]:
        ids = backend.encode(prompt)
        ours = backend.generate_ids([ids], settings, [0])[0]
        mask = torch.ones(1, len(ids), dtype=torch.long)
        ref = reference_greedy(model, torch.tensor([ids]), mask, settings)
        assert ours == ref[0]


@pytest.mark.parametrize("runner", ["llama", "transformers"])
def test_greedy_equals_model_generate_padded_batch(model, tokenizer, runner):
    backend = HFBackend(model, tokenizer, device="cpu", dtype="float32", runner=runner)
    enc = tokenizer(PROMPTS[:5], return_tensors="pt", padding=True)
    assert (enc.attention_mask == 0).any()
    ref = reference_greedy(model, enc.input_ids, enc.attention_mask, GREEDY_TO_EOS)
    ids = [backend.encode(p) for p in PROMPTS[:5]]
    assert backend.generate_ids(ids, GREEDY_TO_EOS, [0] * 5) == ref


def test_seed_gives_same_output_every_run(model, tokenizer):
    def fresh() -> HFBackend:
        return HFBackend(model, tokenizer, device="cpu", dtype="float32")

    first = fresh().generate(PROMPTS[:2], SAMPLED, [11, 12])
    again = fresh().generate(PROMPTS[:2], SAMPLED, [11, 12])
    assert [c.text for c in first] == [c.text for c in again]
    other = fresh().generate(PROMPTS[:2], SAMPLED, [13, 14])
    assert [c.text for c in first] != [c.text for c in other]


def test_batch_of_eight_equals_eight_single_runs(model, tokenizer):
    batched = HFBackend(model, tokenizer, device="cpu", dtype="float32", reuse_prefix=False)
    seeds = list(range(100, 108))
    together = batched.generate(PROMPTS, SAMPLED, seeds)
    single = HFBackend(model, tokenizer, device="cpu", dtype="float32", max_batch_size=1, reuse_prefix=False)
    alone = single.generate(PROMPTS, SAMPLED, seeds)
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in alone]


def test_prefix_reuse_gives_identical_output(model, tokenizer):
    settings = SamplingSettings(max_new_tokens=16, stop_on_eos=False)
    retries = [TIPO_LIKE_PROMPT + " red eyes,", TIPO_LIKE_PROMPT + " skirt, hat,"]
    reusing = HFBackend(model, tokenizer, device="cpu", dtype="float32")
    fresh = HFBackend(model, tokenizer, device="cpu", dtype="float32", reuse_prefix=False)
    reusing.generate([TIPO_LIKE_PROMPT], settings, [1])
    for seed, prompt in enumerate(retries):
        a = reusing.generate([prompt], settings, [seed])
        assert reusing.last_reused_tokens[0] >= len(reusing.encode(TIPO_LIKE_PROMPT)) - 2
        b = fresh.generate([prompt], settings, [seed])
        assert a == [c.__class__(**{**c.__dict__, "seconds": a[0].seconds}) for c in b]
    batch = reusing.generate(retries, settings, [5, 6])
    assert min(reusing.last_reused_tokens) > 0
    assert [c.text for c in batch] == [c.text for c in fresh.generate(retries, settings, [5, 6])]


def test_eos_stops_each_row(model, tokenizer):
    probe = HFBackend(model, tokenizer, device="cpu", dtype="float32")
    ids = [probe.encode(p) for p in PROMPTS[:3]]
    free = probe.generate_ids(ids, GREEDY, [0, 0, 0])
    stop_token = free[0][5]  # pretend the 6th token of row 0 is the end of sequence
    backend = HFBackend(model, tokenizer, device="cpu", dtype="float32", eos_token_id=stop_token)
    stopping = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=24)
    out = backend.generate(PROMPTS[:3], stopping, [0, 0, 0])
    for row, completion in zip(free, out, strict=True):
        if stop_token in row:
            assert completion.finished
            assert completion.completion_tokens == row.index(stop_token) + 1
        else:
            assert not completion.finished
            assert completion.completion_tokens == 24
    assert out[0].completion_tokens == 6


def test_completion_text_is_the_continuation_only(backend, tokenizer):
    out = backend.generate(["1girl, solo,"], GREEDY, [0])[0]
    ids = backend.generate_ids([backend.encode("1girl, solo,")], GREEDY, [0])[0]
    full = tokenizer.decode(backend.encode("1girl, solo,")[1:] + ids)
    assert full.endswith(out.text)
    assert "<s>" not in out.text and "</s>" not in out.text
    assert out.prompt_tokens == len(backend.encode("1girl, solo,"))
    assert out.completion_tokens == 24 and out.seconds > 0


def test_prompt_longer_than_context_is_rejected(backend):
    with pytest.raises(ValueError, match="context"):
        backend.generate(["1girl, " * 400], GREEDY, [0])


def test_new_tokens_are_capped_by_context(model, tokenizer):
    backend = HFBackend(model, tokenizer, device="cpu", dtype="float32")
    prompt = "1girl, " * 100
    n = backend.count_tokens(prompt)
    out = backend.generate([prompt], SamplingSettings(max_new_tokens=500, stop_on_eos=False), [0])[0]
    assert out.completion_tokens == 512 - n


@pytest.mark.parametrize(
    "policy",
    [
        DTypePolicy.uniform(torch.bfloat16),
        DTypePolicy(prefill=torch.bfloat16, decode=torch.float16, batch_decode=torch.bfloat16),
        DTypePolicy(
            prefill=torch.bfloat16,
            decode=torch.float32,
            batch_decode=torch.bfloat16,
            cache=torch.float32,
            decode_matrices="float16",
        ),
        DTypePolicy(
            torch.float32, torch.float32, torch.float32, decode_matrices="float16"
        ),  # CPUs without bf16
        DTypePolicy.for_device(torch.device("cpu")),  # what this machine gets by default
    ],
    ids=[
        "bf16",
        "bf16-prefill-fp16-decode",
        "bf16-prefill-fbgemm-fp16-decode",
        "fp32-fbgemm-fp16-decode",
        "auto",
    ],
)
def test_reduced_precision_policies_run(model, tokenizer, policy):
    backend = HFBackend(model, tokenizer, device="cpu", dtype="float32")
    backend.runner.policy = policy
    one = backend.generate(PROMPTS[:1], SAMPLED, [3])
    two = backend.generate(PROMPTS[:2], SAMPLED, [3, 4])
    assert one[0].completion_tokens == two[0].completion_tokens == 24
    assert backend.generate(PROMPTS[:1], SAMPLED, [3])[0].text == one[0].text


def teacher_forced_log_probs(backend: HFBackend, rows: int) -> torch.Tensor:
    """Next-token log-probabilities (steps, rows, vocab) after the prompts and after 8 fixed tokens."""
    prompts = [backend.encode(p) for p in PROMPTS[:rows]]
    batch = Batch(prompts, max(len(p) for p in prompts) + 9, torch.device("cpu"), EOS)
    cache = backend.runner.new_cache(rows, batch.capacity)
    steps = [backend._prefill(batch, cache, 0)]
    for slot in range(batch.width, batch.capacity - 1):
        steps.append(backend._decode(batch, cache, torch.full((rows,), 5 + slot % 7), slot))
    return torch.stack(steps).log_softmax(-1)


# Bounds on the worst step's KL(float32 || policy) and largest log-probability error, about 4x what the
# tiny model measures (KL: bf16 0.005, FBGEMM float16 1e-5, int8 0.036; error: 0.39, 0.014, 1.1). One
# layer's MLP output matrix at half scale measures KL 0.22-0.28 and error 2.0; a transposed attention
# output matrix KL 4 and error 11.
FP16_MATRICES = DTypePolicy(torch.float32, torch.float32, torch.float32, decode_matrices="float16")
ACCURACY = [
    (DTypePolicy.uniform(torch.bfloat16), 0.02, 1.0),
    (DTypePolicy(prefill=torch.bfloat16, decode=torch.float16, batch_decode=torch.bfloat16), 0.02, 1.0),
    (FP16_MATRICES, 1e-4, 0.05),
    (DTypePolicy(torch.float32, torch.float32, torch.float32, decode_matrices="int8"), 0.1, 1.6),
]


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize(
    ("policy", "max_kl", "max_error"), ACCURACY, ids=["bf16", "fp16", "fbgemm-fp16", "int8"]
)
def test_reduced_precision_stays_close_to_float32(model, tokenizer, policy, max_kl, max_error, rows):
    if policy.decode_matrices and not fbgemm_available(policy.decode_matrices):
        pytest.skip(f"this torch has no FBGEMM {policy.decode_matrices} linear")
    exact = teacher_forced_log_probs(HFBackend(model, tokenizer, device="cpu", dtype="float32"), rows)
    backend = HFBackend(model, tokenizer, device="cpu", dtype="float32")
    backend.runner.policy = policy
    reduced = teacher_forced_log_probs(backend, rows)
    kl = (exact.exp() * (exact - reduced)).sum(-1)
    assert float(kl.max()) < max_kl
    assert float((exact - reduced).abs().max()) < max_error


def test_from_pretrained_folder_and_single_file(tmp_path, model, tokenizer):
    folder = tmp_path / "m"
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    loaded = HFBackend.from_pretrained(folder, device="cpu", dtype="float32")
    # The folder's tokenizer may be the fast one, which splits around added tokens differently.
    exact = HFBackend(model, loaded.tokenizer, device="cpu", dtype="float32")
    expected = exact.generate(PROMPTS[:2], GREEDY, [0, 0])
    assert [c.text for c in loaded.generate(PROMPTS[:2], GREEDY, [0, 0])] == [c.text for c in expected]
    weights = folder / "model.safetensors"
    assert loaded.model is None  # from_pretrained keeps only the runner's weight copies
    loaded.runner.policy = DTypePolicy.uniform(torch.bfloat16)  # derived from the float32 copy
    assert loaded.generate(PROMPTS[:1], GREEDY, [0])[0].completion_tokens == 24
    single = HFBackend.from_pretrained(weights, device="cpu", dtype="float32")
    assert single.name == "model"
    assert [c.text for c in single.generate(PROMPTS[:2], GREEDY, [0, 0])] == [c.text for c in expected]


def test_a_loaded_backend_grows_tgts_trees_like_one_that_keeps_its_model(tmp_path, model, tokenizer):
    from kgen.engine.tgts import sample_variants
    from kgen.variants import supports_tgts, variant_sampler

    folder = tmp_path / "m"
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    loaded = HFBackend.from_pretrained(folder, device="cpu", dtype="float32")
    assert loaded.model is None
    sampler = variant_sampler(loaded, "rw-mcts")
    assert supports_tgts(loaded)
    settings = SamplingSettings(max_new_tokens=12)
    kept = HFBackend(model, loaded.tokenizer, device="cpu", dtype="float32")
    expected = sample_variants(kept, PROMPTS[0], 4, settings, seed=3, policy="rw-mcts").completions()
    assert [c.text for c in sampler(PROMPTS[0], 4, settings, 3)] == [c.text for c in expected]


def test_unknown_dtype_is_named(model, tokenizer):
    with pytest.raises(ValueError, match="int3"):
        HFBackend(model, tokenizer, device="cpu", dtype="int3")


@pytest.mark.skipif(not packed_linear_available(), reason="this torch has no oneDNN prepacked linear")
def test_prepacked_float32_weights_match_model_generate(model, tokenizer):
    backend = HFBackend(model, tokenizer, device="cpu", dtype="float32")
    backend.runner.policy = DTypePolicy(torch.float32, torch.float32, torch.float32, pack=True)
    assert isinstance(backend.runner.weights(torch.float32).head, OneDnnMatrix)
    enc = tokenizer(PROMPTS[:3], return_tensors="pt", padding=True)
    ref = reference_greedy(model, enc.input_ids, enc.attention_mask, GREEDY_TO_EOS)
    assert backend.generate_ids([backend.encode(p) for p in PROMPTS[:3]], GREEDY_TO_EOS, [0] * 3) == ref


@pytest.mark.skipif(not fbgemm_available("float16"), reason="this torch has no FBGEMM float16 linear")
def test_fbgemm_float16_matrix_is_a_float32_product_with_rounded_weights():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 24, generator=generator)
    x = torch.randn(2, 3, 24, generator=generator)
    bias = torch.randn(40, generator=generator)
    matrix = Fp16PackedMatrix(weight, bias)
    rounded = weight.half().float()
    assert torch.equal(matrix.dense()[0], rounded)
    expected = torch.nn.functional.linear(x, rounded, bias).reshape(-1, 40)
    torch.testing.assert_close(matrix(x.reshape(-1, 24)), expected)


@pytest.mark.skipif(not fbgemm_available("int8"), reason="this torch has no FBGEMM int8 linear")
def test_int8_matrix_stays_within_half_a_step_per_channel():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(40, 64, generator=generator) * torch.linspace(0.01, 3.0, 40).unsqueeze(1)
    matrix = Int8Matrix(weight, None)
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert bool(((matrix.dense()[0] - weight).abs() <= step / 2 + 1e-6).all())
    x = torch.randn(5, 64, generator=generator)
    exact = torch.nn.functional.linear(x, weight)
    assert (matrix(x) - exact).norm() < 0.05 * exact.norm()


@pytest.mark.skipif(not fbgemm_available("int8"), reason="this torch has no FBGEMM int8 linear")
def test_int8_option_decodes_reproducibly(model, tokenizer):
    backend = HFBackend(model, tokenizer, device="cpu", dtype="int8")
    assert backend.policy.decode_matrices == "int8"
    first = backend.generate(PROMPTS[:1], SAMPLED, [5])[0]
    assert first.completion_tokens == 24
    assert backend.generate(PROMPTS[:1], SAMPLED, [5])[0].text == first.text
    backend.runner.to(torch.device("cpu"))  # rebuilds every copy, quantized ones included
    assert backend.generate(PROMPTS[:1], SAMPLED, [5])[0].text == first.text


def test_int8_is_a_cpu_option():
    with pytest.raises(ValueError, match="CPU"):
        policy_for(torch.device("cuda"), "int8")


@pytest.mark.skipif(not HAS_FUSED_RMS_NORM, reason="TorchScript cannot compile the forward with this PyTorch")
@pytest.mark.parametrize("dtype", ["float32", None, "int8"], ids=["fp32", "auto", "int8"])
@pytest.mark.parametrize("rows", [1, 3])
def test_compiled_forward_computes_the_eager_forward_s_bits(model, tokenizer, dtype, rows):
    if dtype == "int8" and not fbgemm_available("int8"):
        pytest.skip("this torch has no FBGEMM int8 linear")
    compiled = HFBackend(model, tokenizer, device="cpu", dtype=dtype)
    plain = HFBackend(model, tokenizer, device="cpu", dtype=dtype)
    plain.runner.script = False
    for prompt in (True, False):
        key = compiled.runner.copy_for(rows, prompt)
        assert isinstance(compiled.runner.executable(key), torch.jit.ScriptModule)
        assert not isinstance(plain.runner.executable(key), torch.jit.ScriptModule)
    prompts = [compiled.encode(p) for p in PROMPTS[:rows]]
    batch = Batch(prompts, max(len(p) for p in prompts) + 6, torch.device("cpu"), EOS)
    backends = (compiled, plain)
    caches = [backend.runner.new_cache(rows, batch.capacity) for backend in backends]
    logits = [backend._prefill(batch, cache, 0) for backend, cache in zip(backends, caches, strict=True)]
    assert torch.equal(*logits)
    tokens = logits[0].argmax(-1)
    for slot in range(batch.width, batch.capacity - 1):
        logits = [
            backend._decode(batch, cache, tokens, slot)
            for backend, cache in zip(backends, caches, strict=True)
        ]
        assert torch.equal(*logits), slot
        assert torch.equal(caches[0].keys[-1][:, :, : slot + 1], caches[1].keys[-1][:, :, : slot + 1])
        tokens = logits[0].argmax(-1)

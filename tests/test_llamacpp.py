"""The llama.cpp backend: optional import, the GGUF converter, and a tiny random LLaMA run by llama.cpp.

The llama.cpp runs compare against the same weights in transformers: greedy decoding must agree token for
token (f32 GGUF, and f16 GGUF against the transformers model with f16-rounded weights).
"""

from __future__ import annotations

import copy
import struct
import sys
from pathlib import Path

import pytest
from tiny_models import BOS_ID, EOS_ID, TIPO_LIKE_PROMPT

from kgen.engine.llamacpp import LlamaCppUnavailableError, import_llama_cpp, llama_cpp_available
from kgen.generation import Backend, SamplingSettings

GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=24, stop_on_eos=True)
PROMPTS = (
    TIPO_LIKE_PROMPT,
    "rating: general\ntarget: <|short|> <|nl|>\ngeneral: 1girl, solo, smile,",
    "a girl with long hair is standing",
)


# ---- without llama-cpp-python


def test_missing_llama_cpp_gives_one_error_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    assert not llama_cpp_available()
    with pytest.raises(LlamaCppUnavailableError, match=r"pip install llama-cpp-python") as info:
        import_llama_cpp()
    assert isinstance(info.value, ImportError)


def test_broken_llama_cpp_install_is_reported_as_unavailable(monkeypatch):
    class BrokenFinder:
        def find_spec(self, name, path=None, target=None):
            if name == "llama_cpp":
                raise OSError("libllama.so: cannot open shared object file")
            return None

    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenFinder(), *sys.meta_path])
    with pytest.raises(LlamaCppUnavailableError, match=r"failed to import.*libllama\.so"):
        import_llama_cpp()


def test_kgen_imports_without_llama_cpp(tmp_path):
    import subprocess

    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"
        "import kgen, kgen.engine.llamacpp, kgen.models.loader, kgen.models.store\n"
        "assert 'torch' not in sys.modules, 'importing the loader must not import torch'\n"
        "print('ok')"
    )
    repo_root = str(Path(__file__).resolve().parents[1])
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env={"PYTHONPATH": repo_root},
    )
    assert result.stdout.strip() == "ok", result.stderr


# ---- the converter (needs gguf + torch + transformers, not llama.cpp)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny tokenizer + model, and their f32 / f16 GGUF conversions."""
    pytest.importorskip("gguf", reason="the gguf package (test extra) is not installed")
    pytest.importorskip("torch")
    from gguf_convert import convert_llama_to_gguf
    from tiny_models import build_tiny_llama, build_tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny_gguf")
    tokenizer = build_tiny_tokenizer(root / "tokenizer")
    model = build_tiny_llama(vocab_size=len(tokenizer))
    paths = {
        dtype: convert_llama_to_gguf(model, tokenizer, root / f"tiny-{dtype}.gguf", dtype)
        for dtype in ("f32", "f16")
    }
    return tokenizer, model, paths


def test_converted_file_has_llama_cpp_layout(tiny):
    import gguf

    tokenizer, model, paths = tiny
    reader = gguf.GGUFReader(str(paths["f16"]))
    names = {tensor.name for tensor in reader.tensors}
    assert {"token_embd.weight", "output_norm.weight", "output.weight"} <= names
    for layer in range(model.config.num_hidden_layers):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
                     "attn_norm", "ffn_norm"):  # fmt: skip
            assert f"blk.{layer}.{part}.weight" in names
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode() for i in field.data]
    assert len(tokens) == model.config.vocab_size
    assert tokens[BOS_ID] == "<s>" and tokens[EOS_ID] == "</s>"
    long_id = tokenizer.convert_tokens_to_ids("<|long|>")
    assert tokens[long_id] == "<|long|>"
    token_types = reader.fields["tokenizer.ggml.token_type"]
    assert int(token_types.parts[token_types.data[long_id]][0]) == int(gguf.TokenType.USER_DEFINED)


def test_converting_a_saved_folder_equals_converting_the_model(tiny, tmp_path):
    import gguf
    import numpy as np
    from gguf_convert import convert_llama_to_gguf

    tokenizer, model, paths = tiny
    model.save_pretrained(str(tmp_path / "saved"), safe_serialization=True)
    out = convert_llama_to_gguf(tmp_path / "saved", tokenizer, tmp_path / "from-folder.gguf", dtype="f16")
    mine = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(out)).tensors}
    expected = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(paths["f16"])).tensors}
    assert mine.keys() == expected.keys()
    assert all(np.array_equal(mine[name], expected[name]) for name in mine)


def test_rotary_permutation_inverts_transformers_layout():
    np = pytest.importorskip("numpy")
    from gguf_convert import _unpermute_rotary

    n_heads, head_dim, cols = 2, 8, 3
    weight = np.arange(n_heads * head_dim * cols, dtype=np.float32).reshape(n_heads * head_dim, cols)
    out = _unpermute_rotary(weight, n_heads)
    # Row i of head h in llama.cpp order pairs (x_j, x_{j+half}) of transformers' rotate-half layout.
    half = head_dim // 2
    for head in range(n_heads):
        for j in range(half):
            assert (out[head * head_dim + 2 * j] == weight[head * head_dim + j]).all()
            assert (out[head * head_dim + 2 * j + 1] == weight[head * head_dim + half + j]).all()


def test_converter_refuses_unsupported_models(tiny, tmp_path):
    from gguf_convert import convert_llama_to_gguf

    tokenizer, model, _ = tiny
    mish = copy.deepcopy(model)
    mish.config.hidden_act = "mish"
    with pytest.raises(ValueError, match="needs silu"):
        convert_llama_to_gguf(mish, tokenizer, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="dtype"):
        convert_llama_to_gguf(model, tokenizer, tmp_path / "x.gguf", dtype="q4")


# ---- running through llama.cpp


@pytest.fixture(scope="module")
def llama_cpp_module():
    return pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)"
    )


@pytest.fixture(scope="module")
def backends(tiny, llama_cpp_module):
    from kgen.engine.llamacpp import LlamaCppBackend, LlamaCppOptions

    _, _, paths = tiny
    options = LlamaCppOptions(n_ctx=256, n_threads=1)
    made = {dtype: LlamaCppBackend(path, options) for dtype, path in paths.items()}
    yield made
    for backend in made.values():
        backend.close()


def prompt_ids(tokenizer, text):
    return [BOS_ID, *tokenizer(text, add_special_tokens=False).input_ids]


def hf_greedy(model, ids, max_new_tokens):
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=EOS_ID, eos_token_id=EOS_ID)  # fmt: skip
    new = out[0, len(ids) :].tolist()
    return new[: new.index(EOS_ID) + 1] if EOS_ID in new else new


def f16_rounded(model):
    import torch

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for param in rounded.parameters():
            if param.ndim >= 2:
                param.copy_(param.half().float())
    return rounded


def test_f32_greedy_tokens_equal_transformers_generate(tiny, backends):
    tokenizer, model, _ = tiny
    for text in PROMPTS:
        ids = prompt_ids(tokenizer, text)
        expected = hf_greedy(model, ids, GREEDY.max_new_tokens)
        got, stopped = backends["f32"].generate_ids(ids, GREEDY, seed=0)
        assert got + ([EOS_ID] if stopped else []) == expected, text


def test_f16_greedy_tokens_are_transformers_argmax_up_to_f16_rounding(tiny, backends):
    """llama.cpp also rounds activations to f16 in f16 matmuls: a token may differ only at a near-tie."""
    import torch

    tokenizer, model, _ = tiny
    reference = f16_rounded(model)
    exact = 0
    for text in PROMPTS:
        ids = prompt_ids(tokenizer, text)
        got, stopped = backends["f16"].generate_ids(ids, GREEDY, seed=0)
        chosen = got + ([EOS_ID] if stopped else [])
        with torch.no_grad():  # teacher-forced along llama.cpp's tokens: one forward pass
            logits = reference(torch.tensor([ids + chosen])).logits[0, len(ids) - 1 : -1]
        best = logits.max(dim=-1)
        gaps = best.values - logits[torch.arange(len(chosen)), torch.tensor(chosen)]
        assert float(gaps.max()) < 0.01, (text, gaps.tolist())
        exact += int((best.indices == torch.tensor(chosen)).sum())
    assert exact >= 0.9 * len(PROMPTS) * GREEDY.max_new_tokens  # near-ties are rare


PLAIN_PROMPTS = (
    "a girl with long hair is standing",
    "meta: absurdres, highres\nrating: general\ngeneral: 1girl, solo, long hair, twintails, aqua eyes,",
    "general: hatsune miku, vocaloid, 2 girls, 1.0",
)


def piece_text(tokenizer, ids):
    """The text of SentencePiece pieces, invalid UTF-8 replaced per Python's rules (as the backend does)."""
    raw = b"".join(
        bytes([int(piece[3:5], 16)]) if piece.startswith("<0x") else piece.replace("\u2581", " ").encode()
        for piece in tokenizer.convert_ids_to_tokens(ids)
    )
    return raw.decode("utf-8", errors="replace")


def test_tokenizer_matches_sentencepiece_and_text_matches_pieces(tiny, backends):
    """Plain text tokenizes as SentencePiece does (the vocabulary's source). Text right after an added token
    (``<|long|>``) is another matter: llama.cpp gives each fragment a SentencePiece space prefix,
    transformers 4.30 strips spaces around added tokens and transformers 5 keeps them as they are."""
    import sentencepiece

    tokenizer, model, paths = tiny
    sp = sentencepiece.SentencePieceProcessor(
        model_file=str(paths["f32"].parent / "tokenizer" / "tokenizer.model")
    )
    backend = backends["f32"]
    long_id = tokenizer.convert_tokens_to_ids("<|long|>")
    assert backend.tokenize("a girl <|long|>")[-1] == long_id
    girl = tokenizer.convert_tokens_to_ids("\u2581girl")
    assert backend.detokenize([girl, long_id, girl, EOS_ID]) == " girl<|long|> girl"  # spaces are kept
    assert backend.tokenize("") == [BOS_ID]
    for text in PLAIN_PROMPTS:
        ids = [BOS_ID, *sp.encode(text)]
        assert backend.tokenize(text) == ids, text
        assert backend.count_tokens(text) == len(ids)
        expected = hf_greedy(model, ids, GREEDY.max_new_tokens)
        completion = backend.generate([text], GREEDY, [0])[0]
        body = [t for t in expected if t != EOS_ID]
        assert completion.text == piece_text(tokenizer, body)
        assert completion.prompt_tokens == len(ids)
        assert completion.completion_tokens == len(expected)
        assert completion.finished == (expected[-1] == EOS_ID)
        assert completion.seconds > 0


def test_is_a_backend(backends):
    assert isinstance(backends["f32"], Backend)
    assert backends["f32"].context_length == 256


def test_seed_decides_sampling(backends):
    backend = backends["f16"]
    settings = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_new_tokens=24,
                                repetition_penalty=1.0, stop_on_eos=False)  # fmt: skip
    runs = [backend.generate([PROMPTS[2]], settings, [seed])[0].text for seed in (7, 7, 8, 7)]
    assert runs[0] == runs[1] == runs[3]
    assert runs[2] != runs[0]
    special = [backend.generate([PROMPTS[2]], settings, [2**32 - 1])[0].text for _ in range(2)]
    assert special[0] == special[1]  # llama.cpp's "random seed" value is never passed through


def test_batch_equals_single_runs_in_any_order(backends):
    backend = backends["f16"]
    settings = SamplingSettings(max_new_tokens=16)
    seeds = [3, 1, 4, 1]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[0]]
    batch = backend.generate(prompts, settings, seeds)
    singles = [
        backend.generate([p], settings, [s])[0] for p, s in reversed(list(zip(prompts, seeds, strict=True)))
    ]
    assert [c.text for c in batch] == [c.text for c in reversed(singles)]


def test_max_new_tokens_cuts_and_reports_unfinished(backends):
    settings = SamplingSettings(temperature=0, max_new_tokens=5, stop_on_eos=False)
    completion = backends["f32"].generate([PROMPTS[0]], settings, [0])[0]
    assert completion.completion_tokens == 5 and not completion.finished


def test_prompt_beyond_context_is_refused(backends):
    with pytest.raises(ValueError, match="context"):
        backends["f32"].generate(["tag, " * 300], GREEDY, [0])
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        backends["f32"].generate(["a", "b"], GREEDY, [0])


def test_loader_builds_llama_cpp_backend_for_gguf(tiny, llama_cpp_module, tmp_path):
    from kgen.engine.llamacpp import LlamaCppBackend
    from kgen.models.errors import CorruptModelFileError
    from kgen.models.loader import BackendCache, LoadOptions
    from kgen.models.store import ModelStore

    _, _, paths = tiny
    store = ModelStore(paths["f16"].parent, offline=True, models=())
    cache = BackendCache(store)
    with cache.session(
        store.resolve_untrusted(paths["f16"].name), LoadOptions(device="cpu", n_ctx=512)
    ) as backend:
        assert isinstance(backend.backend, LlamaCppBackend)
        assert backend.context_length == 512
        assert backend.generate([PROMPTS[2]], GREEDY, [0])[0].completion_tokens > 0
    cache.unload()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 0))
    with pytest.raises(CorruptModelFileError):
        cache.get(broken, LoadOptions(device="cpu"))

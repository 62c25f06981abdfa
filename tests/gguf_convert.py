"""Convert a transformers LLaMA model + its tokenizer to a GGUF file that llama.cpp can run.

Used by the llama.cpp backend tests and by the decode benchmark (llama.cpp f16 on the same weights).
Needs ``gguf``, ``numpy``, ``torch`` and ``transformers``.

    convert_llama_to_gguf(model_or_folder, tokenizer, "out.gguf", dtype="f16")

Layout written: tensors named as llama.cpp's ``llama`` architecture expects (``token_embd``, ``blk.N.attn_q``
...), with q/k rows permuted from the transformers rotary layout (halves) back to llama.cpp's (interleaved
pairs); the SentencePiece vocabulary (``tokenizer.ggml.model = "llama"``) with scores and token types, or
for a byte-level BPE tokenizer (the format model's) llama.cpp's ``gpt2`` vocabulary with its merges.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")

_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


@dataclass(frozen=True)
class GGUFVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]  # gguf.TokenType values


def convert_llama_to_gguf(
    model_dir_or_model: Any, tokenizer: Any, out_path: str | Path, dtype: str = "f16"
) -> Path:
    """Write ``out_path``. ``"f16"``: 2-D weights in float16, norms in float32; ``"f32"``: all float32."""
    import gguf

    if dtype not in ("f16", "f32"):
        raise ValueError(f"dtype must be 'f16' or 'f32', not {dtype!r}")
    model = _load_model(model_dir_or_model)
    config = model.config
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"llama.cpp's llama architecture needs silu, this model uses {config.hidden_act}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("biases in attention/MLP are not supported by this converter")
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    # From the weights: transformers < 4.31 keeps a num_key_value_heads attribute but ignores it (no GQA).
    n_kv = model.model.layers[0].self_attn.k_proj.weight.shape[0] // head_dim
    tied = bool(getattr(config, "tie_word_embeddings", False))

    out_path = Path(out_path)
    writer = gguf.GGUFWriter(str(out_path), "llama")
    writer.add_name(Path(getattr(config, "_name_or_path", "") or "tiny-llama").name or "tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_vocab_size(config.vocab_size)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    writer.add_file_type(int(file_type))

    byte_level = byte_level_bpe_vocab(tokenizer, config.vocab_size)
    if byte_level is not None:  # GPT-2 style: llama.cpp's "gpt2" tokenizer with its merges
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(byte_level.tokens)
        writer.add_token_types(byte_level.types)
        writer.add_token_merges(byte_level.merges)
    else:
        vocab = tokenizer_vocab(tokenizer, config.vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(vocab.tokens)
        writer.add_token_scores(vocab.scores)
        writer.add_token_types(vocab.types)
    for name, token_id in _special_ids(tokenizer).items():
        getattr(writer, f"add_{name}_token_id")(token_id)
    add_bos, add_eos = _adds_bos_eos(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)

    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = _gguf_name(hf_name)
        array = tensor.detach().float().cpu().numpy()
        if name.endswith("attn_q.weight"):
            array = _unpermute_rotary(array, n_head)
        elif name.endswith("attn_k.weight"):
            array = _unpermute_rotary(array, n_kv)
        if dtype == "f16" and array.ndim >= 2:
            array = array.astype(np.float16)
        writer.add_tensor(name, np.ascontiguousarray(array))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _load_model(model_dir_or_model: Any) -> Any:
    if isinstance(model_dir_or_model, (str, Path)):
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM.from_pretrained(str(model_dir_or_model))  # any dtype: tensors go via float32
    return model_dir_or_model


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[hf_name]
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
    if match is None or match.group(2) not in _LAYER_TENSORS:
        raise ValueError(f"no llama.cpp name for tensor {hf_name!r}")
    return f"blk.{match.group(1)}.{_LAYER_TENSORS[match.group(2)]}"


def _unpermute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """transformers keeps each head's rotary dims as [first halves | second halves]; llama.cpp interleaves."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


# ---- tokenizer


def tokenizer_vocab(tokenizer: Any, vocab_size: int) -> GGUFVocab:
    """Pieces, scores and types for llama.cpp's SentencePiece tokenizer, padded to ``vocab_size``."""
    import gguf

    pieces = _sentencepiece_pieces(tokenizer) or _tokenizers_pieces(tokenizer)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-1000.0] * vocab_size
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for token_id, (piece, score, kind) in pieces.items():
        if token_id < vocab_size:
            tokens[token_id], scores[token_id], types[token_id] = piece, score, int(kind)
    for token_id, added in _added_tokens(tokenizer).items():
        if token_id >= vocab_size:
            raise ValueError(f"added token {added.content!r} has id {token_id} >= vocab size {vocab_size}")
        if types[token_id] in (int(gguf.TokenType.NORMAL), int(gguf.TokenType.UNUSED)) or added.special:
            kind = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
            tokens[token_id], scores[token_id], types[token_id] = added.content, 0.0, int(kind)
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        types[unk] = int(gguf.TokenType.UNKNOWN)
    return GGUFVocab(tokens, scores, types)


@dataclass(frozen=True)
class ByteLevelVocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]


def byte_level_bpe_vocab(tokenizer: Any, vocab_size: int) -> ByteLevelVocab | None:
    """Tokens, types and merges of a byte-level BPE tokenizer (GPT-2 style), or None for other kinds."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return None
    data = json.loads(backend.to_str())
    if data["model"]["type"] != "BPE" or (data.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        return None
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for piece, token_id in data["model"]["vocab"].items():
        if token_id < vocab_size:
            tokens[token_id], types[token_id] = piece, int(gguf.TokenType.NORMAL)
    for token_id, added in _added_tokens(tokenizer).items():
        kind = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
        tokens[token_id], types[token_id] = added.content, int(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    return ByteLevelVocab(tokens, types, merges)


def _piece_type(piece: str, sp: Any = None, token_id: int = 0) -> Any:
    import gguf

    if sp is not None:
        if sp.is_unknown(token_id):
            return gguf.TokenType.UNKNOWN
        if sp.is_control(token_id):
            return gguf.TokenType.CONTROL
        if sp.is_unused(token_id):
            return gguf.TokenType.UNUSED
        if sp.is_byte(token_id):
            return gguf.TokenType.BYTE
    elif _BYTE_PIECE.match(piece):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def _sentencepiece_pieces(tokenizer: Any) -> dict[int, tuple[str, float, Any]] | None:
    sp = getattr(tokenizer, "sp_model", None)
    vocab_file = getattr(tokenizer, "vocab_file", None)
    if sp is None and vocab_file and str(vocab_file).endswith(".model") and Path(vocab_file).is_file():
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(vocab_file))
    if sp is None:
        return None
    return {
        i: (sp.id_to_piece(i), float(sp.get_score(i)), _piece_type("", sp, i))
        for i in range(sp.get_piece_size())
    }


def _tokenizers_pieces(tokenizer: Any) -> dict[int, tuple[str, float, Any]]:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ValueError(f"cannot read the vocabulary of {type(tokenizer).__name__}")
    model = json.loads(backend.to_str())["model"]
    if model["type"] == "Unigram":
        return {
            i: (piece, float(score), _piece_type(piece)) for i, (piece, score) in enumerate(model["vocab"])
        }
    if model["type"] != "BPE":
        raise ValueError(
            f"cannot convert a {model['type']} tokenizer to llama.cpp's SentencePiece vocabulary"
        )
    # llama.cpp merges the adjacent pair with the highest score first: score = -(merge rank).
    rank = {}
    for index, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, index)
    return {
        token_id: (piece, -float(rank[piece] + 1) if piece in rank else 0.0, _piece_type(piece))
        for piece, token_id in model["vocab"].items()
    }


@dataclass(frozen=True)
class _Added:
    content: str
    special: bool


def _added_tokens(tokenizer: Any) -> dict[int, _Added]:
    special = {str(token) for token in getattr(tokenizer, "all_special_tokens", [])}
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    if decoder:  # AddedToken values since transformers 4.34, plain strings before
        return {
            int(i): _Added(str(getattr(t, "content", t)), bool(getattr(t, "special", str(t) in special)))
            for i, t in decoder.items()
        }
    return {i: _Added(text, text in special) for text, i in tokenizer.get_added_vocab().items()}


def _adds_bos_eos(tokenizer: Any) -> tuple[bool, bool]:
    """What the tokenizer does, not what its flags say (transformers 5 adds BOS in a post-processor)."""
    ids = list(tokenizer("a")["input_ids"])
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    return bool(ids) and ids[0] == bos, bool(ids) and ids[-1] == eos


def _special_ids(tokenizer: Any) -> dict[str, int]:
    ids = {}
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            ids[name] = int(token_id)
    return ids

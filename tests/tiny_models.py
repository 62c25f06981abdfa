"""Tiny random LLaMA models and a matching tokenizer, built on the fly for tests and benchmarks.

Nothing here downloads anything. Works with transformers 4.30.2, 4.46.x and 5.x.

    tokenizer = build_tiny_tokenizer(tmp_path / "tok")      # SentencePiece BPE trained on TIPO-like text
    model = build_tiny_llama(vocab_size=len(tokenizer))      # seeded random LlamaForCausalLM, fp32, eval
    folder = save_tiny_model(tmp_path / "model")             # model + tokenizer, loadable by from_pretrained
    model = build_random_llama(tipo_200m_config())           # the real TIPO-200M shape with random weights

Token ids follow LLaMA/TIPO: unk 0, BOS 1, EOS 2 (EOS doubles as padding); the TIPO control tokens
(``<|long|>``, ``<|empty|>`` ...) are added (non-special) tokens at the end of the vocabulary, as in TIPO.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD_ID = EOS_ID

# Control tokens the TIPO tokenizers add on top of the LLaMA vocabulary.
TIPO_ADDED_TOKENS = (
    "<|empty|>",
    "<|very_short|>",
    "<|short|>",
    "<|long|>",
    "<|very_long|>",
    "<|extended|>",
    "<|generated|>",
    "<|gen_meta|>",
    "<|tag|>",
    "<|nl|>",
    "<|input_end|>",
    "<|quality|>",
    "<|meta|>",
)

# What every LLaMA config here shares with TIPO: RMS norm, SiLU, untied embeddings and the token ids.
LLAMA_TOKENS_AND_NORMS: dict[str, Any] = {
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
}

TIPO_200M_SHAPE: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 2304,
    "num_hidden_layers": 20,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "vocab_size": 32013,
    "max_position_embeddings": 2048,
    **LLAMA_TOKENS_AND_NORMS,
}
"""LlamaConfig arguments of TIPO-200M (KBlueLeaf/TIPO-200M*)."""

# A ~46-token TIPO request, the size of a typical WebUI prompt's model input.
TIPO_LIKE_PROMPT = (
    "meta: absurdres, highres\nrating: general\nartist: <|empty|>\ncharacters: hatsune miku\n"
    "copyrights: vocaloid\naspect ratio: 1.0\ntarget: <|long|> <|tag|>\n"
    "general: 1girl, solo, long hair, twintails, aqua eyes, smile,"
)

_WORDS_TEXT = (
    "1girl 1boy solo long hair short hair twintails blue eyes aqua eyes red eyes smile open mouth looking at "
    "viewer blush bangs skirt shirt thighhighs school uniform outdoors sky cloud tree flower holding sword "
    "hat dress jacket white background simple background upper body full body standing sitting masterpiece "
    "best quality absurdres highres general sensitive questionable explicit hatsune miku vocaloid touhou "
    "hakurei reimu original a girl with long hair is standing in a field of flowers under the blue sky"
)
_WORDS = _WORDS_TEXT.split()


def tipo_like_corpus(lines: int = 400, seed: int = 0) -> list[str]:
    """Synthetic text shaped like TIPO inputs and outputs (tags, meta lines, sentences)."""
    rng = random.Random(seed)
    heads = ("meta", "rating", "artist", "characters", "copyrights", "aspect ratio", "target", "general")
    out = [TIPO_LIKE_PROMPT]
    for _ in range(lines):
        tags = ", ".join(" ".join(rng.choices(_WORDS, k=rng.randint(1, 3))) for _ in range(rng.randint(2, 8)))
        head = rng.choice(heads)
        extra = rng.choice(TIPO_ADDED_TOKENS)
        out.append(f"{head}: {tags} {extra}.  {rng.choice(_WORDS).capitalize()} {tags}. {rng.random():.1f}")
    return out


def train_sentencepiece(directory: str | Path, vocab_size: int = 700, seed: int = 0) -> Path:
    """Train a LLaMA-style SentencePiece BPE model (byte fallback, unk 0, BOS 1, EOS 2); return its path."""
    import sentencepiece as spm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = directory / "corpus.txt"
    text.write_text("\n".join(tipo_like_corpus(seed=seed)) + "\n", encoding="utf-8")
    prefix = directory / "tokenizer"  # -> tokenizer.model, the file name LlamaTokenizer looks for
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=-1,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
        num_threads=1,
    )
    text.unlink()
    prefix.with_suffix(".vocab").unlink()
    return prefix.with_suffix(".model")


def build_tiny_tokenizer(directory: str | Path, vocab_size: int = 700, seed: int = 0) -> Any:
    """A LLaMA tokenizer over a freshly trained SentencePiece model plus the TIPO added tokens.

    Saved into ``directory`` (``from_pretrained``-loadable) and returned; its ``len()`` is the vocabulary
    size a matching model needs. Loading the folder may give a fast tokenizer, which on some transformers
    versions splits text around added tokens differently from this (slow) one.
    """
    from transformers import LlamaTokenizer

    directory = Path(directory)
    train_sentencepiece(directory, vocab_size=vocab_size, seed=seed)
    # from_pretrained (not the constructor) so that transformers 5 converts the SentencePiece model.
    tokenizer = LlamaTokenizer.from_pretrained(str(directory), add_bos_token=True, add_eos_token=False)
    tokenizer.add_tokens(list(TIPO_ADDED_TOKENS))
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def tiny_llama_config(vocab_size: int = 713, **overrides: Any) -> Any:
    """LlamaConfig of a tiny model: 2 layers, hidden 64, 4 heads (2 KV heads), untied embeddings.

    transformers 4.30 has no grouped-query attention and builds 4 KV heads from the same config.
    """
    from transformers import LlamaConfig

    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        **LLAMA_TOKENS_AND_NORMS,
        # Larger than LLaMA's 0.02 so that random logits are well separated (no greedy near-ties).
        "initializer_range": 0.25,
    }
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tipo_200m_config(**overrides: Any) -> Any:
    """LlamaConfig with TIPO-200M's shape (see ``TIPO_200M_SHAPE``)."""
    from transformers import LlamaConfig

    return LlamaConfig(**{**TIPO_200M_SHAPE, **overrides})


def build_random_llama(config: Any, seed: int = 0) -> Any:
    """A LlamaForCausalLM with seeded random weights (fp32, eval mode, no grad), same weights every call."""
    import torch
    from transformers import LlamaForCausalLM

    for attr in ("_attn_implementation", "attn_implementation"):
        if hasattr(config, attr) and getattr(config, attr) is None:
            with contextlib.suppress(Exception):  # read-only property on some versions
                setattr(config, attr, "sdpa")
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    return model.eval().requires_grad_(False)


def build_tiny_llama(vocab_size: int = 713, seed: int = 0, **overrides: Any) -> Any:
    """Seeded tiny random LlamaForCausalLM (see ``tiny_llama_config``)."""
    return build_random_llama(tiny_llama_config(vocab_size, **overrides), seed=seed)


def save_tiny_model(directory: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny model and its tokenizer into ``directory`` (safetensors); return the folder."""
    directory = Path(directory)
    tokenizer = build_tiny_tokenizer(directory)
    model = build_tiny_llama(vocab_size=len(tokenizer), seed=seed, **overrides)
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def save_random_model(directory: str | Path, config: Any, seed: int = 0) -> Path:
    """Write a random model of ``config``'s shape plus the tiny tokenizer (ids >= its size are unused)."""
    directory = Path(directory)
    build_tiny_tokenizer(directory)
    build_random_llama(config, seed=seed).save_pretrained(str(directory), safe_serialization=True)
    return directory

"""transformers backend: our own batched decode loop over a causal LM with a preallocated KV cache.

Two runners share one loop (``HFBackend._generate_batch``):

* ``LlamaRunner`` (LLaMA-architecture models, TIPO and DanTagGen): a gpt-fast style forward written over the
  model's own weight tensors, with fused QKV and gate/up projections, a KV cache allocated once per batch
  and only the last position sent through the LM head. Prompts go through ``forward``; each new token
  through ``decode_step``, the same arithmetic in fewer and cheaper ops (decoding a small model is weight
  reads plus per-op overhead). It does not depend on transformers' cache classes, so it behaves the same on
  transformers 4.30 to 5.x, and it keeps one weight copy per dtype the policy uses (``DTypePolicy``).
* ``TransformersRunner`` (any other native causal LM, e.g. mixture-of-experts models): ``model.forward``
  with the cache object transformers returns (a tuple on old versions, a Cache object on new ones).

Batches are left-padded; padding is masked out of attention and position ids count real tokens only, so a
row's tokens do not depend on what else is in the batch. On CPUs the KV cache of the previous batch is kept:
a new prompt that starts with tokens already in it (the pipeline's retries share a long prefix) copies those
keys/values instead of recomputing them (CPU kernels give a row the same bits whatever the batch; GPU kernels
do not, so there it is off by default).

CPU dtype policy (measured on a 2-core Zen 4 with AVX512-BF16; numbers in README): decoding is bound by
reading the weights once per token, prompt processing by matmul throughput. Prompt processing and batched
decoding run in bfloat16 with the matrices prepacked once into oneDNN's blocked layout (unpacked, oneDNN
re-packs the weights on every call, which dominates when only a few rows go through); one-row decoding runs
in float32 over float16 matrices prepacked for FBGEMM (``FbgemmMatrix``): 16-bit reads without conversion
ops (without FBGEMM: PyTorch's float16 matrix-vector kernel; float16 matmuls with many rows are ~20x slower,
which is why the reference's float16 prompt processing is slow). The KV cache is float32 (PyTorch's fused
CPU attention is several times slower in 16-bit dtypes) and so is the residual stream while decoding.
``dtype="int8"`` (opt-in) decodes over int8 matrices instead: half the bytes per token. Without
AVX512-BF16, prompts and batches run in float32. On CUDA one 16-bit dtype (bfloat16 where supported) serves
every phase. The per-token layer loop is ``decode_loop.decode_layers``, compiled by TorchScript where
possible (it saves up to ~20 % of a token's time on a CPU, ~40 % on a GPU).
"""

from __future__ import annotations

import functools
import inspect
import math
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..generation import Completion, SamplingSettings
from . import decode_loop
from .sampling import SamplerChain, build_chain, make_generator

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    name = value.lower().removeprefix("torch.")
    if name == "auto":
        return None
    if name not in DTYPE_NAMES:
        raise ValueError(
            f"unknown dtype {value!r}; choose one of: auto, float32, bfloat16, float16, int8 (CPU, quantized)"
        )
    return DTYPE_NAMES[name]


def is_int8(value: str | torch.dtype | None) -> bool:
    return isinstance(value, str) and value.lower() == "int8"


def policy_for(device: torch.device, dtype: str | torch.dtype | None) -> DTypePolicy:
    """The policy for a backend's ``dtype`` argument (a dtype name, "auto"/None, or "int8")."""
    if not is_int8(dtype):
        return DTypePolicy.for_device(device, parse_dtype(dtype))
    if device.type != "cpu":
        raise ValueError(
            f"dtype='int8' (FBGEMM int8 matrices) is a CPU option; use auto or float16 on {device.type}"
        )
    if not fbgemm_available("int8"):
        raise ValueError("dtype='int8' needs PyTorch's FBGEMM int8 linear, which this PyTorch lacks")
    # Quantized decoding (one row and batches); prompt processing as in the automatic policy.
    return replace(
        DTypePolicy.for_device(device),
        decode=torch.float32,
        batch_decode=torch.float32,
        decode_matrices="int8",
    )


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN can run bfloat16 matmuls natively (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class DTypePolicy:
    """Compute dtype per phase (prompt processing, one-row decoding, several-row decoding) and KV cache dtype.

    ``cache`` / ``batch_cache``: dtype of the keys/values for one row / several rows; attention runs in it.
    None means the decode dtype of that batch size.
    """

    prefill: torch.dtype
    decode: torch.dtype
    batch_decode: torch.dtype
    cache: torch.dtype | None = None
    batch_cache: torch.dtype | None = None
    pack: bool = False  # CPU: oneDNN-prepacked bfloat16/float32 matrices (see pack_weights)
    # CPU, float32 decoding (one row or several, whichever phase decodes in float32) over matrices
    # prepacked for FBGEMM (see FbgemmMatrix): "float16" (weights rounded to float16) or "int8" (opt-in
    # quantization); None: plain matrices.
    decode_matrices: str | None = None

    def for_rows(self, rows: int) -> torch.dtype:
        """Decode compute dtype of a batch of ``rows`` sequences."""
        return self.decode if rows == 1 else self.batch_decode

    def cache_for_rows(self, rows: int) -> torch.dtype:
        chosen = self.cache if rows == 1 else self.batch_cache
        return chosen or self.for_rows(rows)

    @classmethod
    def uniform(cls, dtype: torch.dtype) -> DTypePolicy:
        return cls(dtype, dtype, dtype)

    @classmethod
    def for_device(cls, device: torch.device, dtype: torch.dtype | None = None) -> DTypePolicy:
        if dtype is not None and device.type == "cpu":
            # PyTorch's CPU attention kernels are several times slower in 16-bit dtypes: float32 cache.
            return replace(
                cls.uniform(dtype),
                pack=packed_linear_available(),
                cache=torch.float32,
                batch_cache=torch.float32,
            )
        if dtype is not None:
            return cls.uniform(dtype)
        if device.type == "cuda":
            return cls.uniform(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        if device.type != "cpu":
            return cls.uniform(torch.float32)
        packed = packed_linear_available()
        # Decoding reads every weight once per token: float32 activations over FBGEMM's float16 matrices
        # (half the bytes of float32, and no conversions in the decode step) where FBGEMM runs. The KV cache
        # is float32: PyTorch's fused CPU attention is several times slower in 16-bit dtypes.
        matrices = "float16" if fbgemm_available("float16") else None
        if cpu_has_fast_bf16():
            # Many rows per matmul (prompt, batches): prepacked bfloat16. One row without FBGEMM: float16's
            # matrix-vector kernel, the fastest 16-bit one of plain PyTorch.
            return cls(
                prefill=torch.bfloat16,
                decode=torch.float32 if matrices else torch.float16,
                batch_decode=torch.bfloat16,
                cache=torch.float32,
                batch_cache=torch.float32,
                pack=packed,
                decode_matrices=matrices,
            )
        return cls(
            torch.float32,
            torch.float32,
            torch.float32,
            cache=torch.float32,
            batch_cache=torch.float32,
            pack=packed,
            decode_matrices=matrices,
        )


# --------------------------------------------------------------------------------------------------------
# Batch layout and KV cache


@dataclass
class Batch:
    """Left-padded prompts of one generate call; slot ``j`` of row ``i`` is a real token iff j >= pads[i]."""

    prompts: list[list[int]]
    capacity: int  # prompt slots + new tokens
    device: torch.device
    pad_id: int
    width: int = field(init=False)
    pads: torch.Tensor = field(init=False)  # (rows,) int64
    valid: torch.Tensor = field(init=False)  # (rows, capacity) bool

    def __post_init__(self) -> None:
        self.width = max(len(p) for p in self.prompts)
        pads = [self.width - len(p) for p in self.prompts]
        self.pads = torch.tensor(pads, dtype=torch.long, device=self.device)
        slots = torch.arange(self.capacity, device=self.device)
        self.valid = slots.unsqueeze(0) >= self.pads.unsqueeze(1)

    @property
    def rows(self) -> int:
        return len(self.prompts)

    def token_grid(self) -> torch.Tensor:
        rows = [[self.pad_id] * (self.width - len(p)) + p for p in self.prompts]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def positions(self, start: int, stop: int) -> torch.Tensor:
        """(rows, stop - start) position ids of slots [start, stop); 0 on padding."""
        slots = torch.arange(start, stop, device=self.device).unsqueeze(0)
        return (slots - self.pads.unsqueeze(1)).clamp_(min=0)

    def attention_mask(self, start: int, stop: int) -> torch.Tensor:
        """(rows, 1, stop - start, stop) bool: query slot q sees real key slots <= q (padding sees itself)."""
        queries = torch.arange(start, stop, device=self.device).view(1, -1, 1)
        keys = torch.arange(stop, device=self.device).view(1, 1, -1)
        allowed = (keys <= queries) & (self.valid[:, None, :stop] | (keys == queries))
        return allowed.unsqueeze(1)


@dataclass
class KVCache:
    keys: list[torch.Tensor]  # per layer (rows, kv_heads, capacity, head_dim)
    values: list[torch.Tensor]

    @classmethod
    def allocate(
        cls,
        layers: int,
        rows: int,
        kv_heads: int,
        capacity: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> KVCache:
        shape = (rows, kv_heads, capacity, head_dim)
        return cls(
            [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)],
            [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)],
        )


@dataclass
class CachedSequences:
    """The KV cache of the previous batch and, per row, the tokens whose keys/values it holds."""

    cache: KVCache
    tokens: list[list[int]]
    pads: list[int]


@dataclass
class TokenHistory:
    """Each row's prompt and generated token ids as one (rows, prompt ids + new tokens) grid, for the
    repetition penalty. Rows are padded with their own first id (repeats change nothing)."""

    ids: torch.Tensor
    filled: int  # columns in use

    def append(self, tokens: torch.Tensor) -> None:
        """Add one token per row (any value for finished rows: they are not sampled again)."""
        self.ids[:, self.filled] = tokens
        self.filled += 1

    def rows(self, active: list[int]) -> torch.Tensor:
        grid = self.ids[:, : self.filled]
        return grid if len(active) == grid.shape[0] else grid[active]


def token_history(prompts: list[list[int]], new_tokens: int) -> TokenHistory:
    known = [sorted(set(prompt)) for prompt in prompts]  # ids already checked to be in the vocabulary
    width = max(len(ids) for ids in known)
    grid = torch.tensor([ids + [ids[0]] * (width + new_tokens - len(ids)) for ids in known], dtype=torch.long)
    return TokenHistory(grid, width)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# --------------------------------------------------------------------------------------------------------
# LLaMA runner


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    out: torch.Tensor
    out_bias: torch.Tensor | None
    mlp_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


@dataclass(frozen=True)
class LlamaWeights:
    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor


def _maybe_cat(tensors: list[Any]) -> torch.Tensor | None:
    if any(t is None for t in tensors):
        return None
    return torch.cat([t.detach() for t in tensors])


def extract_llama_weights(model: Any, dtype: torch.dtype, device: torch.device) -> LlamaWeights:
    """Copy a LlamaForCausalLM's weights into fused, contiguous tensors of ``dtype`` on ``device``."""

    def conv(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().to(device=device, dtype=dtype).contiguous()

    layers = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        layers.append(
            LayerWeights(
                attn_norm=conv(layer.input_layernorm.weight),
                qkv=conv(
                    torch.cat(
                        [
                            attn.q_proj.weight.detach(),
                            attn.k_proj.weight.detach(),
                            attn.v_proj.weight.detach(),
                        ]
                    )
                ),
                qkv_bias=conv(_maybe_cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])),
                out=conv(attn.o_proj.weight),
                out_bias=conv(attn.o_proj.bias),
                mlp_norm=conv(layer.post_attention_layernorm.weight),
                gate_up=conv(torch.cat([mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()])),
                down=conv(mlp.down_proj.weight),
            )
        )
    return LlamaWeights(
        embed=conv(model.model.embed_tokens.weight),
        layers=layers,
        norm=conv(model.model.norm.weight),
        lm_head=conv(model.lm_head.weight),
    )


MATRICES = ("qkv", "out", "gate_up", "down")


def packed_linear_available() -> bool:
    """oneDNN's prepacked linear (what ``torch.compile`` uses on CPUs after freezing) exists here."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._reorder_linear_weight)
    except (AttributeError, RuntimeError):
        return False


def pack_weights(weights: LlamaWeights) -> LlamaWeights:
    """Reorder every matrix once into oneDNN's blocked layout.

    Without this oneDNN re-packs the weights on every call, which costs more than the matmul itself when
    only a few rows go through (decoding): bfloat16 with 8 rows gets 2-2.5x faster, 1 row ~1.2x.
    """

    def pack(t: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(t, 8)

    layers = [
        replace(layer, **{name: pack(getattr(layer, name)) for name in MATRICES}) for layer in weights.layers
    ]
    return replace(weights, layers=layers, lm_head=pack(weights.lm_head))


@functools.lru_cache(maxsize=2)
def fbgemm_available(kind: str) -> bool:
    """FBGEMM's float16-weight or int8-weight linear (``quantized::linear_dynamic[_fp16]``) runs here."""
    try:
        out = linear(torch.ones(1, 8), FbgemmMatrix.pack(torch.ones(8, 8), kind))
    except (AttributeError, RuntimeError):
        return False
    return bool(out.shape == (1, 8) and torch.allclose(out, torch.full((1, 8), 8.0), rtol=0.05))


@dataclass(frozen=True)
class FbgemmMatrix:
    """A matrix prepacked for FBGEMM's matrix multiply with float32 activations and outputs.

    Reading the weights is the cost of one-row decoding. ``kind`` "float16": the weights rounded to float16,
    widened to float32 in registers (float32 arithmetic; faster than PyTorch's float16 matrix-vector product
    with one thread, about as fast with two). "int8": per-output-channel symmetric int8 weights; FBGEMM also
    quantizes each call's activations to 8 bits (per call, asymmetric, 7-bit range), so results differ
    from the unquantized model beyond rounding: an opt-in (``dtype="int8"``) that halves the bytes read.
    """

    packed: Any
    shape: tuple[int, int]
    kind: str

    @classmethod
    def pack(cls, weight: torch.Tensor, kind: str) -> FbgemmMatrix:
        dense = weight.to_dense() if weight.is_mkldnn else weight
        dense = dense.detach().float().contiguous()
        if kind == "float16":
            return cls(torch.ops.quantized.linear_prepack_fp16(dense, None), tuple(dense.shape), kind)
        if kind != "int8":
            raise ValueError(f"unknown FBGEMM matrix kind {kind!r}")
        scales = (dense.abs().amax(dim=1).clamp(min=1e-12) / 127).double()
        zero_points = torch.zeros(dense.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated as a public API, not as kernels
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(dense, scales, zero_points, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(quantized, None)
        return cls(packed, tuple(dense.shape), kind)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "float16":
            return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)

    def dense(self) -> torch.Tensor:
        """The stored matrix as float32 (float16-rounded or dequantized)."""
        if self.kind == "float16":
            return torch.ops.quantized.linear_unpack_fp16(self.packed)[0]
        return torch.ops.quantized.linear_unpack(self.packed)[0].dequantize()


def pack_fbgemm(weights: LlamaWeights, kind: str) -> LlamaWeights:
    """Every matrix as an ``FbgemmMatrix`` of ``kind``; norms and embeddings stay float32."""
    layers = [
        replace(layer, **{name: FbgemmMatrix.pack(getattr(layer, name), kind) for name in MATRICES})
        for layer in weights.layers
    ]
    return replace(weights, layers=layers, lm_head=FbgemmMatrix.pack(weights.lm_head, kind))


def linear(x: torch.Tensor, weight: Any, bias: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(weight, FbgemmMatrix):
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        out = weight(flat)
        if bias is not None:
            out += bias
        return out.view(*x.shape[:-1], weight.shape[0])
    if weight.is_mkldnn:
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
        return out.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


@dataclass(frozen=True)
class DecodeWeights:
    """A weight copy as ``decode_loop.decode_layers`` takes it (lists in its argument order)."""

    kind: int  # decode_loop.DENSE / ONEDNN / FBGEMM_FP16 / FBGEMM_INT8
    embed: torch.Tensor
    attn_norms: list[torch.Tensor]
    mlp_norms: list[torch.Tensor]
    matrices: list[torch.Tensor]  # dense or oneDNN matrices, 4 per layer (QKV, out, gate/up, down)
    packed: list[Any]  # FBGEMM matrices, 4 per layer
    biases: list[torch.Tensor]  # 4 per layer; empty: none
    norm: torch.Tensor
    head: tuple[list[torch.Tensor], list[Any], list[torch.Tensor]]  # the LM head as matrix 0 of lists
    matmul_dtype: torch.dtype  # what the products take: float32 for FBGEMM matrices, else the weights'
    residual_dtype: torch.dtype  # the residual stream's (and the norm weights') dtype


def decode_weights(weights: LlamaWeights, layout: str) -> DecodeWeights:
    """CPU: float32 residual stream (PyTorch's CPU norms are fused only in float32, and 16-bit elementwise
    ops are slow there). GPU: the weights' dtype, which needs no conversion kernels between layers."""
    kinds = {
        "fbgemm-float16": decode_loop.FBGEMM_FP16,
        "fbgemm-int8": decode_loop.FBGEMM_INT8,
        "onednn": decode_loop.ONEDNN,
    }
    kind = kinds.get(layout, decode_loop.DENSE)
    fbgemm = layout.startswith("fbgemm-")
    matmul_dtype = torch.float32 if fbgemm else weights.embed.dtype
    residual = torch.float32 if weights.embed.device.type == "cpu" else matmul_dtype
    none = torch.empty(0, dtype=matmul_dtype, device=weights.embed.device)

    def stored(matrix: Any) -> Any:
        return matrix.packed if fbgemm else matrix

    matrices = [m for layer in weights.layers for m in (layer.qkv, layer.out, layer.gate_up, layer.down)]
    biases = [
        b if b is not None else none
        for layer in weights.layers
        for b in (layer.qkv_bias, layer.out_bias, None, None)
    ]
    return DecodeWeights(
        kind=kind,
        embed=weights.embed,
        attn_norms=[layer.attn_norm.to(residual) for layer in weights.layers],
        mlp_norms=[layer.mlp_norm.to(residual) for layer in weights.layers],
        matrices=[] if fbgemm else matrices,
        packed=[stored(m) for m in matrices] if fbgemm else [],
        biases=biases,
        norm=weights.norm.to(residual),
        head=([], [stored(weights.lm_head)], [none]) if fbgemm else ([weights.lm_head], [], [none]),
        matmul_dtype=matmul_dtype,
        residual_dtype=residual,
    )


def _lay_out(weights: LlamaWeights, layout: str) -> LlamaWeights:
    if layout == "onednn":
        return pack_weights(weights)
    if layout.startswith("fbgemm-"):
        return pack_fbgemm(weights, layout.removeprefix("fbgemm-"))
    return weights


def _convert_weights(weights: LlamaWeights, dtype: torch.dtype, device: torch.device) -> LlamaWeights:
    def conv(t: torch.Tensor | FbgemmMatrix | None) -> torch.Tensor | None:
        if isinstance(t, FbgemmMatrix):
            t = t.dense()
        elif t is not None and t.is_mkldnn:
            t = t.to_dense()
        return None if t is None else t.to(device=device, dtype=dtype)

    layers = [
        LayerWeights(**{name: conv(getattr(layer, name)) for name in LayerWeights.__dataclass_fields__})
        for layer in weights.layers
    ]
    return LlamaWeights(conv(weights.embed), layers, conv(weights.norm), conv(weights.lm_head))


def llama_fast_path_problem(config: Any) -> str | None:
    """Why ``LlamaRunner`` cannot run a model with this config, or None when it can."""
    if getattr(config, "model_type", None) != "llama":
        return f"model type {getattr(config, 'model_type', None)!r} is not llama"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    if getattr(config, "mlp_bias", False):
        return "MLP biases"
    rope = getattr(config, "rope_scaling", None) or {}
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", rope.get("type")) or params.get("rope_type") or "default"
    if rope_type != "default":
        return f"rope scaling {rope_type!r}"
    return None


def rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return decode_loop.norm(x, weight, eps, decode_loop.can_fuse_norm(x, weight))


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding with the halves swapped: ``signed_sin`` is sin with its first half negated, which is
    the usual ``x * cos + rotate_half(x) * sin`` without the negation op (same values, one op fewer)."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


class LlamaRunner:
    """Forward passes of a LLaMA model over its own fused weights and a caller-owned KV cache."""

    supports_prefix_reuse = True

    def __init__(self, model: Any, device: torch.device, policy: DTypePolicy, script: bool = True) -> None:
        config = model.config
        self.model = model
        self.device = device
        self.policy = policy
        self.heads = config.num_attention_heads
        attention = model.model.layers[0].self_attn
        self.head_dim = attention.q_proj.weight.shape[0] // self.heads
        # From the weights: transformers 4.30 ignores num_key_value_heads in the config.
        self.kv_heads = attention.k_proj.weight.shape[0] // self.head_dim
        self.eps = config.rms_norm_eps
        self.layers = config.num_hidden_layers
        self.vocab_size = config.vocab_size
        inv_freq = 1.0 / (
            rope_theta(config)
            ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim)
        )
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        self._cos = angles.cos().to(device)
        sin = angles.sin()
        half = self.head_dim // 2
        self._sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1).to(device)
        self._weights: dict[tuple[torch.dtype, str], LlamaWeights] = {}
        self._decode_weights: dict[tuple[torch.dtype, str], DecodeWeights] = {}
        self.script = script
        self._layer_loop: Any = None

    def layout(self, dtype: torch.dtype, decoding: bool = False) -> str:
        """How the matrices of a ``dtype`` pass are stored: "dense", "onednn", "fbgemm-float16/int8"."""
        if self.device.type != "cpu":
            return "dense"
        if decoding and dtype == torch.float32 and self.policy.decode_matrices:
            return f"fbgemm-{self.policy.decode_matrices}"
        return "onednn" if self.policy.pack and dtype != torch.float16 else "dense"

    def weights(self, dtype: torch.dtype, layout: str | None = None) -> LlamaWeights:
        layout = layout or self.layout(dtype)
        key = (dtype, layout)
        if key not in self._weights:
            if self.model is not None:
                weights = extract_llama_weights(self.model, dtype, self.device)
            else:  # the transformers model was released: convert the most precise copy we hold
                best = max(self._weights, key=self._precision)
                weights = _convert_weights(self._weights[best], dtype, self.device)
            self._weights[key] = _lay_out(weights, layout)
        return self._weights[key]

    @staticmethod
    def _precision(key: tuple[torch.dtype, str]) -> tuple[int, float]:
        bits = {"fbgemm-float16": 16, "fbgemm-int8": 8}.get(key[1], torch.finfo(key[0]).bits)
        return bits, -torch.finfo(torch.float16 if key[1] == "fbgemm-float16" else key[0]).eps

    def release_model(self) -> None:
        """Drop the transformers model; the fused copies are all that stays in memory."""
        self.model = None

    def to(self, device: torch.device) -> None:
        self.device = device
        self._cos, self._sin = self._cos.to(device), self._sin.to(device)
        held, self._weights, self._decode_weights = self._weights, {}, {}
        # FBGEMM copies last: off the CPU they become plain float32 and must not replace a real one.
        for (dtype, layout), weights in sorted(
            held.items(), key=lambda item: self._precision(item[0]), reverse=True
        ):
            target = self.layout(dtype, decoding=layout.startswith("fbgemm-"))
            if (dtype, target) not in self._weights:
                self._weights[(dtype, target)] = _lay_out(_convert_weights(weights, dtype, device), target)

    def warm_up(self) -> None:
        policy = self.policy
        for dtype, decoding in ((policy.prefill, False), (policy.decode, True), (policy.batch_decode, True)):
            self.weights(dtype, self.layout(dtype, decoding))

    def new_cache(self, rows: int, capacity: int) -> KVCache:
        return KVCache.allocate(
            self.layers,
            rows,
            self.kv_heads,
            capacity,
            self.head_dim,
            self.policy.cache_for_rows(rows),
            self.device,
        )

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache,
        start: int,
        dtype: torch.dtype,
        layout: str | None = None,
    ) -> torch.Tensor:
        """Run slots [start, start + T) of ``tokens`` (rows, T); return float32 logits of the last slot."""
        w = self.weights(dtype, layout)
        rows, length = tokens.shape
        stop = start + length
        cos = self._cos[positions].to(dtype).unsqueeze(2)  # (rows, T, 1, head_dim)
        sin = self._sin[positions].to(dtype).unsqueeze(2)
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        q_size = heads * head_dim
        groups = heads // kv_heads
        mask_bias = None  # additive form of the mask, for 16-bit attention on CPUs; built once
        h = F.embedding(tokens, w.embed)
        for index, layer in enumerate(w.layers):
            x = rms_norm(h, layer.attn_norm, self.eps)
            qkv = linear(x, layer.qkv, layer.qkv_bias).view(rows, length, heads + 2 * kv_heads, head_dim)
            qk = rotate(qkv[:, :, : heads + kv_heads], cos, sin)  # queries and keys in one go
            q = qk[:, :, :heads].transpose(1, 2)
            k = qk[:, :, heads:].transpose(1, 2)
            v = qkv[:, :, heads + kv_heads :].transpose(1, 2)
            key_cache, value_cache = cache.keys[index], cache.values[index]
            key_cache[:, :, start:stop] = k
            value_cache[:, :, start:stop] = v
            keys, values = key_cache[:, :, :stop], value_cache[:, :, :stop]
            if groups > 1:
                keys = keys.repeat_interleave(groups, dim=1)
                values = values.repeat_interleave(groups, dim=1)
            if self.device.type == "cpu" and keys.dtype != torch.float32 and mask_bias is None:
                mask_bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(
                    ~mask, float("-inf")
                )
            attn = self.attention(q.to(keys.dtype), keys, values, mask, mask_bias).to(dtype)
            attn = attn.transpose(1, 2).reshape(rows, length, q_size)
            h = h + linear(attn, layer.out, layer.out_bias)
            x = rms_norm(h, layer.mlp_norm, self.eps)
            gate, up = linear(x, layer.gate_up).chunk(2, dim=-1)
            h = h + linear(F.silu(gate).mul_(up), layer.down)
        last = rms_norm(h[:, -1], w.norm, self.eps)
        return linear(last, w.lm_head).float()

    def attention(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        mask_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        if mask_bias is None:
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        # A 16-bit cache on a CPU (only when a policy asks for one): PyTorch's fused CPU attention is
        # several times slower than plain matmuls in 16-bit dtypes.
        scores = torch.matmul(q, keys.transpose(-1, -2)).float()
        scores.mul_(1.0 / math.sqrt(self.head_dim)).add_(mask_bias)
        weights = scores.softmax(dim=-1).to(values.dtype)
        return torch.matmul(weights, values)

    def prefill(self, batch: Batch, cache: KVCache, start: int) -> torch.Tensor:
        tokens = batch.token_grid()[:, start:]
        return self.forward(
            tokens,
            batch.positions(start, batch.width),
            batch.attention_mask(start, batch.width),
            cache,
            start,
            self.policy.prefill,
        )

    def decode(self, batch: Batch, cache: KVCache, tokens: torch.Tensor, slot: int) -> torch.Tensor:
        """Logits (rows, vocab) of the token after slot ``slot``, given each row's token at that slot."""
        dtype = self.policy.for_rows(batch.rows)
        layout = self.layout(dtype, decoding=True)
        # One row has no padding, so no mask; a strided mask slows CPU attention, hence the copy.
        mask = None if batch.rows == 1 else batch.valid[:, None, None, : slot + 1].contiguous()
        positions = batch.positions(slot, slot + 1).view(-1)
        return self.decode_step(tokens.view(-1, 1), positions, mask, cache, slot, dtype, layout)

    def decode_weights(self, dtype: torch.dtype, layout: str) -> DecodeWeights:
        key = (dtype, layout)
        if key not in self._decode_weights:
            self._decode_weights[key] = decode_weights(self.weights(dtype, layout), layout)
        return self._decode_weights[key]

    def rope_matrices(self, positions: torch.Tensor) -> torch.Tensor:
        """(rows, head_dim, head_dim) float32 R with ``x @ R[i]`` = x rotated to ``positions[i]``."""
        half = self.head_dim // 2
        return torch.diag_embed(self._cos[positions]) + torch.roll(
            torch.diag_embed(self._sin[positions]), half, dims=1
        )

    @torch.inference_mode()
    def decode_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache,
        slot: int,
        dtype: torch.dtype,
        layout: str,
    ) -> torch.Tensor:
        """One new token per row: ``tokens`` (rows, 1) at ``slot``; float32 logits (rows, vocab).

        The same model arithmetic as ``forward`` in fewer, cheaper ops, because decoding is dominated by
        per-op overhead once the weights are read at memory speed: the residual stream stays float32
        (fused norms, no conversions back and forth), rotary embedding is one small batched matmul for
        queries and keys together, attention is PyTorch's fused kernel over the cache.
        """
        w = self.decode_weights(dtype, layout)
        cache_dtype = cache.keys[0].dtype
        rope = self.rope_matrices(positions).to(cache_dtype)
        h = F.embedding(tokens.view(-1), w.embed).to(w.residual_dtype)  # (rows, hidden)
        fused_norm = decode_loop.can_fuse_norm(h, w.norm)  # all norm weights share the residual's dtype
        arguments = (
            w.kind,
            h,
            w.attn_norms,
            w.mlp_norms,
            w.matrices,
            w.packed,
            w.biases,
            cache.keys,
            cache.values,
            rope,
            mask,
            slot,
            self.eps,
            fused_norm,
            self.heads,
            self.kv_heads,
            self.head_dim,
            w.matmul_dtype,
            cache_dtype,
        )
        with torch.jit.optimized_execution(False):  # run the ops as written: no fusion, no re-specializing
            h = self.layer_loop()(*arguments)
        last = decode_loop.norm(h, w.norm, self.eps, fused_norm).to(w.matmul_dtype)
        return decode_loop.product(w.kind, last, 0, *w.head).float()

    def layer_loop(self) -> Any:
        """``decode_loop.decode_layers``, compiled by TorchScript on first use when possible."""
        if self._layer_loop is None:
            compiled = decode_loop.compile_decode_layers() if self.script else None
            self._layer_loop = compiled or decode_loop.decode_layers
        return self._layer_loop


# --------------------------------------------------------------------------------------------------------
# Generic runner over model.forward


class TransformersRunner:
    """``model.forward`` with transformers' own cache (tuples on 4.30, Cache objects later)."""

    supports_prefix_reuse = False

    def __init__(self, model: Any, device: torch.device, policy: DTypePolicy) -> None:
        self.model = model
        self.device = device
        self.policy = DTypePolicy.uniform(policy.batch_decode)  # float16 prefill is slow on CPUs
        self.vocab_size = model.config.vocab_size
        # transformers 5.x renamed the argument (and still returns the old attribute name).
        parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"

    def warm_up(self) -> None:
        self.model.to(device=self.device, dtype=self.policy.decode)

    def new_cache(self, rows: int, capacity: int) -> dict[str, Any]:
        return {"past": None}

    @torch.inference_mode()
    def _run(self, batch: Batch, state: dict[str, Any], tokens: torch.Tensor, start: int) -> torch.Tensor:
        stop = start + tokens.shape[1]
        out = self.model(
            input_ids=tokens,
            attention_mask=batch.valid[:, :stop].long(),
            position_ids=batch.positions(start, stop),
            use_cache=True,
            return_dict=True,
            **{self._cache_argument: state["past"]},
        )
        past = getattr(out, "past_key_values", None)
        state["past"] = past if past is not None else getattr(out, "cache", None)
        return out.logits[:, -1].float()

    def prefill(self, batch: Batch, cache: dict[str, Any], start: int) -> torch.Tensor:
        return self._run(batch, cache, batch.token_grid(), 0)

    def decode(self, batch: Batch, cache: dict[str, Any], tokens: torch.Tensor, slot: int) -> torch.Tensor:
        return self._run(batch, cache, tokens.view(-1, 1), slot)


# --------------------------------------------------------------------------------------------------------
# Backend


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class HFBackend:
    """Backend over a transformers causal LM and its tokenizer. The model stays resident between calls.

    ``dtype``: None/"auto" picks per phase and device (see module docstring); "int8" (CPU, opt-in) is the
    automatic policy with decoding over int8-quantized matrices (``FbgemmMatrix``): faster, but
    results differ from the unquantized model; any other value is used for every phase.
    ``max_batch_size`` bounds how many prompts run together. ``runner``: "auto" (fast LLaMA path when the
    architecture allows), "llama" or "transformers". ``reuse_prefix`` keeps the last batch's
    KV cache for prompts that start the same way (None: on CPUs only, where it changes no result).
    ``eos_token_id`` overrides the tokenizer's EOS.
    ``keep_model=False`` frees the transformers model once the LLaMA runner holds its own weight copies
    (``from_pretrained`` does this: the model is then only reachable through this backend).
    Each Completion's ``seconds`` is the wall time of the batch it ran in. Thread count is torch's global
    setting (``torch.set_num_threads``), left to the application.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        name: str | None = None,
        max_batch_size: int = 8,
        runner: str = "auto",
        reuse_prefix: bool | None = None,
        eos_token_id: int | None = None,
        keep_model: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        config = model.config
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name or Path(str(getattr(config, "_name_or_path", "") or "transformers-model")).name
        self.context_length = int(getattr(config, "max_position_embeddings", 2048))
        self.max_batch_size = max_batch_size
        self.reuse_prefix = reuse_prefix
        self._dtype_argument = dtype
        self._runner_choice = runner
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if self.eos_id is None:
            self.eos_id = config.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_id
        self._drop_ids = {i for i in (self.bos_id, self.eos_id, self.pad_id) if i is not None}
        self._previous: CachedSequences | None = None
        self.device = _resolve_device(device)
        self._build_runner()
        if not keep_model and isinstance(self.runner, LlamaRunner):
            self.runner.release_model()
            self.model = None

    # -- setup -------------------------------------------------------------------------------------------

    def _build_runner(self) -> None:
        policy = policy_for(self.device, self._dtype_argument)
        problem = llama_fast_path_problem(self.model.config)
        self.config = self.model.config
        choice = self._runner_choice
        if choice == "llama" and problem:
            raise ValueError(f"the LLaMA runner cannot run this model: {problem}")
        if choice not in ("auto", "llama", "transformers"):
            raise ValueError(f"unknown runner {choice!r}; choose auto, llama or transformers")
        if choice == "transformers" or (choice == "auto" and problem):
            self.runner: LlamaRunner | TransformersRunner = TransformersRunner(
                self.model, self.device, policy
            )
        else:
            self.model.to(self.device)
            self.runner = LlamaRunner(self.model, self.device, policy)
        self.runner.warm_up()
        self._previous = None

    @property
    def reuses_prefix(self) -> bool:
        if self.reuse_prefix is not None:
            return self.reuse_prefix
        # On CPUs a row's keys/values come out bit-identical whatever else is in the batch (tested); GPU
        # kernels pick other reduction orders for other shapes, so reused keys/values would make a
        # request's result depend on the request before it.
        return self.device.type == "cpu"

    @property
    def policy(self) -> DTypePolicy:
        return self.runner.policy

    def to(self, device: str | torch.device) -> HFBackend:
        """Move the model (e.g. off the GPU between requests) and rebuild the weights there."""
        target = _resolve_device(device)
        if target == self.device:
            return self
        self.device = target
        if self.model is None:
            self.runner.to(target)  # type: ignore[union-attr]
            self._previous = None
        else:
            self.model.to(target)
            self._build_runner()
        return self

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = None,
        *,
        weights: str | Path | None = None,
        config: str | Path | Any | None = None,
        tokenizer: str | Path | Any | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **backend_kwargs: Any,
    ) -> HFBackend:
        """Load a model folder, a hub id, or a single ``.safetensors`` file (with ``config`` / a folder).

        ``weights`` replaces the folder's weights with that safetensors file. ``config`` and ``tokenizer``
        default to the folder (the file's folder for a file). Never runs code from the model repository.
        """
        source = Path(path_or_hub_id).expanduser()
        if source.suffix == ".safetensors" and source.is_file():
            weights, folder = source, source.parent
        else:
            folder = source if source.exists() else None
        location = str(folder) if folder is not None else str(path_or_hub_id)
        hub = {"revision": revision, "local_files_only": local_files_only}
        policy = policy_for(_resolve_device(device), dtype)
        # Load straight into the one dtype the policy uses (less peak memory), else float32 to convert from.
        uniform = len({policy.prefill, policy.decode, policy.batch_decode}) == 1
        load_dtype = policy.prefill if uniform else torch.float32
        model = load_causal_lm(location, weights=weights, config=config, dtype=load_dtype, **hub)
        if tokenizer is None or isinstance(tokenizer, (str, Path)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer or location), **hub)
        name = source.stem if weights is not None and source.suffix == ".safetensors" else source.name
        backend_kwargs.setdefault("name", name)
        backend_kwargs.setdefault("keep_model", False)
        return cls(model, tokenizer, device=device, dtype=dtype, **backend_kwargs)

    # -- Backend protocol --------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text)["input_ids"])
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def generate(
        self, prompts: Sequence[str], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[Completion]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        encoded = [self.encode(p) for p in prompts]
        for text, ids in zip(prompts, encoded, strict=True):
            if len(ids) >= self.context_length:
                raise ValueError(
                    f"prompt of {len(ids)} tokens does not fit the model's context of "
                    f"{self.context_length} tokens: {text[:80]!r}..."
                )
        chain = build_chain(settings)
        results: list[Completion] = []
        for first in range(0, len(encoded), self.max_batch_size):
            chunk = slice(first, first + self.max_batch_size)
            results += self._generate_batch(encoded[chunk], list(seeds[chunk]), settings, chain)
        return results

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[list[int]]:
        """Token-level generate (prompts as ids, BOS included); returns new token ids per prompt."""
        out = self._run_batch([list(p) for p in prompts], list(seeds), settings, build_chain(settings))
        return out[0]

    # -- decode loop -------------------------------------------------------------------------------------

    def _generate_batch(
        self, prompts: list[list[int]], seeds: list[int], settings: SamplingSettings, chain: SamplerChain
    ) -> list[Completion]:
        started = time.perf_counter()
        generated, finished = self._run_batch(prompts, seeds, settings, chain)
        seconds = time.perf_counter() - started
        return [
            Completion(
                text=self._decode_continuation(p, g),
                prompt_tokens=len(p),
                completion_tokens=len(g),
                seconds=seconds,
                finished=f,
            )
            for p, g, f in zip(prompts, generated, finished, strict=True)
        ]

    def _run_batch(
        self, prompts: list[list[int]], seeds: list[int], settings: SamplingSettings, chain: SamplerChain
    ) -> tuple[list[list[int]], list[bool]]:
        runner = self.runner
        for prompt in prompts:
            if not prompt or min(prompt) < 0 or max(prompt) >= runner.vocab_size:
                raise ValueError(
                    f"prompt token ids must be 0..{runner.vocab_size - 1} and at least one; got {prompt[:20]}"
                )
        width = max(len(p) for p in prompts)
        new_tokens = min(settings.max_new_tokens, self.context_length - width)
        batch = Batch(prompts, width + new_tokens, self.device, self.pad_id)
        rows = batch.rows
        cache = runner.new_cache(rows, batch.capacity)
        start = self._restore_prefix(batch, cache) if runner.supports_prefix_reuse else 0
        generators = [make_generator(seed) for seed in seeds]
        history = token_history(prompts, new_tokens) if chain.uses_history else None
        generated: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        logits = runner.prefill(batch, cache, start)
        for step in range(new_tokens):
            active = [row for row in range(rows) if not done[row]]
            everyone = len(active) == rows
            picked = chain(
                logits.cpu() if everyone else logits[active].cpu(),
                generators if everyone else [generators[r] for r in active],
                history=None if history is None else history.rows(active),
            )
            tokens = torch.full((rows,), self.pad_id, dtype=torch.long)
            tokens[active] = picked
            if history is not None:
                history.append(tokens)
            for row, token in zip(active, picked.tolist(), strict=True):
                generated[row].append(token)
                if settings.stop_on_eos and token == self.eos_id:
                    done[row] = True
            if all(done) or step == new_tokens - 1:
                break
            logits = runner.decode(batch, cache, tokens.to(self.device), width + step)
        if runner.supports_prefix_reuse and self.reuses_prefix:
            fed = [p + g[:-1] for p, g in zip(prompts, generated, strict=True)]
            self._previous = CachedSequences(cache, fed, batch.pads.tolist())
        finished = [d or not settings.stop_on_eos for d in done]
        return generated, finished

    def _restore_prefix(self, batch: Batch, cache: KVCache) -> int:
        """Copy cached keys/values of each row's longest known prefix; return the first slot to compute."""
        previous = self._previous if self.reuses_prefix else None
        if previous is not None and previous.cache.keys[0].dtype != cache.keys[0].dtype:
            previous = None  # keys/values of another precision would change the results slightly
        pads = batch.pads.tolist()
        reused = [0] * batch.rows
        sources = [0] * batch.rows
        if previous is not None:
            for row, prompt in enumerate(batch.prompts):
                for source, tokens in enumerate(previous.tokens):
                    n = min(common_prefix(prompt, tokens), len(prompt) - 1)
                    if n > reused[row]:
                        reused[row], sources[row] = n, source
        start = min(p + n for p, n in zip(pads, reused, strict=True))
        for row in range(batch.rows):
            for layer in range(len(cache.keys)):
                cache.keys[layer][row, :, : min(pads[row], start)].zero_()
                cache.values[layer][row, :, : min(pads[row], start)].zero_()
                if reused[row] and previous is not None:
                    src, n, old_pad = sources[row], reused[row], previous.pads[sources[row]]
                    dst = slice(pads[row], pads[row] + n)
                    old = slice(old_pad, old_pad + n)
                    cache.keys[layer][row, :, dst] = previous.cache.keys[layer][src, :, old]
                    cache.values[layer][row, :, dst] = previous.cache.values[layer][src, :, old]
        self.last_reused_tokens = reused
        return start

    def _decode_continuation(self, prompt: list[int], generated: list[int]) -> str:
        """The continuation's text with the spacing it has after the prompt; BOS/EOS/padding dropped."""
        head = [t for t in prompt if t not in self._drop_ids]
        tail = [t for t in generated if t not in self._drop_ids]
        if not tail:
            return ""
        decode = self.tokenizer.decode
        full = decode(head + tail, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        before = decode(head, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if full.startswith(before):
            return full[len(before) :]
        return decode(tail, skip_special_tokens=False, clean_up_tokenization_spaces=False)


# --------------------------------------------------------------------------------------------------------
# Loading


def _transformers_version() -> tuple[int, ...]:
    import transformers

    return tuple(int(part) for part in transformers.__version__.split(".")[:2] if part.isdigit())


def load_causal_lm(
    location: str,
    *,
    weights: str | Path | None = None,
    config: Any = None,
    dtype: torch.dtype = torch.float32,
    **hub: Any,
) -> Any:
    """LlamaForCausalLM (or another native transformers causal LM class) in ``dtype``, on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM, PretrainedConfig

    if isinstance(config, (str, Path)):
        config = AutoConfig.from_pretrained(str(config), **hub)
    if config is None:
        config = AutoConfig.from_pretrained(location, **hub)
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"config must be a path or a transformers config, not {type(config).__name__}")
    dtype_key = "dtype" if _transformers_version() >= (4, 56) else "torch_dtype"
    kwargs: dict[str, Any] = {dtype_key: dtype, "config": config, **hub}
    model_class: Any = LlamaForCausalLM if config.model_type == "llama" else AutoModelForCausalLM
    try:
        if weights is None:
            return model_class.from_pretrained(location, **kwargs)
        weights = Path(weights).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(f"weights file not found: {weights}")
        with tempfile.TemporaryDirectory(prefix="kgen-weights-") as tmp:
            (Path(tmp) / "model.safetensors").symlink_to(weights.resolve())
            config.save_pretrained(tmp)
            kwargs.pop("revision", None)
            return model_class.from_pretrained(tmp, **{**kwargs, "local_files_only": True})
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "does not recognize" in str(exc):
            raise ValueError(
                f"transformers has no native class for model type {config.model_type!r} "
                "(custom code is never run); use a GGUF file with llama.cpp instead"
            ) from exc
        raise


def model_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())

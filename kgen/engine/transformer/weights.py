"""A LLaMA model's shape, and building its weight copies (``forward.Transformer``) in a dtype and format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .forward import HAS_FUSED_RMS_NORM, Block, Transformer, rotary_tables
from .matrices import FBGEMM_FORMATS, MATRIX_FORMATS, DenseMatrix


@dataclass(frozen=True)
class ModelShape:
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab_size: int
    positions: int  # max_position_embeddings
    eps: float
    rope_theta: float

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        config = model.config
        attention = model.model.layers[0].self_attn
        head_dim = attention.q_proj.weight.shape[0] // config.num_attention_heads
        params = getattr(config, "rope_parameters", None) or {}
        return cls(
            heads=config.num_attention_heads,
            # From the weights: transformers 4.30 ignores num_key_value_heads in the config.
            kv_heads=attention.k_proj.weight.shape[0] // head_dim,
            head_dim=head_dim,
            layers=config.num_hidden_layers,
            vocab_size=config.vocab_size,
            positions=config.max_position_embeddings,
            eps=config.rms_norm_eps,
            rope_theta=float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0),
        )


@dataclass(frozen=True)
class Arithmetic:
    """The dtypes a copy computes in: matrix inputs, and the residual stream (and norm weights)."""

    matmul_dtype: torch.dtype
    residual_dtype: torch.dtype
    fused_norm: bool

    @classmethod
    def of(cls, dtype: torch.dtype, matrix_format: str, device: torch.device) -> Arithmetic:
        matmul = torch.float32 if matrix_format in FBGEMM_FORMATS else dtype
        # CPU: float32 residual (fused norms only there; 16-bit elementwise ops are slow). GPU: the weights'
        # dtype, which needs no conversion kernels between layers.
        residual = torch.float32 if device.type == "cpu" else matmul
        fused = HAS_FUSED_RMS_NORM and (residual == torch.float32 or device.type == "cuda")
        return cls(matmul, residual, fused)


def llama_fast_path_problem(config: Any) -> str | None:
    """Why our forward cannot run a model with this config, or None when it can."""
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


def _cat(tensors: list[Any]) -> torch.Tensor | None:
    if any(t is None for t in tensors):
        return None
    return torch.cat([t.detach() for t in tensors])


def read_llama(model: Any, shape: ModelShape) -> Transformer:
    """A LlamaForCausalLM's weights as a dense copy in its own dtype and device (QKV and gate/up fused)."""
    arithmetic = Arithmetic(model.lm_head.weight.dtype, model.lm_head.weight.dtype, False)
    blocks = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        blocks.append(
            Block(
                attn_norm=layer.input_layernorm.weight.detach(),
                qkv=DenseMatrix(
                    _cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                    _cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]),
                ),
                out=DenseMatrix(attn.o_proj.weight.detach(), _cat([attn.o_proj.bias])),
                mlp_norm=layer.post_attention_layernorm.weight.detach(),
                gate_up=DenseMatrix(_cat([mlp.gate_proj.weight, mlp.up_proj.weight]), None),
                down=DenseMatrix(mlp.down_proj.weight.detach(), None),
                shape=shape,
                arithmetic=arithmetic,
            )
        )
    embed = model.model.embed_tokens.weight.detach()
    head = DenseMatrix(model.lm_head.weight.detach(), None)
    rotary = (torch.empty(0), torch.empty(0))  # a source copy to convert from, never run
    return Transformer(embed, blocks, model.model.norm.weight.detach(), head, rotary, shape, arithmetic)


def convert(
    source: Transformer, shape: ModelShape, dtype: torch.dtype, matrix_format: str, device: torch.device
) -> Transformer:
    """A copy of ``source`` with every matrix in ``matrix_format`` (a key of ``MATRIX_FORMATS``)."""
    arithmetic = Arithmetic.of(dtype, matrix_format, device)
    store = MATRIX_FORMATS[matrix_format]

    def matrix(stored: Any) -> torch.nn.Module:
        weight, bias = stored.dense()
        move = {"device": device, "dtype": arithmetic.matmul_dtype}
        return store(weight.to(**move), None if bias is None else bias.to(**move))

    def norm(weight: torch.Tensor) -> torch.Tensor:
        return weight.to(device=device, dtype=arithmetic.residual_dtype)

    blocks = [
        Block(
            norm(block.attn_norm),
            matrix(block.qkv),
            matrix(block.out),
            norm(block.mlp_norm),
            matrix(block.gate_up),
            matrix(block.down),
            shape,
            arithmetic,
        )
        for block in source.blocks
    ]
    embed = source.embed.to(device=device, dtype=arithmetic.matmul_dtype)
    rotary = rotary_tables(shape.head_dim, shape.rope_theta, shape.positions, device)
    return Transformer(embed, blocks, norm(source.norm), matrix(source.head), rotary, shape, arithmetic)


def precision(copy: Transformer) -> tuple:
    """Sort key: the copy that loses least of the original weights is the largest."""
    return copy.head.precision()

"""The one forward pass of LLaMA-architecture models: prompts, decode steps, batches and TGTS trees.

gpt-fast style: the model is a small module over its own weights, with fused QKV and gate/up projections
whose storage is a strategy module (``matrices``), a caller-owned KV cache (``cache.KVCache``) and only the
last position sent through the LM head. The residual stream is float32 on CPUs (PyTorch's CPU norms are
fused only in float32, and 16-bit elementwise ops are slow there) and the weights' dtype on GPUs; the
matrices take their copy's dtype; rotary embedding and attention run in the cache's dtype.

Decoding a small model is weight reads plus per-op overhead (about 25 ops per layer, ~2.5 ms of a 12 ms
token when each pays Python's dispatch), so the module is compiled by TorchScript where possible
(``script``): the same ops in the same order, run by TorchScript's interpreter with graph optimization
switched off (same bits, ~16 % less time per token measured with one thread on the TIPO-200M shape).

No ``from __future__ import annotations`` here: TorchScript reads these annotations.
"""

# TorchScript (as old as PyTorch 2.1) understands typing.List / Optional, not list[...] / X | None:
# ruff: noqa: UP006, UP035, UP045
import warnings
from typing import TYPE_CHECKING, List, Optional

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .weights import Arithmetic, ModelShape

HAS_FUSED_RMS_NORM = hasattr(torch, "rms_norm")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, fused: bool) -> torch.Tensor:
    """RMS norm with float32 statistics (transformers' LlamaRMSNorm arithmetic: scale in x's dtype).

    ``fused``: PyTorch's own op, used where it rounds like LlamaRMSNorm (float32) or on a GPU (one kernel
    instead of seven, rounding once where transformers rounds twice).
    """
    if fused:
        return torch.rms_norm(x, [x.shape[-1]], weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotary_tables(head_dim: int, theta: float, positions: int, device: torch.device) -> tuple:
    """cos and "signed" sin (sin with its first half negated) per position, float32 (positions, head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    sin = angles.sin()
    half = head_dim // 2
    return angles.cos().to(device), torch.cat((-sin[:, :half], sin[:, half:]), dim=-1).to(device)


class Block(torch.nn.Module):
    """One decoder layer: attention over the cache, then the SiLU-gated MLP, both added to ``h``."""

    heads: torch.jit.Final[int]
    kv_heads: torch.jit.Final[int]
    head_dim: torch.jit.Final[int]
    eps: torch.jit.Final[float]
    fused_norm: torch.jit.Final[bool]

    def __init__(
        self,
        attn_norm: torch.Tensor,
        qkv: torch.nn.Module,
        out: torch.nn.Module,
        mlp_norm: torch.Tensor,
        gate_up: torch.nn.Module,
        down: torch.nn.Module,
        shape: "ModelShape",
        arithmetic: "Arithmetic",
    ) -> None:
        super().__init__()
        self.attn_norm, self.mlp_norm = attn_norm, mlp_norm
        self.qkv, self.out, self.gate_up, self.down = qkv, out, gate_up, down
        self.heads, self.kv_heads, self.head_dim = shape.heads, shape.kv_heads, shape.head_dim
        self.eps = shape.eps
        self.fused_norm = arithmetic.fused_norm
        self.matmul_dtype = arithmetic.matmul_dtype

    def forward(
        self,
        h: torch.Tensor,
        rope: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        start: int,
        mask: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """``h`` (rows * T, hidden), updated in place; ``rope`` (rows * T, head_dim, head_dim); ``keys`` /
        ``values`` this layer's cache (rows, kv_heads, capacity, head_dim): slots [start, start + T) are
        written, slots up to start + T read; ``mask`` (rows, 1, T, start + T) bool or None (no padding)."""
        rows = keys.shape[0]
        length = h.shape[0] // rows
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        rotated = heads + kv_heads
        x = rms_norm(h, self.attn_norm, self.eps, self.fused_norm).to(self.matmul_dtype)
        qkv = self.qkv(x).view(h.shape[0], rotated + kv_heads, head_dim).to(keys.dtype)
        qk = torch.bmm(qkv.narrow(1, 0, rotated), rope)  # queries and keys, rotated
        new_keys = qk.narrow(1, heads, kv_heads).view(rows, length, kv_heads, head_dim)
        new_values = qkv.narrow(1, rotated, kv_heads).view(rows, length, kv_heads, head_dim)
        keys.narrow(2, start, length).copy_(new_keys.transpose(1, 2))
        values.narrow(2, start, length).copy_(new_values.transpose(1, 2))
        key = keys.narrow(2, 0, start + length)
        value = values.narrow(2, 0, start + length)
        if heads != kv_heads:
            key = key.repeat_interleave(heads // kv_heads, dim=1)
            value = value.repeat_interleave(heads // kv_heads, dim=1)
        query = qk.narrow(1, 0, heads).view(rows, length, heads, head_dim).transpose(1, 2)
        attn = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        attn = attn.transpose(1, 2).reshape(h.shape[0], heads * head_dim).to(self.matmul_dtype)
        h.add_(self.out(attn))
        x = rms_norm(h, self.mlp_norm, self.eps, self.fused_norm).to(self.matmul_dtype)
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        h.add_(self.down(F.silu(gate).mul_(up)))
        return h


class Transformer(torch.nn.Module):
    """A weight copy of a LLaMA model in one dtype and matrix format, and the forward pass over it."""

    eps: torch.jit.Final[float]
    fused_norm: torch.jit.Final[bool]
    half: torch.jit.Final[int]

    def __init__(
        self,
        embed: torch.Tensor,
        blocks: List[Block],
        norm: torch.Tensor,
        head: torch.nn.Module,
        rotary: tuple,
        shape: "ModelShape",
        arithmetic: "Arithmetic",
    ) -> None:
        super().__init__()
        self.embed, self.norm, self.head = embed, norm, head
        self.blocks = torch.nn.ModuleList(blocks)
        self.cos, self.sin = rotary
        self.eps = shape.eps
        self.half = shape.head_dim // 2
        self.fused_norm = arithmetic.fused_norm
        self.residual_dtype = arithmetic.residual_dtype
        self.matmul_dtype = arithmetic.matmul_dtype

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        keys: List[torch.Tensor],
        values: List[torch.Tensor],
        start: int,
        mask: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Run ``tokens`` (rows, T) at ``positions`` (rows, T) into cache slots [start, start + T) of every
        layer's ``keys`` / ``values``; return float32 logits (rows, vocab) of the last slot."""
        rows = tokens.shape[0]
        h = F.embedding(tokens.reshape(-1), self.embed).to(self.residual_dtype)
        rope = self.rotations(positions.reshape(-1)).to(keys[0].dtype)
        for i, block in enumerate(self.blocks):
            h = block(h, rope, keys[i], values[i], start, mask)
        last = h.view(rows, -1, h.shape[-1])[:, -1]
        return self.head(rms_norm(last, self.norm, self.eps, self.fused_norm).to(self.matmul_dtype)).float()

    def rotations(self, positions: torch.Tensor) -> torch.Tensor:
        """(n, head_dim, head_dim) float32 R with ``x @ R[i]`` = x rotated to ``positions[i]``."""
        return torch.diag_embed(self.cos[positions]) + torch.roll(
            torch.diag_embed(self.sin[positions]), self.half, dims=1
        )


def script(model: Transformer) -> Optional[torch.nn.Module]:
    """``model`` compiled by TorchScript, or None where that is not possible here."""
    if not HAS_FUSED_RMS_NORM:
        return None
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated as a public API, not removed
            warnings.simplefilter("ignore")
            return torch.jit.script(model)
    except Exception:  # any compiler failure: the eager module does the same work
        return None
